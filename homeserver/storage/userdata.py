"""Queries for per-user data: account data, filters, receipts, presence and push rules.

Writes that carry a stream position take an optional `conn` so the caller can run them in one
transaction (and under the stream's lock, so positions become visible in order).
"""

from __future__ import annotations

from typing import Any, Iterable

from homeserver.storage import sql
from homeserver.storage.sealed import ACCOUNT_DATA

# Stay well under SQLite's bound-variable limit when a query lists many rooms or users.
CHUNK = 500


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i:i + CHUNK]


def _range(column: str, since: int | None, upto: int) -> tuple[str, list[int]]:
    if since is None:
        return f"{column} <= ?", [upto]
    return f"{column} > ? AND {column} <= ?", [since, upto]


# --- account data --------------------------------------------------------------------------

async def get_account_data(user_id: str, room_id: str, type_: str) -> str | None:
    rows = await sql.fetch(
        "SELECT content FROM account_data WHERE user_id = ? AND room_id = ? AND type = ?",
        [user_id, room_id, type_],
    )
    return ACCOUNT_DATA.open(rows[0]["content"], user_id, room_id, type_) if rows else None


async def upsert_account_data(user_id: str, room_id: str, type_: str, content: str,
                              stream_id: int, conn=None) -> None:
    await sql.execute(
        "INSERT INTO account_data (user_id, room_id, type, content, stream_id) VALUES (?,?,?,?,?) "
        "ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, "
        "stream_id = excluded.stream_id",
        [user_id, room_id, type_, ACCOUNT_DATA.seal(content, user_id, room_id, type_),
         stream_id], conn,
    )


async def account_data_changes(user_id: str, since: int | None, upto: int) -> list[dict[str, Any]]:
    cond, vals = _range("stream_id", since, upto)
    rows = await sql.fetch(
        f"SELECT room_id, type, content FROM account_data WHERE user_id = ? AND {cond} "
        "ORDER BY stream_id",
        [user_id, *vals],
    )
    for r in rows:
        r["content"] = ACCOUNT_DATA.open(r["content"], user_id, r["room_id"], r["type"])
    return rows


async def set_privacy_columns(user_id: str, searchable: bool, invite_policy: str, conn=None) -> None:
    await sql.execute(
        "UPDATE users SET searchable = ?, invite_policy = ? WHERE user_id = ?",
        [searchable, invite_policy, user_id], conn,
    )


async def get_privacy_columns(user_id: str) -> dict[str, Any] | None:
    rows = await sql.fetch(
        "SELECT searchable, invite_policy FROM users WHERE user_id = ?", [user_id]
    )
    return rows[0] if rows else None


# --- filters -------------------------------------------------------------------------------

async def find_filter(user_id: str, filter_json: str) -> int | None:
    rows = await sql.fetch(
        "SELECT id FROM filters WHERE user_id = ? AND filter_json = ? ORDER BY id LIMIT 1",
        [user_id, filter_json],
    )
    return int(rows[0]["id"]) if rows else None


async def add_filter(user_id: str, filter_json: str) -> int:
    from homeserver.storage.models_userdata import Filter

    row = await Filter.create(user_id=user_id, filter_json=filter_json)
    return int(row.id)


async def get_filter(user_id: str, filter_id: int) -> str | None:
    rows = await sql.fetch(
        "SELECT filter_json FROM filters WHERE id = ? AND user_id = ?", [filter_id, user_id]
    )
    return rows[0]["filter_json"] if rows else None


# --- receipts ------------------------------------------------------------------------------

async def get_receipt_event(room_id: str, receipt_type: str, user_id: str,
                            thread_id: str) -> str | None:
    rows = await sql.fetch(
        "SELECT event_id FROM receipts WHERE room_id = ? AND receipt_type = ? AND user_id = ? "
        "AND thread_id = ?",
        [room_id, receipt_type, user_id, thread_id],
    )
    return rows[0]["event_id"] if rows else None


async def upsert_receipt(room_id: str, receipt_type: str, user_id: str, thread_id: str,
                         event_id: str, ts: int, stream_id: int, conn=None) -> None:
    await sql.execute(
        "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id) "
        "VALUES (?,?,?,?,?,?,?) ON CONFLICT (room_id, receipt_type, user_id, thread_id) "
        "DO UPDATE SET event_id = excluded.event_id, ts = excluded.ts, "
        "stream_id = excluded.stream_id",
        [room_id, receipt_type, user_id, thread_id, event_id, ts, stream_id], conn,
    )


