"""Outbound federation HTTP: server discovery, X-Matrix request signing, JSON in and out.

One aiohttp session per homeserver, created on first use and closed by `close()`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import ssl
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from homeserver.events.canonical import canonical_json
from homeserver.events.signing import sign_json
from homeserver.handlers.federation.discovery import (DnsLookups, DnsResolver, Route,
                                                      discover)
from homeserver.types import split_server_name

log = logging.getLogger(__name__)

# How long a discovered route is kept: an hour when /.well-known answered, ten minutes when it
# did not (the spec asks for a cache; a server that adds delegation is found within that).
WELL_KNOWN_TTL = 3600.0
WELL_KNOWN_FAILURE_TTL = 600.0
DEFAULT_PLAIN_HTTP_PORT = 8008
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_WELL_KNOWN_BYTES = 64 * 1024


class FederationError(Exception):
    """The remote server answered with a non-2xx status (or we refused to send: 403)."""

    def __init__(self, status: int, errcode: str, error: str, body: Any = None) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error
        self.body = body


class DestinationUnreachable(Exception):
    """No usable answer: connection error, timeout, TLS failure or a body that is not JSON."""

    def __init__(self, destination: str, reason: str) -> None:
        super().__init__(f"{destination} unreachable: {reason}")
        self.destination = destination
        self.reason = reason


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, up to `limit` bytes: StreamReader.read(n) returns what has arrived so far,
    so large bodies must be read in a loop."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def server_allowed(fed_config: Any, server_name: str) -> bool:
    """The config-level allow/deny lists: exact names or shell-style patterns, case-insensitive."""
    name = server_name.lower()

    def matches(patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p.lower()) for p in patterns)

    if matches(fed_config.deny):
        return False
    return fed_config.allow is None or matches(fed_config.allow)


def xmatrix_header(origin: str, destination: str, key_id: str, sig: str) -> str:
    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return (f"X-Matrix origin={q(origin)},destination={q(destination)},key={q(key_id)},"
            f"sig={q(sig)}")


def quote_path(template: str, *params: str) -> str:
    """'/rooms/{}/x' with every parameter percent-encoded as one path segment."""
    return template.format(*(quote(str(p), safe="") for p in params))


def _query_string(query: dict | None) -> str:
    if not query:
        return ""
    parts = []
    for k, v in query.items():
        for item in v if isinstance(v, (list, tuple)) else [v]:
            if item is None:
                continue
            if isinstance(item, bool):
                item = "true" if item else "false"
            parts.append(f"{quote(str(k), safe='')}={quote(str(item), safe='')}")
    return "&".join(parts)


class FederationClient:
    """Signed JSON requests to other homeservers.

    Server discovery follows the spec's steps, SRV records included (discovery.py). With
    `federation.plain_http` (loopback test setups) every name maps to `http://host:port`.
    """

    def __init__(self, hs: Any) -> None:
        self.hs = hs
        self._session: aiohttp.ClientSession | None = None
        self._dns = DnsLookups(self._fed.dns_servers)
        # server name -> (expires at (monotonic), route)
        self._routes: dict[str, tuple[float, Route | str]] = {}

    # --- plumbing ------------------------------------------------------------------------

    @property
    def _fed(self) -> Any:
        return self.hs.config.federation

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._fed.tls_verify:
            return False
        ctx = ssl.create_default_context()
        if self._fed.ca_file:
            ctx.load_verify_locations(cafile=str(self._fed.ca_file))
        return ctx

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # With DNS servers of its own, names found in SRV records resolve through them too.
            resolver = DnsResolver(self._dns) if self._fed.dns_servers else None
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=200, limit_per_host=20,
                                             resolver=resolver)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": "Nexa"}, auto_decompress=True)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- discovery -----------------------------------------------------------------------

    async def route(self, server_name: str) -> Route | str:
        """Where requests for `server_name` go: a Route, or with `plain_http` a base URL."""
        if self._fed.plain_http:
            host, port = split_server_name(server_name)
            return f"http://{host}:{port or DEFAULT_PLAIN_HTTP_PORT}"
        cached = self._routes.get(server_name)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        delegated: list[bool] = []

        async def well_known(host: str) -> str | None:
            found = await self._fetch_well_known(host)
            delegated.append(found is not None)
            return found

        route = await discover(server_name, well_known, self._dns.srv)
        ttl = WELL_KNOWN_TTL if any(delegated) else WELL_KNOWN_FAILURE_TTL
        if len(self._routes) > 10_000:
            self._routes.clear()
        self._routes[server_name] = (time.monotonic() + ttl, route)
        return route

    def request_options(self, route: Route | str, path_with_query: str,
                        headers: dict[str, str]) -> tuple[URL, dict[str, Any]]:
        """The URL and aiohttp arguments for a request along `route`."""
        if isinstance(route, str):
            return URL(route + path_with_query, encoded=True), {"headers": headers}
        return (URL(route.base_url + path_with_query, encoded=True),
                route.request_options(headers))

    async def _fetch_well_known(self, host: str) -> str | None:
        url = f"https://{host}/.well-known/matrix/server"
        try:
            async with self._get_session().get(
                    url, timeout=aiohttp.ClientTimeout(total=10), max_redirects=5) as resp:
                if resp.status != 200:
                    return None
                raw = await read_limited(resp, MAX_WELL_KNOWN_BYTES + 1)
            if len(raw) > MAX_WELL_KNOWN_BYTES:
                return None
            data = orjson.loads(raw)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            log.debug("no well-known for %s: %s", host, e)
            return None
        server = data.get("m.server") if isinstance(data, dict) else None
        return server if isinstance(server, str) and server else None

    # --- requests ------------------------------------------------------------------------

    def sign_request(self, destination: str, method: str, path_with_query: str,
                     content: Any = None) -> str:
        """The Authorization header value for a request from this server."""
        key = self.hs.signing_key
        if key is None:
            raise RuntimeError("homeserver not started: no signing key")
        obj: dict[str, Any] = {"method": method, "uri": path_with_query,
                               "origin": self.hs.server_name, "destination": destination}
        if content is not None:
            obj["content"] = content
        signed = sign_json(obj, self.hs.server_name, key)
        sig = signed["signatures"][self.hs.server_name][key.key_id]
        return xmatrix_header(self.hs.server_name, destination, key.key_id, sig)

    async def request(self, destination: str, method: str, path: str, *,
                      query: dict | None = None, json: Any = None, timeout: float = 30,
                      sign: bool = True) -> Any:
        """Send one request; the parsed JSON answer, or FederationError/DestinationUnreachable.

        `path` must already be percent-encoded (use `quote_path`); `query` values are encoded.
        """
        if destination == self.hs.server_name:
            raise ValueError("refusing to send a federation request to ourselves")
        if not self._fed.enabled:
            raise FederationError(403, "M_FORBIDDEN", "Federation is disabled on this server")
        if not server_allowed(self._fed, destination):
            raise FederationError(403, "M_FORBIDDEN",
                                  f"{destination} is not allowed by the federation config")
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        method = method.upper()
        qs = _query_string(query)
        path_with_query = f"{path}?{qs}" if qs else path
        try:
            route = await self.route(destination)
        except ValueError as e:
            raise DestinationUnreachable(destination, str(e)) from None
        headers = {}
        data = None
        if json is not None:
            data = canonical_json(json) if sign else orjson.dumps(json)
            headers["Content-Type"] = "application/json"
        if sign:
            headers["Authorization"] = self.sign_request(destination, method, path_with_query,
                                                         json)
        url, options = self.request_options(route, path_with_query, headers)
        try:
            async with self._get_session().request(
                    method, url, data=data, allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout), **options) as resp:
                raw = await read_limited(resp, MAX_RESPONSE_BYTES + 1)
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ssl.SSLError) as e:
            raise DestinationUnreachable(destination, f"{type(e).__name__}: {e}") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise DestinationUnreachable(destination, "response too large")
        try:
            body = orjson.loads(raw) if raw.strip() else None
        except orjson.JSONDecodeError:
            body = None
            if 200 <= status < 300:
                raise DestinationUnreachable(destination, "response is not JSON") from None
        if 200 <= status < 300:
            return body
        errcode, error = "M_UNKNOWN", f"HTTP {status}"
        if isinstance(body, dict):
            if isinstance(body.get("errcode"), str):
                errcode = body["errcode"]
            if isinstance(body.get("error"), str):
                error = body["error"]
        raise FederationError(status, errcode, error, body)

    # --- endpoint helpers ----------------------------------------------------------------

    async def get_server_keys(self, dest: str) -> Any:
        return await self.request(dest, "GET", "/_matrix/key/v2/server", sign=False, timeout=15)

    async def send_transaction(self, dest: str, txn_id: str, body: dict) -> Any:
        return await self.request(dest, "PUT", quote_path("/_matrix/federation/v1/send/{}",
                                                          txn_id), json=body, timeout=60)

    async def make_join(self, dest: str, room_id: str, user_id: str,
                        versions: list[str]) -> Any:
        return await self.request(
            dest, "GET", quote_path("/_matrix/federation/v1/make_join/{}/{}", room_id, user_id),
            query={"ver": list(versions)})

    async def send_join(self, dest: str, room_id: str, event_id: str, pdu: dict) -> Any:
        return await self.request(
            dest, "PUT", quote_path("/_matrix/federation/v2/send_join/{}/{}", room_id, event_id),
            json=pdu, timeout=120)

    async def invite(self, dest: str, room_id: str, event_id: str, body: dict) -> Any:
        return await self.request(
            dest, "PUT", quote_path("/_matrix/federation/v2/invite/{}/{}", room_id, event_id),
            json=body)

    async def make_leave(self, dest: str, room_id: str, user_id: str) -> Any:
        return await self.request(
            dest, "GET", quote_path("/_matrix/federation/v1/make_leave/{}/{}", room_id, user_id))

    async def send_leave(self, dest: str, room_id: str, event_id: str, pdu: dict) -> Any:
        return await self.request(
            dest, "PUT", quote_path("/_matrix/federation/v2/send_leave/{}/{}", room_id,
                                    event_id), json=pdu)

    async def make_knock(self, dest: str, room_id: str, user_id: str,
                         versions: list[str]) -> Any:
        return await self.request(
            dest, "GET", quote_path("/_matrix/federation/v1/make_knock/{}/{}", room_id, user_id),
            query={"ver": list(versions)})

    async def send_knock(self, dest: str, room_id: str, event_id: str, pdu: dict) -> Any:
        return await self.request(
            dest, "PUT", quote_path("/_matrix/federation/v1/send_knock/{}/{}", room_id,
                                    event_id), json=pdu)

    async def get_missing_events(self, dest: str, room_id: str, body: dict) -> Any:
        return await self.request(
            dest, "POST", quote_path("/_matrix/federation/v1/get_missing_events/{}", room_id),
            json=body)

    async def backfill(self, dest: str, room_id: str, event_ids: list[str], limit: int) -> Any:
        return await self.request(
            dest, "GET", quote_path("/_matrix/federation/v1/backfill/{}", room_id),
            query={"v": list(event_ids), "limit": limit})

    async def get_event(self, dest: str, event_id: str) -> Any:
        return await self.request(dest, "GET",
                                  quote_path("/_matrix/federation/v1/event/{}", event_id))

    async def state_ids(self, dest: str, room_id: str, event_id: str) -> Any:
        return await self.request(dest, "GET",
                                  quote_path("/_matrix/federation/v1/state_ids/{}", room_id),
                                  query={"event_id": event_id})

    async def state(self, dest: str, room_id: str, event_id: str) -> Any:
        return await self.request(dest, "GET",
                                  quote_path("/_matrix/federation/v1/state/{}", room_id),
                                  query={"event_id": event_id}, timeout=120)

    async def event_auth(self, dest: str, room_id: str, event_id: str) -> Any:
        return await self.request(
            dest, "GET", quote_path("/_matrix/federation/v1/event_auth/{}/{}", room_id,
                                    event_id))

    async def query_profile(self, dest: str, user_id: str, field: str | None = None) -> Any:
        return await self.request(dest, "GET", "/_matrix/federation/v1/query/profile",
                                  query={"user_id": user_id, "field": field}, timeout=10)

    async def query_directory(self, dest: str, alias: str) -> Any:
        return await self.request(dest, "GET", "/_matrix/federation/v1/query/directory",
                                  query={"room_alias": alias}, timeout=10)

    async def public_rooms(self, dest: str, params: dict | None = None) -> Any:
        return await self.request(dest, "GET", "/_matrix/federation/v1/publicRooms",
                                  query=params or None)

    async def user_devices(self, dest: str, user_id: str) -> Any:
        return await self.request(dest, "GET",
                                  quote_path("/_matrix/federation/v1/user/devices/{}", user_id))

    async def user_keys_query(self, dest: str, body: dict) -> Any:
        return await self.request(dest, "POST", "/_matrix/federation/v1/user/keys/query",
                                  json=body)

    async def user_keys_claim(self, dest: str, body: dict) -> Any:
        return await self.request(dest, "POST", "/_matrix/federation/v1/user/keys/claim",
                                  json=body)


def as_client_error(e: Exception, what: str):
    """What a client sees when a request to another server on its behalf failed."""
    from homeserver.errors import MatrixError

    if isinstance(e, FederationError):
        if 400 <= e.status < 500:
            return MatrixError(e.status, e.errcode or "M_UNKNOWN", f"{what}: {e.error}")
        return MatrixError(502, "M_UNKNOWN", f"{what}: the other server failed ({e.status})")
    return MatrixError(404, "M_NOT_FOUND", f"{what}: the other server could not be reached")
