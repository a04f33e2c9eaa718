"""Sync filters: validate filter JSON into typed objects, and store/fetch them per user.

`parse_filter` is pure (no I/O) so /sync can use it for inline filters too. Bad filters are
400 M_BAD_JSON on upload; /sync's `filter` parameter reports 400 M_INVALID_PARAM (unknown ID
or invalid inline filter) and M_NOT_JSON (inline filter that is not JSON), as Synapse does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from homeserver.errors import MatrixError, bad_json, forbidden, not_found
from homeserver.handlers.lru import LRU
from homeserver.storage import userdata as store
from homeserver.types import is_valid_user_id

if TYPE_CHECKING:
    from homeserver.server import HomeServer

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMELINE_LIMIT = 100  # inline and stored filters alike are capped at this for /sync
MAX_LIST_LENGTH = 10_000


@lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    """'*' matches any run of characters; everything else is literal."""
    return re.compile("".join(".*" if p == "*" else re.escape(p)
                              for p in re.split(r"(\*)", pattern)) + r"\Z", re.DOTALL)


def type_matches(etype: str, patterns: tuple[str, ...]) -> bool:
    return any(p == etype or ("*" in p and _glob(p).match(etype)) for p in patterns)


@dataclass(frozen=True)
class EventFilter:
    """Fields of EventFilter and RoomEventFilter. `None` lists mean "no restriction"."""

    limit: int | None = None
    types: tuple[str, ...] | None = None
    not_types: tuple[str, ...] = ()
    senders: tuple[str, ...] | None = None
    not_senders: tuple[str, ...] = ()
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    contains_url: bool | None = None
    lazy_load_members: bool = False
    include_redundant_members: bool = False
    unread_thread_notifications: bool = False

    def limit_or(self, default: int, maximum: int = MAX_TIMELINE_LIMIT) -> int:
        return min(self.limit if self.limit is not None else default, maximum)

    def allows_type(self, etype: str) -> bool:
        if self.not_types and type_matches(etype, self.not_types):
            return False
        return self.types is None or type_matches(etype, self.types)

    def allows_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms

    def matches(self, etype: str, sender: str | None = None, room_id: str | None = None,
                content: Any = None) -> bool:
        """Whether an event passes. A dimension whose value is None (e.g. the sender of
        account data) is not checked."""
        if not self.allows_type(etype):
            return False
        if sender is not None:
            if sender in self.not_senders:
                return False
            if self.senders is not None and sender not in self.senders:
                return False
        if room_id is not None and not self.allows_room(room_id):
            return False
        if self.contains_url is not None:
            has_url = isinstance(content, dict) and isinstance(content.get("url"), str)
            if has_url != self.contains_url:
                return False
        return True

    def filter_events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events in client or PDU format; presence events carry their user in `sender`."""
        return [e for e in events
                if self.matches(e.get("type", ""), e.get("sender"), e.get("room_id"),
                                e.get("content"))]


@dataclass(frozen=True)
class RoomFilter:
    rooms: tuple[str, ...] | None = None
    not_rooms: tuple[str, ...] = ()
    include_leave: bool = False
    timeline: EventFilter = field(default_factory=EventFilter)
    state: EventFilter = field(default_factory=EventFilter)
    ephemeral: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)

    def allows_room(self, room_id: str) -> bool:
        if room_id in self.not_rooms:
            return False
        return self.rooms is None or room_id in self.rooms


@dataclass(frozen=True, eq=False)
class Filter:
    room: RoomFilter = field(default_factory=RoomFilter)
    presence: EventFilter = field(default_factory=EventFilter)
    account_data: EventFilter = field(default_factory=EventFilter)
    event_format: str = "client"
    event_fields: tuple[str, ...] | None = None  # accepted, not applied (servers may send more)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def timeline_limit(self) -> int:
        return self.room.timeline.limit_or(DEFAULT_TIMELINE_LIMIT)

    @property
    def lazy_load_members(self) -> bool:
        return self.room.state.lazy_load_members

    @property
    def include_redundant_members(self) -> bool:
        return self.room.state.include_redundant_members

    @property
    def include_leave(self) -> bool:
        return self.room.include_leave


DEFAULT_FILTER = Filter()


# --- validation ----------------------------------------------------------------------------

