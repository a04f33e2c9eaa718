"""Spaces: `/rooms/{roomId}/hierarchy`, the rooms of a space tree the reader may join or see.

A space lists its rooms as `m.space.child` state events (state key: the child's room ID,
content with a non-empty `via` list; anything else is not a child). The walk is depth first,
children in the spec's order (`order`, then the child event's timestamp, then room ID); a
page is resumed by walking again and skipping what earlier pages returned, so the token
holds the offset and the options it was made with. Rooms this server does not hold are left
out (they are not asked of other servers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from homeserver.errors import MatrixError, forbidden
from homeserver.handlers.auth import Requester
from homeserver.handlers.directory import room_entry
from homeserver.storage import state as state_store
from homeserver.storage.directory import ROOM_SUMMARY_TYPES
from homeserver.storage.events import EventRow

if TYPE_CHECKING:
    from homeserver.server import HomeServer

MAX_LIMIT = 100
DEFAULT_LIMIT = 50
MAX_DEPTH = 50
# Rooms looked at per request at most, whatever the page size (a wide tree is paged).
MAX_ROOMS_WALKED = 1000
_CHILD = "m.space.child"


class SpacesHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs

    async def hierarchy(self, requester: Requester, room_id: str, suggested_only: bool,
                        limit: int, max_depth: int, from_token: str | None) -> dict[str, Any]:
        user_id = requester.user_id
        skip = _parse_token(from_token, max_depth, suggested_only)
        memberships = {m["room_id"]: m["membership"]
                       for m in await self.hs.state.user_memberships(user_id)}
        root_state = await self.hs.state.current_state_ids(room_id)
        if not root_state or not await self._may_see(room_id, root_state, memberships):
            raise forbidden("You may not see this room or space")
        page: list[tuple[str, dict, list[EventRow]]] = []  # (room, state IDs, children)
        stack: list[tuple[str, int]] = [(room_id, 0)]
        seen: set[str] = set()
        returned = walked = 0
        while stack and len(page) < limit and walked < MAX_ROOMS_WALKED:
            rid, depth = stack.pop()
            if rid in seen:
                continue
            seen.add(rid)
            walked += 1
            ids = root_state if rid == room_id else await self.hs.state.current_state_ids(rid)
            if not ids or not await self._may_see(rid, ids, memberships):
                continue
            children = await self._children(ids, suggested_only)
            if returned >= skip:
                page.append((rid, ids, children))
            returned += 1
            if depth < max_depth:
                stack.extend((c.state_key, depth + 1) for c in reversed(children))
        # The page's summaries: one read of member counts and one of summary events for all.
        counts = await state_store.joined_counts([rid for rid, _, _ in page])
        summary = {rid: [ids[(t, "")] for t in ROOM_SUMMARY_TYPES if (t, "") in ids]
                   for rid, ids, _ in page}
        rows = await self.hs.state.get_events(e for eids in summary.values() for e in eids)
        out: dict[str, Any] = {"rooms": [
            _entry(rid, [rows[e] for e in summary[rid] if e in rows], children, counts.get(rid, 0))
            for rid, _, children in page]}
        if stack and (len(page) >= limit or walked >= MAX_ROOMS_WALKED):
            out["next_batch"] = f"{returned}_{max_depth}_{int(suggested_only)}"
        return out

    async def _may_see(self, room_id: str, ids: dict, memberships: dict[str, str]) -> bool:
        """The reader is in the room or invited, may join it or knock, or it is readable by
        anyone (the spec's conditions for listing a room)."""
        if memberships.get(room_id) in ("join", "invite"):
            return True
        rows = await self.hs.state.get_events(
            ids[k] for k in (("m.room.join_rules", ""), ("m.room.history_visibility", ""))
            if k in ids)
        by_type = {r.type: r.pdu.get("content") or {} for r in rows.values()}
        rule = by_type.get("m.room.join_rules", {}).get("join_rule")
        if rule in ("public", "knock", "knock_restricted"):
            return True
        if rule == "restricted":
            allow = by_type.get("m.room.join_rules", {}).get("allow")
            for entry in allow if isinstance(allow, list) else ():
                if isinstance(entry, dict) and entry.get("type") == "m.room_membership" \
                        and memberships.get(entry.get("room_id")) == "join":
                    return True
        return by_type.get("m.room.history_visibility", {}).get(
            "history_visibility") == "world_readable"

    async def _children(self, ids: dict, suggested_only: bool) -> list[EventRow]:
        rows = await self.hs.state.get_events(
            eid for (t, _), eid in ids.items() if t == _CHILD)
        children = []
        for row in rows.values():
            content = row.pdu.get("content") or {}
            via = content.get("via")
            if not (isinstance(via, list) and via and all(isinstance(v, str) for v in via)):
                continue  # no via: not (or no longer) a child
            if suggested_only and content.get("suggested") is not True:
                continue
            children.append(row)
        return sorted(children, key=_child_order)


def _entry(room_id: str, summary: list[EventRow], children: list[EventRow],
           joined: int) -> dict[str, Any]:
    """The room's public summary, its room type and its children's state (stripped, with
    their time)."""
    entry = room_entry(room_id, joined, {r.type: r for r in summary})
    entry["children_state"] = [
        {"type": _CHILD, "state_key": c.state_key, "content": c.pdu.get("content") or {},
         "sender": c.sender, "origin_server_ts": c.origin_server_ts} for c in children]
    return entry


def _child_order(row: EventRow) -> tuple:
    # The spec: `order` (printable ASCII, at most 50 characters) first, those without it
    # after; then the child event's timestamp; then the room ID.
    order = (row.pdu.get("content") or {}).get("order")
    valid = isinstance(order, str) and 0 < len(order) <= 50 \
        and all(0x20 <= ord(ch) <= 0x7E for ch in order)
    return (0, order, row.origin_server_ts, row.state_key) if valid else \
        (1, "", row.origin_server_ts, row.state_key)


def _parse_token(token: str | None, max_depth: int, suggested_only: bool) -> int:
    if token is None:
        return 0
    parts = token.split("_")
    if len(parts) != 3 or not all(p.isdigit() and len(p) <= 18 for p in parts):
        raise MatrixError(400, "M_INVALID_PARAM", "Unknown pagination token")
    if (int(parts[1]), bool(int(parts[2]))) != (max_depth, suggested_only):
        raise MatrixError(400, "M_INVALID_PARAM",
                          "max_depth and suggested_only cannot change while paginating")
    return int(parts[0])