async def receipts_for_rooms(room_ids: list[str], viewer: str, since: int | None,
                             upto: int) -> list[dict[str, Any]]:
    """Receipts in the rooms within the range; other users' private receipts are left out."""
    cond, vals = _range("stream_id", since, upto)
    out: list[dict[str, Any]] = []
    for chunk in _chunks(list(room_ids)):
        out += await sql.fetch(
            "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts "
            f"WHERE room_id IN ({sql.placeholders(len(chunk))}) AND {cond} "
            "AND (receipt_type != ? OR user_id = ?) ORDER BY stream_id",
            [*chunk, *vals, "m.read.private", viewer],
        )
    return out


# --- presence ------------------------------------------------------------------------------

PRESENCE_COLUMNS = "user_id, state, status_msg, last_active_ts, stream_id"


async def get_presence(user_id: str) -> dict[str, Any] | None:
    rows = await sql.fetch(f"SELECT {PRESENCE_COLUMNS} FROM presence WHERE user_id = ?", [user_id])
    return rows[0] if rows else None


async def upsert_presence(rows: list[tuple[str, str, str | None, int, int]], conn=None) -> None:
    """rows: (user_id, state, status_msg, last_active_ts, stream_id)."""
    for r in rows:
        await sql.execute(
            f"INSERT INTO presence ({PRESENCE_COLUMNS}) VALUES (?,?,?,?,?) "
            "ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, "
            "status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts, "
            "stream_id = excluded.stream_id",
            list(r), conn,
        )


async def touch_presence(user_id: str, ts: int) -> None:
    await sql.execute("UPDATE presence SET last_active_ts = ? WHERE user_id = ?", [ts, user_id])


async def presence_for_sync(user_id: str, since: int | None, upto: int,
                            include_offline: bool) -> list[dict[str, Any]]:
    """Presence rows in the range for the user and everyone sharing a joined room with them."""
    cond, vals = _range("p.stream_id", since, upto)
    q = (f"SELECT p.user_id, p.state, p.status_msg, p.last_active_ts FROM presence p "
         f"WHERE {cond} AND (p.user_id = ? OR p.user_id IN ("
         "SELECT b.user_id FROM room_memberships a JOIN room_memberships b "
         "ON a.room_id = b.room_id WHERE a.user_id = ? AND a.membership = 'join' "
         "AND b.membership = 'join'))")
    args: list[Any] = [*vals, user_id, user_id]
    if not include_offline:
        q += " AND p.state != ?"
        args.append("offline")
    return await sql.fetch(q + " ORDER BY p.stream_id", args)


async def stale_presence(cutoff_ts: int, server_name: str, limit: int = 1000
                         ) -> list[dict[str, Any]]:
    """Our own users only: remote users' presence is their server's to change."""
    return await sql.fetch(
        f"SELECT {PRESENCE_COLUMNS} FROM presence WHERE state != ? AND last_active_ts < ? "
        "AND user_id LIKE ? LIMIT ?",
        ["offline", cutoff_ts, f"%:{server_name}", limit],
    )


async def joined_rooms_of(user_ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {u: [] for u in user_ids}
    for chunk in _chunks(list(user_ids)):
        rows = await sql.fetch(
            "SELECT user_id, room_id FROM room_memberships WHERE membership = 'join' AND "
            f"user_id IN ({sql.placeholders(len(chunk))})",
            chunk,
        )
        for r in rows:
            out[r["user_id"]].append(r["room_id"])
    return out


# --- push rules ----------------------------------------------------------------------------

async def get_push_rules(user_id: str) -> str | None:
    rows = await sql.fetch("SELECT rules FROM push_rules WHERE user_id = ?", [user_id])
    return rows[0]["rules"] if rows else None


async def put_push_rules(user_id: str, rules: str, conn=None) -> None:
    await sql.execute(
        "INSERT INTO push_rules (user_id, rules) VALUES (?, ?) "
        "ON CONFLICT (user_id) DO UPDATE SET rules = excluded.rules",
        [user_id, rules], conn,
    )
