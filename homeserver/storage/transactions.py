"""Database transactions that survive their task being cancelled while they start.

tortoise-orm's SQLite transaction context takes the connection's transaction lock and then
awaits the connection and BEGIN. A cancellation that lands in that window (a client that goes
away, a page reload aborting its requests) leaves `async with` before the body and never runs
`__aexit__`: the lock stays taken and every later transaction of the server waits forever.
The pooled (PostgreSQL) context has the same window between taking a connection from the pool
and BEGIN: the connection never went back, and a few such cancellations exhaust the pool.
This wrapper notices what its context took and gives everything back.
"""

from __future__ import annotations

import contextlib
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from tortoise.backends.base.client import TransactionContextPooled
from tortoise.connection import get_connections
from tortoise.transactions import in_transaction as _tortoise_in_transaction


class _TrackedLock:
    """Stands in for the connection's transaction lock in one context: remembers whether this
    context holds it, so that it is released exactly once."""

    def __init__(self, lock: Any) -> None:
        self.lock, self.held = lock, False

    async def acquire(self) -> bool:
        await self.lock.acquire()
        self.held = True
        return True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.lock.release()

    def locked(self) -> bool:
        return self.lock.locked()


@asynccontextmanager
async def in_transaction(connection_name: str | None = None) -> AsyncIterator[Any]:
    ctx = _tortoise_in_transaction(connection_name)
    tracked = None
    if hasattr(ctx, "_trxlock"):  # SQLite: one connection, one transaction lock
        tracked = ctx._trxlock = _TrackedLock(ctx._trxlock)
    try:
        conn = await ctx.__aenter__()
    except BaseException:
        if tracked is not None and tracked.held:  # cancelled after taking the lock
            _reset_context_var(ctx)
            with contextlib.suppress(Exception):
                await ctx.connection.rollback()  # BEGIN may have run already
            tracked.release()
        elif isinstance(ctx, TransactionContextPooled):
            await _return_pooled_connection(ctx)
        raise
    try:
        yield conn
    except BaseException as e:
        await ctx.__aexit__(type(e), e, e.__traceback__)
        raise
    else:
        await ctx.__aexit__(None, None, None)


def _reset_context_var(ctx: Any) -> None:
    token = getattr(ctx, "token", None)  # set once the context bound its connection
    if token is not None:
        get_connections().reset(token)


async def _return_pooled_connection(ctx: TransactionContextPooled) -> None:
    client = ctx.client
    conn, parent = client._connection, client._parent
    if conn is None or conn is parent._connection or parent._pool is None:
        return  # nothing was taken from the pool
    _reset_context_var(ctx)
    with contextlib.suppress(Exception):
        if conn.is_in_transaction():  # BEGIN ran already (release would roll back, and warn)
            await conn.execute("ROLLBACK")
    with contextlib.suppress(Exception):
        await parent._pool.release(conn)
