"""Application services (bridges and bots): the as_token requester and masquerading, exclusive
namespaces, registration and login, queueing events for the services that receive them, and
queries and pings to services.

Registrations come from the files listed in `appservices:` (validated when the server is built;
a bad file stops start-up with a ConfigError naming it).

The event pipeline asks `outbox_hook` before persisting a timeline event; the services that
receive it (interest.py) get one `appservice_outbox` row each IN THE EVENT'S TRANSACTION, and
after the commit their sender tasks wake (sender.py). Ephemeral data takes its own way into the
same queue (ephemeral.py); third-party lookups are thirdparty.py. Nothing here runs on a
client's request path except the cached interest check, so a service that is down never slows
clients down.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import quote

import aiohttp
import orjson

from homeserver.config import load_appservice_registrations
from homeserver.errors import MatrixError, forbidden
from homeserver.handlers.appservice.ephemeral import EphemeralQueue
from homeserver.handlers.appservice.interest import INVALIDATING_TYPES, Interest
from homeserver.handlers.appservice.registration import AppService
from homeserver.handlers.appservice.sender import AppServiceSender
from homeserver.handlers.appservice.thirdparty import ThirdParty
from homeserver.handlers.auth import Requester, hash_token
from homeserver.handlers.http_client import LazySession
from homeserver.handlers.lru import LRU
from homeserver.handlers.usernames import validate_localpart
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

MASQUERADE_TTL_S = 30.0
QUERY_MISS_TTL_S = 10.0  # a "no such user/alias" answer is trusted this long


class AppServiceHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        cfg = hs.config
        self.settings = cfg.appservice_sender
        self.services: dict[str, AppService] = {}
        self._by_token: dict[str, AppService] = {}
        for path, reg in load_appservice_registrations(list(cfg.appservices)):
            self.add_service(AppService(reg, path, hs.server_name))
        self.interest = Interest(hs, self.services)
        self._masquerade_ok: LRU = LRU(50_000)  # (service id, user_id) -> expires
        self._query_misses: LRU = LRU(10_000)  # (service id, path) -> expires
        self._http = LazySession()
        self.sender = AppServiceSender(hs, self)
        self.ephemeral = EphemeralQueue(hs, self)
        self.thirdparty = ThirdParty(self)
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
        await self.ephemeral.stop()
        await self.sender.stop()
        await self._http.close()

    def http(self) -> aiohttp.ClientSession:
        return self._http.get()

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
        return self.interest.delivering()

    async def outbox_hook(self, pdu: dict, event_id: str
                          ) -> tuple[list[tuple[str, list[Any]]], Callable[[], None] | None]:
        """Called by the event pipeline before persisting a timeline event: queue rows to write
        in the event's transaction, and a wake-up to run after the commit."""
        if not self.services:
            return [], None
        room_id = pdu.get("room_id")
        etype = pdu.get("type")
        if etype in INVALIDATING_TYPES:
            self.interest.invalidate_room(room_id)
        try:
            interested = await self.interested_services(pdu)
        except Exception:  # never fail the event itself; the service misses this one event
            log.exception("appservice: cannot work out who receives %s", event_id)
            interested = []
        ts = now_ms()
        statements = [(store.INSERT_OUTBOX, [s.id, event_id, ts]) for s in interested]
        ids = [s.id for s in interested]

        def after_commit() -> None:
            if etype in INVALIDATING_TYPES:
                self.interest.invalidate_room(room_id)
            if ids:
                self.sender.wake(ids)

        return statements, after_commit

    async def interested_services(self, pdu: dict) -> list[AppService]:
        return await self.interest.for_event(pdu)

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
