"""The XMPP bridge (`nexa-bridge xmpp -c xmpp.yaml`); see bridges/xmpp/README.md."""
