"""`nexa-bridge <adapter> -c config.yaml`: run one bridge or bot."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys

from bridges.appservice.config import BridgeConfigError, load_bridge_config

# adapter name -> "module:factory"; the factory takes the loaded BridgeConfig and returns an
# object with `run_forever()`.
ADAPTERS = {
    "webhooks": "bridges.webhooks.bridge:WebhooksBridge",
    "irc": "bridges.irc.bridge:IrcBridge",
    "xmpp": "bridges.xmpp.bridge:XmppBridge",
    "echo-bot": "bridges.bots.examples.echo:create",
    "reminder-bot": "bridges.bots.examples.reminder:create",
    "poll-bot": "bridges.bots.examples.poll:create",
}


def load_adapter(name: str):
    target = ADAPTERS.get(name)
    if target is None:
        raise BridgeConfigError(f"unknown adapter {name!r} (known: {', '.join(sorted(ADAPTERS))})")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nexa-bridge", description="Run a Nexa bridge or bot")
    p.add_argument("adapter", help=", ".join(sorted(ADAPTERS)))
    p.add_argument("-c", "--config", required=True, help="the bridge's config.yaml")
    args = p.parse_args(argv)
    try:
        config = load_bridge_config(args.config)
        logging.basicConfig(level=config.logging.level,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        runner = load_adapter(args.adapter)(config)
    except BridgeConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(runner.run_forever())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
