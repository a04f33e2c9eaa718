"""Talking to the homeserver as the bridge: a client authenticated with the as_token, and
intents that act as one user each (the bridge bot, or a puppet for a remote user).

A puppet is registered the first time it is needed (`m.login.application_service`), joins
rooms on demand (invited by the bridge bot when the room is not public) and sends with stable
transaction IDs, so a retried send is never duplicated.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)


class MatrixRequestError(Exception):
    def __init__(self, status: int, errcode: str, error: str, body: Any = None) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body


def q(segment: str) -> str:
    """One URL path segment (room IDs, aliases and user IDs contain '!#@:')."""
    return quote(segment, safe="")


class HomeserverClient:
    """The Client-Server API with the as_token (identity assertion with ?user_id=)."""

    def __init__(self, base_url: str, as_token: str, sender_localpart: str,
                 server_name: str | None = None, *, timeout_s: float = 30,
                 max_attempts: int = 5) -> None:
        self.base_url = base_url.rstrip("/")
        self.as_token = as_token
        self.sender_localpart = sender_localpart
        self.server_name = server_name
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_attempts = max_attempts
        self._session: aiohttp.ClientSession | None = None
        self.registered: set[str] = set()
        self.joined: set[tuple[str, str]] = set()  # (user_id, room_id)
        self.displaynames: dict[str, str] = {}
        self._intents: dict[str, Intent] = {}

    async def start(self) -> None:
        """Learn the server name from whoami when it was not configured."""
        if self.server_name is None:
            # The homeserver may still be starting: wait for it (up to about a minute).
            for attempt in range(12):
                try:
                    who = await self.request("GET", "/account/whoami")
                    break
                except MatrixRequestError as e:
                    if e.status != 503 or attempt == 11:
                        raise
                    log.info("homeserver not reachable yet (%s); waiting", e.error)
            self.server_name = who["user_id"].split(":", 1)[1]
        self.registered.add(self.bot_user_id)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    @property
    def bot_user_id(self) -> str:
        return f"@{self.sender_localpart}:{self.server_name}"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def intent(self, user_id: str | None = None) -> Intent:
        user_id = user_id or self.bot_user_id
        it = self._intents.get(user_id)
        if it is None:
            it = self._intents[user_id] = Intent(self, user_id)
        return it

    @property
    def bot(self) -> Intent:
        return self.intent(self.bot_user_id)

    async def request(self, method: str, path: str, body: Any = None, *,
                      user_id: str | None = None, params: dict[str, str] | None = None,
                      prefix: str = "/_matrix/client/v3", idempotent: bool = True) -> Any:
        """One request; 429s, 5xx and connection failures are retried (when `idempotent`)
        with backoff. Raises MatrixRequestError for an error answer."""
        query = dict(params or {})
        if user_id is not None and user_id != self.bot_user_id:
            query["user_id"] = user_id
        headers = {"Authorization": f"Bearer {self.as_token}"}
        delay = 0.2
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with self.session.request(method, self.base_url + prefix + path,
                                                json=body, params=query,
                                                headers=headers) as r:
                    try:
                        data = await r.json(content_type=None)
                    except ValueError:
                        data = None
                    if r.status < 300:
                        return data if data is not None else {}
                    err = data if isinstance(data, dict) else {}
                    exc = MatrixRequestError(r.status, str(err.get("errcode", "M_UNKNOWN")),
                                             str(err.get("error", "")), data)
                    if r.status == 429 and attempt < self.max_attempts:
                        wait = min(float(err.get("retry_after_ms", 1000)) / 1000, 10.0)
                        await asyncio.sleep(wait)
                        continue
                    if r.status >= 500 and idempotent and attempt < self.max_attempts:
                        await asyncio.sleep(delay)
                        delay *= 2
                        continue
                    raise exc
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
                if not idempotent or attempt == self.max_attempts:
                    raise MatrixRequestError(503, "M_CONNECTION_FAILED", str(e)) from e
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")


class Intent:
    """Acts as one user of the bridge's namespace (or the bridge bot)."""

    def __init__(self, client: HomeserverClient, user_id: str) -> None:
        self.client = client
        self.user_id = user_id

    @property
    def is_bot(self) -> bool:
        return self.user_id == self.client.bot_user_id

    async def _req(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        return await self.client.request(method, path, body, user_id=self.user_id, **kw)

    async def ensure_registered(self) -> None:
        if self.user_id in self.client.registered:
            return
        localpart = self.user_id[1:].split(":", 1)[0]
        try:
            await self.client.request("POST", "/register", {
                "type": "m.login.application_service", "username": localpart,
                "inhibit_login": True})
        except MatrixRequestError as e:
            if e.errcode != "M_USER_IN_USE":
                raise
        self.client.registered.add(self.user_id)

    async def set_displayname(self, name: str) -> None:
        if self.client.displaynames.get(self.user_id) == name:
            return
        await self.ensure_registered()
        await self._req("PUT", f"/profile/{q(self.user_id)}/displayname", {"displayname": name})
        self.client.displaynames[self.user_id] = name

    async def join(self, room: str) -> str:
        await self.ensure_registered()
        res = await self._req("POST", f"/join/{q(room)}", {})
        room_id = res.get("room_id", room)
        self.client.joined.add((self.user_id, room_id))
        return room_id

    async def ensure_joined(self, room_id: str) -> None:
        """Join, with an invite from the bridge bot when the room needs one."""
        if (self.user_id, room_id) in self.client.joined:
            return
        try:
            await self.join(room_id)
        except MatrixRequestError as e:
            if e.status != 403 or self.is_bot:
                raise
            await self.client.bot.invite(room_id, self.user_id)
            await self.join(room_id)

    async def invite(self, room_id: str, user_id: str) -> None:
        try:
            await self._req("POST", f"/rooms/{q(room_id)}/invite", {"user_id": user_id})
        except MatrixRequestError as e:
            if not (e.status == 403 and "already in the room" in e.error):
                raise

    async def leave(self, room_id: str) -> None:
        await self._req("POST", f"/rooms/{q(room_id)}/leave", {})
        self.client.joined.discard((self.user_id, room_id))

    def forget_membership(self, room_id: str) -> None:
        self.client.joined.discard((self.user_id, room_id))

    async def send_message(self, room_id: str, content: dict[str, Any],
                           event_type: str = "m.room.message", *, txn_id: str | None = None,
                           ts: int | None = None) -> str:
        """Send (joining first if needed); the same txn_id never sends twice."""
        await self.ensure_joined(room_id)
        txn_id = txn_id or secrets.token_hex(12)
        params = {"ts": str(ts)} if ts is not None else None
        path = f"/rooms/{q(room_id)}/send/{q(event_type)}/{q(txn_id)}"
        try:
            res = await self._req("PUT", path, content, params=params)
        except MatrixRequestError as e:
            if e.status != 403:
                raise
            # Perhaps kicked since we last looked: join again once.
            self.forget_membership(room_id)
            await self.ensure_joined(room_id)
            res = await self._req("PUT", path, content, params=params)
        return res["event_id"]

    async def send_text(self, room_id: str, text: str, *, notice: bool = False,
                        html: str | None = None, reply_to: str | None = None,
                        txn_id: str | None = None) -> str:
        content: dict[str, Any] = {"msgtype": "m.notice" if notice else "m.text", "body": text}
        if html is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = html
        if reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        return await self.send_message(room_id, content, txn_id=txn_id)

    async def send_state(self, room_id: str, event_type: str, content: dict[str, Any],
                         state_key: str = "") -> str:
        res = await self._req("PUT", f"/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}",
                              content)
        return res["event_id"]

    async def get_state(self, room_id: str, event_type: str, state_key: str = "") -> dict | None:
        try:
            return await self._req(
                "GET", f"/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}")
        except MatrixRequestError as e:
            if e.status == 404:
                return None
            raise

    async def power_level(self, room_id: str, user_id: str) -> int:
        pl = await self.get_state(room_id, "m.room.power_levels") or {}
        users = pl.get("users") if isinstance(pl.get("users"), dict) else {}
        level = users.get(user_id, pl.get("users_default", 0))
        return level if isinstance(level, int) else 0

    async def create_room(self, **body: Any) -> str:
        await self.ensure_registered()
        res = await self._req("POST", "/createRoom", body, idempotent=False)
        self.client.joined.add((self.user_id, res["room_id"]))
        return res["room_id"]
