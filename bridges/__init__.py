"""Bridges and bots for Nexa: a shared application-service base (`bridges.appservice`), adapters
(`bridges.webhooks`) and a bot SDK (`bridges.bots`). Run one with `nexa-bridge <adapter> -c FILE`."""
