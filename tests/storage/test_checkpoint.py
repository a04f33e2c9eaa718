"""SQLite's write-ahead log is checkpointed beside the writes, not inside a commit."""

from __future__ import annotations

import asyncio

from homeserver.storage import sql
from homeserver.storage.database import Database


async def _open(tmp_path, **kw) -> tuple[Database, object]:
    db = Database(f"sqlite://{tmp_path / 'nexa.db'}", **kw)
    await db.open()
    return db, db.activate()


async def _write(n: int, start: int = 0) -> None:
    insert = "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)"
    for i in range(start, start + n):
        await sql.write_transaction([(insert, ["!r:hs", f"${i}" + "x" * 200])])


async def test_server_database_checkpoints_in_the_background(tmp_path):
    db, token = await _open(tmp_path, wal_checkpoints=True)
    try:
        rows = await db.conn().execute_query_dict("PRAGMA wal_autocheckpoint")
        assert rows[0]["wal_autocheckpoint"] == 0  # no commit ever checkpoints
        cp = db.checkpointer
        await _write(300)
        wal = tmp_path / "nexa.db-wal"
        assert wal.stat().st_size > 100_000  # nothing moved it into the file yet
        busy, frames, done = await asyncio.to_thread(cp.checkpoint)
        assert busy == 0 and frames > 0 and done == frames
        # The task runs on its own, too.
        cp.interval_s = 0.01
        await cp.stop()
        cp.start()
        for _ in range(3):
            cp.checkpointed.clear()
            async with asyncio.timeout(10):
                await cp.checkpointed.wait()
        # A log grown past the limit is started over: the next write begins at its start.
        cp.restart_bytes = 0
        await asyncio.to_thread(cp.checkpoint)
        size_before = wal.stat().st_size
        await _write(1, start=300)
        assert wal.stat().st_size <= size_before
        rows = await sql.fetch("SELECT COUNT(*) AS n FROM forward_extremities")
        assert rows[0]["n"] == 301
    finally:
        db.deactivate(token)
        await db.close()
    assert db.checkpointer._conn is None


async def test_one_off_commands_leave_checkpoints_to_sqlite(tmp_path):
    db, token = await _open(tmp_path)
    try:
        rows = await db.conn().execute_query_dict("PRAGMA wal_autocheckpoint")
        assert rows[0]["wal_autocheckpoint"] == 1000
        assert db.checkpointer is None
    finally:
        db.deactivate(token)
        await db.close()
