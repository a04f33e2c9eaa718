"""Webhooks: incoming (a secret URL per room taking Slack-style JSON) and outgoing (room
messages POSTed, HMAC-signed, to a URL with durable retries)."""
