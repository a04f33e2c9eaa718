"""Serving room history to other servers: /event, /state(_ids), /event_auth, /backfill,
/get_missing_events and /timestamp_to_event — only to servers that have a member in the room."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.storage import events as event_store
from homeserver.storage.events import EventRow
from homeserver.types import now_ms, server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

MAX_BACKFILL = 100


class FederationHistory:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def _check_server_in_room(self, origin: str, room_id: str) -> None:
        state = await self.hs.state.current_state(room_id)
        if not state:
            raise not_found("Unknown room")
        hv = state.get(("m.room.history_visibility", ""))
        if hv and hv.pdu["content"].get("history_visibility") == "world_readable":
            return
        for (t, sk), row in state.items():
            # Members who left still had the history they saw; any membership counts.
            if t == "m.room.member" and server_of(sk) == origin and \
                    row.pdu["content"].get("membership") in ("join", "invite", "leave", "ban"):
                return
        raise forbidden(f"{origin} has no member in this room")

    async def _event_in_room(self, origin: str, room_id: str, event_id: str) -> EventRow:
        row = await self.hs.state.get_event(event_id)
        if row is None or row.room_id != room_id:
            raise not_found("Unknown event")
        await self._check_server_in_room(origin, room_id)
        return row

    def _envelope(self, pdus: list[dict]) -> dict[str, Any]:
        return {"origin": self.hs.server_name, "origin_server_ts": now_ms(), "pdus": pdus}

    async def get_event(self, origin: str, event_id: str) -> dict[str, Any]:
        row = await self.hs.state.get_event(event_id)
        if row is None:
            raise not_found("Unknown event")
        await self._check_server_in_room(origin, row.room_id)
        return self._envelope([row.pdu_for_federation()])

    async def event_at_time(self, origin: str, room_id: str, ts: int, forward: bool
                            ) -> dict[str, Any]:
        """The event closest to `ts` in the direction asked (timeline events only)."""
        await self._check_server_in_room(origin, room_id)
        rows = await event_store.get_events_by_time(room_id, ts, forward, 1)
        if not rows:
            raise not_found("No event found " + ("at or after" if forward else "at or before")
                            + " that time")
        return {"event_id": rows[0].event_id, "origin_server_ts": rows[0].origin_server_ts}

    async def _auth_chain(self, event_ids: set[str]) -> list[EventRow]:
        chain = await self.hs.receiver.resolver.load_auth_chains(event_ids)
        rows = await self.hs.state.get_events(chain)
        return list(rows.values())

    async def state_ids(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        row = await self._event_in_room(origin, room_id, event_id)
        before = await self.hs.state.state_at(row, before=True)
        ids = {r.event_id for r in before.values()}
        chain = await self._auth_chain(ids)
        return {"pdu_ids": sorted(ids), "auth_chain_ids": sorted(r.event_id for r in chain)}

    async def state(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        row = await self._event_in_room(origin, room_id, event_id)
        before = await self.hs.state.state_at(row, before=True)
        chain = await self._auth_chain({r.event_id for r in before.values()})
        return {"pdus": [r.pdu_for_federation() for r in before.values()],
                "auth_chain": [r.pdu_for_federation() for r in chain]}

    async def event_auth(self, origin: str, room_id: str, event_id: str) -> dict[str, Any]:
        row = await self._event_in_room(origin, room_id, event_id)
        chain = await self._auth_chain(set(row.pdu.get("auth_events", [])))
        return {"auth_chain": [r.pdu_for_federation() for r in chain]}

    async def _walk_back(self, start: list[str], stop: set[str], limit: int,
                         min_depth: int = 0) -> list[EventRow]:
        """Breadth-first over prev_events from `start` (excluded), not past `stop`."""
        seen = set(start) | stop
        out: list[EventRow] = []
        frontier = list(start)
        while frontier and len(out) < limit:
            rows = await self.hs.state.get_events(frontier)
            nxt: list[str] = []
            for eid in frontier:
                row = rows.get(eid)
                if row is None:
                    continue
                for p in row.pdu.get("prev_events", []):
                    if p not in seen:
                        seen.add(p)
                        nxt.append(p)
            prev_rows = await self.hs.state.get_events(nxt)
            for p in nxt:
                r = prev_rows.get(p)
                if r is not None and not r.outlier and r.depth >= min_depth and len(out) < limit:
                    out.append(r)
            frontier = [p for p in nxt if p in prev_rows]
        return out

    async def backfill(self, origin: str, room_id: str, from_ids: list[str], limit: int
                       ) -> dict[str, Any]:
        await self._check_server_in_room(origin, room_id)
        limit = max(1, min(limit, MAX_BACKFILL))
        starts = await self.hs.state.get_events(from_ids)
        rows = [r for r in starts.values() if r.room_id == room_id]
        rows += await self._walk_back([r.event_id for r in rows], set(), limit - len(rows))
        return self._envelope([r.pdu_for_federation() for r in rows[:limit]])

    async def get_missing_events(self, origin: str, room_id: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise MatrixError(400, "M_BAD_JSON", "Body must be an object")
        earliest = body.get("earliest_events", [])
        latest = body.get("latest_events", [])
        limit = body.get("limit", 10)
        min_depth = body.get("min_depth", 0)
        if not (isinstance(earliest, list) and isinstance(latest, list)
                and all(isinstance(e, str) for e in earliest + latest)
                and isinstance(limit, int) and isinstance(min_depth, int)):
            raise MatrixError(400, "M_BAD_JSON", "Invalid get_missing_events body")
        await self._check_server_in_room(origin, room_id)
        rows = await self._walk_back(latest[:20], set(earliest), max(1, min(limit, 100)),
                                     min_depth)
        rows.sort(key=lambda r: (r.depth, r.stream_ordering))
        return {"events": [r.pdu_for_federation() for r in rows]}
