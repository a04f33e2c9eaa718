"""Cached access to events and room state.

Current state, room versions and recently used events are hot on every request; they are
cached in memory and updated by the event pipeline right after each commit (one writer per
process, so the cache never goes stale behind our back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from homeserver.events.room_versions import RoomVersion, get_room_version
from homeserver.handlers.event_cache import EventCache
from homeserver.handlers.lru import LRU
from homeserver.handlers.recent import RecentEvents
from homeserver.storage import events as event_store
from homeserver.storage import state as state_store
from homeserver.storage.events import EventRow
from homeserver.storage.models_state import Room

if TYPE_CHECKING:
    from homeserver.server import HomeServer

StateKey = tuple[str, str]


class StateHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._events = EventCache(hs.config.caches.events)
        self._current: LRU = LRU(5_000)  # room_id -> dict[StateKey, event_id]
        self._groups: LRU = LRU(2_000)  # state_group -> dict[StateKey, event_id]
        self._versions: dict[str, RoomVersion] = {}
        self._memberships: LRU = LRU(20_000)  # user_id -> their membership rows
        self.recent = RecentEvents()

    # --- events ----------------------------------------------------------------------------

    async def get_events(self, event_ids: Iterable[str]) -> dict[str, EventRow]:
        out, missing = self._events.get_many(event_ids)
        if missing:
            fetched = await event_store.get_events(missing)
            for row in fetched.values():
                self._events.put(row)
            out.update(fetched)
        return out

    async def get_event(self, event_id: str) -> EventRow | None:
        return (await self.get_events([event_id])).get(event_id)

    def cache_event(self, row: EventRow) -> None:
        self._events.put(row)

    def invalidate_event(self, event_id: str) -> None:
        self._events.pop(event_id)

    # --- rooms -----------------------------------------------------------------------------

    async def room_version(self, room_id: str) -> RoomVersion | None:
        v = self._versions.get(room_id)
        if v is None:
            room = await Room.get_or_none(room_id=room_id)
            if room is None:
                return None
            v = self._versions[room_id] = get_room_version(room.room_version)
        return v

    def set_room_version(self, room_id: str, version: RoomVersion) -> None:
        self._versions[room_id] = version

    async def current_state_ids(self, room_id: str) -> dict[StateKey, str]:
        st = self._current.get_item(room_id)
        if st is None:
            st = await state_store.get_current_state(room_id)
            self._current.put(room_id, st)
        return st

    def apply_state_delta(self, room_id: str, delta: dict[StateKey, str]) -> None:
        st = self._current.get_item(room_id)
        if st is not None:
            st.update(delta)

    async def current_state(
        self, room_id: str, keys: Iterable[StateKey] | None = None
    ) -> dict[StateKey, EventRow]:
        ids = await self.current_state_ids(room_id)
        if keys is not None:
            ids = {k: ids[k] for k in keys if k in ids}
        rows = await self.get_events(ids.values())
        return {k: rows[eid] for k, eid in ids.items() if eid in rows}

    async def current_state_event(self, room_id: str, etype: str, state_key: str = "") -> EventRow | None:
        return (await self.current_state(room_id, [(etype, state_key)])).get((etype, state_key))

    async def state_group_ids(self, group: int | None) -> dict[StateKey, str]:
        if group is None:
            return {}
        st = self._groups.get_item(group)
        if st is None:
            st = await state_store.get_state_group(group)
            self._groups.put(group, st)
        return st

    def cache_state_group(self, group: int, state: dict[StateKey, str]) -> None:
        self._groups.put(group, state)

    async def state_at(self, row: EventRow, keys: Iterable[StateKey] | None = None,
                       before: bool = False) -> dict[StateKey, EventRow]:
        """State after (or, with before=True, before) an event."""
        ids = dict(await self.state_group_ids(row.state_group))
        if before and row.state_key is not None:
            prev = (row.pdu.get("unsigned") or {}).get("replaces_state")
            if prev:
                ids[(row.type, row.state_key)] = prev
            else:
                ids.pop((row.type, row.state_key), None)
        if keys is not None:
            ids = {k: ids[k] for k in keys if k in ids}
        rows = await self.get_events(ids.values())
        return {k: rows[eid] for k, eid in ids.items() if eid in rows}

    async def is_room_known(self, room_id: str) -> bool:
        return await self.room_version(room_id) is not None

    async def membership_of(self, room_id: str, user_id: str) -> str | None:
        ev = await self.current_state_event(room_id, "m.room.member", user_id)
        return ev.pdu["content"].get("membership") if ev else None

    async def joined_members(self, room_id: str) -> list[str]:
        ids = await self.current_state_ids(room_id)
        rows = await self.get_events(eid for (t, _), eid in ids.items() if t == "m.room.member")
        return [r.state_key for r in rows.values() if r.pdu["content"].get("membership") == "join"]

    async def user_memberships(self, user_id: str) -> list[dict[str, Any]]:
        """The user's room memberships (not forgotten), cached until one of them changes."""
        rows = self._memberships.get_item(user_id)
        if rows is None:
            rows = await state_store.get_user_memberships(user_id)
            self._memberships.put(user_id, rows)
        return rows

    def invalidate_memberships(self, user_ids: Iterable[str]) -> None:
        for u in user_ids:
            self._memberships.pop(u, None)

    def clear(self) -> None:
        self._events.clear()
        self._current.clear()
        self._groups.clear()


def pdu_content(row: EventRow) -> dict[str, Any]:
    return row.pdu.get("content") or {}
