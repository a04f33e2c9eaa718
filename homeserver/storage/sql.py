"""Raw SQL for the hot paths, written once with '?' placeholders for both SQLite and PostgreSQL."""

from __future__ import annotations

import re
from typing import Any, Sequence

from tortoise.connection import get_connection

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


def placeholders(n: int) -> str:
    return ",".join("?" * n)
