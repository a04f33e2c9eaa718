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
