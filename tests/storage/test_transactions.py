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
