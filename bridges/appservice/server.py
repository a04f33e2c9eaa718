"""The application-service side of the AS API: an aiohttp server the homeserver pushes to.

Every request must carry the registration's hs_token (`Authorization: Bearer`, or the legacy
`access_token` query parameter): none is 401 M_UNAUTHORIZED, a wrong one 403 M_FORBIDDEN, and
nothing is processed. Each event of a transaction goes to every handler in order; once all succeeded the
transaction ID is stored and 200 goes back, so a retried transaction (after a timeout or a
restart) is acknowledged and skipped. A handler that fails makes the answer 500 and the
homeserver retries the same transaction later: handlers see an event AT LEAST once, so they
make their effects idempotent (queue rows keyed by event ID, sends with a transaction ID
derived from the event ID — the homeserver drops a repeated one). A transaction that keeps
failing (`max_attempts`) is logged and acknowledged, so one poisonous event cannot hold up
everything behind it forever.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from bridges.appservice.store import Store

log = logging.getLogger(__name__)

EventHandler = Callable[[dict[str, Any]], Awaitable[None]]
QueryHandler = Callable[[str], Awaitable[bool]]

MAX_TXN_BYTES = 32 * 1024 * 1024


def json_error(status: int, errcode: str, error: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": error}, status=status)


THIRDPARTY_PREFIX = "/_matrix/app/v1/thirdparty"
Handler = Callable[[web.Request], Awaitable[web.Response]]


class Refused(Exception):
    """Raised by a route handler behind `add_thirdparty_routes`: answered as a Matrix error."""

    def __init__(self, status: int, errcode: str, error: str) -> None:
        super().__init__(error)
        self.status, self.errcode, self.error = status, errcode, error


def query_field(request: web.Request, name: str, missing: str, *,
                allow_empty: bool = True) -> str:
    """A query parameter, or Refused 400 M_MISSING_PARAM (`missing` says what)."""
    value = request.query.get(name)
    if value is None or (not value and not allow_empty):
        raise Refused(400, "M_MISSING_PARAM", missing)
    return value


class AppServiceServer:
    def __init__(self, hs_token: str, store: Store, *, host: str = "127.0.0.1",
                 port: int = 0, max_attempts: int = 10) -> None:
        self.max_attempts = max_attempts
        self._failures: dict[str, int] = {}
        self.hs_token = hs_token
        self.store = store
        self.host = host
        self.port = port
        self.app = web.Application(client_max_size=MAX_TXN_BYTES)
        self.event_handlers: list[EventHandler] = []
        self.user_query: QueryHandler | None = None
        self.alias_query: QueryHandler | None = None
        self._runner: web.AppRunner | None = None
        self._txn_lock = asyncio.Lock()
        for prefix in ("/_matrix/app/v1", ""):  # "" : the legacy unprefixed paths
            self.app.router.add_put(prefix + "/transactions/{txn_id}", self._transaction)
            self.app.router.add_get(prefix + "/users/{user_id}", self._query_user)
            self.app.router.add_get(prefix + "/rooms/{alias}", self._query_alias)
        self.app.router.add_post("/_matrix/app/v1/ping", self._ping)
        self.transactions_processed = 0

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("application service listening on http://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def add_thirdparty_routes(self, protocol: str, *, protocol_info: Handler, location: Handler,
                              user: Handler, location_by_alias: Handler, user_by_id: Handler,
                              check: Callable[[web.Request], web.Response | None] | None = None
                              ) -> None:
        """The third-party lookup routes of one protocol. Each request needs the hs_token; an
        unknown protocol is 404; then `check` (e.g. the network) may refuse it."""
        def guarded(handler: Handler) -> Handler:
            async def wrapper(request: web.Request) -> web.Response:
                denied = self.check_token(request)
                if denied is not None:
                    return denied
                asked = request.match_info.get("protocol")
                if asked is not None and asked != protocol:
                    return json_error(404, "M_NOT_FOUND", f"Unknown protocol {asked!r}")
                denied = check(request) if check is not None else None
                if denied is not None:
                    return denied
                try:
                    return await handler(request)
                except Refused as e:
                    return json_error(e.status, e.errcode, e.error)
            return wrapper

        router = self.app.router
        router.add_get(THIRDPARTY_PREFIX + "/protocol/{protocol}", guarded(protocol_info))
        router.add_get(THIRDPARTY_PREFIX + "/location/{protocol}", guarded(location))
        router.add_get(THIRDPARTY_PREFIX + "/user/{protocol}", guarded(user))
        router.add_get(THIRDPARTY_PREFIX + "/location", guarded(location_by_alias))
        router.add_get(THIRDPARTY_PREFIX + "/user", guarded(user_by_id))

    # --- authentication ----------------------------------------------------------------------

    def check_token(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        token = None
        if header.lower().startswith("bearer "):
            token = header[7:].strip()
        elif "access_token" in request.query:
            token = request.query["access_token"]
        if not token:
            return json_error(401, "M_UNAUTHORIZED", "Missing hs_token")
        if not hmac.compare_digest(token.encode(), self.hs_token.encode()):
            return json_error(403, "M_FORBIDDEN", "Bad hs_token")
        return None

    # --- routes ------------------------------------------------------------------------------

    async def _transaction(self, request: web.Request) -> web.Response:
        denied = self.check_token(request)
        if denied is not None:
            return denied
        txn_id = request.match_info["txn_id"]
        try:
            body = await request.json()
        except ValueError:
            return json_error(400, "M_NOT_JSON", "Transaction body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("events", []), list):
            return json_error(400, "M_BAD_JSON",
                              "Transaction must be an object with an events list")
        events = [e for e in body.get("events", []) if isinstance(e, dict)]
        async with self._txn_lock:  # a retry may overlap a slow first attempt
            if await self.store.txn_seen(txn_id):
                return web.json_response({})
            try:
                for ev in events:
                    for handler in self.event_handlers:
                        await handler(ev)
                async with self.store.transaction() as db:
                    await self.store.mark_txn(db, txn_id)
            except Exception:
                failures = self._failures[txn_id] = self._failures.get(txn_id, 0) + 1
                if failures < self.max_attempts:
                    log.exception("transaction %s failed (attempt %d); the homeserver will "
                                  "retry it", txn_id, failures)
                    return json_error(500, "M_UNKNOWN", "Processing failed; retry later")
                log.exception("transaction %s failed %d times; giving up on its events",
                              txn_id, failures)
                async with self.store.transaction() as db:
                    await self.store.mark_txn(db, txn_id)
            self._failures.pop(txn_id, None)
        self.transactions_processed += 1
        return web.json_response({})

    async def _query_user(self, request: web.Request) -> web.Response:
        denied = self.check_token(request)
        if denied is not None:
            return denied
        if self.user_query is not None and await self.user_query(request.match_info["user_id"]):
            return web.json_response({})
        return json_error(404, "M_NOT_FOUND", "No such user")

    async def _query_alias(self, request: web.Request) -> web.Response:
        denied = self.check_token(request)
        if denied is not None:
            return denied
        if self.alias_query is not None and await self.alias_query(request.match_info["alias"]):
            return web.json_response({})
        return json_error(404, "M_NOT_FOUND", "No such room alias")

    async def _ping(self, request: web.Request) -> web.Response:
        denied = self.check_token(request)
        if denied is not None:
            return denied
        return web.json_response({})
