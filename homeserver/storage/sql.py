"""Raw SQL for the hot paths, written once with '?' placeholders for both SQLite and PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from typing import Any, NamedTuple, Sequence, Union

from tortoise.connection import get_connection
from tortoise.exceptions import IntegrityError, OperationalError

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
    raw = getattr(conn, "_connection", None)  # aiosqlite's connection, on SQLite
    if conn.capabilities.dialect == "sqlite" and hasattr(raw, "_execute"):
        async with conn.acquire_connection() as connection:
            try:
                await connection._execute(_run_all, connection._conn, statements)
            except sqlite3.IntegrityError as e:
                raise IntegrityError(e) from e
            except sqlite3.OperationalError as e:
                raise OperationalError(e) from e
        return
    for stmt in statements:
        if isinstance(stmt, Many):
            await execute_many(stmt.query, stmt.rows, conn)
        else:
            await execute(stmt[0], stmt[1], conn)


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
