"""The base every adapter builds on: configuration, store, the transaction server, the
homeserver client with its intents, and the lifecycle around them."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from typing import Any

from homeserver.config import (AppServiceRegistration, ConfigError,
                               load_appservice_registration)

from bridges.appservice.config import BridgeConfig, BridgeConfigError
from bridges.appservice.intent import HomeserverClient, Intent, MatrixRequestError
from bridges.appservice.server import AppServiceServer
from bridges.appservice.store import Store
from bridges.appservice.tasks import stop_on_signals

log = logging.getLogger(__name__)


class Bridge:
    """Subclasses override `handle_event` (and `on_start`/`on_listening`/`on_stop`, `SCHEMA`
    for tables)."""

    name = "bridge"
    SCHEMA = ""

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        if config.registration is None:
            raise BridgeConfigError("registration: the application-service registration file "
                                    "is required")
        try:
            self.registration: AppServiceRegistration = load_appservice_registration(
                config.registration)
        except ConfigError as e:
            raise BridgeConfigError(str(e)) from None
        reg = self.registration
        self.store = Store(config.database)
        self.client = HomeserverClient(config.homeserver.url, reg.as_token, reg.sender_localpart,
                                       config.homeserver.server_name)
        self.server = AppServiceServer(reg.hs_token, self.store, host=config.listen.host,
                                       port=config.listen.port)
        self.server.event_handlers.append(self._on_event)
        self._user_patterns = [re.compile(n.regex) for n in reg.namespaces.users]
        self._stopping = asyncio.Event()

    @property
    def bot(self) -> Intent:
        return self.client.bot

    def is_ours(self, user_id: str) -> bool:
        """The bridge bot or one of its puppets (their messages are echoes, not input)."""
        if user_id == self.client.bot_user_id:
            return True
        return any(p.match(user_id) for p in self._user_patterns) and \
            user_id.endswith(":" + (self.client.server_name or ""))

    def require_puppet_prefix(self, setting: str, prefix: str) -> None:
        """Refuse a puppet prefix outside the registration's users namespace."""
        probe = self.client.user_id(prefix + "probe")
        if not self.is_ours(probe):
            raise BridgeConfigError(f"{setting}: {probe} is not in the registration's users "
                                    "namespace")

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open(self.SCHEMA)
        await self.client.start()
        await self.on_start()
        await self.server.start()
        url = self.registration.url
        if url and not url.endswith(f":{self.server.port}"):
            log.warning("the registration's url %s does not end with this bridge's port %d",
                        url, self.server.port)
        await self.on_listening()

    async def stop(self) -> None:
        await self.server.stop()
        await self.on_stop()
        await self.client.close()
        await self.store.close()

    async def run_forever(self) -> None:
        stop_on_signals(self._stopping)
        try:
            await self.start()
        except BridgeConfigError as e:
            # Found at start-up (e.g. a prefix outside the registration's namespace).
            print(f"error: {e}", file=sys.stderr, flush=True)
            await self.stop()  # the store's thread would keep the process alive
            raise SystemExit(2) from None
        print(f"{self.name} bridge for {self.client.server_name} listening on "
              f"http://{self.config.listen.host}:{self.server.port}", flush=True)
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def on_start(self) -> None:
        """Before the transaction server listens: state that incoming transactions need."""

    async def on_listening(self) -> None:
        """Once the transaction server listens: work that makes the homeserver push to it
        (creating or joining rooms), since a refused push makes it back off from the bridge."""

    async def on_stop(self) -> None:
        pass

    # --- events ------------------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "m.room.member" and event.get("state_key") == \
                self.client.bot_user_id and (event.get("content") or {}).get("membership") \
                == "invite" and isinstance(event.get("room_id"), str):
            await self.on_bot_invited(event)
        elif event.get("type") == "m.room.member" and (event.get("content") or {}).get(
                "membership") in ("leave", "ban") and isinstance(event.get("state_key"), str):
            self.client.joined.discard((event["state_key"], event.get("room_id")))
        await self.handle_event(event)

    async def on_bot_invited(self, event: dict[str, Any]) -> None:
        """By default the bridge bot accepts every invite."""
        try:
            await self.bot.join(event["room_id"])
        except MatrixRequestError as e:
            log.warning("cannot join %s after an invite: %s", event["room_id"], e)

    async def handle_event(self, event: dict[str, Any]) -> None:
        pass
