"""State of a room at a point of the DAG: one prev event's state, or several resolved (v2)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from homeserver.events.room_versions import RoomVersion
from homeserver.events.state_res import resolve_state_v2
from homeserver.handlers.state import StateKey
from homeserver.storage.events import EventRow

if TYPE_CHECKING:
    from homeserver.server import HomeServer

StateMap = dict[StateKey, str]


def _with_id(row: EventRow) -> dict:
    return {**row.pdu, "event_id": row.event_id}


class StateResolver:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def load_auth_chains(self, event_ids: set[str],
                               extra: dict[str, dict] | None = None) -> dict[str, dict]:
        """Events and their full auth chains, walked breadth first in batches. `extra` holds
        events not stored yet (the one being processed)."""
        event_map: dict[str, dict] = dict(extra or {})
        requested: set[str] = set(event_map)
        frontier = set(event_ids) - requested
        for ev in event_map.values():
            frontier.update(a for a in ev.get("auth_events", []) if a not in requested)
        while frontier:
            requested |= frontier
            rows = await self.hs.state.get_events(frontier)
            nxt: set[str] = set()
            for eid, row in rows.items():
                event_map[eid] = _with_id(row)
                nxt.update(row.pdu.get("auth_events", []))
            frontier = nxt - requested
        return event_map

    async def resolve(self, version: RoomVersion, state_sets: list[StateMap],
                      extra: dict[str, dict] | None = None) -> StateMap:
        sets = [s for s in state_sets if s is not None]
        if not sets:
            return {}
        if len(sets) == 1 or all(s == sets[0] for s in sets[1:]):
            return dict(sets[0])
        ids = {eid for s in sets for eid in s.values()}
        event_map = await self.load_auth_chains(ids, extra)
        # Events we cannot load (never fetched) cannot take part; drop them from the sets.
        usable = [{k: v for k, v in s.items() if v in event_map} for s in sets]
        return resolve_state_v2(version, usable, event_map)

    async def state_before(self, version: RoomVersion, prev_rows: list[EventRow]
                           ) -> tuple[StateMap, int | None]:
        """State before an event with these (known) prev events, and a state group equal to
        it when there is one (a single prev event)."""
        states = []
        for row in prev_rows:
            st = dict(await self.hs.state.state_group_ids(row.state_group))
            if row.state_group is None and row.state_key is not None:
                st[(row.type, row.state_key)] = row.event_id
            states.append(st)
        if len(prev_rows) == 1 and prev_rows[0].state_group is not None:
            return states[0], prev_rows[0].state_group
        return await self.resolve(version, states), None

    async def state_after_event(self, row: EventRow) -> StateMap:
        return dict(await self.hs.state.state_group_ids(row.state_group))
