"""/sync: everything that happened for a user between two stream tokens.

Long-polls register a notifier listener *before* reading the current token, so an event that
lands in between still wakes the request; the common "nothing new" path touches no database.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from homeserver.handlers.auth import Requester
from homeserver.handlers.visibility import filter_for_user, format_events
from homeserver.notifier import wait_for
from homeserver.storage import events as event_store
from homeserver.storage import state as state_store
from homeserver.storage.events import EventRow
from homeserver.types import StreamToken

if TYPE_CHECKING:
    from homeserver.server import HomeServer

DEFAULT_TIMELINE_LIMIT = 10
MAX_TIMEOUT_MS = 300_000
MAX_PACED_DEVICES = 50_000
# /sync responses per second at which coalescing starts, and over how many more it reaches the
# configured window
COALESCE_FROM = 50
COALESCE_RAMP = 200


class DecayingRate:
    """Events per second, exponentially weighted (cheap enough to update on every event)."""

    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self._value = 0.0
        self._t = time.monotonic()

    def _decay(self, now: float) -> None:
        self._value *= 0.5 ** ((now - self._t) / self.half_life_s)
        self._t = now

    def hit(self) -> None:
        self._decay(time.monotonic())
        self._value += 1.0

    def per_second(self) -> float:
        self._decay(time.monotonic())
        return self._value * math.log(2) / self.half_life_s


def fget(flt: dict | None, *path: str, default: Any = None) -> Any:
    node: Any = flt or {}
    for p in path:
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def timeline_limit(flt: dict | None) -> int:
    limit = fget(flt, "room", "timeline", "limit", default=DEFAULT_TIMELINE_LIMIT)
    if not isinstance(limit, int) or limit < 0:
        limit = DEFAULT_TIMELINE_LIMIT
    return min(limit, 500)


def _type_allowed(etype: str, types: list[str] | None, not_types: list[str] | None) -> bool:
    def match(pattern: str) -> bool:
        return pattern == etype or (pattern.endswith("*") and etype.startswith(pattern[:-1]))

    if not_types and any(match(p) for p in not_types):
        return False
    return types is None or any(match(p) for p in types)


class SyncHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.coalesce_max_s = hs.config.limits.sync_coalesce_ms / 1000
        self._wake_rate = DecayingRate(half_life_s=1.0)
        # device (its token hash) -> when its last incremental response was computed
        self._answered: OrderedDict[str, float] = OrderedDict()

    def coalesce_delay(self) -> float:
        """The coalescing window: under load a device gets at most one incremental response
        per window, holding everything that landed meanwhile. What costs is responses, so
        the window follows how many the server gives: none below 50 a second, rising
        linearly to the configured maximum at 250 a second."""
        self._wake_rate.hit()
        rate = self._wake_rate.per_second()
        return self.coalesce_max_s * min(1.0, max(0.0, (rate - COALESCE_FROM) / COALESCE_RAMP))

    def _pace(self, device_key: str) -> float:
        """Seconds this device's next response should wait, and note that it is answered.

        Pacing each device, rather than pausing after a wake-up, also holds back the client
        that is already behind when it asks again (the usual case under load: events land
        while it handles the previous response), which a wake-up pause never saw."""
        window = self.coalesce_delay()
        now = time.monotonic()
        last = self._answered.pop(device_key, None)
        pause = 0.0 if last is None else max(0.0, last + window - now)
        self._answered[device_key] = now + pause
        while len(self._answered) > MAX_PACED_DEVICES:
            self._answered.popitem(last=False)
        return pause

    def current_token(self) -> StreamToken:
        hs = self.hs
        return StreamToken(
            events=hs.ids.events.visible,
            receipts=hs.receipts.current_position(),
            account_data=hs.account_data.current_position(),
            presence=hs.presence.current_position(),
            typing=hs.typing.current_position(),
            to_device=hs.to_device.current_position(),
            device_lists=hs.device_lists.current_position(),
        )

    async def sync(self, requester: Requester, since: str | None, timeout_ms: int,
                   full_state: bool, flt: dict | None) -> dict[str, Any]:
        since_tok = StreamToken.parse(since) if since else None
        deadline = time.monotonic() + min(timeout_ms, MAX_TIMEOUT_MS) / 1000
        await self.hs.presence.touch(requester.user_id)
        if since_tok is not None and requester.device_id:
            # The client has every to-device message up to its token: they can go.
            await self.hs.to_device.acknowledge(requester.user_id, requester.device_id,
                                                since_tok.to_device)
        while True:
            rooms = [m["room_id"] for m in await self.hs.state.user_memberships(requester.user_id)]
            with self.hs.notifier.listen(requester.user_id, rooms) as listener:
                now = self.current_token()
                if since_tok is not None and not full_state and not now.is_after(since_tok):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not await wait_for(listener, remaining):
                        empty = self._empty(since_tok)
                        await self._key_counts(empty, requester)
                        return empty
                    continue
                if (since_tok is not None and not full_state
                        and now.events - since_tok.events < timeline_limit(flt)):
                    # Under load many events land within milliseconds: a device gets them in
                    # one response per coalescing window instead of one response each (no
                    # delay when the server is quiet). Not when waiting could overflow the
                    # client's timeline limit: a gap costs it more than the response saved.
                    pause = self._pace(requester.token_hash)
                    if pause > 0:
                        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                        now = self.current_token()
            result = await self._compute(requester, since_tok, now, full_state, flt)
            if (since_tok is None or full_state or self._has_content(result)
                    or time.monotonic() >= deadline):
                return result
            since_tok = now  # nothing visible changed; wait for the next wake-up

    @staticmethod
    def _empty(token: StreamToken) -> dict[str, Any]:
        return {"next_batch": token.serialize(),
                "rooms": {"join": {}, "invite": {}, "leave": {}, "knock": {}},
                "presence": {"events": []}, "account_data": {"events": []},
                "to_device": {"events": []}, "device_lists": {"changed": [], "left": []}}

    @staticmethod
    def _has_content(res: dict[str, Any]) -> bool:
        r = res["rooms"]
        dl = res.get("device_lists") or {}
        return bool(r["join"] or r["invite"] or r["leave"] or r["knock"]
                    or res["presence"]["events"]
                    or res["account_data"]["events"] or (res.get("to_device") or {}).get("events")
                    or dl.get("changed") or dl.get("left"))

    async def _compute(self, requester: Requester, since: StreamToken | None, now: StreamToken,
                       full_state: bool, flt: dict | None) -> dict[str, Any]:
        hs = self.hs
        user_id = requester.user_id
        memberships = await hs.state.user_memberships(user_id)
        global_ad, room_ad = await hs.account_data.get_for_sync(
            user_id, since.account_data if since else None, now.account_data)
        joined_ids = [m["room_id"] for m in memberships if m["membership"] == "join"]
        receipts = await hs.receipts.get_receipts_for_sync(
            user_id, joined_ids, since.receipts if since else None, now.receipts)
        typing_rooms = (hs.typing.rooms_changed_since(since.typing, set(joined_ids))
                        if since else set(joined_ids))
        tails = await hs.state.recent.tails(joined_ids, event_store.latest_orderings)
        changed: set[str] = set()
        if since is not None:
            for r, t in tails.items():
                entries = hs.state.recent.between(t, since.events, now.events)
                if entries is None or entries:
                    changed.add(r)
        if since is not None and len(tails) < len(joined_ids):
            rest = [r for r in joined_ids if r not in tails]
            changed |= set(await event_store.rooms_with_events_between(rest, since.events,
                                                                        now.events))

        join: dict[str, Any] = {}
        invite: dict[str, Any] = {}
        leave: dict[str, Any] = {}
        knock: dict[str, Any] = {}
        include_leave = bool(fget(flt, "room", "include_leave", default=False))
        room_filter = fget(flt, "room", "rooms")
        not_rooms = fget(flt, "room", "not_rooms") or []
        for m in memberships:
            room_id = m["room_id"]
            if (room_filter is not None and room_id not in room_filter) or room_id in not_rooms:
                continue
            membership = m["membership"]
            changed_since = since is None or m["stream_ordering"] > since.events
            if m["stream_ordering"] > now.events:
                continue  # landed after this token was taken: the next sync has it
            if membership == "join":
                initial = since is None or full_state or changed_since
                if not initial and room_id not in changed and room_id not in receipts \
                        and room_id not in typing_rooms and room_id not in room_ad:
                    continue
                join[room_id] = await self._joined_room(
                    requester, room_id, None if initial else since, now, flt,
                    receipts.get(room_id), room_id in typing_rooms, room_ad.get(room_id, []),
                    full=initial)
            elif membership == "invite" and changed_since:
                inv = await hs.state.get_event(m["event_id"])
                invite[room_id] = {"invite_state": {"events": await hs.rooms.invite_state(room_id, inv)}}
            elif membership == "knock" and changed_since:
                own = await hs.state.get_event(m["event_id"])
                knock[room_id] = {"knock_state": {"events": await hs.rooms.invite_state(
                    room_id, own)}}
            elif membership in ("leave", "ban") and (
                    (since is not None and changed_since) or (since is None and include_leave)):
                leave[room_id] = await self._left_room(requester, room_id, since, m, flt)

        if join:
            # Always the current counts (a receipt that lowers them also puts the room here).
            unread = await hs.notifications.counts(user_id, list(join))
            for room_id, data in join.items():
                data["unread_notifications"] = unread[room_id]
        presence = await hs.presence.get_presence_for_sync(
            user_id, since.presence if since else None, now.presence)
        out = {
            "next_batch": now.serialize(),
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": knock},
            "presence": {"events": presence},
            "account_data": {"events": global_ad},
        }
        await self._e2e(out, requester, since, now)
        return out

    async def _e2e(self, out: dict[str, Any], requester: Requester, since: StreamToken | None,
                   now: StreamToken) -> None:
        """to_device, device_lists and the device's one-time/fallback key state."""
        hs = self.hs
        user_id, device_id = requester.user_id, requester.device_id
        changed, left = ([], []) if since is None else \
            await hs.device_lists.changes_between(user_id, since, now)
        out["device_lists"] = {"changed": changed, "left": left}
        if not device_id:
            return
        events, reached = await hs.to_device.get_for_sync(
            user_id, device_id, since.to_device if since else None, now.to_device)
        out["to_device"] = {"events": events}
        if reached is not None:  # more than one response holds: continue from there
            out["next_batch"] = now.copy_with(to_device=reached).serialize()
        await self._key_counts(out, requester)

    async def _key_counts(self, out: dict[str, Any], requester: Requester) -> None:
        """In every response, even an empty one: claims by others advance no stream, and a
        device must learn when its one-time keys run low or its fallback key was used."""
        if requester.device_id:
            e2e = self.hs.e2e_keys
            out["device_one_time_keys_count"] = await e2e.one_time_key_counts(
                requester.user_id, requester.device_id)
            out["device_unused_fallback_key_types"] = await e2e.unused_fallback_key_types(
                requester.user_id, requester.device_id)

    async def _timeline(self, requester: Requester, room_id: str, since: StreamToken | None,
                        upto: int, flt: dict | None) -> tuple[list[EventRow], bool]:
        limit = timeline_limit(flt)
        if since is not None:
            rows = await self._timeline_from_tail(room_id, since.events, upto, limit, flt)
            if rows is not None:
                limited = len(rows) > limit
                rows = rows[-limit:] if limit else []
                return await filter_for_user(self.hs, requester.user_id, rows), limited
        rows = await event_store.get_room_events(
            room_id, after=since.events if since else None, before=upto, limit=limit + 1,
            newest_first=True,
            types=fget(flt, "room", "timeline", "types"),
            not_types=fget(flt, "room", "timeline", "not_types"),
            senders=fget(flt, "room", "timeline", "senders"),
            not_senders=fget(flt, "room", "timeline", "not_senders"),
        )
        limited = len(rows) > limit
        rows = list(reversed(rows[:limit]))
        return await filter_for_user(self.hs, requester.user_id, rows), limited

    async def _timeline_from_tail(self, room_id: str, after: int, upto: int, limit: int,
                                  flt: dict | None) -> list[EventRow] | None:
        """Timeline events from the in-memory tail (None: not covered, ask the database)."""
        tails = await self.hs.state.recent.tails([room_id], event_store.latest_orderings)
        tail = tails.get(room_id)
        entries = self.hs.state.recent.between(tail, after, upto) if tail else None
        if entries is None:
            return None
        types = fget(flt, "room", "timeline", "types")
        not_types = fget(flt, "room", "timeline", "not_types")
        senders = fget(flt, "room", "timeline", "senders")
        not_senders = fget(flt, "room", "timeline", "not_senders")
        entries = [e for e in entries
                   if _type_allowed(e.type, types, not_types)
                   and (senders is None or e.sender in senders)
                   and e.sender not in (not_senders or ())]
        entries = entries[-(limit + 1):]
        rows = await self.hs.state.get_events(e.event_id for e in entries)
        return [rows[e.event_id] for e in entries if e.event_id in rows]

    async def _state_for(self, requester: Requester, room_id: str, since: StreamToken | None,
                         timeline: list[EventRow], limited: bool, upto_row: EventRow | None,
                         flt: dict | None, full: bool) -> list[EventRow]:
        hs = self.hs
        if full:
            if timeline:
                st = await hs.state.state_at(timeline[0], before=True)
            elif upto_row is not None:
                st = await hs.state.state_at(upto_row)
            else:
                st = await hs.state.current_state(room_id)
            rows = list(st.values())
        elif limited and timeline:
            between = await event_store.state_events_between(
                room_id, since.events, timeline[0].stream_ordering - 1)
            latest: dict[tuple[str, str | None], EventRow] = {}
            for r in between:
                latest[(r.type, r.state_key)] = r
            rows = list(latest.values())
        else:
            rows = []
        types = fget(flt, "room", "state", "types")
        not_types = fget(flt, "room", "state", "not_types")
        rows = [r for r in rows if _type_allowed(r.type, types, not_types)]
        if fget(flt, "room", "state", "lazy_load_members", default=False):
            wanted = {r.sender for r in timeline} | {requester.user_id}
            rows = [r for r in rows if r.type != "m.room.member" or r.state_key in wanted]
            if not full and timeline:
                # Members of timeline senders, as of the start of the timeline.
                have = {r.state_key for r in rows if r.type == "m.room.member"}
                need = [("m.room.member", s) for s in wanted - have]
                st = await hs.state.state_at(timeline[0], need, before=True)
                rows.extend(st.values())
        timeline_ids = {r.event_id for r in timeline}
        return [r for r in rows if r.event_id not in timeline_ids]

    async def _joined_room(self, requester: Requester, room_id: str, since: StreamToken | None,
                           now: StreamToken, flt: dict | None, receipts: dict | None,
                           typing_changed: bool, account_data: list, full: bool) -> dict:
        hs = self.hs
        timeline, limited = await self._timeline(requester, room_id, since, now.events, flt)
        state = await self._state_for(requester, room_id, since, timeline, limited, None, flt, full)
        fmt = lambda rows: format_events(hs, rows, requester.user_id, requester.device_id,  # noqa
                                         include_room_id=False)
        prev = (timeline[0].stream_ordering - 1) if timeline else (since.events if since else now.events)
        ephemeral = []
        if typing_changed:
            ephemeral.append({"type": "m.typing", "content": {"user_ids": hs.typing.get_typing(room_id)}})
        if receipts:
            ephemeral.append({"type": "m.receipt", "content": receipts})
        out = {
            "timeline": {"events": await fmt(timeline), "limited": limited,
                         "prev_batch": f"t{prev}"},
            "state": {"events": await fmt(state)},
            "ephemeral": {"events": ephemeral},
            "account_data": {"events": account_data},
            "unread_notifications": {"notification_count": 0, "highlight_count": 0},  # see _compute
        }
        if full or any(r.type == "m.room.member" for r in timeline):
            out["summary"] = await self._summary(room_id, requester.user_id)
        return out

    async def _left_room(self, requester: Requester, room_id: str, since: StreamToken | None,
                         m: dict, flt: dict | None) -> dict:
        leave_row = await self.hs.state.get_event(m["event_id"])
        timeline, limited = await self._timeline(requester, room_id, since, m["stream_ordering"], flt)
        full = since is None
        state = await self._state_for(requester, room_id, since, timeline, limited, leave_row, flt,
                                      full or (limited and not timeline))
        fmt = lambda rows: format_events(self.hs, rows, requester.user_id, requester.device_id,  # noqa
                                         include_room_id=False)
        prev = (timeline[0].stream_ordering - 1) if timeline else m["stream_ordering"]
        return {"timeline": {"events": await fmt(timeline), "limited": limited, "prev_batch": f"t{prev}"},
                "state": {"events": await fmt(state)}, "account_data": {"events": []}}

    async def _summary(self, room_id: str, user_id: str) -> dict[str, Any]:
        members = await state_store.get_room_members(room_id, membership=None)
        joined = sorted(u for u, mm in members.items() if mm == "join")
        invited = sorted(u for u, mm in members.items() if mm == "invite")
        heroes = [u for u in joined + invited if u != user_id][:5]
        return {"m.heroes": heroes, "m.joined_member_count": len(joined),
                "m.invited_member_count": len(invited)}

