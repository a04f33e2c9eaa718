"""A scriptable application service for homeserver tests: records what the homeserver sends."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from tests.servers import LoopbackApp, free_port


def write_registration(path: Path, *, id: str = "fake", url: str | None, sender: str = "fakebot",
                       users: list[tuple[str, bool]] = (), aliases: list[tuple[str, bool]] = (),
                       rooms: list[tuple[str, bool]] = (), rate_limited: bool = False,
                       as_token: str | None = None, hs_token: str | None = None,
                       **extra: Any) -> dict:
    """extra: other registration keys as they are (receive_ephemeral, protocols, ...)."""
    data = {
        "id": id, "url": url,
        "as_token": as_token or "as_" + secrets.token_hex(16),
        "hs_token": hs_token or "hs_" + secrets.token_hex(16),
        "sender_localpart": sender,
        "namespaces": {
            "users": [{"regex": r, "exclusive": ex} for r, ex in users],
            "aliases": [{"regex": r, "exclusive": ex} for r, ex in aliases],
            "rooms": [{"regex": r, "exclusive": ex} for r, ex in rooms],
        },
        "rate_limited": rate_limited,
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return data


class FakeAppService(LoopbackApp):
    """Answers transactions, queries and pings; `fail_next` makes the next N transactions 500."""

    def __init__(self, hs_token: str) -> None:
        self.hs_token = hs_token
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.attempts: list[tuple[str, list[dict]]] = []  # every PUT, in order
        self.attempt_bodies: list[tuple[str, dict]] = []  # the same, whole bodies
        self.accepted: dict[str, list[dict]] = {}  # txn_id -> events (first accepted copy)
        self.bodies: dict[str, dict] = {}  # txn_id -> whole body (first accepted copy)
        self.fail_next = 0
        self.bad_auth = 0
        self.user_queries: list[str] = []
        self.alias_queries: list[str] = []
        self.pings: list[dict] = []
        self.on_user_query = None  # async fn(user_id) -> bool
        self.on_alias_query = None
        # Third-party lookups: (kind, protocol or None) -> (status, JSON body), e.g.
        # ("protocol", "irc"), ("location", "irc"), ("user", None) for the reverse lookup.
        self.thirdparty: dict[tuple[str, str | None], tuple[int, Any]] = {}
        self.thirdparty_queries: list[tuple[str, str | None, dict[str, str]]] = []
        self.thirdparty_stall: asyncio.Event | None = None  # set: answers wait for it
        self.changed = asyncio.Event()

    def _authorised(self, request: web.Request) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {self.hs_token}"
        if not ok:
            self.bad_auth += 1
        return ok

    async def _txn(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        txn_id = request.match_info["txn_id"]
        body = await request.json()
        self.attempts.append((txn_id, body["events"]))
        self.attempt_bodies.append((txn_id, body))
        self.changed.set()
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response({"errcode": "M_UNKNOWN"}, status=500)
        self.accepted.setdefault(txn_id, body["events"])
        self.bodies.setdefault(txn_id, body)
        return web.json_response({})

    async def _user(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        user_id = request.match_info["user_id"]
        self.user_queries.append(user_id)
        if self.on_user_query is not None and await self.on_user_query(user_id):
            return web.json_response({})
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    async def _room(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        alias = request.match_info["alias"]
        self.alias_queries.append(alias)
        if self.on_alias_query is not None and await self.on_alias_query(alias):
            return web.json_response({})
        return web.json_response({"errcode": "M_NOT_FOUND"}, status=404)

    async def _ping(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        self.pings.append(await request.json())
        return web.json_response({})

    async def _thirdparty(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        kind = request.match_info["kind"]
        protocol = request.match_info.get("protocol")
        self.thirdparty_queries.append((kind, protocol, dict(request.query)))
        self.changed.set()
        if self.thirdparty_stall is not None:
            await self.thirdparty_stall.wait()
        status, body = self.thirdparty.get((kind, protocol), (404, {"errcode": "M_NOT_FOUND"}))
        return web.json_response(body, status=status)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/_matrix/app/v1/thirdparty/{kind}/{protocol}", self._thirdparty)
        app.router.add_get("/_matrix/app/v1/thirdparty/{kind}", self._thirdparty)
        app.router.add_put("/_matrix/app/v1/transactions/{txn_id}", self._txn)
        app.router.add_get("/_matrix/app/v1/users/{user_id}", self._user)
        app.router.add_get("/_matrix/app/v1/rooms/{alias}", self._room)
        app.router.add_post("/_matrix/app/v1/ping", self._ping)

    def ephemeral(self, key: str = "ephemeral") -> list[dict]:
        """Every accepted ephemeral item (key: the stable or the unstable MSC2409 name)."""
        return [e for b in self.bodies.values() for e in b.get(key, [])]

    def events(self) -> list[dict]:
        """Every accepted event, in delivery order."""
        return [e for evs in self.accepted.values() for e in evs]

    async def wait_for(self, pred, timeout: float = 10.0) -> Any:
        async def loop():
            while True:
                res = pred()
                if res:
                    return res
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
        return await asyncio.wait_for(loop(), timeout)
