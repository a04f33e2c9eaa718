"""Application services (bridges and bots): registrations, namespaces, the as_token requester,
and delivery of events to each service through a durable queue.

Registrations come from the files listed in `appservices:` (validated when the server is built;
a bad file stops start-up with a ConfigError naming it).

Which events a service receives (the spec's rules): those sent by, or whose membership target
is, a user in its `users` namespace or its sender; those in a room whose ID matches `rooms`, or
one of whose aliases matches `aliases`; and every event of a room where one of its local users
(or its sender) is joined. The event pipeline asks `outbox_hook` before persisting a timeline
event and writes one `appservice_outbox` row per interested service IN THE EVENT'S
TRANSACTION; after the commit the service's sender task wakes.

The sender mirrors the federation sender: one task per service, a batch of rows becomes a
transaction stored with its ID and exact body (in the same database transaction that removes
the rows), PUT to /_matrix/app/v1/transactions/{txnId} with the hs_token, and resent — same ID,
same bytes — with exponential backoff and jitter until the service answers 2xx. A restart
resumes from the stored transaction and rows. Nothing here runs on a client's request path
except the cached interest check, so a service that is down never slows clients down.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

import aiohttp
import orjson

from homeserver.config import AppServiceRegistration, load_appservice_registrations
from homeserver.errors import MatrixError, forbidden
from homeserver.handlers.auth import Requester, hash_token
from homeserver.handlers.federation.sender import (
    ERROR_RETRY_MS,
    backoff_delay_ms,
    new_txn_id,
    next_backoff_ceiling,
)
from homeserver.handlers.state import LRU
from homeserver.handlers.usernames import validate_localpart
from homeserver.handlers.visibility import format_events
from homeserver.storage import accounts as account_store
from homeserver.storage import appservice as store
from homeserver.types import is_valid_room_alias, is_valid_user_id, now_ms, server_of

if TYPE_CHECKING:
    from homeserver.handlers.accounts import LoginResult
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

# "Timestamp massaging": an application service may give ?ts= on /send and /state; the API
# layer sets this for the request and the event pipeline uses it as origin_server_ts.
MASSAGED_TS: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "nexa_appservice_ts", default=None)

INTEREST_TTL_S = 60.0  # cached "which services care about this room" answers
ALIAS_TTL_S = 30.0  # cached aliases of a room (directory changes show up within this)
MASQUERADE_TTL_S = 30.0
QUERY_MISS_TTL_S = 10.0  # a "no such user/alias" answer is trusted this long


class AppService:
    """One registration, compiled."""

    def __init__(self, reg: AppServiceRegistration, path: Path | None, server_name: str) -> None:
        self.reg = reg
        self.path = path
        self.id = reg.id
        self.url = reg.url
        self.hs_token = reg.hs_token
        self.token_hash = hash_token(reg.as_token)
        self.server_name = server_name
        self.sender = f"@{reg.sender_localpart}:{server_name}"
        self.rate_limited = reg.rate_limited
        ns = reg.namespaces
        self._users = [(re.compile(n.regex), n.exclusive) for n in ns.users]
        self._aliases = [(re.compile(n.regex), n.exclusive) for n in ns.aliases]
        self._rooms = [(re.compile(n.regex), n.exclusive) for n in ns.rooms]

    @staticmethod
    def _match(patterns: list[tuple[re.Pattern, bool]], value: str, exclusive: bool) -> bool:
        # Anchored at the start, like Synapse (registration files are written for it).
        return any((ex or not exclusive) and p.match(value) for p, ex in patterns)

    @property
    def has_alias_namespaces(self) -> bool:
        return bool(self._aliases)

    @property
    def has_user_namespaces(self) -> bool:
        return bool(self._users)

    def is_interested_in_user(self, user_id: str) -> bool:
        return user_id == self.sender or self._match(self._users, user_id, False)

    def is_exclusive_user(self, user_id: str) -> bool:
        return user_id == self.sender or self._match(self._users, user_id, True)

    def is_interested_in_alias(self, alias: str) -> bool:
        return self._match(self._aliases, alias, False)

    def is_exclusive_alias(self, alias: str) -> bool:
        return self._match(self._aliases, alias, True)

    def is_interested_in_room_id(self, room_id: str) -> bool:
        return self._match(self._rooms, room_id, False)

    def owns_local_user(self, user_id: str) -> bool:
        """May act as this user (given that it exists): its sender or a local user in its
        users namespace."""
        return is_valid_user_id(user_id) and server_of(user_id) == self.server_name and \
            self.is_interested_in_user(user_id)


@dataclass
class _Pending:
    txn_id: str
    body: bytes
    event_count: int


@dataclass
class _ServiceState:
    service: AppService
    task: asyncio.Task | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)
    dirty: bool = False
    kicked: bool = False
    retry_at_ms: int | None = None  # None until loaded from appservice_state
    backoff_ms: int = 0
    pending: _Pending | None = None
    phase: str = ""  # "waiting" / "sending": stop() may cancel there


class AppServiceHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        cfg = hs.config
        self.settings = cfg.appservice_sender
        self.services: dict[str, AppService] = {}
        self._by_token: dict[str, AppService] = {}
        for path, reg in load_appservice_registrations(list(cfg.appservices)):
            self.add_service(AppService(reg, path, hs.server_name))
        self._member_interest: LRU = LRU(20_000)  # room_id -> (expires, frozenset of ids)
        self._room_aliases: LRU = LRU(20_000)  # room_id -> (expires, list of aliases)
        self._masquerade_ok: LRU = LRU(50_000)  # (service id, user_id) -> expires
        self._query_misses: LRU = LRU(10_000)  # (service id, path) -> expires
        self._session: aiohttp.ClientSession | None = None
        self.sender = AppServiceSender(hs, self)
        hs.events.outbox_hooks.append(self.outbox_hook)

    def add_service(self, service: AppService) -> None:
        self.services[service.id] = service
        self._by_token = {s.token_hash: s for s in self.services.values()}

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Create each service's sender user if missing, then resume queued deliveries."""
        if not self.services:
            return
        token = self.hs.db.activate()
        try:
            for s in self.services.values():
                user = await account_store.get_user(s.sender)
                if user is None:
                    await account_store.create_user(s.sender, None, appservice_id=s.id,
                                                    displayname=s.reg.sender_localpart)
                elif user.appservice_id not in (None, s.id):
                    log.warning("appservice %s: its sender %s belongs to appservice %s", s.id,
                                s.sender, user.appservice_id)
        finally:
            self.hs.db.deactivate(token)
        self.sender.start()

    async def stop(self) -> None:
        await self.sender.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": "Nexa"}, connector=aiohttp.TCPConnector(limit=100))
        return self._session

    # --- authentication ----------------------------------------------------------------------

    def for_token(self, token: str) -> AppService | None:
        # Looked up by the token's hash, as ordinary access tokens are.
        return self._by_token.get(hash_token(token)) if self.services else None

    async def requester(self, service: AppService, user_id: str | None,
                        device_id: str | None) -> Requester:
        """The requester behind an as_token: the service's sender, or with ?user_id= a user it
        may act as (its namespace, registered, not deactivated); 403 M_FORBIDDEN otherwise."""
        effective = service.sender
        if user_id is not None and user_id != service.sender:
            if not service.owns_local_user(user_id):
                raise forbidden("Application service cannot masquerade as this user")
            await self._check_registered(service, user_id)
            effective = user_id
        if device_id is not None:
            if await account_store.get_device(effective, device_id) is None:
                # Synapse's answer for MSC3202 device masquerading.
                raise MatrixError(400, "M_EXCLUSIVE",
                                  "Application service trying to use a device that doesn't exist")
        return Requester(effective, device_id, service.token_hash, service.id, False)

    async def _check_registered(self, service: AppService, user_id: str) -> None:
        key = (service.id, user_id)
        expires = self._masquerade_ok.get_item(key)
        if expires is not None and expires > time.monotonic():
            return
        user = await account_store.get_user(user_id)
        # Registered by this service, or (created otherwise) inside its exclusive namespace.
        if user is None or user.deactivated or not (
                user.appservice_id == service.id or service.is_exclusive_user(user_id)):
            raise forbidden("Application service has not registered this user")
        self._masquerade_ok.put(key, time.monotonic() + MASQUERADE_TTL_S)

    def forget_user(self, user_id: str) -> None:
        for key in [k for k in self._masquerade_ok if k[1] == user_id]:
            self._masquerade_ok.pop(key, None)

    def service_of(self, requester: Requester) -> AppService | None:
        return self.services.get(requester.appservice_id) if requester.appservice_id else None

    def exempt_from_rate_limits(self, requester: Requester) -> bool:
        """The sender always; masqueraded users unless the service asked for rate limiting."""
        s = self.service_of(requester)
        if s is None or requester.token_hash != s.token_hash:
            return False
        return requester.user_id == s.sender or not s.rate_limited

    # --- exclusive namespaces ----------------------------------------------------------------

    def exclusive_owner_of_user(self, user_id: str) -> AppService | None:
        for s in self.services.values():
            if s.is_exclusive_user(user_id):
                return s
        return None

    def check_user_not_exclusive(self, user_id: str,
                                 service: AppService | None = None) -> None:
        """Ordinary registrations (service None) may not take a name an application service
        reserved; a service may not take one another service reserved."""
        for s in self.services.values():
            if s is not service and s.is_exclusive_user(user_id):
                raise MatrixError(400, "M_EXCLUSIVE",
                                  "This user ID is reserved by an application service")

    def check_alias_not_exclusive(self, alias: str, requester: Requester | None) -> None:
        mine = self.service_of(requester) if requester is not None else None
        for s in self.services.values():
            if s is not mine and s.is_exclusive_alias(alias):
                raise MatrixError(400, "M_EXCLUSIVE",
                                  "This room alias is reserved by an application service")

    # --- registration and login --------------------------------------------------------------

    async def register(self, service: AppService, username: str | None, *,
                       device_id: str | None, device_name: str | None,
                       inhibit_login: bool) -> LoginResult | str:
        """m.login.application_service: a user in the service's namespace, no UIA, no password,
        no rate limit, whatever registration.mode says."""
        if not username:
            raise MatrixError(400, "M_MISSING_PARAM", "username is required")
        local = username[1:].partition(":")[0] if username.startswith("@") else username
        if username.startswith("@") and server_of(username) != self.hs.server_name:
            raise MatrixError(400, "M_INVALID_USERNAME", "User ID is not on this server")
        err = validate_localpart(local, self.hs.server_name)
        if err:
            raise MatrixError(400, "M_INVALID_USERNAME", err)
        user_id = f"@{local}:{self.hs.server_name}"
        if not service.is_interested_in_user(user_id):
            raise MatrixError(400, "M_EXCLUSIVE",
                              "This user ID is not in the application service's namespace")
        self.check_user_not_exclusive(user_id, service)
        return await self.hs.accounts.register(
            local, None, device_id=device_id, device_name=device_name,
            inhibit_login=inhibit_login, appservice_id=service.id)

    async def login(self, service: AppService, name: str, device_id: str | None,
                    device_name: str | None) -> LoginResult:
        """m.login.application_service login: a session for a user the service may act as."""
        user_id = self.hs.accounts.resolve_user(name)
        if not service.owns_local_user(user_id):
            raise forbidden("Application service cannot log in as this user")
        await self._check_registered(service, user_id)
        if device_id is not None:
            self.hs.auth.forget_tokens(await account_store.delete_devices(user_id, [device_id]))
        return await self.hs.accounts._new_session(user_id, device_id, device_name, service.id)

    async def create_device(self, requester: Requester, device_id: str,
                            display_name: str | None) -> bool:
        """PUT /devices/{deviceId} by an application service for a device that does not exist
        yet creates it (True); otherwise (False) it is an ordinary rename."""
        if requester.appservice_id is None or not device_id or len(device_id) > 255:
            return False
        if await account_store.get_device(requester.user_id, device_id) is not None:
            return False
        await account_store.upsert_device(requester.user_id, device_id, display_name)
        return True

    # --- which services receive an event -----------------------------------------------------

    def _delivering(self) -> list[AppService]:
        return [s for s in self.services.values() if s.url]

    async def outbox_hook(self, pdu: dict, event_id: str
                          ) -> tuple[list[tuple[str, list[Any]]], Callable[[], None] | None]:
        """Called by the event pipeline before persisting a timeline event: queue rows to write
        in the event's transaction, and a wake-up to run after the commit."""
        if not self.services:
            return [], None
        room_id = pdu.get("room_id")
        etype = pdu.get("type")
        if etype in ("m.room.member", "m.room.canonical_alias"):
            self._invalidate_room(room_id)
        try:
            interested = await self.interested_services(pdu)
        except Exception:  # never fail the event itself; the service misses this one event
            log.exception("appservice: cannot work out who receives %s", event_id)
            interested = []
        ts = now_ms()
        statements = [(store.INSERT_OUTBOX, [s.id, event_id, ts]) for s in interested]
        ids = [s.id for s in interested]

        def after_commit() -> None:
            if etype in ("m.room.member", "m.room.canonical_alias"):
                self._invalidate_room(room_id)
            if ids:
                self.sender.wake(ids)

        return statements, after_commit

    def _invalidate_room(self, room_id: Any) -> None:
        self._member_interest.pop(room_id, None)
        self._room_aliases.pop(room_id, None)

    async def interested_services(self, pdu: dict) -> list[AppService]:
        services = self._delivering()
        if not services:
            return []
        room_id = pdu.get("room_id")
        sender = pdu.get("sender")
        target = pdu.get("state_key") if pdu.get("type") == "m.room.member" else None
        if not isinstance(room_id, str) or not isinstance(sender, str):
            return []
        out: list[AppService] = []
        rest: list[AppService] = []
        for s in services:
            if s.is_interested_in_user(sender) or (
                    isinstance(target, str) and s.is_interested_in_user(target)) \
                    or s.is_interested_in_room_id(room_id):
                out.append(s)
            else:
                rest.append(s)
        if rest and any(s.has_alias_namespaces for s in rest):
            aliases = await self._aliases_of(room_id)
            still = []
            for s in rest:
                (out if any(s.is_interested_in_alias(a) for a in aliases) else still).append(s)
            rest = still
        if rest:
            by_members = await self._interest_by_members(room_id)
            out.extend(s for s in rest if s.id in by_members)
        return out

    async def _aliases_of(self, room_id: str) -> list[str]:
        cached = self._room_aliases.get_item(room_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        aliases = set(await store.room_aliases(room_id))
        ev = await self.hs.state.current_state_event(room_id, "m.room.canonical_alias")
        content = ev.pdu.get("content") if ev is not None else None
        if isinstance(content, dict):
            if isinstance(content.get("alias"), str):
                aliases.add(content["alias"])
            alt = content.get("alt_aliases")
            if isinstance(alt, list):
                aliases.update(a for a in alt if isinstance(a, str))
        out = sorted(aliases)
        self._room_aliases.put(room_id, (time.monotonic() + ALIAS_TTL_S, out))
        return out

    async def _interest_by_members(self, room_id: str) -> frozenset[str]:
        """Services with a local user (or their sender) joined to the room."""
        cached = self._member_interest.get_item(room_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        ours = self.hs.server_name
        members = [m for m in await self.hs.state.joined_members(room_id)
                   if server_of(m) == ours]
        ids = frozenset(s.id for s in self._delivering()
                        if any(s.is_interested_in_user(m) for m in members))
        self._member_interest.put(room_id, (time.monotonic() + INTEREST_TTL_S, ids))
        return ids

    # --- queries to services -----------------------------------------------------------------

    async def _query(self, service: AppService, path: str) -> bool:
        """Lookups of unknown names cannot make us hammer a service: one that is down (backing
        off) is not asked, and a "no" is remembered for a few seconds."""
        if not service.url or self.sender.is_down(service.id):
            return False
        key = (service.id, path)
        missed = self._query_misses.get_item(key)
        if missed is not None and missed > time.monotonic():
            return False
        found = await self._ask(service, path)
        if not found:
            self._query_misses.put(key, time.monotonic() + QUERY_MISS_TTL_S)
        return found

    async def _ask(self, service: AppService, path: str) -> bool:
        url = f"{service.url}/_matrix/app/v1/{path}"
        timeout = aiohttp.ClientTimeout(total=self.settings.query_timeout_s)
        try:
            async with self.http().get(url, timeout=timeout, headers={
                    "Authorization": f"Bearer {service.hs_token}"}) as r:
                await r.read()
                return 200 <= r.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            log.info("appservice %s: query %s failed: %s", service.id, path, e)
            return False

    async def query_user(self, user_id: str) -> bool:
        """A local user that does not exist but lies in a service's namespace: ask the service
        (it creates the user before answering 200). True when the user exists afterwards."""
        if not is_valid_user_id(user_id) or server_of(user_id) != self.hs.server_name:
            return False
        candidates = sorted((s for s in self._delivering()
                             if s.is_interested_in_user(user_id) and user_id != s.sender),
                            key=lambda s: not s.is_exclusive_user(user_id))
        for s in candidates:
            if await self._query(s, f"users/{quote(user_id, safe='')}"):
                return await account_store.user_exists(user_id)
        return False

    async def query_alias(self, alias: str) -> bool:
        """A local alias that does not exist but lies in a service's namespace: ask it (it
        creates the room and alias before answering 200)."""
        if not is_valid_room_alias(alias) or server_of(alias) != self.hs.server_name:
            return False
        candidates = sorted((s for s in self._delivering() if s.is_interested_in_alias(alias)),
                            key=lambda s: not s.is_exclusive_alias(alias))
        for s in candidates:
            if await self._query(s, f"rooms/{quote(alias, safe='')}"):
                return True
        return False

    async def ping(self, service: AppService, transaction_id: str | None) -> int:
        """POST /_matrix/app/v1/ping on the service; the round trip in ms, or the spec's
        errors (M_URL_NOT_SET, M_BAD_STATUS, M_CONNECTION_FAILED, M_CONNECTION_TIMEOUT)."""
        if not service.url:
            raise MatrixError(400, "M_URL_NOT_SET",
                              "Application service doesn't have a URL configured")
        body: dict[str, Any] = {}
        if transaction_id is not None:
            body["transaction_id"] = transaction_id
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self.settings.query_timeout_s * 2)
        try:
            async with self.http().post(f"{service.url}/_matrix/app/v1/ping", data=orjson.dumps(body),
                                        timeout=timeout, headers={
                                            "Authorization": f"Bearer {service.hs_token}",
                                            "Content-Type": "application/json"}) as r:
                text = (await r.read())[:4096].decode("utf-8", "replace")
                status = r.status
        except asyncio.TimeoutError:
            raise MatrixError(504, "M_CONNECTION_TIMEOUT",
                              "Connection to application service timed out") from None
        except (aiohttp.ClientError, ValueError) as e:
            raise MatrixError(502, "M_CONNECTION_FAILED",
                              f"Connection to application service failed: {e}") from None
        if not 200 <= status < 300:
            err = MatrixError(502, "M_BAD_STATUS", f"Ping returned status {status}")
            err.extra = {"status": status, "body": text}  # ("status" clashes with the argument)
            raise err
        self.sender.retry_now(service.id)
        return int((time.monotonic() - started) * 1000)


# --- delivery ----------------------------------------------------------------------------------

class AppServiceSender:
    """One task per service with work; see the module docstring."""

    def __init__(self, hs: HomeServer, handler: AppServiceHandler) -> None:
        self.hs = hs
        self.handler = handler
        st = hs.config.appservice_sender
        self.retry_base_ms = st.retry_base_ms
        self.retry_max_ms = st.retry_max_ms
        self.timeout_s = st.request_timeout_s
        self.max_events = st.max_events_per_txn
        self._states: dict[str, _ServiceState] = {}
        self._bootstrap: asyncio.Task | None = None
        self._running = False
        # cb(service_id, txn_id, what): what is "sent", "retry" or "waiting". For tests/metrics.
        self.listeners: list[Callable[[str, str, str], None]] = []

    def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._bootstrap = self._spawn(self._resume_all(), "appservice-sender-resume")

    async def stop(self, timeout: float = 5.0) -> None:
        """Unacknowledged work stays stored; an in-flight transaction is resent (same ID)
        after the next start."""
        self._running = False
        tasks = [t for t in [self._bootstrap, *(s.task for s in self._states.values())]
                 if t is not None and not t.done()]
        for s in self._states.values():
            if s.task is not None and not s.task.done() and s.phase in ("waiting", "sending"):
                s.task.cancel()
            s.event.set()
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=timeout)
            for t in late:
                t.cancel()
            for t in tasks:
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass
        self._bootstrap = None
        for s in self._states.values():
            s.task = None
            s.phase = ""
            s.pending = None

    async def _with_db(self, coro):
        token = self.hs.db.activate()
        try:
            return await coro
        finally:
            self.hs.db.deactivate(token)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        # A fresh context: never inherit a request's context variables.
        return asyncio.get_running_loop().create_task(
            self._with_db(coro), name=name, context=contextvars.Context())

    async def _resume_all(self) -> None:
        try:
            ids = await store.services_with_work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("appservice sender: cannot list queued services")
            return
        unknown = [i for i in ids if i not in self.handler.services]
        if unknown:
            log.warning("appservice sender: queued events for unconfigured service(s) %s kept",
                        ", ".join(unknown))
        self.wake([i for i in ids if i in self.handler.services])

    # --- wake-ups ----------------------------------------------------------------------------

    def wake(self, service_ids: list[str]) -> None:
        for sid in service_ids:
            st = self._state(sid)
            if st is None:
                continue
            st.dirty = True
            st.event.set()
            self._ensure_task(st)

    def retry_now(self, service_id: str) -> None:
        """The service is reachable (a ping succeeded): forget its backoff."""
        st = self._state(service_id)
        if st is None:
            return
        st.retry_at_ms = 0
        st.backoff_ms = 0
        st.kicked = True
        st.event.set()
        self._ensure_task(st)

    def is_down(self, service_id: str) -> bool:
        st = self._states.get(service_id)
        return st is not None and (st.retry_at_ms or 0) > now_ms()

    def status(self, service_id: str) -> dict[str, Any]:
        st = self._states.get(service_id)
        if st is None:
            return {"known": False}
        return {"known": True, "running": st.task is not None and not st.task.done(),
                "phase": st.phase, "retry_at_ts": st.retry_at_ms, "backoff_ms": st.backoff_ms,
                "pending_txn_id": st.pending.txn_id if st.pending else None}

    def _state(self, service_id: str) -> _ServiceState | None:
        st = self._states.get(service_id)
        if st is None:
            service = self.handler.services.get(service_id)
            if service is None or not service.url:
                return None
            st = self._states[service_id] = _ServiceState(service)
        return st

    def _ensure_task(self, st: _ServiceState) -> None:
        if not self._running:
            return  # the rows stay queued; start() resumes them
        if st.task is not None and not st.task.done():
            return
        st.task = self._spawn(self._run(st), f"appservice-sender:{st.service.id}")

    # --- the per-service task ----------------------------------------------------------------

    async def _run(self, st: _ServiceState) -> None:
        me = asyncio.current_task()
        sid = st.service.id
        try:
            while self._running:
                try:
                    if st.retry_at_ms is None:
                        await self._load_backoff(st)
                    await self._wait_out_backoff(st)
                    if not self._running:
                        return
                    st.kicked = False
                    if st.pending is None:
                        st.dirty = False
                        st.pending = await self._next_txn(st)
                        if st.pending is None:
                            if st.dirty:
                                continue
                            return  # nothing queued; wake() starts a new task
                    if not self._running:
                        return
                    await self._send(st, st.pending)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("appservice sender: unexpected error for %s", sid)
                    st.retry_at_ms = now_ms() + ERROR_RETRY_MS
        finally:
            st.phase = ""
            if st.task is me:
                st.task = None

    async def _load_backoff(self, st: _ServiceState) -> None:
        row = await store.get_state(st.service.id)
        if st.retry_at_ms is not None:  # retry_now() came in meanwhile
            return
        st.retry_at_ms = int(row["retry_at_ts"] or 0) if row else 0
        st.backoff_ms = int(row["backoff_ms"] or 0) if row else 0

    async def _wait_out_backoff(self, st: _ServiceState) -> None:
        while not st.kicked and self._running:
            remaining = (st.retry_at_ms or 0) - now_ms()
            if remaining <= 0:
                return
            st.event.clear()
            st.phase = "waiting"
            self._notify(st.service.id, st.pending.txn_id if st.pending else "", "waiting")
            try:
                await asyncio.wait_for(st.event.wait(), remaining / 1000)
            except asyncio.TimeoutError:
                pass
            finally:
                st.phase = ""

    async def _next_txn(self, st: _ServiceState) -> _Pending | None:
        """The stored unacknowledged transaction, or a new one made from queued rows."""
        sid = st.service.id
        stored = await store.pending_txn(sid)
        if stored is not None:
            return _Pending(stored["txn_id"], stored["body_json"].encode(),
                            int(stored["event_count"]))
        while True:
            rows = await store.unsent_rows(sid, self.max_events)
            if not rows:
                return None
            events = await self.hs.state.get_events(r["event_id"] for r in rows)
            found = [events[r["event_id"]] for r in rows if r["event_id"] in events]
            row_ids = [r["id"] for r in rows]
            if not found:
                log.info("appservice sender: %d queued event(s) for %s no longer exist",
                         len(rows), sid)
                await store.delete_rows(sid, row_ids)
                continue
            body = {"events": await format_events(self.hs, found)}
            txn_id = new_txn_id()
            raw = orjson.dumps(body)
            await store.create_txn(sid, txn_id, raw.decode(), len(found), row_ids)
            return _Pending(txn_id, raw, len(found))

    async def _send(self, st: _ServiceState, txn: _Pending) -> None:
        s = st.service
        url = f"{s.url}/_matrix/app/v1/transactions/{quote(txn.txn_id, safe='')}"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        st.phase = "sending"
        try:
            async with self.handler.http().put(url, data=txn.body, timeout=timeout, headers={
                    "Authorization": f"Bearer {s.hs_token}",
                    "Content-Type": "application/json"}) as r:
                await r.read()
                status = r.status
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, OSError) as e:
            error = str(e) or type(e).__name__
        finally:
            st.phase = ""
        if error is None:
            await store.acknowledge(s.id, txn.txn_id, now_ms())
            st.pending = None
            st.backoff_ms = 0
            st.retry_at_ms = 0
            self._notify(s.id, txn.txn_id, "sent")
            return
        ceiling = next_backoff_ceiling(st.backoff_ms, self.retry_base_ms, self.retry_max_ms)
        delay = backoff_delay_ms(ceiling)
        st.backoff_ms = ceiling
        st.retry_at_ms = now_ms() + delay
        log.info("appservice sender: transaction %s (%d events) to %s failed (%s); retrying in "
                 "%d ms", txn.txn_id, txn.event_count, s.id, error, delay)
        await store.set_backoff(s.id, st.retry_at_ms, st.backoff_ms)
        self._notify(s.id, txn.txn_id, "retry")

    def _notify(self, service_id: str, txn_id: str, what: str) -> None:
        for cb in list(self.listeners):
            try:
                cb(service_id, txn_id, what)
            except Exception:
                log.exception("appservice sender listener failed")
