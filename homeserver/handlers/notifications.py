"""Unread notification counts: push rules evaluated as events are persisted.

For each timeline event, every local joined member other than the sender is evaluated against
their push rules (events/push_eval.py); those notified get their (user, room) counter raised,
highlights counted apart, in the event's own transaction, with one statement for all of them.
The sender's own event counts as reading the room: their counter restarts at zero. A read
receipt (m.read or m.read.private, unthreaded or for the main timeline) resets the counter to
what is unread after the receipt. /sync reports the counters as `unread_notifications`.

Each notification is also kept as a row (user, event, the actions of the rule that matched),
written in the same transaction: GET /notifications lists them and the push sender
(handlers/push_sender.py) pushes them to the user's pushers.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import orjson

from homeserver.events.power_levels import CREATE_KEY, POWER_LEVELS_KEY, get_user_power_level
from homeserver.events.push_eval import KIND_ORDER, CompiledRule, Outcome, RoomFacts, evaluate
from homeserver.handlers.notification_cache import CountsCache
from homeserver.handlers.lru import LRU
from homeserver.storage import events as event_store
from homeserver.storage import notifications as store
from homeserver.storage.events import EventRow
from homeserver.types import now_ms, server_of

if TYPE_CHECKING:
    from homeserver.handlers.state import StateKey
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

# A receipt on an older event than the newest one counted re-evaluates the events after it;
# beyond this many the counter keeps what it had (the next receipt will settle it).
MAX_RECOUNT_EVENTS = 1000
# Notification rows per INSERT (a statement's bound parameters are limited).
ROWS_PER_STATEMENT = 1000


@dataclass
class PendingCounts:
    """What one event does to the counters, before its stream position is known."""

    room_id: str
    reset_user: str | None = None  # the local sender: their counter starts again
    notified: list[tuple[str, bool]] = field(default_factory=list)  # (user, highlight)
    event_id: str = ""
    actions: dict[str, str] = field(default_factory=dict)  # user -> actions as JSON
    ts: int = 0

    def statements(self, ordering: int) -> list[tuple[str, list[Any]]]:
        """Once the event has its stream position: the counter rows and the notification
        rows, for the event's own transaction."""
        out = []
        rows = [(u, 1, 1 if hl else 0, 0) for u, hl in self.notified]
        # Always a reset row, even for a sender the cache knows at zero: the cache follows
        # commits, and an event queued before this one may yet raise their counter.
        if self.reset_user is not None:
            rows.append((self.reset_user, 0, 0, ordering))
        if rows:
            out.append(store.upsert_statement(self.room_id, rows, ordering))
        notes = [(u, self.actions.get(u) or _fallback_actions(hl), hl) for u, hl in self.notified]
        for i in range(0, len(notes), ROWS_PER_STATEMENT):
            out.append(store.insert_notifications_statement(
                self.room_id, self.event_id, ordering, notes[i:i + ROWS_PER_STATEMENT], self.ts))
        return out


_ACTIONS: dict[str, str] = {}  # action lists as JSON, shared by every user who has them


def _interned(actions: list) -> str:
    # Most users have the default actions: one string for all of them, not one per user.
    text = orjson.dumps(actions).decode()
    return _ACTIONS.setdefault(text, text) if len(_ACTIONS) < 1000 else text


def _fallback_actions(highlight: bool) -> str:
    return '["notify",{"set_tweak":"highlight"}]' if highlight else '["notify"]'


@dataclass
class RoomView:
    """What evaluation needs of a room's state, rebuilt only when that state changes."""

    key: frozenset[str]  # the member, power levels and create event IDs it was built from
    joined: int
    local: dict[str, str | None]  # local joined user -> display name in the room
    auth: dict[StateKey, dict[str, Any]]  # power levels and create events
    levels: dict[str, Any] | None  # power levels "notifications"


_VIEW_TYPES = frozenset(("m.room.member", "m.room.power_levels", "m.room.create"))


class NotificationHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.cache = CountsCache()
        self._views: LRU = LRU(2_000)  # room_id -> RoomView
        # user_id -> (their compiled rules, rule_id -> actions as JSON of the rules that
        # notify), for the rows
        self._actions: LRU = LRU(5_000)
        # Called after the commit with the users an event notified (the push sender wakes).
        self.on_notified: Callable[[list[str]], None] | None = None

    # --- on persist ------------------------------------------------------------------------

    async def _view(self, room_id: str, state: dict[StateKey, str],
                    pending: tuple[str, dict[str, Any]] | None = None) -> RoomView:
        """`pending`: (event_id, pdu) of the event being persisted, part of `state` but not
        readable from the store yet."""
        key = frozenset(eid for (t, _), eid in state.items() if t in _VIEW_TYPES)
        view = self._views.get_item(room_id)
        if view is not None and view.key == key:
            return view
        hs = self.hs
        rows = {eid: row.pdu for eid, row in (await hs.state.get_events(key)).items()}
        if pending is not None and pending[0] in key:
            rows[pending[0]] = pending[1]
        joined = 0
        local: dict[str, str | None] = {}
        auth: dict[StateKey, dict[str, Any]] = {}
        ours = hs.server_name
        for pdu in rows.values():
            etype, state_key = pdu.get("type"), pdu.get("state_key")
            if etype != "m.room.member":
                if state_key == "" and (etype, "") in (POWER_LEVELS_KEY, CREATE_KEY):
                    auth[(etype, "")] = pdu
                continue
            content = pdu.get("content") or {}
            if content.get("membership") != "join" or not isinstance(state_key, str):
                continue
            joined += 1
            if server_of(state_key) == ours:
                name = content.get("displayname")
                local[state_key] = name if isinstance(name, str) else None
        pl = auth.get(POWER_LEVELS_KEY)
        levels = (pl.get("content") or {}).get("notifications") if pl else None
        view = RoomView(key, joined, local, auth, levels if isinstance(levels, dict) else None)
        if len(rows) == len(key):  # a view with an event missing is used once, not kept
            self._views.put(room_id, view)
        return view

    async def _facts(self, room_id: str, sender: str, view: RoomView) -> RoomFacts:
        version = await self.hs.state.room_version(room_id)
        power = get_user_power_level(sender, view.auth, version) if version is not None else 0
        return RoomFacts(member_count=view.joined, sender_power=power,
                         notification_levels=view.levels)

    async def for_event(self, pdu: dict[str, Any], event_id: str, state: dict[StateKey, str]
                        ) -> PendingCounts | None:
        """The counter changes of a timeline event, given the room state it lands in."""
        try:
            return await self._for_event(pdu, event_id, state)
        except Exception:  # counting must never stop an event from being stored
            log.exception("push rule evaluation failed in %s", pdu.get("room_id"))
            return None

    async def _for_event(self, pdu: dict[str, Any], event_id: str, state: dict[StateKey, str]
                         ) -> PendingCounts | None:
        room_id, sender = pdu["room_id"], pdu["sender"]
        pending = PendingCounts(room_id, event_id=event_id, ts=now_ms())
        if server_of(sender) == self.hs.server_name:
            pending.reset_user = sender
        view = await self._view(room_id, state, (event_id, pdu))
        others = [u for u in view.local if u != sender]
        if others:
            facts = await self._facts(room_id, sender, view)
            rules = await self.hs.push_rules.evaluation_rules(others)
            memo: dict = {}  # conditions that do not depend on the member: once per event
            for user_id in others:
                flat = rules[user_id]
                out = evaluate(flat, pdu, view.local[user_id], facts, memo)
                if out.notify:
                    pending.notified.append((user_id, out.highlight))
                    pending.actions[user_id] = await self._actions_of(user_id, flat, out)
        if pending.reset_user is None and not pending.notified:
            return None
        return pending

    async def _actions_of(self, user_id: str, flat: tuple[CompiledRule, ...],
                          out: Outcome) -> str:
        """The actions of the rule that decided (evaluation keeps only what they mean), read
        from the user's ruleset once per version of their rules."""
        entry = self._actions.get_item(user_id)
        if entry is None or entry[0] is not flat:
            ruleset = await self.hs.push_rules.ruleset(user_id)
            by_id: dict[str, str] = {}
            for kind in KIND_ORDER:  # evaluation order: the first rule of an ID is the one
                for rule in ruleset.get(kind, ()):
                    actions = rule.get("actions")
                    if rule.get("enabled", True) and isinstance(actions, list) \
                            and "notify" in actions:
                        by_id.setdefault(rule.get("rule_id", ""), _interned(actions))
            entry = (flat, by_id)
            self._actions.put(user_id, entry)
        return entry[1].get(out.rule_id or "") or _fallback_actions(out.highlight)

    def committed(self, pending: PendingCounts | None) -> None:
        """After the event's commit, in commit order (the event writer's on_commit, under the
        persist lock): the cached counts follow, and the push sender wakes."""
        if pending is None:
            return
        for user_id, highlight in pending.notified:
            self.cache.add(pending.room_id, user_id, 1, 1 if highlight else 0)
        if pending.reset_user is not None:
            self.cache.clear(pending.room_id, pending.reset_user)
        if pending.notified and self.on_notified is not None:
            self.on_notified([u for u, _ in pending.notified])

    # --- read receipts ---------------------------------------------------------------------

    async def plan_receipt(self, user_id: str, room_id: str, row: EventRow
                           ) -> tuple[int, int, int | None] | None:
        """What a receipt on `row` makes of the counter: (notifications, highlights, the
        newest counted event the plan relies on, None: it covers all), or None: no change."""
        current = await store.get_row(user_id, room_id)
        p = row.stream_ordering
        if current is None or current["reset_ordering"] >= p:
            return None
        if current["last_ordering"] <= p:
            return (0, 0, None)
        last = current["last_ordering"]
        # Events after the receipt were counted: count again what is after it.
        events = await event_store.get_room_events(room_id, after=p, before=last,
                                                   limit=MAX_RECOUNT_EVENTS + 1,
                                                   newest_first=False)
        if len(events) > MAX_RECOUNT_EVENTS:
            return None
        view = await self._view(room_id, await self.hs.state.current_state_ids(room_id))
        rules = (await self.hs.push_rules.evaluation_rules([user_id]))[user_id]
        name = view.local.get(user_id)
        notif = highlight = 0
        facts: dict[str, RoomFacts] = {}
        for ev in events:
            if ev.sender == user_id:
                notif = highlight = 0
                continue
            if ev.sender not in facts:
                facts[ev.sender] = await self._facts(room_id, ev.sender, view)
            out = evaluate(rules, ev.pdu, name, facts[ev.sender])
            if out.notify:
                notif += 1
                highlight += 1 if out.highlight else 0
        return (notif, highlight, last)

    @staticmethod
    async def apply_receipt(user_id: str, room_id: str, row: EventRow,
                            plan: tuple[int, int, int | None], conn=None) -> None:
        """In the receipt's transaction (inside receipt_change)."""
        notif, highlight, expect_last = plan
        await store.reset(user_id, room_id, row.stream_ordering, notif, highlight, expect_last,
                          conn)

    @contextmanager
    def receipt_change(self, user_id: str, plan: Any) -> Iterator[None]:
        """Around a receipt's transaction: the user's cached counts are read again after."""
        if plan is None:
            yield
            return
        try:
            yield
        finally:
            self.cache.forget(user_id)

    # --- /sync -----------------------------------------------------------------------------

    async def counts(self, user_id: str, room_ids: list[str]) -> dict[str, dict[str, int]]:
        """room_id -> the spec's unread_notifications object, for every room asked about."""
        found = await self.cache.get(user_id, store.nonzero_counts,
                                     self.hs.events.persist_lock) if room_ids else {}
        return {r: {"notification_count": found.get(r, (0, 0))[0],
                    "highlight_count": found.get(r, (0, 0))[1]} for r in room_ids}
