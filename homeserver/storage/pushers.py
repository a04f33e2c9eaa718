"""Queries for pushers: a user's push gateways, how far each has been pushed, and its retry
schedule (handlers/pushers.py, handlers/push_sender.py)."""

from __future__ import annotations

from typing import Any

from homeserver.storage import sql
from homeserver.storage.transactions import in_transaction

COLUMNS = ("id, user_id, app_id, pushkey, kind, app_display_name, device_display_name, "
           "profile_tag, lang, data, device_id, created_ts, last_stream_ordering, retry_at_ts, "
           "backoff_ms")


async def all_pushers() -> list[dict[str, Any]]:
    return await sql.fetch(f"SELECT {COLUMNS} FROM pushers ORDER BY id")


async def pushers_of(user_id: str) -> list[dict[str, Any]]:
    return await sql.fetch(f"SELECT {COLUMNS} FROM pushers WHERE user_id = ? ORDER BY id",
                           [user_id])


async def get_pusher(pusher_id: int) -> dict[str, Any] | None:
    rows = await sql.fetch(f"SELECT {COLUMNS} FROM pushers WHERE id = ?", [pusher_id])
    return rows[0] if rows else None


async def upsert_pusher(p: dict[str, Any], position: int, ts: int, replace_others: bool
                        ) -> tuple[int, list[int]]:
    """Create or update the user's pusher (app_id, pushkey). An update keeps its id and how far
    it has been pushed. `replace_others`: other users' pushers with the same app_id and
    pushkey are deleted (the pushkey now belongs to this user). Returns (id, deleted ids)."""
    key = [p["app_id"], p["pushkey"], p["user_id"]]
    async with in_transaction() as conn:
        deleted: list[int] = []
        if replace_others:
            rows = await sql.fetch("SELECT id FROM pushers WHERE app_id = ? AND pushkey = ? "
                                   "AND user_id != ?", key, conn)
            deleted = [r["id"] for r in rows]
            if deleted:
                await sql.execute(f"DELETE FROM pushers WHERE id IN "
                                  f"({sql.placeholders(len(deleted))})", deleted, conn)
        # The retry schedule starts afresh: the client may have fixed what failed.
        await sql.execute(
            "INSERT INTO pushers (user_id, app_id, pushkey, kind, app_display_name, "
            "device_display_name, profile_tag, lang, data, device_id, created_ts, "
            "last_stream_ordering, retry_at_ts, backoff_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,0,0) "
            "ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET kind = excluded.kind, "
            "app_display_name = excluded.app_display_name, "
            "device_display_name = excluded.device_display_name, "
            "profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data, "
            "device_id = excluded.device_id, created_ts = excluded.created_ts, "
            "retry_at_ts = 0, backoff_ms = 0",
            [p["user_id"], p["app_id"], p["pushkey"], p["kind"], p["app_display_name"],
             p["device_display_name"], p["profile_tag"], p["lang"], p["data"], p["device_id"],
             ts, position], conn)
        rows = await sql.fetch("SELECT id FROM pushers WHERE app_id = ? AND pushkey = ? AND "
                               "user_id = ?", key, conn)
    return rows[0]["id"], deleted


async def delete_pusher(user_id: str, app_id: str, pushkey: str) -> list[int]:
    return await _delete("user_id = ? AND app_id = ? AND pushkey = ?",
                         [user_id, app_id, pushkey])


async def delete_by_id(pusher_id: int) -> list[int]:
    return await _delete("id = ?", [pusher_id])


async def delete_for_devices(user_id: str, device_ids: list[str]) -> list[int]:
    out: list[int] = []
    for i in range(0, len(device_ids), 500):
        chunk = device_ids[i:i + 500]
        out += await _delete(f"user_id = ? AND device_id IN ({sql.placeholders(len(chunk))})",
                             [user_id, *chunk])
    return out


async def delete_except_device(user_id: str, keep_device: str | None) -> list[int]:
    """Every pusher of the user but those made by `keep_device` (None: every pusher)."""
    if keep_device is None:
        return await _delete("user_id = ?", [user_id])
    return await _delete("user_id = ? AND (device_id IS NULL OR device_id != ?)",
                         [user_id, keep_device])


async def _delete(cond: str, values: list[Any]) -> list[int]:
    async with in_transaction() as conn:
        rows = await sql.fetch(f"SELECT id FROM pushers WHERE {cond}", values, conn)
        if rows:
            await sql.execute(f"DELETE FROM pushers WHERE {cond}", values, conn)
    return [r["id"] for r in rows]


async def pushers_with_work() -> list[int]:
    """Pushers whose user has notifications they have not been pushed yet."""
    rows = await sql.fetch(
        "SELECT p.id AS id FROM pushers p WHERE EXISTS (SELECT 1 FROM notifications n "
        "WHERE n.user_id = p.user_id AND n.stream_ordering > p.last_stream_ordering)")
    return [r["id"] for r in rows]


async def advance(pusher_id: int, position: int, answered: bool) -> None:
    """Pushed (or skipped) up to `position`, never backwards; `answered`: the gateway took
    it, so its backoff ends too."""
    reset = ", retry_at_ts = 0, backoff_ms = 0" if answered else ""
    await sql.execute(
        "UPDATE pushers SET last_stream_ordering = CASE WHEN last_stream_ordering < ? THEN ? "
        f"ELSE last_stream_ordering END{reset} WHERE id = ?", [position, position, pusher_id])


async def set_backoff(pusher_id: int, retry_at_ts: int, backoff_ms: int) -> None:
    await sql.execute("UPDATE pushers SET retry_at_ts = ?, backoff_ms = ? WHERE id = ?",
                      [retry_at_ts, backoff_ms, pusher_id])
