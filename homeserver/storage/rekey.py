"""Re-sealing every sealed value and media file under the newest at-rest key, online
(`nexa rotate-key`, docs/at-rest-encryption.md).

Rows are walked in primary-key order in batches; each batch is one short transaction whose
UPDATEs only apply where the value is still the one read (a row the server rewrote meanwhile
is left for the next pass). Legacy plaintext is sealed on the way. Passes repeat until one
finds nothing left under an older key, and the last pass starts only once the server has had
`grace_s` to notice the new key (until then it may still seal a row under the old one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from homeserver.storage.transactions import in_transaction

from homeserver.crypto.at_rest import PREFIX
from homeserver.storage import sql
from homeserver.storage.media import MediaStore
from homeserver.storage.sealed import SEALED_COLUMNS, SealedColumn, keyring

log = logging.getLogger(__name__)

DEFAULT_BATCH = 500
# A server that never switches to the new key (keys from the environment, not restarted)
# would keep writing rows under the old one: give up rather than loop for ever.
MAX_PASSES = 50


class RotationStuck(RuntimeError):
    """Rows keep appearing under an older key."""


def _current_prefix() -> str:
    return f"{PREFIX}{keyring().current_id}:"


def _not_current(col: SealedColumn, prefix: str) -> str:
    # SUBSTR works the same on SQLite and PostgreSQL; the length is ours, not input.
    return f"{col.column} IS NOT NULL AND SUBSTR({col.column}, 1, {len(prefix)}) <> ?"


async def reseal_column(col: SealedColumn, batch: int = DEFAULT_BATCH) -> int:
    """Re-seal the column's values not under the newest key; how many were rewritten."""
    prefix = _current_prefix()
    columns = ", ".join(dict.fromkeys((col.pk, *col.aad_columns, col.column)))
    last = None
    changed = 0
    while True:
        where, values = _not_current(col, prefix), [prefix]
        if last is not None:
            where = f"{col.pk} > ? AND {where}"
            values = [last, prefix]
        rows = await sql.fetch(
            f"SELECT {columns} FROM {col.table} WHERE {where} ORDER BY {col.pk} LIMIT ?",
            [*values, batch])
        if not rows:
            return changed
        last = rows[-1][col.pk]
        updates = []
        for r in rows:
            parts = [r[c] for c in col.aad_columns]
            plaintext = col.open_bytes(r[col.column], *parts)
            updates.append((col.seal(plaintext, *parts), r[col.pk], r[col.column]))
        async with in_transaction() as conn:
            await sql.execute_many(
                f"UPDATE {col.table} SET {col.column} = ? WHERE {col.pk} = ? "
                f"AND {col.column} = ?", updates, conn)
        changed += len(updates)
        if len(rows) < batch:
            return changed


async def count_not_current(col: SealedColumn) -> int:
    prefix = _current_prefix()
    rows = await sql.fetch(
        f"SELECT COUNT(*) AS n FROM {col.table} WHERE {_not_current(col, prefix)}", [prefix])
    return int(rows[0]["n"])


async def reseal_media(store: MediaStore) -> int:
    """Re-seal the media files (thumbnails too) not under the newest key."""
    if not await asyncio.to_thread(store.root.is_dir):
        return 0
    blobs = await asyncio.to_thread(lambda: list(store.iter_blobs()))
    changed = 0
    for sha256, _path in blobs:
        if await asyncio.to_thread(store.reseal, sha256):
            changed += 1
    return changed


@dataclass
class RotationReport:
    key_id: str
    passes: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    files: int = 0


async def reseal_everything(store: MediaStore, *, key_added_at: float, grace_s: float,
                            batch: int = DEFAULT_BATCH,
                            progress: Callable[[str], None] | None = None) -> RotationReport:
    """Passes over every sealed column and the media files until one changes nothing and
    started at least `grace_s` seconds (monotonic clock) after `key_added_at`."""
    report = RotationReport(keyring().current_id)
    while True:
        started = time.monotonic()
        changed = 0
        for col in SEALED_COLUMNS:
            n = await reseal_column(col, batch)
            report.rows[col.purpose] = report.rows.get(col.purpose, 0) + n
            changed += n
        n = await reseal_media(store)
        report.files += n
        changed += n
        report.passes += 1
        if progress is not None:
            progress(f"pass {report.passes}: {changed} values re-sealed")
        if changed == 0 and started - key_added_at >= grace_s:
            return report
        if report.passes >= MAX_PASSES:
            raise RotationStuck(
                f"values under an older key still appear after {report.passes} passes: is a "
                "server running that does not have the new key (keys from the environment "
                "need a restart)?")
        if changed == 0:
            # Rows the server may still be sealing under the old key: look again once it has
            # had time to see the new key file.
            await asyncio.sleep(max(0.0, key_added_at + grace_s - time.monotonic()))


async def checkpoint_sqlite(conn) -> None:
    """Fold the WAL into the database file and truncate it, so re-sealed pages replace the old
    ones on disk now (a running server may hold readers: then it happens later)."""
    try:
        await conn.execute_query("PRAGMA wal_checkpoint(TRUNCATE)")
    except Exception as e:  # busy, or not in WAL mode: nothing lost either way
        log.info("WAL checkpoint not done now: %s", e)
