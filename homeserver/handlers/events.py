"""The event pipeline: build a PDU, authorise it, hash, sign, persist, then fan out.

Event creation is serialised per room (prev_events and current state never race) and
persistence is serialised per process (stream orderings become visible in increasing order).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from homeserver.errors import MatrixError, forbidden
from homeserver.events.auth import AuthError, auth_types_for_event, check_auth
from homeserver.events.canonical import canonical_json
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.room_versions import RoomVersion
from homeserver.events.signing import sign_event
from homeserver.storage import events as event_store
from homeserver.storage import state as state_store
from homeserver.storage.events import EventRow, PersistBatch
from homeserver.types import now_ms

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_PREV_EVENTS = 10

PersistedCallback = Callable[[EventRow], Awaitable[None] | None]


class EventHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._room_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._persist_lock = asyncio.Lock()
        # room_id -> (state group of the newest event, its chain length)
        self._room_groups: dict[str, tuple[int | None, int]] = {}
        # Called after every persisted event (federation sender, appservices, realtime …).
        self.on_persisted: list[PersistedCallback] = []

    def room_lock(self, room_id: str) -> asyncio.Lock:
        return self._room_locks[room_id]

    async def send_event(
        self,
        room_id: str,
        sender: str,
        etype: str,
        content: dict[str, Any],
        state_key: str | None = None,
        *,
        txn: tuple[str, str] | None = None,
        redacts: str | None = None,
        origin_server_ts: int | None = None,
        check: Callable[[dict[str, Any], dict], Awaitable[None]] | None = None,
    ) -> EventRow:
        """Create, authorise and persist one event; returns the stored row.

        `txn` is (device_id, txn_id): the same pair from the same user returns the first
        event instead of sending again. `check` runs extra rules under the room lock.
        """
        try:
            canonical_json(content)
        except (ValueError, TypeError) as e:
            raise MatrixError(400, "M_BAD_JSON", f"Event content is not valid: {e}") from None
        version = await self.hs.state.room_version(room_id)
        if version is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        async with self.room_lock(room_id):
            if txn is not None:
                existing = await event_store.get_txn_event_id(sender, txn[0], txn[1])
                if existing is not None:
                    row = await self.hs.state.get_event(existing)
                    if row is not None:
                        return row
            current = await self.hs.state.current_state_ids(room_id)
            pdu = await self._build(room_id, version, sender, etype, content, state_key,
                                    redacts, origin_server_ts)
            auth_map = await self._auth_map(pdu, current)
            if check is not None:
                await check(pdu, auth_map)
            try:
                check_auth(pdu, {k: v.pdu for k, v in auth_map.items()}, version)
            except AuthError as e:
                raise forbidden(e.reason) from None
            pdu["auth_events"] = sorted(r.event_id for r in auth_map.values())
            return await self._finish_and_persist(pdu, version, current, sender, txn)

    async def _build(self, room_id, version, sender, etype, content, state_key, redacts, ts):
        extremities = await event_store.get_extremities(room_id)
        prev_rows = await self.hs.state.get_events(extremities)
        prev = sorted(prev_rows.values(), key=lambda r: -r.depth)[:MAX_PREV_EVENTS]
        pdu: dict[str, Any] = {
            "room_id": room_id,
            "sender": sender,
            "type": etype,
            "content": content,
            "origin_server_ts": ts if ts is not None else now_ms(),
            "depth": (max((r.depth for r in prev), default=0) + 1),
            "prev_events": [r.event_id for r in prev],
            "auth_events": [],
        }
        if state_key is not None:
            pdu["state_key"] = state_key
        if redacts is not None:
            pdu["redacts"] = redacts
            if version.updated_redaction_rules:
                pdu["content"] = {**content, "redacts": redacts}
        return pdu

    async def _auth_map(self, pdu: dict[str, Any], current: dict) -> dict:
        keys = [k for k in auth_types_for_event(pdu) if k in current]
        rows = await self.hs.state.get_events(current[k] for k in keys)
        return {k: rows[current[k]] for k in keys if current[k] in rows}

    async def create_room_event(self, room_id: str, version: RoomVersion, pdu: dict) -> EventRow:
        """The m.room.create event: no prev or auth events. Caller holds the room lock."""
        check_auth(pdu, {}, version)
        return await self._finish_and_persist(pdu, version, {}, pdu["sender"], None)

    async def _finish_and_persist(self, pdu, version, current, sender, txn) -> EventRow:
        hs = self.hs
        pdu = add_content_hash(pdu)
        pdu = sign_event(pdu, hs.server_name, hs.signing_key, version)
        size = len(canonical_json(pdu))
        if size > hs.config.limits.max_event_bytes:
            raise MatrixError(413, "M_TOO_LARGE",
                              f"Event is {size} bytes; the limit is {hs.config.limits.max_event_bytes}")
        event_id = compute_event_id(pdu, version)
        room_id = pdu["room_id"]
        state_key = pdu.get("state_key")
        key = (pdu["type"], state_key) if state_key is not None else None

        unsigned: dict[str, Any] = {}
        if key is not None and key in current:
            prev_state = await hs.state.get_event(current[key])
            if prev_state is not None:
                unsigned = {"replaces_state": prev_state.event_id,
                            "prev_content": prev_state.pdu.get("content", {}),
                            "prev_sender": prev_state.sender}
        stored = dict(pdu)
        if unsigned:
            stored["unsigned"] = unsigned

        async with self._persist_lock:
            group, chain = await self._room_group(room_id)
            batch = PersistBatch(
                row=EventRow(
                    stream_ordering=hs.ids.events.next(), event_id=event_id, room_id=room_id,
                    type=pdu["type"], state_key=state_key, sender=sender, depth=pdu["depth"],
                    origin_server_ts=pdu["origin_server_ts"], pdu=stored, state_group=group,
                    txn_device=txn[0] if txn else None, txn_id=txn[1] if txn else None,
                ),
                prev_event_ids=list(pdu["prev_events"]),
            )
            new_state = None
            if key is not None:
                new_state = dict(await hs.state.state_group_ids(group))
                new_state[key] = event_id
                gid = hs.ids.state_groups.next()
                if group is None or chain + 1 >= state_store.MAX_CHAIN_LENGTH:
                    batch.new_state_group = (gid, None, 0, new_state)
                    chain = 0
                else:
                    batch.new_state_group = (gid, group, chain + 1, {key: event_id})
                    chain += 1
                batch.row.state_group = group = gid
                batch.current_state_delta = {key: event_id}
                if pdu["type"] == "m.room.member":
                    batch.membership = (state_key, pdu["content"].get("membership", "leave"))
            if txn is not None:
                batch.txn = (sender, txn[0], txn[1])
            rel = pdu["content"].get("m.relates_to")
            if isinstance(rel, dict) and isinstance(rel.get("event_id"), str) and isinstance(
                rel.get("rel_type"), str
            ):
                agg = rel.get("key") if isinstance(rel.get("key"), str) else None
                batch.relation = (rel["event_id"], rel["rel_type"], agg)
            if pdu["type"] == "m.room.redaction" and isinstance(pdu.get("redacts"), str):
                batch.redacts = pdu["redacts"]
            await event_store.persist(batch)
            # Caches follow the commit.
            self._room_groups[room_id] = (group, chain)
            if new_state is not None:
                hs.state.cache_state_group(group, new_state)
            hs.state.apply_state_delta(room_id, batch.current_state_delta)
            if batch.redacts:
                hs.state.invalidate_event(batch.redacts)
            row = batch.row
            hs.state.cache_event(row)
        await self._fan_out(row)
        return row

    async def _room_group(self, room_id: str) -> tuple[int | None, int]:
        cached = self._room_groups.get(room_id)
        if cached is not None:
            return cached
        group = await state_store.room_state_group(room_id)
        chain = 0
        if group is not None:
            info = await state_store.get_group_info(group)
            chain = info["chain_length"] if info else 0
        self._room_groups[room_id] = (group, chain)
        return group, chain

    async def _fan_out(self, row: EventRow) -> None:
        users = [row.state_key] if row.type == "m.room.member" and row.state_key else []
        self.hs.notifier.notify("events", row.stream_ordering, rooms=[row.room_id], users=users)
        for cb in self.on_persisted:
            try:
                res = cb(row)
                if asyncio.iscoroutine(res):
                    await res
            except Exception:  # a listener's failure must not fail the send
                log.exception("event listener failed for %s", row.event_id)
