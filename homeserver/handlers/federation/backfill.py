"""Fetching older history from other servers when a client paginates past what we hold.

Backfilled events are checked like any other PDU, get the state before them (from their prev
events, or /state_ids for the oldest of a batch), and are stored at negative stream positions
below everything we have — oldest lowest — so /messages shows them in order and /sync never does.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from homeserver.events.auth import AuthError, check_auth
from homeserver.events.hashing import compute_event_id
from homeserver.handlers.federation.receiver import PduRejected, check_pdu_format
from homeserver.handlers.federation.transport import DestinationUnreachable, FederationError
from homeserver.storage import events as event_store
from homeserver.types import server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

BATCH = 50


class Backfiller:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def backfill(self, room_id: str) -> int:
        """Fetch one batch of history older than our oldest event; returns how many stored."""
        hs = self.hs
        version = await hs.state.room_version(room_id)
        if version is None or not hs.config.federation.enabled:
            return 0
        oldest = await event_store.get_room_events(room_id, limit=1, newest_first=False)
        if not oldest or oldest[0].type == "m.room.create":
            return 0
        start = oldest[0]
        prevs = start.pdu.get("prev_events", [])
        if not set(prevs) - await event_store.timeline_event_ids(prevs):
            return 0
        servers = sorted({server_of(u) for u in await hs.state.joined_members(room_id)}
                         - {hs.server_name})
        for dest in servers:
            try:
                res = await hs.federation_client.backfill(dest, room_id, [start.event_id], BATCH)
            except (FederationError, DestinationUnreachable) as e:
                log.info("backfill of %s from %s failed: %s", room_id, dest, e)
                continue
            pdus = res.get("pdus", []) if isinstance(res, dict) else []
            async with hs.events.room_lock(room_id):
                stored = await self._store(dest, room_id, version, pdus)
            if stored:
                return stored
        return 0

    async def _store(self, origin: str, room_id: str, version, pdus: list) -> int:
        hs = self.hs
        receiver = hs.receiver
        batch: dict[str, dict] = {}
        for pdu in pdus:
            try:
                check_pdu_format(pdu)
            except PduRejected:
                continue
            if pdu["room_id"] == room_id:
                batch[compute_event_id(pdu, version)] = pdu
        known = await event_store.timeline_event_ids(batch)
        outliers = await event_store.known_event_ids(batch) - known
        todo = sorted(((eid, p) for eid, p in batch.items() if eid not in known),
                      key=lambda kv: (kv[1]["depth"], kv[0]))
        if not todo:
            return 0
        # Positions below everything stored so far; the oldest event gets the lowest.
        positions = sorted(hs.ids.backfill.next() for _ in todo)
        states: dict[str, dict] = {}
        stored = 0
        for (event_id, pdu), position in zip(todo, positions):
            try:
                pdu = await receiver._verified(pdu, version, event_id)
                await receiver._ensure_auth_events(origin, pdu, version)
                await receiver._check_own_auth(pdu, version, event_id)
                state_before = await self._state_before(origin, room_id, pdu, states, version)
                check_auth(pdu, await receiver._auth_map(pdu, state_before), version)
            except (PduRejected, AuthError) as e:
                log.info("backfilled %s rejected: %s", event_id, getattr(e, "reason", e))
                continue
            after = dict(state_before)
            if pdu.get("state_key") is not None:
                after[(pdu["type"], pdu["state_key"])] = event_id
            states[event_id] = after
            await hs.events.persist_event(pdu, event_id, state_before=state_before,
                                          base_group=None, new_current=None, backfilled=True,
                                          ordering=position, replace_outlier=event_id in outliers)
            stored += 1
        return stored

    async def _state_before(self, origin, room_id, pdu, states, version) -> dict:
        prevs = pdu["prev_events"]
        sets = []
        for p in prevs:
            if p in states:
                sets.append(states[p])
                continue
            row = await self.hs.state.get_event(p)
            if row is not None and not row.outlier:
                sets.append(dict(await self.hs.state.state_group_ids(row.state_group)))
            else:
                sets.append(await self.hs.receiver._remote_state_after(origin, room_id, p, version))
        return await self.hs.receiver.resolver.resolve(version, sets) if sets else {}
