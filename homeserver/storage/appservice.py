"""Queries for the application-service queues.

`appservice_outbox` holds one row per (service, event), written by the event pipeline in the
event's own transaction. The sender turns up to N rows into a transaction: in ONE database
transaction it stores the transaction's ID and body in `appservice_txns` and deletes the rows,
so from then on the transaction is resent exactly as stored (same ID, same content) until the
service acknowledges it, in this process or after a restart. `appservice_state` keeps the
retry schedule. `appservice_ephemeral` holds typing / receipts / presence for services with
receive_ephemeral, one row per key (newer values replace queued ones), taken into a transaction
like the outbox rows.
"""

from __future__ import annotations

from typing import Any

from homeserver.storage.transactions import in_transaction

from homeserver.storage import sql
from homeserver.storage.sealed import APPSERVICE_TXN_BODY
from homeserver.types import now_ms

INSERT_OUTBOX = ("INSERT INTO appservice_outbox (appservice_id, event_id, created_ts) "
                 "VALUES (?,?,?)")


async def services_with_work() -> list[str]:
    rows = await sql.fetch("SELECT DISTINCT appservice_id FROM appservice_outbox")
    rows += await sql.fetch("SELECT DISTINCT appservice_id FROM appservice_txns")
    rows += await sql.fetch("SELECT DISTINCT appservice_id FROM appservice_ephemeral")
    return sorted({r["appservice_id"] for r in rows})


async def pending_txn(appservice_id: str) -> dict[str, Any] | None:
    """The oldest stored, unacknowledged transaction (normally the only one)."""
    rows = await sql.fetch(
        "SELECT id, txn_id, body_json, event_count FROM appservice_txns WHERE appservice_id = ? "
        "ORDER BY id LIMIT 1", [appservice_id])
    if not rows:
        return None
    row = rows[0]
    row["body_json"] = APPSERVICE_TXN_BODY.open(row["body_json"], appservice_id, row["txn_id"])
    return row


async def unsent_rows(appservice_id: str, limit: int) -> list[dict[str, Any]]:
    return await sql.fetch(
        "SELECT id, event_id FROM appservice_outbox WHERE appservice_id = ? ORDER BY id LIMIT ?",
        [appservice_id, limit])


async def delete_rows(appservice_id: str, row_ids: list[int], conn=None) -> None:
    for i in range(0, len(row_ids), 500):
        chunk = row_ids[i:i + 500]
        await sql.execute(
            f"DELETE FROM appservice_outbox WHERE appservice_id = ? "
            f"AND id IN ({sql.placeholders(len(chunk))})", [appservice_id, *chunk], conn)


async def create_txn(appservice_id: str, txn_id: str, body_json: str, event_count: int,
                     row_ids: list[int], ephemeral_ids: list[int] = ()) -> None:
    """Store the transaction and remove the rows it carries, atomically."""
    async with in_transaction() as conn:
        await sql.execute(
            "INSERT INTO appservice_txns (appservice_id, txn_id, body_json, event_count, "
            "created_ts) VALUES (?,?,?,?,?)",
            [appservice_id, txn_id, APPSERVICE_TXN_BODY.seal(body_json, appservice_id, txn_id),
             event_count, now_ms()], conn)
        await delete_rows(appservice_id, row_ids, conn)
        await _delete_ephemeral(appservice_id, list(ephemeral_ids), conn)


async def acknowledge(appservice_id: str, txn_id: str, ts: int) -> None:
    async with in_transaction() as conn:
        await sql.execute("DELETE FROM appservice_txns WHERE appservice_id = ? AND txn_id = ?",
                          [appservice_id, txn_id], conn)
        await sql.execute(
            "INSERT INTO appservice_state (appservice_id, retry_at_ts, backoff_ms, "
            "last_success_ts, last_txn_id) VALUES (?,0,0,?,?) ON CONFLICT (appservice_id) DO "
            "UPDATE SET retry_at_ts = 0, backoff_ms = 0, last_success_ts = excluded.last_success_ts, "
            "last_txn_id = excluded.last_txn_id", [appservice_id, ts, txn_id], conn)


async def get_state(appservice_id: str) -> dict[str, Any] | None:
    rows = await sql.fetch(
        "SELECT appservice_id, retry_at_ts, backoff_ms, last_success_ts, last_txn_id "
        "FROM appservice_state WHERE appservice_id = ?", [appservice_id])
    return rows[0] if rows else None


async def set_backoff(appservice_id: str, retry_at_ts: int, backoff_ms: int) -> None:
    await sql.execute(
        "INSERT INTO appservice_state (appservice_id, retry_at_ts, backoff_ms) VALUES (?,?,?) "
        "ON CONFLICT (appservice_id) DO UPDATE SET retry_at_ts = excluded.retry_at_ts, "
        "backoff_ms = excluded.backoff_ms", [appservice_id, retry_at_ts, backoff_ms])


async def queue_counts(appservice_id: str) -> dict[str, int]:
    rows = await sql.fetch("SELECT COUNT(*) AS n FROM appservice_outbox WHERE appservice_id = ?",
                           [appservice_id])
    txns = await sql.fetch("SELECT COUNT(*) AS n FROM appservice_txns WHERE appservice_id = ?",
                           [appservice_id])
    return {"queued_events": int(rows[0]["n"]), "pending_txns": int(txns[0]["n"])}


# --- ephemeral data (typing, receipts, presence) for services with receive_ephemeral -------

async def queue_ephemeral(rows: list[tuple[str, str, str]]) -> None:
    """(appservice_id, coalesce_key, edu_json) rows, in one transaction. A queued row with the
    same key is replaced: it is deleted and the new value gets a new ID, so a transaction being
    built from the old row (which deletes it by ID) can never delete the newer value."""
    if not rows:
        return
    ts = now_ms()
    async with in_transaction() as conn:
        await sql.execute_many("DELETE FROM appservice_ephemeral WHERE appservice_id = ? AND "
                               "coalesce_key = ?", [(a, k) for a, k, _ in rows], conn)
        await sql.execute_many(
            "INSERT INTO appservice_ephemeral (appservice_id, coalesce_key, edu_json, "
            "created_ts) VALUES (?,?,?,?)", [(a, k, j, ts) for a, k, j in rows], conn)


async def unsent_ephemeral(appservice_id: str, limit: int) -> list[dict[str, Any]]:
    return await sql.fetch(
        "SELECT id, edu_json FROM appservice_ephemeral WHERE appservice_id = ? ORDER BY id "
        "LIMIT ?", [appservice_id, limit])


async def delete_ephemeral(appservice_id: str, row_ids: list[int]) -> None:
    await _delete_ephemeral(appservice_id, row_ids, None)


async def _delete_ephemeral(appservice_id: str, row_ids: list[int], conn) -> None:
    for i in range(0, len(row_ids), 500):
        chunk = row_ids[i:i + 500]
        await sql.execute(
            f"DELETE FROM appservice_ephemeral WHERE appservice_id = ? "
            f"AND id IN ({sql.placeholders(len(chunk))})", [appservice_id, *chunk], conn)


async def room_aliases(room_id: str) -> list[str]:
    rows = await sql.fetch("SELECT alias FROM room_aliases WHERE room_id = ?", [room_id])
    return [r["alias"] for r in rows]
