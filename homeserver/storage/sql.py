"""Raw SQL for the hot paths, written once with '?' placeholders for both SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from typing import Any, NamedTuple, Sequence, Union

from tortoise.backends.base.client import TransactionalDBClient
from tortoise.connection import get_connection
from tortoise.exceptions import IntegrityError, OperationalError

from homeserver.storage.transactions import in_transaction

_QMARK = re.compile(r"\?")


def _conn():
    return get_connection("default")


def _dialect_sql(conn, query: str) -> str:
    if conn.capabilities.dialect == "postgres":
        counter = iter(range(1, 10_000))
        return _QMARK.sub(lambda _m: f"${next(counter)}", query)
    return query


async def fetch(query: str, values: Sequence[Any] = (), conn=None) -> list[dict[str, Any]]:
    conn = conn or _conn()
    return await conn.execute_query_dict(_dialect_sql(conn, query), list(values))


async def execute(query: str, values: Sequence[Any] = (), conn=None) -> None:
    conn = conn or _conn()
    await conn.execute_query(_dialect_sql(conn, query), list(values))


async def execute_many(query: str, rows: list[Sequence[Any]], conn=None) -> None:
    if not rows:
        return
    conn = conn or _conn()
    await conn.execute_many(_dialect_sql(conn, query), [list(r) for r in rows])


class Many(NamedTuple):
    """One statement run for each of several rows (executemany)."""

    query: str
    rows: list[Sequence[Any]]


def many(query: str, rows: list[Sequence[Any]]) -> Many:
    return Many(query, rows)


# A write for execute_batch: (query, values), or Many(query, rows).
Statement = Union[tuple[str, Sequence[Any]], Many]


async def execute_batch(statements: list[Statement], conn) -> None:
    """Several writes, in order, in the caller's transaction `conn`.

    On SQLite every statement is otherwise a round trip to the database thread, each a GIL
    hand-over and an event-loop wake-up: an event's write (a dozen statements) spent more time
    in those hops than in SQLite. Here the whole list runs in one hop. Nothing in the list may
    depend on the result of another (they are writes)."""
    if not statements:
        return
    if _on_aiosqlite(conn):
        await _in_sqlite_thread(conn, _run_all, statements)
        return
    for stmt in statements:
        if isinstance(stmt, Many):
            await execute_many(stmt.query, stmt.rows, conn)
        else:
            await execute(stmt[0], stmt[1], conn)


async def write_transaction(statements: list[Statement]) -> None:
    """Run these writes in one transaction of their own, committed when this returns.

    On SQLite the whole transaction (BEGIN, the writes, COMMIT) is one trip to the database
    thread. Through tortoise's transaction context it is four (its BEGIN is a COMMIT and a
    BEGIN), and SQLite's single connection is locked for all of them: every other query of
    the server waits behind a commit for four event-loop turns instead of one. A caller
    already inside a transaction has its writes run there instead. Cancelling the caller
    cannot split the transaction: the database thread finishes it (commit or rollback)."""
    conn = _conn()
    if isinstance(conn, TransactionalDBClient):  # inside the caller's transaction
        await execute_batch(statements, conn)
        return
    if not _on_aiosqlite(conn):
        async with in_transaction() as txn:
            await execute_batch(statements, txn)
        return
    # The client's connection lock is also its transaction lock: nothing else runs meanwhile.
    await _in_sqlite_thread(conn, _run_in_transaction, statements)


def _on_aiosqlite(conn) -> bool:
    raw = getattr(conn, "_connection", None)  # aiosqlite's connection, on SQLite
    return conn.capabilities.dialect == "sqlite" and hasattr(raw, "_execute")


async def _in_sqlite_thread(conn, fn, statements: list[Statement]) -> None:
    async with conn.acquire_connection() as connection:
        try:
            await connection._execute(fn, connection._conn, statements)
        except sqlite3.IntegrityError as e:
            raise IntegrityError(e) from e
        except sqlite3.OperationalError as e:
            raise OperationalError(e) from e


def _run_in_transaction(db: sqlite3.Connection, statements: list[Statement]) -> None:
    """In SQLite's thread: BEGIN, the writes, COMMIT; ROLLBACK if any write fails."""
    db.execute("BEGIN")
    try:
        _run_all(db, statements)
    except BaseException:
        db.rollback()
        raise
    db.commit()


def _run_all(db: sqlite3.Connection, statements: list[Statement]) -> None:
    """In SQLite's thread."""
    for stmt in statements:
        if isinstance(stmt, Many):
            if stmt.rows:
                db.executemany(stmt.query, [list(r) for r in stmt.rows])
        else:
            db.execute(stmt[0], list(stmt[1]))


def placeholders(n: int) -> str:
    return ",".join("?" * n)
