"""A transaction whose task is cancelled while it starts must not leave the database locked
(SQLite: the connection's transaction lock) or short of connections (PostgreSQL: the pool)."""

from __future__ import annotations

import asyncio
import contextlib

from homeserver.storage.transactions import in_transaction
from tests.servers import open_database


async def test_cancelling_a_starting_transaction_gives_everything_back(backend, tmp_path):
    async with open_database(backend, tmp_path) as db:
        entered = 0

        async def body() -> None:
            nonlocal entered
            async with in_transaction():
                entered += 1
                await asyncio.sleep(30)

        # Cancel after 0, 1, 2, ... scheduling steps: some land between taking the lock or the
        # pooled connection and BEGIN (tortoise's own contexts would keep what they took).
        # PostgreSQL's pool holds 5 connections, so a leak shows within a few rounds.
        for steps in range(60):
            task = asyncio.create_task(body())
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            async with asyncio.timeout(10):  # a leaked lock or connection waits forever
                async with in_transaction() as conn:
                    await conn.execute_query("SELECT 1")
        assert entered > 0  # the sweep also reached bodies that had started
        pool = getattr(db.conn(), "_pool", None)
        if pool is not None:  # every pooled connection is back
            assert pool.get_idle_size() == pool.get_size()


async def test_a_batch_of_writes_is_all_or_nothing(backend, tmp_path):
    """sql.execute_batch (one hop to SQLite's thread for an event's whole write) keeps the
    order of its statements, and a failing statement leaves nothing of the batch behind."""
    from tortoise.exceptions import IntegrityError

    from homeserver.storage import sql

    async with open_database(backend, tmp_path):
        insert = "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)"
        async with in_transaction() as conn:
            await sql.execute_batch([
                (insert, ["!r:hs", "$a"]),
                sql.many(insert, [("!r:hs", "$b"), ("!r:hs", "$c")]),
                sql.many(insert, []),
                ("DELETE FROM forward_extremities WHERE event_id = ?", ["$b"]),
            ], conn)
        rows = await sql.fetch("SELECT event_id FROM forward_extremities ORDER BY event_id")
        assert [r["event_id"] for r in rows] == ["$a", "$c"]

        with contextlib.suppress(IntegrityError):
            async with in_transaction() as conn:
                await sql.execute_batch([
                    (insert, ["!r:hs", "$d"]),
                    (insert, ["!r:hs", None]),  # NOT NULL: the whole batch is rolled back
                ], conn)
            raise AssertionError("the failing statement did not raise IntegrityError")
        rows = await sql.fetch("SELECT event_id FROM forward_extremities ORDER BY event_id")
        assert [r["event_id"] for r in rows] == ["$a", "$c"]


async def test_write_transaction_commits_alone_or_joins_the_callers(backend, tmp_path):
    """sql.write_transaction: its own transaction (on SQLite one trip to the database thread),
    all or nothing; inside a caller's transaction it is part of that one. Other queries still
    work afterwards (the connection's lock was given back, also after a failure)."""
    import pytest
    from tortoise.exceptions import IntegrityError

    from homeserver.storage import sql

    insert = "INSERT INTO forward_extremities (room_id, event_id) VALUES (?, ?)"

    async def stored() -> list[str]:
        rows = await sql.fetch("SELECT event_id FROM forward_extremities ORDER BY event_id")
        return [r["event_id"] for r in rows]

    async with open_database(backend, tmp_path):
        await sql.write_transaction([(insert, ["!r:hs", "$a"]),
                                     sql.many(insert, [("!r:hs", "$b")])])
        assert await stored() == ["$a", "$b"]
        with pytest.raises(IntegrityError):
            await sql.write_transaction([(insert, ["!r:hs", "$c"]), (insert, ["!r:hs", None])])
        assert await stored() == ["$a", "$b"]
        with contextlib.suppress(RuntimeError):
            async with in_transaction():
                await sql.write_transaction([(insert, ["!r:hs", "$d"])])
                raise RuntimeError("the caller's transaction fails after it")
        assert await stored() == ["$a", "$b"]  # rolled back with the caller's transaction
        async with asyncio.timeout(10):
            async with in_transaction() as conn:
                await conn.execute_query("SELECT 1")


async def test_sqlite_page_cache_follows_the_config(tmp_path):
    from homeserver.storage.database import Database

    db = Database(f"sqlite://{tmp_path / 'nexa.db'}", sqlite_cache_kib=2048)
    await db.open()
    token = db.activate()
    try:
        rows = await db.conn().execute_query_dict("PRAGMA cache_size")
        assert rows[0]["cache_size"] == -2048
    finally:
        db.deactivate(token)
        await db.close()
