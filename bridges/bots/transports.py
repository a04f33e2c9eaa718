"""How a bot gets its events and sends: as an application service (the registration's sender
is the bot; events arrive as transactions) or as an ordinary logged-in user (/sync)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

import aiohttp

from bridges.appservice.bridge import Bridge
from bridges.appservice.config import BridgeConfig, BridgeConfigError
from bridges.appservice.intent import MatrixRequestError, q
from bridges.appservice.store import Store
from bridges.appservice.tasks import stop_on_signals
from bridges.bots.sdk import Bot, BotSection

log = logging.getLogger(__name__)


class Transport(Protocol):
    user_id: str
    store: Store

    async def send(self, room_id: str, content: dict[str, Any], *,
                   txn_id: str | None = None) -> str: ...

    async def join(self, room_id: str) -> None: ...


class AppServiceTransport(Bridge):
    """The bot is the application service's sender user."""

    def __init__(self, bot: Bot, config: BridgeConfig) -> None:
        super().__init__(config)
        self.bot_sdk = bot
        self.name = bot.name
        bot.transport = self

    @property
    def user_id(self) -> str:  # type: ignore[override]
        return self.client.bot_user_id

    async def send(self, room_id: str, content: dict[str, Any], *,
                   txn_id: str | None = None) -> str:
        return await self.bot.send_message(room_id, content, txn_id=txn_id)

    async def join(self, room_id: str) -> None:
        await self.bot.join(room_id)

    async def on_bot_invited(self, event: dict[str, Any]) -> None:
        pass  # the SDK accepts invites itself

    async def on_start(self) -> None:
        await self.bot_sdk.start()

    async def on_stop(self) -> None:
        await self.bot_sdk.stop()

    async def handle_event(self, event: dict[str, Any]) -> None:
        sender = event.get("sender")
        if isinstance(sender, str) and sender != self.user_id and self.is_ours(sender):
            return  # another puppet of this service
        await self.bot_sdk.dispatch(event)


class ClientTransport:
    """The bot logs in as a user: /sync long-polling, the since token kept in the store."""

    def __init__(self, bot: Bot, config: BridgeConfig, section: BotSection) -> None:
        if not section.access_token and not (section.user_id and section.password):
            raise BridgeConfigError("bot: client mode needs access_token, or user_id and "
                                    "password")
        self.bot_sdk = bot
        self.config = config
        self.section = section
        self.base_url = config.homeserver.url.rstrip("/")
        self.store = Store(config.database)
        self.user_id = section.user_id or ""
        self.token = section.access_token
        self._session: aiohttp.ClientSession | None = None
        self._stopping = asyncio.Event()
        self._sync_task: asyncio.Task | None = None
        self.synced = asyncio.Event()  # set after the first sync (tests wait on it)
        bot.transport = self

    # --- HTTP --------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, body: Any = None,
                       params: dict[str, str] | None = None, timeout: float = 30) -> Any:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        delay = 0.5
        for attempt in range(6):
            try:
                async with self._session.request(
                        method, f"{self.base_url}/_matrix/client/v3{path}", json=body,
                        params=params, headers=headers,
                        timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    data = await r.json(content_type=None)
                    if r.status < 300:
                        return data
                    err = data if isinstance(data, dict) else {}
                    if (r.status == 429 or r.status >= 500) and attempt < 5:
                        await asyncio.sleep(min(err.get("retry_after_ms", delay * 1000) / 1000, 10))
                        delay *= 2
                        continue
                    raise MatrixRequestError(r.status, str(err.get("errcode", "M_UNKNOWN")),
                                             str(err.get("error", "")), data)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                if attempt == 5:
                    raise MatrixRequestError(503, "M_CONNECTION_FAILED", str(e)) from e
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def send(self, room_id: str, content: dict[str, Any], *,
                   txn_id: str | None = None) -> str:
        import secrets

        txn_id = txn_id or secrets.token_hex(12)
        res = await self._request("PUT", f"/rooms/{q(room_id)}/send/m.room.message/{q(txn_id)}",
                                  content)
        return res["event_id"]

    async def join(self, room_id: str) -> None:
        await self._request("POST", f"/join/{q(room_id)}", {})

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        self._session = aiohttp.ClientSession()
        if not self.token:
            # A password login happens once; the session is reused across restarts (so replies
            # keep their transaction-ID scope and no device piles up).
            saved = await self.store.get_json("bot-client", "session")
            if saved and saved.get("user_id") == self.section.user_id:
                self.token = saved["access_token"]
            else:
                res = await self._request("POST", "/login", {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": self.section.user_id},
                    "password": self.section.password,
                    "initial_device_display_name": self.section.device_name})
                self.token = res["access_token"]
                await self.store.put_json("bot-client", "session", {
                    "user_id": self.section.user_id, "access_token": self.token,
                    "device_id": res.get("device_id")})
        who = await self._request("GET", "/account/whoami")
        self.user_id = who["user_id"]
        await self.bot_sdk.start()
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_forever(),
                                                                 name="bot-sync")

    async def stop(self) -> None:
        self._stopping.set()
        if self._sync_task is not None:
            self._sync_task.cancel()
            try:
                await self._sync_task
            except (asyncio.CancelledError, Exception):
                pass
        await self.bot_sdk.stop()
        if self._session is not None:
            await self._session.close()
        await self.store.close()

    async def run_forever(self) -> None:
        stop_on_signals(self._stopping)
        await self.start()
        print(f"{self.bot_sdk.name} bot running as {self.user_id}", flush=True)
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    # --- /sync -------------------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        since = await self.store.get_json("bot-client", "since")
        filt = json.dumps({"room": {"timeline": {"limit": 50}, "state": {"lazy_load_members": True}},
                           "presence": {"types": []}, "account_data": {"types": []}})
        while not self._stopping.is_set():
            params = {"filter": filt, "timeout": str(self.section.sync_timeout_ms if since else 0)}
            if since:
                params["since"] = since
            try:
                res = await self._request("GET", "/sync", params=params,
                                          timeout=self.section.sync_timeout_ms / 1000 + 30)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("bot sync failed: %s", e)
                await asyncio.sleep(2)
                continue
            first = since is None
            try:
                await self._process(res, skip_timeline=first)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bot: processing a sync batch failed; it will be fetched again")
                await asyncio.sleep(2)
                continue
            since = res.get("next_batch", since)
            await self.store.put_json("bot-client", "since", since)
            self.synced.set()

    async def _process(self, res: dict[str, Any], skip_timeline: bool) -> None:
        rooms = res.get("rooms") or {}
        for room_id, room in (rooms.get("invite") or {}).items():
            events = (room.get("invite_state") or {}).get("events") or []
            for ev in events:
                if ev.get("type") == "m.room.member" and ev.get("state_key") == self.user_id:
                    await self.bot_sdk.dispatch({**ev, "room_id": room_id,
                                                 "event_id": ev.get("event_id", f"invite:{room_id}")})
        if skip_timeline:
            return  # the first sync only learns where "now" is: old commands are not answered
        for room_id, room in (rooms.get("join") or {}).items():
            for ev in (room.get("timeline") or {}).get("events") or []:
                await self.bot_sdk.dispatch({**ev, "room_id": room_id})