def _obj(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_json(f"{where} must be an object")
    return value


def _bool(d: dict[str, Any], key: str, where: str) -> bool | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise bad_json(f"{where}.{key} must be a boolean")
    return v


def _strings(d: dict[str, Any], key: str, where: str, kind: str = "") -> tuple[str, ...] | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or len(v) > MAX_LIST_LENGTH:
        raise bad_json(f"{where}.{key} must be a list of strings")
    for s in v:
        if not isinstance(s, str):
            raise bad_json(f"{where}.{key} must be a list of strings")
        if kind == "room" and not (s.startswith("!") and len(s) <= 255):
            raise bad_json(f"{where}.{key}: {s[:80]!r} is not a room ID")
        if kind == "user" and not is_valid_user_id(s):
            raise bad_json(f"{where}.{key}: {s[:80]!r} is not a user ID")
    return tuple(v)


def _event_filter(value: Any, where: str, room_fields: bool) -> EventFilter:
    d = _obj(value, where)
    limit = d.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or limit < 0 or limit > 2**31):
        raise bad_json(f"{where}.limit must be a non-negative integer")
    kw: dict[str, Any] = {
        "limit": limit,
        "types": _strings(d, "types", where),
        "not_types": _strings(d, "not_types", where) or (),
        "senders": _strings(d, "senders", where, "user"),
        "not_senders": _strings(d, "not_senders", where, "user") or (),
    }
    if room_fields:
        kw["rooms"] = _strings(d, "rooms", where, "room")
        kw["not_rooms"] = _strings(d, "not_rooms", where, "room") or ()
        kw["contains_url"] = _bool(d, "contains_url", where)
        for key in ("lazy_load_members", "include_redundant_members",
                    "unread_thread_notifications"):
            kw[key] = bool(_bool(d, key, where))
    return EventFilter(**kw)


def parse_filter(data: Any) -> Filter:
    """Validate a filter definition (sync_filter.yaml); raises MatrixError 400 M_BAD_JSON."""
    if not isinstance(data, dict):
        raise bad_json("A filter must be a JSON object")
    fmt = data.get("event_format", "client")
    if fmt not in ("client", "federation"):
        raise bad_json("event_format must be 'client' or 'federation'")
    room = _obj(data.get("room"), "room")
    return Filter(
        room=RoomFilter(
            rooms=_strings(room, "rooms", "room", "room"),
            not_rooms=_strings(room, "not_rooms", "room", "room") or (),
            include_leave=bool(_bool(room, "include_leave", "room")),
            timeline=_event_filter(room.get("timeline"), "room.timeline", True),
            state=_event_filter(room.get("state"), "room.state", True),
            ephemeral=_event_filter(room.get("ephemeral"), "room.ephemeral", True),
            account_data=_event_filter(room.get("account_data"), "room.account_data", True),
        ),
        presence=_event_filter(data.get("presence"), "presence", False),
        account_data=_event_filter(data.get("account_data"), "account_data", False),
        event_format=fmt,
        event_fields=_strings(data, "event_fields", "filter"),
        raw=data,
    )


class FilterHandler:
    parse_filter = staticmethod(parse_filter)

    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._cache: LRU = LRU(10_000)  # (user_id, filter_id) -> Filter
        self._resolved: dict[tuple[str, str | None], dict[str, Any]] = {}

    async def create_filter(self, requester: str, user_id: str, data: Any) -> str:
        if user_id != requester:
            raise forbidden("Cannot create filters for other users")
        parse_filter(data)
        text = orjson.dumps(data).decode()
        existing = await store.find_filter(user_id, text)
        return str(existing if existing is not None else await store.add_filter(user_id, text))

    async def get_filter_json(self, requester: str, user_id: str, filter_id: str) -> dict[str, Any]:
        if user_id != requester:
            raise forbidden("Cannot get filters for other users")
        return (await self.get_filter(user_id, filter_id)).raw

    async def get_filter(self, user_id: str, filter_id: str) -> Filter:
        """A stored filter; 404 M_NOT_FOUND when the user has no such filter."""
        key = (user_id, filter_id)
        cached = self._cache.get_item(key)
        if cached is not None:
            return cached
        if not filter_id.isdigit() or len(filter_id) > 18:
            raise not_found("No such filter")
        text = await store.get_filter(user_id, int(filter_id))
        if text is None:
            raise not_found("No such filter")
        filt = parse_filter(orjson.loads(text))
        self._cache.put(key, filt)
        return filt

    async def resolve(self, user_id: str, value: str | None) -> dict[str, Any]:
        """Like resolve_sync_filter, but the validated filter JSON itself (for dict readers).

        Clients send the same filter with every /sync: remember the answer (filters are
        immutable once uploaded, inline ones are their own key)."""
        key = (user_id, value)
        cached = self._resolved.get(key)
        if cached is None:
            cached = (await self.resolve_sync_filter(user_id, value)).raw
            if len(self._resolved) >= 10_000:
                self._resolved.clear()
            self._resolved[key] = cached
        return cached

    async def resolve_sync_filter(self, user_id: str, value: str | None) -> Filter:
        """The /sync `filter` parameter: absent, a filter ID, or inline JSON."""
        if not value:
            return DEFAULT_FILTER
        if value.lstrip().startswith("{"):
            try:
                data = orjson.loads(value)
            except orjson.JSONDecodeError:
                raise MatrixError(400, "M_NOT_JSON", "filter is not valid JSON") from None
            try:
                return parse_filter(data)
            except MatrixError as e:
                raise MatrixError(400, "M_INVALID_PARAM", f"filter is not valid: {e.error}") from None
        try:
            return await self.get_filter(user_id, value)
        except MatrixError:
            raise MatrixError(400, "M_INVALID_PARAM", "No such filter") from None
