"""Pushers (client-server API "Push notifications"): where a user's notifications are pushed,
and the list of those notifications (GET /notifications).

A pusher is a push gateway URL and a device's pushkey, made by POST /pushers/set with the
device's access token and deleted with that device. The notifications themselves are rows
written with each event (handlers/notifications.py); the push sender (push_sender.py) pushes
each pusher the rows after its position. Only "http" pushers exist here (no e-mail).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from homeserver.errors import invalid_param, missing_param
from homeserver.handlers.auth import Requester
from homeserver.handlers.http_client import LazySession, PublicOnlyResolver, is_public_address
from homeserver.handlers.push_sender import PushSender
from homeserver.handlers.visibility import format_events
from homeserver.storage import notifications as notes
from homeserver.storage import pushers as store
from homeserver.types import now_ms

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_APP_ID_CHARS = 64  # the spec's limits
MAX_PUSHKEY_BYTES = 512
MAX_TEXT_CHARS = 255  # display names, profile_tag, lang: their columns' width
MAX_DATA_BYTES = 4096  # data is sent with every notification
_REQUIRED = ("kind", "app_id", "pushkey")
_REQUIRED_TO_SET = ("app_display_name", "device_display_name", "lang", "data")

DEFAULT_NOTIFICATIONS_LIMIT = 50
MAX_NOTIFICATIONS_LIMIT = 100
PRUNE_EVERY_S = 3600
PRUNE_BATCH = 1000


# --- validation (pure) ---------------------------------------------------------------------

def _text(body: dict[str, Any], name: str, *, max_chars: int = MAX_TEXT_CHARS,
          max_bytes: int | None = None, empty_ok: bool = True) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise invalid_param(f"{name} must be a string")
    if "\x00" in value:
        raise invalid_param(f"{name} must not contain NUL characters")
    if not value and not empty_ok:
        raise invalid_param(f"{name} must not be empty")
    if len(value) > max_chars:
        raise invalid_param(f"{name} is longer than {max_chars} characters")
    if max_bytes is not None and len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise invalid_param(f"{name} is longer than {max_bytes} bytes")
    return value


def _check_url(data: dict[str, Any], allow_private: bool = True) -> None:
    url = data.get("url")
    if url is None:
        raise missing_param("data.url is required for an http pusher")
    if not isinstance(url, str):
        raise invalid_param("data.url must be a string")
    try:
        parts = urlsplit(url)
        parts.port  # a malformed port raises here
    except ValueError:
        raise invalid_param("data.url is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid_param("data.url must be an absolute http or https URL")
    if parts.path != NOTIFY_PATH:
        raise invalid_param(f"data.url must have the path {NOTIFY_PATH}")
    if not allow_private and not is_public_address(parts.hostname):
        raise invalid_param("data.url must be a public address (push.allow_private_gateways "
                            "is off)")


def parse_pusher(body: dict[str, Any], allow_private: bool = True) -> dict[str, Any]:
    """The body of POST /pushers/set, checked: a pusher to store, or (kind None) the key of
    one to delete. Raises before anything is changed."""
    missing = [k for k in _REQUIRED if k not in body or (k != "kind" and body[k] is None)]
    if body.get("kind") is not None:
        missing += [k for k in _REQUIRED_TO_SET if body.get(k) is None]
    if missing:
        raise missing_param("Missing parameters: " + ", ".join(missing))
    out: dict[str, Any] = {
        "app_id": _text(body, "app_id", max_chars=MAX_APP_ID_CHARS, empty_ok=False),
        "pushkey": _text(body, "pushkey", max_chars=MAX_PUSHKEY_BYTES,
                         max_bytes=MAX_PUSHKEY_BYTES, empty_ok=False),
        "kind": body["kind"],
    }
    if out["kind"] is None:
        return out
    if not isinstance(out["kind"], str):
        raise invalid_param("kind must be a string or null")
    if out["kind"] != "http":
        raise invalid_param(f"Unsupported pusher kind {out['kind'][:40]!r}: only http")
    for name in ("app_display_name", "device_display_name", "lang"):
        out[name] = _text(body, name)
    out["profile_tag"] = _text(body, "profile_tag") if body.get("profile_tag") is not None \
        else None
    data = body["data"]
    if not isinstance(data, dict):
        raise invalid_param("data must be an object")
    _check_url(data, allow_private)
    if "format" in data and not isinstance(data["format"], str):
        raise invalid_param("data.format must be a string")
    out["data"] = orjson.dumps(data).decode()
    if len(out["data"]) > MAX_DATA_BYTES:
        raise invalid_param(f"data is larger than {MAX_DATA_BYTES} bytes")
    append = body.get("append", False)
    if not isinstance(append, bool):
        raise invalid_param("append must be true or false")
    out["append"] = append
    return out


def client_format(row: dict[str, Any]) -> dict[str, Any]:
    """A stored pusher as GET /pushers shows it."""
    out = {k: row[k] for k in ("pushkey", "kind", "app_id", "app_display_name",
                               "device_display_name", "lang")}
    out["data"] = orjson.loads(row["data"])
    if row["profile_tag"] is not None:
        out["profile_tag"] = row["profile_tag"]
    return out


# --- the handler ---------------------------------------------------------------------------

class PusherHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.sender = PushSender(hs, self)
        # Every pusher in memory, so that the wake-up after each event's commit needs no query:
        # user_id -> pusher ids, and pusher id -> user_id.
        self._by_user: dict[str, set[int]] = {}
        self._owner: dict[int, str] = {}
        # Changes are rare: one at a time keeps the maps in the order of the database writes.
        self._lock = asyncio.Lock()
        self._http = LazySession(
            None if hs.config.push.allow_private_gateways else PublicOnlyResolver)
        self._pruner: asyncio.Task | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        token = self.hs.db.activate()
        try:
            for row in await store.all_pushers():
                self._remember(row["id"], row["user_id"])
        finally:
            self.hs.db.deactivate(token)
        self.sender.start()
        self._stopping.clear()
        # A fresh context: start() may run in one that is not this server's.
        self._pruner = asyncio.get_running_loop().create_task(
            self._prune_loop(), name="notifications-prune", context=contextvars.Context())

    async def stop(self) -> None:
        if self._pruner is not None:
            # Not cancelled in the middle of a query: it ends at its next wait.
            self._stopping.set()
            try:
                await asyncio.wait_for(self._pruner, 5)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                pass
            self._pruner = None
        await self.sender.stop()
        await self._http.close()

    def http(self) -> aiohttp.ClientSession:
        return self._http.get()

    # --- what the sender asks ------------------------------------------------------------------

    def exists(self, pusher_id: int) -> bool:
        return pusher_id in self._owner

    def on_notified(self, user_ids: list[str]) -> None:
        """After an event's commit: the users it notified have something to push."""
        keys = [str(p) for u in user_ids for p in self._by_user.get(u, ())]
        if keys:
            self.sender.wake(keys)

    async def rejected(self, pusher_id: int) -> None:
        """The gateway does not know the pushkey any more (uninstalled app): drop the pusher."""
        async with self._lock:
            self._forget(await store.delete_by_id(pusher_id))

    # --- the client API ------------------------------------------------------------------------

    async def get_pushers(self, user_id: str) -> list[dict[str, Any]]:
        return [client_format(r) for r in await store.pushers_of(user_id)]

    async def set_pusher(self, requester: Requester, body: dict[str, Any]) -> None:
        p = parse_pusher(body, self.hs.config.push.allow_private_gateways)
        user_id = requester.user_id
        async with self._lock:
            if p["kind"] is None:
                self._forget(await store.delete_pusher(user_id, p["app_id"], p["pushkey"]))
                return
            p.update(user_id=user_id, device_id=requester.device_id)
            # A new pusher starts from now: nothing notified before it was set is pushed.
            pid, replaced = await store.upsert_pusher(
                p, self.hs.ids.events.current, now_ms(), replace_others=not p["append"])
            self._forget(replaced)
            self._remember(pid, user_id)
        self.sender.retry_now(str(pid))  # it may have been fixed: no waiting out a backoff
        self.sender.wake([str(pid)])

    async def devices_removed(self, user_id: str, device_ids: list[str] | None = None,
                              keep_device: str | None = None) -> None:
        """Devices were deleted or logged out: their pushers go too. `device_ids` None: every
        device but `keep_device` (None: all of them)."""
        async with self._lock:
            if device_ids is not None:
                removed = await store.delete_for_devices(user_id, device_ids)
            else:
                removed = await store.delete_except_device(user_id, keep_device)
            self._forget(removed)

    async def notifications(self, user_id: str, from_token: str | None, limit: int,
                            only: str | None) -> dict[str, Any]:
        before = None
        if from_token is not None:
            if not (from_token.isascii() and from_token.isdigit()) or len(from_token) > 18:
                raise invalid_param("from is not a token given by this endpoint")
            before = int(from_token)
        limit = min(limit, MAX_NOTIFICATIONS_LIMIT)
        rows = await notes.notifications_before(user_id, before, limit + 1, only == "highlight")
        more, rows = len(rows) > limit, rows[:limit]
        events = await self.hs.state.get_events(r["event_id"] for r in rows)
        read = await notes.read_up_to(user_id, [r["room_id"] for r in rows])
        found = [r for r in rows if r["event_id"] in events]
        formatted = await format_events(self.hs, [events[r["event_id"]] for r in found],
                                        user_id, include_room_id=False)
        out: dict[str, Any] = {"notifications": [{
            "actions": orjson.loads(r["actions"]),
            "event": ev,
            "read": read.get(r["room_id"], -1) >= r["stream_ordering"],
            "room_id": r["room_id"],
            "ts": r["ts"],
        } for r, ev in zip(found, formatted)]}
        if more:
            out["next_token"] = str(rows[-1]["stream_ordering"])
        return out

    # --- bookkeeping ---------------------------------------------------------------------------

    def _remember(self, pusher_id: int, user_id: str) -> None:
        self._by_user.setdefault(user_id, set()).add(pusher_id)
        self._owner[pusher_id] = user_id

    def _forget(self, pusher_ids: list[int]) -> None:
        for pid in pusher_ids:
            user_id = self._owner.pop(pid, None)
            self.sender.forget(str(pid))
            ids = self._by_user.get(user_id) if user_id is not None else None
            if ids is not None:
                ids.discard(pid)
                if not ids:
                    del self._by_user[user_id]

    async def _prune_loop(self) -> None:
        self.hs.db.activate()  # in this task's own context
        keep_ms = self.hs.config.push.keep_notifications_days * 86_400_000
        while not self._stopping.is_set():
            try:
                while await notes.prune_notifications(now_ms() - keep_ms, PRUNE_BATCH) \
                        == PRUNE_BATCH and not self._stopping.is_set():
                    pass
            except Exception:
                log.exception("pruning old notifications failed")
            try:
                await asyncio.wait_for(self._stopping.wait(), PRUNE_EVERY_S)
            except asyncio.TimeoutError:
                pass
