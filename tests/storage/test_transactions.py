"""A transaction whose task is cancelled while it starts must not leave the database locked."""

from __future__ import annotations

import asyncio
import contextlib

from homeserver.storage.database import Database
from homeserver.storage.transactions import in_transaction


async def test_cancelling_a_starting_transaction_never_leaves_the_lock_taken(tmp_path):
    db = Database(f"sqlite://{tmp_path / 'tx.db'}")
    await db.open()
    token = db.activate()
    try:
        async def body() -> None:
            async with in_transaction():
                await asyncio.sleep(30)

        # Cancel after 0, 1, 2, ... scheduling steps: one of them lands between taking the
        # connection's transaction lock and BEGIN (tortoise's own context would keep the lock).
        for steps in range(40):
            task = asyncio.create_task(body())
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            async with asyncio.timeout(10):  # a leaked lock would make this wait forever
                async with in_transaction() as conn:
                    await conn.execute_query("SELECT 1")
    finally:
        db.deactivate(token)
        await db.close()
