"""Room state queries: current state, state groups (state after each event) and memberships."""

from __future__ import annotations

from typing import Any, Iterable

from homeserver.storage import sql

StateKey = tuple[str, str]

# A group whose delta chain reaches this length is stored as a full snapshot instead, so
# reading any group's state is one bounded recursive query.
MAX_CHAIN_LENGTH = 50


async def get_current_state(room_id: str) -> dict[StateKey, str]:
    rows = await sql.fetch(
        "SELECT type, state_key, event_id FROM current_state WHERE room_id = ?", [room_id]
    )
    return {(r["type"], r["state_key"]): r["event_id"] for r in rows}


async def get_state_group(group: int) -> dict[StateKey, str]:
    rows = await sql.fetch(
        "WITH RECURSIVE chain(id, prev, depth) AS ("
        " SELECT id, prev_group, 0 FROM state_groups WHERE id = ?"
        " UNION ALL SELECT g.id, g.prev_group, c.depth + 1 FROM state_groups g"
        " JOIN chain c ON g.id = c.prev)"
        " SELECT e.type, e.state_key, e.event_id, c.depth FROM chain c"
        " JOIN state_group_edits e ON e.state_group = c.id ORDER BY c.depth DESC, e.id ASC",
        [group],
    )
    state: dict[StateKey, str] = {}
    for r in rows:
        state[(r["type"], r["state_key"])] = r["event_id"]
    return state


async def get_group_info(group: int) -> dict[str, Any] | None:
    rows = await sql.fetch(
        "SELECT id, room_id, prev_group, chain_length FROM state_groups WHERE id = ?", [group]
    )
    return rows[0] if rows else None


async def max_state_group() -> int:
    rows = await sql.fetch("SELECT MAX(id) AS m FROM state_groups")
    return int(rows[0]["m"] or 0)


async def room_state_group(room_id: str) -> int | None:
    """State group of the newest event in the room (the state after it)."""
    rows = await sql.fetch(
        "SELECT state_group FROM events WHERE room_id = ? AND state_group IS NOT NULL "
        "ORDER BY stream_ordering DESC LIMIT 1",
        [room_id],
    )
    return rows[0]["state_group"] if rows else None


# --- memberships ---------------------------------------------------------------------------

async def get_membership(room_id: str, user_id: str) -> dict[str, Any] | None:
    rows = await sql.fetch(
        "SELECT membership, event_id, stream_ordering, forgotten FROM room_memberships "
        "WHERE room_id = ? AND user_id = ?",
        [room_id, user_id],
    )
    return rows[0] if rows else None


async def get_user_memberships(user_id: str, include_forgotten: bool = False) -> list[dict[str, Any]]:
    q = ("SELECT room_id, membership, event_id, stream_ordering, forgotten FROM room_memberships "
         "WHERE user_id = ?")
    if not include_forgotten:
        q += " AND forgotten = ?"
        return await sql.fetch(q, [user_id, False])
    return await sql.fetch(q, [user_id])


async def get_room_members(room_id: str, membership: str | None = "join") -> dict[str, str]:
    """user_id -> membership for the room's current members (of the given membership)."""
    if membership is None:
        rows = await sql.fetch(
            "SELECT user_id, membership FROM room_memberships WHERE room_id = ?", [room_id]
        )
    else:
        rows = await sql.fetch(
            "SELECT user_id, membership FROM room_memberships WHERE room_id = ? AND membership = ?",
            [room_id, membership],
        )
    return {r["user_id"]: r["membership"] for r in rows}


async def users_sharing_rooms(user_id: str, candidates: Iterable[str]) -> set[str]:
    cands = list(candidates)
    if not cands:
        return set()
    rows = await sql.fetch(
        "SELECT DISTINCT b.user_id FROM room_memberships a JOIN room_memberships b "
        "ON a.room_id = b.room_id WHERE a.user_id = ? AND a.membership = 'join' AND "
        f"b.membership = 'join' AND b.user_id IN ({sql.placeholders(len(cands))})",
        [user_id, *cands],
    )
    return {r["user_id"] for r in rows}


async def shared_room_counts(user_id: str) -> dict[str, int]:
    rows = await sql.fetch(
        "SELECT b.user_id AS uid, COUNT(*) AS n FROM room_memberships a JOIN room_memberships b "
        "ON a.room_id = b.room_id WHERE a.user_id = ? AND a.membership = 'join' AND "
        "b.membership = 'join' AND b.user_id != ? GROUP BY b.user_id",
        [user_id, user_id],
    )
    return {r["uid"]: r["n"] for r in rows}


async def joined_counts(room_ids: list[str]) -> dict[str, int]:
    """room_id -> number of joined members (rooms without any are left out)."""
    out: dict[str, int] = {}
    for i in range(0, len(room_ids), 500):
        chunk = room_ids[i:i + 500]
        rows = await sql.fetch(
            "SELECT room_id, COUNT(*) AS n FROM room_memberships WHERE membership = ? AND "
            f"room_id IN ({sql.placeholders(len(chunk))}) GROUP BY room_id", ["join", *chunk])
        out.update({r["room_id"]: int(r["n"]) for r in rows})
    return out


async def set_forgotten(room_id: str, user_id: str) -> None:
    await sql.execute(
        "UPDATE room_memberships SET forgotten = ? WHERE room_id = ? AND user_id = ?",
        [True, room_id, user_id],
    )


