"""The event pipeline: build a PDU, authorise it, hash, sign, persist, then fan out.

Event creation is serialised per room (prev_events and current state never race). Writes go
through one queue (handlers/event_writer.py), committed in the order of their stream positions,
several to a transaction when several wait. A message gives the room lock up once queued, so the
room's next event is built while it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from tortoise.exceptions import IntegrityError

from homeserver.errors import MatrixError, forbidden
from homeserver.events.auth import AuthError, auth_types_for_event, check_auth
from homeserver.events.canonical import canonical_json
from homeserver.events.hashing import add_content_hash, compute_event_id
from homeserver.events.room_versions import RoomVersion
from homeserver.events.signing import sign_event
from homeserver.storage import events as event_store
from homeserver.storage import state as state_store
from homeserver.storage.events import EventRow, PersistBatch
from homeserver.handlers.appservice import MASSAGED_TS
from homeserver.handlers.event_writer import EventWriter, StaleWrite, Write
from homeserver.handlers.lru import LRU
from homeserver.handlers.state import StateKey
from homeserver.types import now_ms, server_of

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_PREV_EVENTS = 10
# Times a local event is built again when what it was built on failed to be stored.
MAX_REBUILDS = 5
RECENT_TXNS = 10_000

PersistedCallback = Callable[[EventRow], Awaitable[None] | None]
# (pdu, event_id) -> (statements for the event's transaction, or a function of the event's
# stream position giving them (it is assigned later, under the persist lock), and a callback
# after the commit)
Statements = list[tuple[str, list[Any]]]
OutboxHook = Callable[[dict, str], Awaitable[tuple[Statements | Callable[[int], Statements],
                                                   Callable[[], None] | None]]]


def runs_to_completion(fn):
    """A write that, once started, finishes even when its caller is cancelled (a client
    that went away, a bridge request that timed out): a cancellation between the commit and
    the caches that follow it would leave the current state or stream positions behind the
    database, and a half-written room lock section would let the next event fork from stale
    state. The caller still sees the cancellation.

    Inside another such write (send_event persisting its event) the call runs directly: the
    outer one already finishes, and every shield costs a task and two event-loop turns, here
    while the room lock is held."""
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        if _COMPLETING.get():
            return await fn(*args, **kwargs)

        async def run():
            _COMPLETING.set(True)  # in the shield's task only
            return await fn(*args, **kwargs)
        return await asyncio.shield(run())
    return wrapper


_COMPLETING: contextvars.ContextVar[bool] = contextvars.ContextVar("completing", default=False)


class EventHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self._room_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._persist_lock = asyncio.Lock()
        self.writer = EventWriter(hs, self._persist_lock)
        # room_id -> epoch: bumped when a queued write of the room fails, so that the writes
        # built on it since (an older epoch) are refused and built again.
        self._room_epochs: defaultdict[str, int] = defaultdict(int)
        # room_id -> (a state group equal to the current state, its chain length)
        self._room_groups: dict[str, tuple[int | None, int]] = {}
        self._chains: dict[int, int] = {}
        # room_id -> its forward extremities, with the queued writes (only _queue_event and
        # _room_failed change them); a load that raced a change is not kept (the generation
        # moved on).
        self._extremities: dict[str, list[str]] = {}
        self._extremities_gen: defaultdict[str, int] = defaultdict(int)
        # room_id -> the last write queued that moves its extremities, until it is done.
        self._last_write: dict[str, Write] = {}
        # (user, device, txn_id) -> [lock, waiters]: one request per transaction ID at a time,
        # so its duplicate check can run before the room lock, not while holding it.
        self._txn_locks: dict[tuple[str, str, str], list] = {}
        # (user, device, txn_id) -> event_id of the latest sends (a client's retry finds it here)
        self._recent_txns: LRU = LRU(RECENT_TXNS)
        # Called with destinations that have new federation queue rows (the sender wakes).
        self.on_outbox: Callable[[list[str]], None] | None = None
        # Called after every persisted event (federation sender, appservices, realtime …).
        self.on_persisted: list[PersistedCallback] = []
        # Asked before each timeline event is persisted: durable outbound queue rows to write
        # in the event's own transaction (application services), and a wake-up after commit.
        self.outbox_hooks: list[OutboxHook] = []

    def room_lock(self, room_id: str) -> asyncio.Lock:
        return self._room_locks[room_id]

    @property
    def persist_lock(self) -> asyncio.Lock:
        """Held while a batch of writes commits and the caches follow it."""
        return self._persist_lock

    @runs_to_completion
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
        countersign: Callable[[dict[str, Any], RoomVersion], Awaitable[dict]] | None = None,
    ) -> EventRow:
        """Create, authorise and persist one event; returns the stored row.

        `txn` is (device_id, txn_id): the same pair from the same user returns the first
        event instead of sending again. `check` runs extra rules under the room lock;
        `countersign` gets the signed event and returns it with more signatures (remote invites).
        """
        # The spec's size limits for these fields (and the width of their columns).
        for name, value in (("type", etype), ("state_key", state_key),
                            ("transaction ID", txn[1] if txn else None)):
            if value is not None and len(value.encode("utf-8", "surrogatepass")) > 255:
                raise MatrixError(413, "M_TOO_LARGE", f"Event {name} is longer than 255 bytes")
        try:
            canonical_json(content)
        except (ValueError, TypeError) as e:
            raise MatrixError(400, "M_BAD_JSON", f"Event content is not valid: {e}") from None
        version = await self.hs.state.room_version(room_id)
        if version is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown room")
        async with self._txn_guard(sender, txn):
            if txn is not None:
                event_id = self._recent_txns.get_item((sender, *txn))
                row = await self.hs.state.get_event(event_id) if event_id else None
                if row is not None:
                    return row
            try:
                return await self._create_and_persist(
                    room_id, version, sender, etype, content, state_key, txn, redacts,
                    origin_server_ts, check, countersign)
            except IntegrityError:
                # A transaction ID used before, longer ago than the memory above: the unique
                # key of event_txns refused it and the write rolled back. No read per send
                # looks for it first: that read queued every send behind the database.
                event_id = await event_store.get_txn_event_id(sender, *txn) if txn else None
                row = await self.hs.state.get_event(event_id) if event_id else None
                if row is None:
                    raise
                return row

    @contextlib.asynccontextmanager
    async def _txn_guard(self, sender: str, txn: tuple[str, str] | None):
        if txn is None:
            yield
            return
        key = (sender, *txn)
        entry = self._txn_locks.get(key)
        if entry is None:
            entry = self._txn_locks[key] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                del self._txn_locks[key]

    async def _create_and_persist(self, room_id, version, sender, etype, content, state_key,
                                  *args) -> EventRow:
        """Build under the room lock, then wait for the commit. A message (no state change,
        no redaction) gives the lock up once it is queued: the room's next event is built on
        it while it commits. Other events keep the lock until their commit, so the room's
        state as readers see it is the state the next event is authorised against."""
        pipelined = state_key is None and etype != "m.room.redaction"
        for _ in range(MAX_REBUILDS):
            try:
                async with self.room_lock(room_id):
                    queued = await self._create_locked(room_id, version, sender, etype,
                                                       content, state_key, *args)
                    if not pipelined:
                        return await queued.persisted()
                return await queued.persisted()
            except StaleWrite:  # built on a queued event whose write failed: build it again
                continue
        raise MatrixError(503, "M_UNKNOWN", "The event could not be stored; try again")

    async def _create_locked(self, room_id, version, sender, etype, content, state_key, txn,
                             redacts, origin_server_ts, check, countersign) -> QueuedEvent:
        """send_event's part under the room lock: the event, built, authorised and queued."""
        epoch = self._room_epochs[room_id]
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
        return await self._finish_and_queue(pdu, version, current, sender, txn, countersign,
                                            epoch)

    async def extremities(self, room_id: str) -> list[str]:
        """The room's forward extremities (the events a new event follows), queued writes
        included."""
        while True:
            cached = self._extremities.get(room_id)
            if cached is not None:
                return list(cached)
            last = self._last_write.get(room_id)
            if last is not None and not last.done.done():
                # The database does not show the room's queued writes yet: once the last one
                # is done (the writer keeps their order), it shows them all.
                await asyncio.wait([last.done])
                continue
            gen = self._extremities_gen[room_id]
            loaded = await event_store.get_extremities(room_id)
            if self._extremities_gen[room_id] == gen:  # else a write was queued meanwhile
                self._extremities[room_id] = loaded
                return list(loaded)

    def _extremities_queued(self, room_id: str, prev_event_ids: list[str],
                            event_id: str) -> None:
        """What the event's write does (the prev events replaced by the event), applied to the
        cache when it is queued: the room's next event follows it."""
        self._extremities_gen[room_id] += 1
        cached = self._extremities.get(room_id)
        if cached is not None:
            gone = set(prev_event_ids)
            self._extremities[room_id] = [e for e in cached if e not in gone] + [event_id]

    async def _build(self, room_id, version, sender, etype, content, state_key, redacts, ts):
        extremities = await self.extremities(room_id)
        prev_rows = await self.hs.state.get_events(extremities)
        prev = sorted(prev_rows.values(), key=lambda r: -r.depth)[:MAX_PREV_EVENTS]
        pdu: dict[str, Any] = {
            "room_id": room_id,
            "sender": sender,
            "type": etype,
            "content": content,
            "origin_server_ts": ts if ts is not None else (MASSAGED_TS.get() or now_ms()),
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
        queued = await self._finish_and_queue(pdu, version, {}, pdu["sender"], None)
        return await queued.persisted()

    async def _finish_and_queue(self, pdu, version, current, sender, txn, countersign=None,
                                epoch=None) -> QueuedEvent:
        """Hash, sign and queue a local event whose state before is the current state."""
        hs = self.hs
        pdu = add_content_hash(pdu)
        pdu = sign_event(pdu, hs.server_name, hs.signing_key, version)
        size = len(canonical_json(pdu))
        if size > hs.config.limits.max_event_bytes:
            raise MatrixError(413, "M_TOO_LARGE",
                              f"Event is {size} bytes; the limit is {hs.config.limits.max_event_bytes}")
        event_id = compute_event_id(pdu, version)
        if countersign is not None:
            pdu = await countersign(pdu, version)
        group, _ = await self._room_group(pdu["room_id"])
        after = dict(current)
        if pdu.get("state_key") is not None:
            after[(pdu["type"], pdu["state_key"])] = event_id
        destinations = await self.destinations_for(pdu, after)
        return await self._queue_event(
            pdu, event_id, state_before=current, base_group=group, new_current=after,
            txn=(sender, *txn) if txn else None, destinations=destinations, epoch=epoch)

    async def destinations_for(self, pdu: dict, state_after: dict) -> list[str]:
        """Other servers that must receive a local event: those with joined members, and the
        server of a member event's target."""
        if not self.hs.config.federation.enabled:
            return []
        ours = self.hs.server_name
        remote = {sk: eid for (t, sk), eid in state_after.items()
                  if t == "m.room.member" and server_of(sk) != ours}
        servers: set[str] = set()
        if remote:
            rows = await self.hs.state.get_events(remote.values())
            servers = {server_of(sk) for sk, eid in remote.items()
                       if eid in rows and rows[eid].pdu["content"].get("membership") == "join"}
        target = pdu.get("state_key")
        if pdu["type"] == "m.room.member" and target and server_of(target) != ours:
            servers.add(server_of(target))
        return sorted(servers)

    @runs_to_completion
    async def persist_event(
        self, pdu: dict, event_id: str, *, state_before: dict[StateKey, str],
        base_group: int | None, new_current: dict[StateKey, str] | None,
        txn: tuple[str, str, str] | None = None, destinations: list[str] | None = None,
        outlier: bool = False, backfilled: bool = False, soft_failed: bool = False,
        ordering: int | None = None, replace_outlier: bool = False,
    ) -> EventRow:
        """Persist one event (local or remote) in a single transaction.

        `state_before` is the room state the event was authorised against and `base_group` a
        state group holding exactly that state (None: store a snapshot). `new_current` is the
        room's current state after this event, or None when it does not change (outliers,
        backfill, soft-failed events). `destinations` get durable federation queue rows.
        """
        queued = await self._queue_event(
            pdu, event_id, state_before=state_before, base_group=base_group,
            new_current=new_current, txn=txn, destinations=destinations, outlier=outlier,
            backfilled=backfilled, soft_failed=soft_failed, ordering=ordering,
            replace_outlier=replace_outlier)
        return await queued.persisted()

    async def _queue_event(
        self, pdu: dict, event_id: str, *, state_before: dict[StateKey, str],
        base_group: int | None, new_current: dict[StateKey, str] | None,
        txn: tuple[str, str, str] | None, destinations: list[str] | None,
        outlier: bool = False, backfilled: bool = False, soft_failed: bool = False,
        ordering: int | None = None, replace_outlier: bool = False, epoch: int | None = None,
    ) -> QueuedEvent:
        """persist_event up to its write, queued: what the next event of the room is built on
        (its forward extremities, the event itself) already includes it. `epoch`: the room's
        epoch the event was built in (a local event; see _room_failed)."""
        hs = self.hs
        room_id = pdu["room_id"]
        state_key = pdu.get("state_key")
        key = (pdu["type"], state_key) if state_key is not None else None
        stored = dict(pdu)
        stored.pop("unsigned", None)
        summary = (pdu.get("unsigned") or {}).get("invite_room_state") if outlier else None
        if isinstance(summary, list):
            # A remote invite or knock: the room's summary its server sent, all we know of it.
            stored["unsigned"] = {"invite_room_state": summary}
        if key is not None and key in state_before:
            prev_state = await hs.state.get_event(state_before[key])
            if prev_state is not None:
                stored["unsigned"] = {"replaces_state": prev_state.event_id,
                                      "prev_content": prev_state.pdu.get("content", {}),
                                      "prev_sender": prev_state.sender}
        timeline = not (outlier or backfilled or soft_failed)
        hooked = [await hook(pdu, event_id) for hook in self.outbox_hooks] if timeline else []
        # Unread counts of the room's local members, written in the event's transaction.
        counts = await hs.notifications.for_event(
            pdu, event_id, new_current if new_current is not None else state_before
        ) if timeline else None
        old_current = await hs.state.current_state_ids(room_id) if new_current is not None else {}
        delta = {k: v for k, v in (new_current or {}).items() if old_current.get(k) != v}
        delta_rows = await hs.state.get_events(v for k, v in delta.items()
                                               if k[0] == "m.room.member" and v != event_id)
        chain = await self._group_chain(base_group) if base_group is not None and not outlier \
            else 0

        # From here to the queueing, no await: the queue's order is the stream positions' order.
        if ordering is None:
            ordering = hs.ids.backfill.next() if (outlier or backfilled) else hs.ids.events.next()
        batch = PersistBatch(
            row=EventRow(
                stream_ordering=ordering, event_id=event_id, room_id=room_id,
                type=pdu["type"], state_key=state_key, sender=pdu["sender"],
                depth=pdu["depth"], origin_server_ts=pdu["origin_server_ts"], pdu=stored,
                state_group=None, txn_device=txn[1] if txn else None,
                txn_id=txn[2] if txn else None, outlier=outlier, soft_failed=soft_failed,
            ),
            prev_event_ids=list(pdu.get("prev_events", [])),
            update_extremities=timeline, outlier=outlier, soft_failed=soft_failed,
            txn=txn, replace_outlier=replace_outlier,
        )
        group_state = None
        group = base_group
        if not outlier:
            if key is None and base_group is not None:
                batch.row.state_group = base_group
            else:
                group_state = dict(state_before)
                if key is not None:
                    group_state[key] = event_id
                gid = hs.ids.state_groups.next()
                if base_group is None or chain + 1 >= state_store.MAX_CHAIN_LENGTH:
                    batch.new_state_group = (gid, None, 0, group_state)
                    chain = 0
                else:
                    batch.new_state_group = (gid, base_group, chain + 1, {key: event_id})
                    chain += 1
                batch.row.state_group = group = gid
        batch.current_state_delta = delta
        for (t, sk), eid in delta.items():
            if t != "m.room.member":
                continue
            content = pdu["content"] if eid == event_id else (
                delta_rows[eid].pdu.get("content", {}) if eid in delta_rows else {})
            batch.memberships.append((sk, content.get("membership", "leave"), eid, ordering))
        rel = pdu["content"].get("m.relates_to") if isinstance(pdu.get("content"), dict) else None
        if not (outlier or soft_failed) and isinstance(rel, dict) \
                and isinstance(rel.get("event_id"), str) \
                and isinstance(rel.get("rel_type"), str):
            agg = rel.get("key") if isinstance(rel.get("key"), str) else None
            batch.relation = (rel["event_id"], rel["rel_type"], agg)
        if pdu["type"] == "m.room.redaction" and not soft_failed:
            target = pdu.get("redacts") or (pdu.get("content") or {}).get("redacts")
            if isinstance(target, str):
                batch.redacts = target
        for statements, _ in hooked:
            batch.extra.extend(statements(ordering) if callable(statements) else statements)
        if counts is not None:
            batch.extra.extend(counts.statements(ordering))
        for dest in destinations or ():
            batch.extra.append((
                "INSERT INTO federation_outbox (destination, event_id, created_ts) VALUES (?,?,?)",
                [dest, event_id, now_ms()]))
        row = batch.row

        def on_commit() -> None:
            """The caches follow the commit (in commit order, under the persist lock)."""
            if txn is not None:
                self._recent_txns.put(txn, event_id)
            if not (outlier or backfilled):
                hs.ids.events.mark_visible(ordering)
            if group_state is not None:
                hs.state.cache_state_group(group, group_state)
                self._chains[group] = chain
            if new_current is not None:
                hs.state.apply_state_delta(room_id, delta)
                # Track a group whose state is the current state, for the next local event.
                self._room_groups[room_id] = (
                    (row.state_group, chain) if new_current == (
                        group_state if group_state is not None else state_before) else (None, 0))
            if batch.redacts:
                hs.state.invalidate_event(batch.redacts)
            if replace_outlier:
                hs.state.invalidate_event(event_id)
            hs.state.cache_event(row)
            hs.state.invalidate_memberships(m[0] for m in batch.memberships)
            hs.notifications.committed(counts)
            if timeline:
                hs.state.recent.append(row)
                users = [row.state_key] if row.type == "m.room.member" and row.state_key else []
                hs.notifier.notify("events", ordering, rooms=[room_id], users=users)

        def on_fail(error: BaseException) -> None:
            if batch.update_extremities:
                hs.state.invalidate_event(event_id)
                if not isinstance(error, StaleWrite):
                    self._room_failed(room_id)

        write = Write(event_store.statements_for(batch), on_commit, on_fail,
                      (lambda: self._room_epochs[room_id] != epoch) if epoch is not None else None)
        self.writer.queue(write)
        if batch.update_extremities:
            # What the room's next event is built on includes this one from now on.
            self._extremities_queued(room_id, batch.prev_event_ids, event_id)
            hs.state.cache_event(row)
            self._last_write[room_id] = write
            write.done.add_done_callback(lambda _f: self._forget_write(room_id, write))
        return QueuedEvent(self, write, row, timeline, destinations, hooked)

    def _forget_write(self, room_id: str, write: Write) -> None:
        if self._last_write.get(room_id) is write:
            del self._last_write[room_id]

    def _room_failed(self, room_id: str) -> None:
        """A queued write of the room failed: what was built on it since is refused (a new
        epoch), and the room's extremities are read again from what has committed."""
        self._room_epochs[room_id] += 1
        self._extremities.pop(room_id, None)
        self._extremities_gen[room_id] += 1

    async def _after_commit(self, row: EventRow, timeline: bool,
                            destinations: list[str] | None, hooked: list) -> None:
        if timeline:
            for cb in self.on_persisted:
                try:
                    res = cb(row)
                    if asyncio.iscoroutine(res):
                        await res
                except Exception:  # a listener's failure must not fail the send
                    log.exception("event listener failed for %s", row.event_id)
        if destinations and self.on_outbox is not None:
            self.on_outbox(destinations)
        for _, after_commit in hooked:
            if after_commit is not None:
                after_commit()

    @runs_to_completion
    async def set_out_of_room_membership(self, room_id: str, user_id: str, membership: str,
                                         event_id: str) -> None:
        """A local user's membership in a room whose state we don't hold (a remote invite or
        its rejection): a membership row at a fresh stream position, so /sync reports it."""
        hs = self.hs
        position = hs.ids.events.next()

        def on_commit() -> None:
            hs.state.invalidate_memberships([user_id])
            hs.ids.events.mark_visible(position)
            hs.notifier.notify("events", position, rooms=[room_id], users=[user_id])

        write = self.writer.queue(Write(
            [event_store.membership_statement(room_id, user_id, membership, event_id, position)],
            on_commit))
        await self.writer.committed(write)

    async def _group_chain(self, group: int) -> int:
        chain = self._chains.get(group)
        if chain is None:
            info = await state_store.get_group_info(group)
            chain = self._chains[group] = info["chain_length"] if info else 0
        return chain

    async def _room_group(self, room_id: str) -> tuple[int | None, int]:
        """A state group equal to the room's current state (None: none known, snapshot next)."""
        cached = self._room_groups.get(room_id)
        if cached is not None:
            return cached
        group = await state_store.room_state_group(room_id)
        if group is not None:
            current = await self.hs.state.current_state_ids(room_id)
            if await self.hs.state.state_group_ids(group) != current:
                group = None
        chain = await self._group_chain(group) if group is not None else 0
        self._room_groups[room_id] = (group, chain)
        return group, chain


class QueuedEvent:
    """An event queued for writing; `persisted()` waits for its commit, then runs what follows
    a commit outside the writer (listeners, federation and outbox wake-ups), once."""

    def __init__(self, handler: EventHandler, write: Write, row: EventRow, timeline: bool,
                 destinations: list[str] | None, hooked: list) -> None:
        self._handler = handler
        self._write = write
        self.row = row
        self._after = (timeline, destinations, hooked)
        self._done = False

    async def persisted(self) -> EventRow:
        await self._handler.writer.committed(self._write)
        if not self._done:
            self._done = True
            await self._handler._after_commit(self.row, *self._after)
        return self.row
