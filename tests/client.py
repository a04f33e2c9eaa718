"""A thin aiohttp client for API tests: real HTTP, nothing of the server's code."""

from __future__ import annotations

import asyncio
import secrets
import sys
from typing import Any

import aiohttp

# No request of a test takes this long; aiohttp's own default (5 minutes) hid a hang for that long.
REQUEST_TIMEOUT_S = 90


def by_state_key(events: list[dict]) -> dict[tuple[str, str], dict]:
    """State events (full or stripped) by (type, state_key)."""
    return {(e["type"], e["state_key"]): e for e in events}


def dump_tasks(reason: str) -> None:
    """Print every asyncio task's stack (the servers under test run in this process), so a
    request that never gets an answer shows where the server is waiting."""
    print(f"\n=== {reason}: asyncio tasks ===", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=sys.stderr)


class Response:
    def __init__(self, status: int, body: Any, headers) -> None:
        self.status = status
        self.json = body
        self.headers = headers

    def __repr__(self) -> str:
        return f"<{self.status} {self.json!r}>"


class User:
    def __init__(self, api: Api, user_id: str, token: str, device_id: str, password: str) -> None:
        self.api = api
        self.user_id = user_id
        self.token = token
        self.device_id = device_id
        self.password = password

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.api.request(method, path, body, token=self.token, **kw)

    async def get(self, path: str, **kw: Any) -> Response:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("POST", path, {} if body is None else body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Response:
        return await self.request("PUT", path, {} if body is None else body, **kw)

    async def create_room(self, **body: Any) -> str:
        r = await self.post("/createRoom", body)
        assert r.status == 200, r
        return r.json["room_id"]

    async def send_text(self, room_id: str, text: str) -> str:
        r = await self.put(f"/rooms/{room_id}/send/m.room.message/{secrets.token_hex(8)}",
                           {"msgtype": "m.text", "body": text})
        assert r.status == 200, r
        return r.json["event_id"]

    async def join(self, room_id: str) -> None:
        r = await self.post(f"/join/{room_id}")
        assert r.status == 200, r

    async def sync(self, since: str | None = None, timeout: int = 0, **params: Any) -> dict:
        q = {"timeout": str(timeout), **{k: str(v) for k, v in params.items()}}
        if since:
            q["since"] = since
        r = await self.get("/sync", params=q)
        assert r.status == 200, r
        return r.json


class Api:
    def __init__(self, server) -> None:
        self.server = server
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.session is not None
        await self.session.close()

    async def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                      raw: bytes | None = None, params: dict | None = None,
                      prefix: str | None = None, headers: dict | None = None) -> Response:
        assert self.session is not None
        # '#' (room aliases) would start a URL fragment; send it percent-encoded.
        path = path.replace("#", "%23")
        url = (self.server.client_url if prefix is None else self.server.base_url + prefix) + path
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        kw: dict[str, Any] = {"headers": hdrs, "params": params}
        if raw is not None:
            kw["data"] = raw
        elif body is not None:
            kw["json"] = body
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                async with self.session.request(method, url, **kw) as r:
                    try:
                        data = await r.json(content_type=None)
                    except Exception:
                        data = await r.text()
                    return Response(r.status, data, r.headers)
        except TimeoutError:
            dump_tasks(f"{method} {path} got no answer in {REQUEST_TIMEOUT_S} s")
            raise

    async def register(self, username: str | None = None, password: str = "correct horse 42") -> User:
        username = username or f"u{secrets.token_hex(5)}"
        r = await self.request("POST", "/register", {
            "username": username, "password": password, "auth": {"type": "m.login.dummy"}})
        assert r.status == 200, r
        return User(self, r.json["user_id"], r.json["access_token"], r.json["device_id"], password)

    async def two_in_a_public_room(self) -> tuple[User, User, str]:
        """(alice, bob, room_id): two new users, in a public room alice made and bob joined."""
        alice, bob = await self.register(), await self.register()
        room_id = await alice.create_room(preset="public_chat")
        await bob.join(room_id)
        return alice, bob, room_id
