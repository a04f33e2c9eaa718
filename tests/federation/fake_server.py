"""A scriptable fake homeserver for federation tests.

It publishes a correctly self-signed key at GET /_matrix/key/v2/server, accepts (and records)
the transactions a real server sends it, and lets a test make signed — or deliberately
mis-signed — requests and craft PDUs by hand. Only the pure event functions of the homeserver
are used (hashing, signing, canonical JSON); every request goes over real HTTP.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from yarl import URL

from homeserver.events.canonical import canonical_json
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.events.signing import SigningKey, sign_event, sign_json
from tests.servers import free_port


def now_ms() -> int:
    return int(time.time() * 1000)


def xmatrix(origin: str, destination: str | None, key_id: str, sig: str) -> str:
    """An X-Matrix Authorization header value (every parameter quoted)."""
    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    parts = [f"origin={q(origin)}"]
    if destination is not None:
        parts.append(f"destination={q(destination)}")
    parts += [f"key={q(key_id)}", f"sig={q(sig)}"]
    return "X-Matrix " + ",".join(parts)


def path(template: str, *params: str) -> str:
    """'/x/{}/y' with every parameter percent-encoded as one path segment."""
    return template.format(*(quote(str(p), safe="") for p in params))


class FedResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.json = body

    def __repr__(self) -> str:
        return f"<{self.status} {self.json!r}>"


class FakeServer:
    """A homeserver named `localhost:<port>` that exists only as far as a test scripts it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server_name = f"localhost:{self.port}"
        # A distinct, predictable key ID per fake server (never the same as another fake's).
        self.key = SigningKey.generate(version=f"fake{self.port}")
        # Transactions other servers PUT to us: (origin header, txn_id, body).
        self.received: list[tuple[str | None, str, dict]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def user(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    # --- serving -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/_matrix/key/v2/server", self._keys)
        app.router.add_put("/_matrix/federation/v1/send/{txn_id}", self._send)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def key_response(self) -> dict:
        """What Keyring.own_server_keys publishes: our key, self-signed."""
        body = {
            "server_name": self.server_name,
            "verify_keys": {self.key.key_id: {"key": self.key.verify_key_b64}},
            "old_verify_keys": {},
            "valid_until_ts": now_ms() + 24 * 3600 * 1000,
        }
        return sign_json(body, self.server_name, self.key)

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response(self.key_response())

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append((request.headers.get("Authorization"),
                              request.match_info["txn_id"], body))
        return web.json_response({"pdus": {}})

    async def _unknown(self, request: web.Request) -> web.Response:
        return web.json_response({"errcode": "M_UNRECOGNIZED", "error": "fake server"},
                                 status=404)

    # --- requests ------------------------------------------------------------------------

    def sign_request(self, destination: str | None, method: str, uri: str,
                     content: Any = None, *, key: SigningKey | None = None,
                     origin: str | None = None) -> str:
        """The signature (not the header) of a request, as transport.sign_request makes it."""
        key = key or self.key
        origin = origin or self.server_name
        obj: dict[str, Any] = {"method": method, "uri": uri, "origin": origin}
        if destination is not None:
            obj["destination"] = destination
        if content is not None:
            obj["content"] = content
        return sign_json(obj, origin, key)["signatures"][origin][key.key_id]

    def auth_header(self, destination: str, method: str, uri: str, content: Any = None) -> str:
        sig = self.sign_request(destination, method, uri, content)
        return xmatrix(self.server_name, destination, self.key.key_id, sig)

    async def request(self, target, method: str, uri: str, body: Any = None, *,
                      authorization: str | None | bool = True,
                      raw: bytes | None = None) -> FedResponse:
        """A request to a running server. `uri` is the already-encoded path (and query).

        authorization: True signs the request correctly; False sends none; a string is sent
        verbatim as the Authorization header. `raw` overrides the body bytes sent.
        """
        assert self._session is not None, "fake server not started"
        headers = {}
        if authorization is True:
            headers["Authorization"] = self.auth_header(target.server_name, method, uri, body)
        elif isinstance(authorization, str):
            headers["Authorization"] = authorization
        data = raw
        if data is None and body is not None:
            data = canonical_json(body)
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = URL(target.base_url + uri, encoded=True)
        async with self._session.request(method, url, data=data, headers=headers,
                                         allow_redirects=False) as r:
            try:
                parsed = await r.json(content_type=None)
            except ValueError:
                parsed = await r.text()
            return FedResponse(r.status, parsed)

    async def send_transaction(self, target, txn_id: str, pdus: list[dict],
                               edus: list[dict] | None = None, **kw: Any) -> FedResponse:
        body = {"origin": self.server_name, "origin_server_ts": now_ms(), "pdus": pdus,
                "edus": edus or []}
        return await self.request(target, "PUT", path("/_matrix/federation/v1/send/{}", txn_id),
                                  body, **kw)

    async def get_pdu(self, target, event_id: str) -> dict:
        r = await self.request(target, "GET", path("/_matrix/federation/v1/event/{}", event_id))
        assert r.status == 200, r
        return r.json["pdus"][0]

    # --- events --------------------------------------------------------------------------

    def build_event(self, version: RoomVersion, *, room_id: str, sender: str, type: str,
                    content: dict, prev_events: list[str], auth_events: list[str], depth: int,
                    state_key: str | None = None, key: SigningKey | None = None
                    ) -> tuple[dict, str]:
        """A hashed PDU signed by this server (or by `key` under this server's name)."""
        pdu: dict[str, Any] = {
            "room_id": room_id, "sender": sender, "type": type, "content": content,
            "prev_events": list(prev_events), "auth_events": list(auth_events),
            "depth": depth, "origin_server_ts": now_ms(),
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        pdu = sign_event(add_content_hash(pdu), self.server_name, key or self.key, version)
        return pdu, compute_event_id(pdu, version)

    async def make_join_event(self, target, room_id: str, user_id: str) -> tuple[dict, str,
                                                                                 RoomVersion]:
        """make_join, then the filled-in, hashed and signed join event (not yet sent)."""
        r = await self.request(
            target, "GET",
            path("/_matrix/federation/v1/make_join/{}/{}", room_id, user_id) + "?ver=10&ver=11")
        assert r.status == 200, r
        version = get_room_version(r.json["room_version"])
        t = r.json["event"]
        pdu = {k: t[k] for k in ("room_id", "sender", "type", "state_key", "depth",
                                 "prev_events", "auth_events")}
        pdu["content"] = {"membership": "join"}
        pdu["origin_server_ts"] = now_ms()
        pdu = sign_event(add_content_hash(pdu), self.server_name, self.key, version)
        return pdu, compute_event_id(pdu, version), version

    async def join(self, target, room_id: str, user_id: str) -> tuple[str, RoomVersion]:
        """A real remote join through make_join/send_join; the join event's ID."""
        pdu, event_id, version = await self.make_join_event(target, room_id, user_id)
        r = await self.request(
            target, "PUT", path("/_matrix/federation/v2/send_join/{}/{}", room_id, event_id), pdu)
        assert r.status == 200, r
        assert r.json["event"]["sender"] == user_id, r
        return event_id, version
