"""The IRC bridge (`nexa-bridge irc -c irc.yaml`); see bridges/irc/README.md."""
