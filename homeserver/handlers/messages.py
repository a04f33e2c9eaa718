"""Sending and reading room events: send, redact, /event, /context, /messages, /relations,
/timestamp_to_event."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from homeserver.errors import MatrixError, forbidden, not_found
from homeserver.events.auth import get_named_level, get_user_power_level
from homeserver.handlers.auth import Requester
from homeserver.handlers.visibility import filter_for_user, format_events
from homeserver.storage import events as event_store
from homeserver.storage import state as state_store
from homeserver.storage.events import EventRow
from homeserver.types import StreamToken

if TYPE_CHECKING:
    from homeserver.server import HomeServer


def pagination_token(position: int) -> str:
    return f"t{position}"


class MessagesHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    # --- sending ---------------------------------------------------------------------------

    async def send(self, requester: Requester, room_id: str, etype: str, content: dict,
                   state_key: str | None = None, txn_id: str | None = None) -> EventRow:
        await self.hs.rooms._require_room(room_id)
        # Application services' senders, and their users unless `rate_limited`, are exempt.
        if not self.hs.appservices.exempt_from_rate_limits(requester):
            self.hs.message_limiter.check(requester.user_id)
        txn = (requester.device_id or requester.token_hash, txn_id) if txn_id else None
        if etype == "m.room.redaction":
            raise MatrixError(400, "M_BAD_JSON", "Use the /redact endpoint to redact events")
        if state_key is not None and etype == "m.room.member":
            # A joined member may restate its own join (a room-specific name or avatar); other
            # membership changes go through the membership endpoints and their checks.
            own_profile = (state_key == requester.user_id and content.get("membership") == "join"
                           and await self.hs.state.membership_of(room_id, state_key) == "join")
            if not own_profile:
                return await self._membership_via_state(requester, room_id, state_key, content)
        return await self.hs.events.send_event(room_id, requester.user_id, etype, content,
                                               state_key, txn=txn)

    async def _membership_via_state(self, requester: Requester, room_id: str, target: str,
                                    content: dict) -> EventRow:
        """PUT /state/m.room.member/{user}: the same rules as the membership endpoints."""
        rooms = self.hs.rooms
        membership = content.get("membership")
        reason = content.get("reason") if isinstance(content.get("reason"), str) else None
        if membership == "invite":
            await rooms.invite(requester, room_id, target, reason)
        elif membership == "join" and target == requester.user_id:
            await rooms.join(requester, room_id, reason)
        elif membership == "leave" and target == requester.user_id:
            await rooms.leave(requester, room_id, reason)
        elif membership in ("leave", "ban"):
            await rooms.set_membership_of_other(requester, room_id, target, membership, reason)
        else:
            raise MatrixError(400, "M_BAD_JSON", f"Unsupported membership {membership!r}")
        member = await self.hs.state.current_state_event(room_id, "m.room.member", target)
        if member is None:
            raise MatrixError(404, "M_NOT_FOUND", "Membership not found")
        return member

    async def redact(self, requester: Requester, room_id: str, event_id: str,
                     reason: str | None, txn_id: str | None) -> EventRow:
        await self.hs.rooms._require_room(room_id)
        original = await self.hs.state.get_event(event_id)

        async def check(pdu: dict, auth_map: dict) -> None:
            # Redacting someone else's event needs the room's redact level.
            if original is not None and original.sender != requester.user_id:
                auth = {k: v.pdu for k, v in auth_map.items()}
                version = await self.hs.state.room_version(room_id)
                if get_user_power_level(requester.user_id, auth, version) < get_named_level(
                        auth, "redact", 50):
                    raise forbidden("You may not redact other users' events")

        content: dict[str, Any] = {}
        if reason is not None:
            content["reason"] = reason
        txn = (requester.device_id or requester.token_hash, txn_id) if txn_id else None
        return await self.hs.events.send_event(room_id, requester.user_id, "m.room.redaction",
                                               content, txn=txn, redacts=event_id, check=check)

    # --- reading ---------------------------------------------------------------------------

    async def read_bounds(self, user_id: str, room_id: str) -> int | None:
        """Upper stream bound of what the user may read (None = up to now); raises if none."""
        await self.hs.rooms._require_room(room_id)
        m = await state_store.get_membership(room_id, user_id)
        if m and m["membership"] in ("join", "invite"):
            return None
        hv = await self.hs.state.current_state_event(room_id, "m.room.history_visibility")
        if hv and hv.pdu["content"].get("history_visibility") == "world_readable":
            return None
        if m and m["membership"] in ("leave", "ban") and not m["forgotten"]:
            return m["stream_ordering"]
        raise forbidden("You are not allowed to view this room")

    async def _timeline_event(self, room_id: str, event_id: str, bound: int | None) -> EventRow:
        """An event clients may be shown: in this room, in the timeline (not an outlier or
        soft-failed), and not after the reader left."""
        row = await self.hs.state.get_event(event_id)
        if (row is None or row.room_id != room_id or row.outlier or row.soft_failed
                or (bound is not None and row.stream_ordering > bound)):
            raise not_found("Event not found")
        return row

    async def get_event(self, requester: Requester, room_id: str, event_id: str) -> dict:
        bound = await self.read_bounds(requester.user_id, room_id)
        row = await self._timeline_event(room_id, event_id, bound)
        visible = await filter_for_user(self.hs, requester.user_id, [row])
        if not visible:
            raise not_found("Event not found")
        return (await self._client_events(requester, visible, bound))[0]

    async def _client_events(self, requester: Requester, rows: list[EventRow],
                             bound: int | None) -> list[dict[str, Any]]:
        """Timeline events as clients get them: thread roots with their thread summary."""
        events = await format_events(self.hs, rows, requester.user_id, requester.device_id)
        return await self.hs.threads.bundle(requester, events, bound)

    async def paginate(self, requester: Requester, room_id: str, from_token: str | None,
                       to_token: str | None, direction: str, limit: int, flt: Any) -> dict:
        bound = await self.read_bounds(requester.user_id, room_id)
        backwards = direction == "b"
        start, stop = self._range(bound, from_token, to_token, backwards)
        fetch = functools.partial(
            event_store.get_room_events, room_id, types=getattr(flt, "types", None),
            not_types=getattr(flt, "not_types", None), senders=getattr(flt, "senders", None),
            not_senders=getattr(flt, "not_senders", None))
        chunk, pos, exhausted = await self._collect(requester.user_id, fetch, start, stop, bound,
                                                    backwards, limit, backfill_room=room_id)
        out: dict[str, Any] = {
            "start": from_token or pagination_token(start),
            "chunk": await self._client_events(requester, chunk, bound),
        }
        if not exhausted:
            out["end"] = pagination_token(pos)
        if getattr(flt, "lazy_load_members", False) and chunk:
            out["state"] = await self._member_state(room_id, {r.sender for r in chunk}, chunk)
        return out

    def _range(self, bound: int | None, from_token: str | None, to_token: str | None,
                backwards: bool) -> tuple[int, int | None]:
        """Stream positions to walk from and to, never past what the reader may see."""
        if from_token is None:
            start = (bound if bound is not None else self.hs.ids.events.visible) if backwards else 0
        else:
            start = StreamToken.parse(from_token, param="from").events
        if bound is not None:
            start = min(start, bound)
        stop = StreamToken.parse(to_token, param="to").events if to_token else None
        return start, stop

    async def _collect(self, user_id: str, fetch: Any, start: int, stop: int | None,
                       bound: int | None, backwards: bool, limit: int,
                       backfill_room: str | None = None) -> tuple[list[EventRow], int, bool]:
        """Up to `limit` events the user may see, from `fetch(after=, before=, limit=,
        newest_first=)` walking from `start` towards `stop`: (events, position reached,
        whether the range is exhausted). Visibility may hide events, so a few pages are read."""
        chunk: list[EventRow] = []
        pos = start
        backfilled = False
        for _ in range(6):
            want = limit - len(chunk) + 1
            if backwards:
                rows = await fetch(after=stop, before=pos, limit=want, newest_first=True)
            else:
                rows = await fetch(after=pos, before=stop if stop is not None else bound,
                                   limit=want, newest_first=False)
            more = len(rows) > limit - len(chunk)
            rows = rows[: limit - len(chunk)]
            if rows:
                pos = rows[-1].stream_ordering - 1 if backwards else rows[-1].stream_ordering
            chunk.extend(await filter_for_user(self.hs, user_id, rows))
            if not more:
                # Out of local history: older events may live on other servers.
                if backwards and stop is None and backfill_room and not backfilled:
                    backfilled = True
                    if await self.hs.backfiller.backfill(backfill_room):
                        continue
                return chunk, pos, True
            if len(chunk) >= limit:
                break
        return chunk, pos, False

    async def relations(self, requester: Requester, room_id: str, event_id: str,
                        rel_type: str | None, event_type: str | None, from_token: str | None,
                        to_token: str | None, direction: str, limit: int) -> dict:
        """/relations: the events relating to one the user may see, newest first by default."""
        bound = await self.read_bounds(requester.user_id, room_id)
        parent = await self._timeline_event(room_id, event_id, bound)
        if not await filter_for_user(self.hs, requester.user_id, [parent]):
            raise not_found("Event not found")
        backwards = direction == "b"
        start, stop = self._range(bound, from_token, to_token, backwards)
        fetch = functools.partial(event_store.get_relation_events, event_id, room_id,
                                  rel_type=rel_type, event_type=event_type)
        chunk, pos, exhausted = await self._collect(requester.user_id, fetch, start, stop, bound,
                                                    backwards, limit)
        out: dict[str, Any] = {"chunk": await format_events(
            self.hs, chunk, requester.user_id, requester.device_id)}
        if not exhausted:
            out["next_batch"] = pagination_token(pos)
        if from_token is not None:
            out["prev_batch"] = from_token
        return out

    async def event_at_time(self, requester: Requester, room_id: str, ts: int,
                            forward: bool) -> dict:
        """/timestamp_to_event: the event closest to `ts` in the direction asked (the first at
        or after it, or the last at or before it) among those the user may see."""
        bound = await self.read_bounds(requester.user_id, room_id)
        past = None
        for _ in range(10):  # pages of events the user may not see are skipped
            rows = await event_store.get_events_by_time(room_id, ts, forward, 50, past)
            seen = [r for r in rows if bound is None or r.stream_ordering <= bound]
            for row in await filter_for_user(self.hs, requester.user_id, seen):
                return {"event_id": row.event_id, "origin_server_ts": row.origin_server_ts}
            if len(rows) < 50:
                break
            past = (rows[-1].origin_server_ts, rows[-1].stream_ordering)
        raise not_found("No event found " + ("at or after" if forward else "at or before")
                        + " that time")

    async def _member_state(self, room_id: str, senders: set[str], rows: list[EventRow]) -> list:
        newest = max(rows, key=lambda r: r.stream_ordering)
        st = await self.hs.state.state_at(newest, [("m.room.member", s) for s in senders])
        return await format_events(self.hs, st.values())

    async def context(self, requester: Requester, room_id: str, event_id: str, limit: int,
                      flt: Any) -> dict:
        bound = await self.read_bounds(requester.user_id, room_id)
        row = await self._timeline_event(room_id, event_id, bound)
        if not await filter_for_user(self.hs, requester.user_id, [row]):
            raise not_found("Event not found")
        half_before = limit // 2
        half_after = limit - half_before
        before = await event_store.get_room_events(room_id, before=row.stream_ordering - 1,
                                                   limit=half_before, newest_first=True)
        after = await event_store.get_room_events(room_id, after=row.stream_ordering, before=bound,
                                                  limit=half_after, newest_first=False)
        before = await filter_for_user(self.hs, requester.user_id, before)
        after = await filter_for_user(self.hs, requester.user_id, after)
        events = await self._client_events(requester, [*before, row, *after], bound)
        last = after[-1] if after else row
        if getattr(flt, "lazy_load_members", False):
            senders = {r.sender for r in [*before, row, *after]}
            state = await self._member_state(room_id, senders, [last])
        else:
            state = await format_events(self.hs, (await self.hs.state.state_at(last)).values())
        return {
            "event": events[len(before)],
            "events_before": events[:len(before)],
            "events_after": events[len(before) + 1:],
            "start": pagination_token((before[-1].stream_ordering if before else row.stream_ordering) - 1),
            "end": pagination_token(after[-1].stream_ordering if after else row.stream_ordering),
            "state": state,
        }
