"""Queries for the user directory, the public room directory and username availability.

Each function is one query (or one per 500 IDs for long IN lists), so a handler answering a
search or a directory page never issues a query per user or per room.
"""

from __future__ import annotations

from typing import Any, Iterable

from homeserver.storage import sql

# Bind variables per IN list; well under SQLite's and PostgreSQL's limits.
CHUNK = 500

# State shown in a public room directory entry (all with state_key "").
ROOM_SUMMARY_TYPES = (
    "m.room.create", "m.room.name", "m.room.topic", "m.room.canonical_alias",
    "m.room.avatar", "m.room.join_rules", "m.room.history_visibility", "m.room.guest_access",
)


def _chunks(items: list[Any], size: int = CHUNK) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def like_escape(term: str) -> str:
    """Escape LIKE wildcards; queries use ESCAPE '!'."""
    return term.replace("!", "!!").replace("%", "!%").replace("_", "!_")


# --- usernames -----------------------------------------------------------------------------

async def existing_user_ids(user_ids: Iterable[str]) -> set[str]:
    """Which of these user IDs are registered (deactivated accounts included: never reused)."""
    ids = list(dict.fromkeys(user_ids))
    found: set[str] = set()
    for part in _chunks(ids):
        rows = await sql.fetch(
            f"SELECT user_id FROM users WHERE user_id IN ({sql.placeholders(len(part))})", part
        )
        found.update(r["user_id"] for r in rows)
    return found


# --- user directory ------------------------------------------------------------------------

async def search_user_candidates(
    searcher: str, term: str, server_name: str, limit: int, *, full_id: bool = False
) -> list[dict[str, Any]]:
    """Users matching `term` that `searcher` may see, best first, with shared-room counts.

    `term` must already be lowercased. It is matched on the localpart (or on the whole ID
    without the sigil when `full_id`) and on the display name. Visible: active, and either
    searchable or sharing a joined room with the searcher. The searcher is left out. Rows:
    user_id, displayname, avatar_url, shared (joined rooms in common). One query.
    """
    esc = like_escape(term)
    server = server_name.lower()
    if full_id:
        id_exact, id_prefix, id_sub = "@" + term, "@" + esc + "%", "@%" + esc + "%"
    else:
        # Local user IDs end with ':' + server name and localparts never contain ':', so
        # anchoring on that suffix keeps matches inside the localpart.
        suffix = ":" + like_escape(server)
        id_exact = "@" + term + ":" + server
        id_prefix, id_sub = "@" + esc + "%" + suffix, "@%" + esc + "%" + suffix
    name_prefix, name_sub = esc + "%", "%" + esc + "%"
    exact = "(LOWER(u.user_id) = ? OR LOWER(u.displayname) = ?)"
    prefix = "(LOWER(u.user_id) LIKE ? ESCAPE '!' OR LOWER(u.displayname) LIKE ? ESCAPE '!')"
    query = (
        "SELECT u.user_id, u.displayname, u.avatar_url, COALESCE(s.n, 0) AS shared "
        "FROM users u LEFT JOIN ("
        " SELECT b.user_id AS uid, COUNT(*) AS n FROM room_memberships a"
        " JOIN room_memberships b ON a.room_id = b.room_id"
        " WHERE a.user_id = ? AND a.membership = 'join' AND b.membership = 'join'"
        " GROUP BY b.user_id"
        ") s ON s.uid = u.user_id "
        "WHERE u.deactivated = ? AND u.user_id != ? AND (u.searchable = ? OR s.n IS NOT NULL) "
        "AND (LOWER(u.user_id) LIKE ? ESCAPE '!' OR LOWER(u.displayname) LIKE ? ESCAPE '!') "
        "ORDER BY CASE WHEN s.n IS NULL THEN 1 ELSE 0 END, "
        f"CASE WHEN {exact} THEN 0 WHEN {prefix} THEN 1 ELSE 2 END, "
        "shared DESC, u.user_id LIMIT ?"
    )
    values = [searcher, False, searcher, True, id_sub, name_sub,
              id_exact, term, id_prefix, name_prefix, limit]
    return await sql.fetch(query, values)


# --- public room directory -----------------------------------------------------------------

async def public_rooms() -> list[dict[str, Any]]:
    """Every published room with its joined member count, largest first (room_id, joined)."""
    return await sql.fetch(
        "SELECT r.room_id, (SELECT COUNT(*) FROM room_memberships m WHERE m.room_id = r.room_id"
        " AND m.membership = 'join') AS joined FROM rooms r WHERE r.is_public = ? "
        "ORDER BY joined DESC, r.room_id ASC",
        [True],
    )


async def summary_state_ids(room_ids: list[str]) -> dict[str, dict[str, str]]:
    """room_id -> {state type -> event_id} for ROOM_SUMMARY_TYPES, for many rooms at once."""
    out: dict[str, dict[str, str]] = {rid: {} for rid in room_ids}
    types = list(ROOM_SUMMARY_TYPES)
    for part in _chunks(room_ids):
        rows = await sql.fetch(
            "SELECT room_id, type, event_id FROM current_state WHERE state_key = '' AND "
            f"type IN ({sql.placeholders(len(types))}) AND "
            f"room_id IN ({sql.placeholders(len(part))})",
            [*types, *part],
        )
        for r in rows:
            out.setdefault(r["room_id"], {})[r["type"]] = r["event_id"]
    return out


async def room_is_public(room_id: str) -> bool | None:
    """The room's directory visibility, or None for an unknown room."""
    rows = await sql.fetch("SELECT is_public FROM rooms WHERE room_id = ?", [room_id])
    return bool(rows[0]["is_public"]) if rows else None


async def set_room_public(room_id: str, public: bool) -> None:
    await sql.execute("UPDATE rooms SET is_public = ? WHERE room_id = ?", [public, room_id])
