"""Unread notification counts per (user, room): the queries behind handlers/notifications.py."""

from __future__ import annotations

from typing import Any

from homeserver.storage import sql

# One statement per event for every member it concerns. A row whose reset_ordering is newer
# than the stored one replaces the counts (the sender's own event: zero from here); any other
# row adds to them.
_UPSERT = (
    "INSERT INTO notification_counts (user_id, room_id, notification_count, highlight_count, "
    "reset_ordering, last_ordering) VALUES {values} "
    "ON CONFLICT (user_id, room_id) DO UPDATE SET "
    "notification_count = CASE WHEN excluded.reset_ordering > notification_counts.reset_ordering "
    "THEN excluded.notification_count "
    "ELSE notification_counts.notification_count + excluded.notification_count END, "
    "highlight_count = CASE WHEN excluded.reset_ordering > notification_counts.reset_ordering "
    "THEN excluded.highlight_count "
    "ELSE notification_counts.highlight_count + excluded.highlight_count END, "
    "reset_ordering = CASE WHEN excluded.reset_ordering > notification_counts.reset_ordering "
    "THEN excluded.reset_ordering ELSE notification_counts.reset_ordering END, "
    "last_ordering = excluded.last_ordering"
)


def upsert_statement(room_id: str, rows: list[tuple[str, int, int, int]], ordering: int
                     ) -> tuple[str, list[Any]]:
    """rows: (user_id, notification increment, highlight increment, reset_ordering)."""
    values: list[Any] = []
    for user_id, notif, highlight, reset in rows:
        values.extend((user_id, room_id, notif, highlight, reset, ordering))
    return _UPSERT.format(values=",".join(["(?,?,?,?,?,?)"] * len(rows))), values


async def nonzero_counts(user_id: str) -> dict[str, tuple[int, int]]:
    """room_id -> (notification_count, highlight_count), for the user's rooms with unread."""
    rows = await sql.fetch(
        "SELECT room_id, notification_count, highlight_count FROM notification_counts "
        "WHERE user_id = ? AND (notification_count > 0 OR highlight_count > 0)", [user_id])
    return {r["room_id"]: (r["notification_count"], r["highlight_count"]) for r in rows}


async def get_row(user_id: str, room_id: str) -> dict[str, Any] | None:
    rows = await sql.fetch(
        "SELECT notification_count, highlight_count, reset_ordering, last_ordering "
        "FROM notification_counts WHERE user_id = ? AND room_id = ?", [user_id, room_id])
    return rows[0] if rows else None


async def reset(user_id: str, room_id: str, ordering: int, notif: int, highlight: int,
                expect_last: int | None, conn=None) -> None:
    """Counts from `ordering` on: only if not reset later already, and only if no event was
    counted since the caller looked (expect_last; None: the reset covers every counted event)."""
    cond, vals = ("last_ordering <= ?", [ordering]) if expect_last is None else \
        ("last_ordering = ?", [expect_last])
    await sql.execute(
        "UPDATE notification_counts SET notification_count = ?, highlight_count = ?, "
        "reset_ordering = ? WHERE user_id = ? AND room_id = ? AND reset_ordering < ? AND "
        f"{cond}", [notif, highlight, ordering, user_id, room_id, ordering, *vals], conn)


async def push_rules_many(user_ids: list[str]) -> dict[str, str]:
    """user_id -> stored push rules document, for the users that have one."""
    out: dict[str, str] = {}
    for i in range(0, len(user_ids), 500):
        chunk = user_ids[i:i + 500]
        rows = await sql.fetch(
            f"SELECT user_id, rules FROM push_rules WHERE user_id IN "
            f"({sql.placeholders(len(chunk))})", chunk)
        out.update({r["user_id"]: r["rules"] for r in rows})
    return out


# --- the notifications themselves: GET /notifications and the push sender -----------------

def insert_notifications_statement(room_id: str, event_id: str, ordering: int,
                                   rows: list[tuple[str, str, bool]], ts: int
                                   ) -> tuple[str, list[Any]]:
    """rows: (user_id, actions as JSON, highlight), for the event's own transaction."""
    values: list[Any] = []
    for user_id, actions, highlight in rows:
        values.extend((user_id, room_id, event_id, ordering, actions, highlight, ts))
    return ("INSERT INTO notifications (user_id, room_id, event_id, stream_ordering, actions, "
            f"highlight, ts) VALUES {','.join(['(?,?,?,?,?,?,?)'] * len(rows))}", values)


_NOTIFICATION_COLUMNS = "room_id, event_id, stream_ordering, actions, highlight, ts"


async def notifications_before(user_id: str, before: int | None, limit: int,
                               only_highlight: bool) -> list[dict[str, Any]]:
    """The user's notifications, newest first, older than `before` (a stream position)."""
    cond, vals = "", []
    if before is not None:
        cond, vals = " AND stream_ordering < ?", [before]
    if only_highlight:
        cond += " AND highlight = ?"
        vals.append(True)
    return await sql.fetch(
        f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE user_id = ?{cond} "
        "ORDER BY stream_ordering DESC LIMIT ?", [user_id, *vals, limit])


async def notifications_after(user_id: str, after: int, limit: int) -> list[dict[str, Any]]:
    """The user's notifications after a stream position, oldest first."""
    return await sql.fetch(
        f"SELECT {_NOTIFICATION_COLUMNS} FROM notifications WHERE user_id = ? AND "
        "stream_ordering > ? ORDER BY stream_ordering LIMIT ?", [user_id, after, limit])


async def read_up_to(user_id: str, room_ids: list[str]) -> dict[str, int]:
    """room_id -> stream position of the user's read receipt (public or private, for the
    whole room or its main timeline), for the rooms that have one."""
    out: dict[str, int] = {}
    rooms = sorted(set(room_ids))
    for i in range(0, len(rooms), 500):
        chunk = rooms[i:i + 500]
        rows = await sql.fetch(
            "SELECT r.room_id AS room_id, MAX(e.stream_ordering) AS pos FROM receipts r "
            "JOIN events e ON e.event_id = r.event_id WHERE r.user_id = ? AND "
            f"r.room_id IN ({sql.placeholders(len(chunk))}) AND r.receipt_type IN (?,?) "
            "AND r.thread_id IN (?,?) GROUP BY r.room_id",
            [user_id, *chunk, "m.read", "m.read.private", "", "main"])
        out.update({r["room_id"]: int(r["pos"]) for r in rows if r["pos"] is not None})
    return out


async def prune_notifications(older_than_ts: int, batch: int = 1000) -> int:
    """Delete notifications made before `older_than_ts`, oldest first (rows are made in time
    order, so the scan stops at the first one young enough). Returns how many went."""
    rows = await sql.fetch("SELECT id, ts FROM notifications ORDER BY id LIMIT ?", [batch])
    old = [r["id"] for r in rows if r["ts"] < older_than_ts]
    if old:
        await sql.execute(f"DELETE FROM notifications WHERE id IN ({sql.placeholders(len(old))})",
                          old)
    return len(old)
