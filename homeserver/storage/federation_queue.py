"""Queries for the durable outbound federation queue (`federation_outbox`) and the per-destination
retry state (`federation_destinations`).

A row is one PDU (event_id) or one EDU (edu_json) waiting for one destination. PDU rows are
written by the event pipeline in the event's own transaction; EDU rows by `queue_edus`. The
sender gives a batch of rows a transaction ID the first time it sends them (`assign_txn`) and
deletes them once the destination acknowledged that transaction, so a retry — in this process
or after a restart — resends the same rows under the same ID.
"""

from __future__ import annotations

from typing import Any, Iterable

from homeserver.storage.transactions import in_transaction

from homeserver.storage import sql
from homeserver.storage.sealed import FEDERATION_EDU
from homeserver.types import now_ms

OUTBOX_COLUMNS = "id, event_id, edu_json, txn_id"


# --- the outbox --------------------------------------------------------------------------

async def destinations_with_rows() -> list[str]:
    rows = await sql.fetch("SELECT DISTINCT destination FROM federation_outbox")
    return sorted(r["destination"] for r in rows)


async def in_flight_rows(destination: str) -> list[dict[str, Any]]:
    """The rows of the oldest transaction already given an ID (normally the only one), in id
    order; [] when none has been sent yet."""
    first = await sql.fetch(
        "SELECT txn_id FROM federation_outbox WHERE destination = ? AND txn_id IS NOT NULL "
        "ORDER BY id LIMIT 1", [destination])
    if not first:
        return []
    return _opened(destination, await sql.fetch(
        f"SELECT {OUTBOX_COLUMNS} FROM federation_outbox WHERE destination = ? AND txn_id = ? "
        "ORDER BY id", [destination, first[0]["txn_id"]]))


def _opened(destination: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """EDU bodies are sealed at rest (they can carry message text: to-device, presence)."""
    for r in rows:
        r["edu_json"] = FEDERATION_EDU.open(r["edu_json"], destination)
    return rows


async def unsent_rows(destination: str, max_pdus: int, max_edus: int) -> list[dict[str, Any]]:
    """Up to `max_pdus` PDU rows and `max_edus` EDU rows not yet in a transaction, oldest first
    (PDUs in id order, which is commit order)."""
    out: list[dict[str, Any]] = []
    if max_pdus > 0:
        out += await sql.fetch(
            f"SELECT {OUTBOX_COLUMNS} FROM federation_outbox WHERE destination = ? "
            "AND txn_id IS NULL AND event_id IS NOT NULL ORDER BY id LIMIT ?",
            [destination, max_pdus])
    if max_edus > 0:
        out += await sql.fetch(
            f"SELECT {OUTBOX_COLUMNS} FROM federation_outbox WHERE destination = ? "
            "AND txn_id IS NULL AND event_id IS NULL ORDER BY id LIMIT ?",
            [destination, max_edus])
    out.sort(key=lambda r: r["id"])
    return _opened(destination, out)


async def assign_txn(destination: str, row_ids: list[int], txn_id: str) -> None:
    if not row_ids:
        return
    await sql.execute(
        f"UPDATE federation_outbox SET txn_id = ? WHERE destination = ? AND txn_id IS NULL "
        f"AND id IN ({sql.placeholders(len(row_ids))})", [txn_id, destination, *row_ids])


async def delete_rows(destination: str, row_ids: list[int], conn=None) -> None:
    for i in range(0, len(row_ids), 500):
        chunk = row_ids[i:i + 500]
        await sql.execute(
            f"DELETE FROM federation_outbox WHERE destination = ? "
            f"AND id IN ({sql.placeholders(len(chunk))})", [destination, *chunk], conn)


async def queue_edus(rows: Iterable[tuple[str, str]]) -> None:
    """(destination, edu_json) rows, in one transaction."""
    ts = now_ms()
    values = [(dest, FEDERATION_EDU.seal(edu_json, dest), ts) for dest, edu_json in rows]
    if not values:
        return
    async with in_transaction() as conn:
        await sql.execute_many(
            "INSERT INTO federation_outbox (destination, edu_json, created_ts) VALUES (?,?,?)",
            values, conn)


# --- destinations ------------------------------------------------------------------------

async def get_destination(destination: str) -> dict[str, Any] | None:
    rows = await sql.fetch(
        "SELECT destination, retry_at_ts, backoff_ms, last_success_ts FROM "
        "federation_destinations WHERE destination = ?", [destination])
    return rows[0] if rows else None


async def set_backoff(destination: str, retry_at_ts: int, backoff_ms: int, conn=None) -> None:
    await sql.execute(
        "INSERT INTO federation_destinations (destination, retry_at_ts, backoff_ms) "
        "VALUES (?,?,?) ON CONFLICT (destination) DO UPDATE SET "
        "retry_at_ts = excluded.retry_at_ts, backoff_ms = excluded.backoff_ms",
        [destination, retry_at_ts, backoff_ms], conn)


async def record_success(destination: str, ts: int, conn=None) -> None:
    await sql.execute(
        "INSERT INTO federation_destinations (destination, retry_at_ts, backoff_ms, "
        "last_success_ts) VALUES (?,0,0,?) ON CONFLICT (destination) DO UPDATE SET "
        "retry_at_ts = 0, backoff_ms = 0, last_success_ts = excluded.last_success_ts",
        [destination, ts], conn)


async def acknowledge(destination: str, row_ids: list[int], ts: int | None) -> None:
    """The destination answered a transaction: its rows go, and (ts given) the success is
    recorded with the backoff cleared — one database transaction."""
    async with in_transaction() as conn:
        await delete_rows(destination, row_ids, conn)
        if ts is not None:
            await record_success(destination, ts, conn)
        else:
            await set_backoff(destination, 0, 0, conn)


# --- who receives EDUs -------------------------------------------------------------------

async def users_sharing_rooms_with(user_id: str) -> list[str]:
    """Everyone joined to a room the user is joined to (the user included)."""
    rows = await sql.fetch(
        "SELECT DISTINCT b.user_id FROM room_memberships a JOIN room_memberships b "
        "ON a.room_id = b.room_id WHERE a.user_id = ? AND a.membership = 'join' "
        "AND b.membership = 'join'", [user_id])
    return [r["user_id"] for r in rows]


async def users_with_joined_rooms(user_ids: list[str]) -> set[str]:
    """The given users who are joined to at least one room this server knows."""
    out: set[str] = set()
    for i in range(0, len(user_ids), 500):
        chunk = user_ids[i:i + 500]
        rows = await sql.fetch(
            "SELECT DISTINCT user_id FROM room_memberships WHERE membership = 'join' AND "
            f"user_id IN ({sql.placeholders(len(chunk))})", chunk)
        out.update(r["user_id"] for r in rows)
    return out
