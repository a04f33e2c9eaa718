"""A small persistent store for bridges (SQLite through aiosqlite).

It remembers which transactions the homeserver already delivered (so a retried transaction is
acknowledged without being processed twice), maps remote IDs to Matrix IDs and back, and keeps
small key/value documents (per-room bot state, settings). Adapters add their own tables with
`execute`/`fetch`; everything that must change together goes in one `transaction()`.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Iterable

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS as_txns (
    txn_id TEXT PRIMARY KEY,
    received_ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS id_mappings (
    kind TEXT NOT NULL,
    remote_id TEXT NOT NULL,
    matrix_id TEXT NOT NULL,
    PRIMARY KEY (kind, remote_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS id_mappings_matrix ON id_mappings (kind, matrix_id);
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""

# Transaction IDs are remembered this long (the homeserver retries for far less).
TXN_RETENTION_S = 7 * 24 * 3600


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db: aiosqlite.Connection | None = None
        # One writer at a time: aiosqlite runs on one thread, but transactions must not
        # interleave between tasks.
        self._lock = asyncio.Lock()

    async def open(self, extra_schema: str = "") -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=FULL")
        await self._db.executescript(SCHEMA + extra_schema)
        await self._db.execute("DELETE FROM as_txns WHERE received_ts < ?",
                               [int(time.time()) - TXN_RETENTION_S])

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            else:
                await self.db.execute("COMMIT")

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement in its own transaction; returns the last row id."""
        async with self.transaction() as db:
            cur = await db.execute(sql, list(params))
            return cur.lastrowid or 0

    async def fetch(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        """Read outside any open transaction (inside one, use its connection directly)."""
        async with self._lock:
            return await self.fetch_in(self.db, sql, params)

    @staticmethod
    async def fetch_in(db: aiosqlite.Connection, sql: str,
                       params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        async with db.execute(sql, list(params)) as cur:
            return [dict(r) for r in await cur.fetchall()]

    # --- transactions from the homeserver ----------------------------------------------------

    async def txn_seen(self, txn_id: str) -> bool:
        rows = await self.fetch("SELECT 1 FROM as_txns WHERE txn_id = ?", [txn_id])
        return bool(rows)

    @staticmethod
    async def mark_txn(db: aiosqlite.Connection, txn_id: str) -> None:
        await db.execute("INSERT OR IGNORE INTO as_txns (txn_id, received_ts) VALUES (?, ?)",
                         [txn_id, int(time.time())])

    # --- remote <-> Matrix IDs ---------------------------------------------------------------

    async def set_mapping(self, kind: str, remote_id: str, matrix_id: str) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM id_mappings WHERE kind = ? AND matrix_id = ?",
                             [kind, matrix_id])
            await db.execute(
                "INSERT INTO id_mappings (kind, remote_id, matrix_id) VALUES (?,?,?) "
                "ON CONFLICT (kind, remote_id) DO UPDATE SET matrix_id = excluded.matrix_id",
                [kind, remote_id, matrix_id])

    async def matrix_id(self, kind: str, remote_id: str) -> str | None:
        rows = await self.fetch("SELECT matrix_id FROM id_mappings WHERE kind = ? AND "
                                "remote_id = ?", [kind, remote_id])
        return rows[0]["matrix_id"] if rows else None

    async def remote_id(self, kind: str, matrix_id: str) -> str | None:
        rows = await self.fetch("SELECT remote_id FROM id_mappings WHERE kind = ? AND "
                                "matrix_id = ?", [kind, matrix_id])
        return rows[0]["remote_id"] if rows else None

    async def mappings(self, kind: str) -> list[tuple[str, str]]:
        rows = await self.fetch("SELECT remote_id, matrix_id FROM id_mappings WHERE kind = ? "
                                "ORDER BY remote_id", [kind])
        return [(r["remote_id"], r["matrix_id"]) for r in rows]

    async def delete_mapping(self, kind: str, remote_id: str) -> None:
        await self.execute("DELETE FROM id_mappings WHERE kind = ? AND remote_id = ?",
                           [kind, remote_id])

    # --- small JSON documents ----------------------------------------------------------------

    async def get_json(self, namespace: str, key: str, default: Any = None) -> Any:
        rows = await self.fetch("SELECT value FROM kv WHERE namespace = ? AND key = ?",
                                [namespace, key])
        return json.loads(rows[0]["value"]) if rows else default

    async def put_json(self, namespace: str, key: str, value: Any) -> None:
        await self.execute(
            "INSERT INTO kv (namespace, key, value) VALUES (?,?,?) ON CONFLICT (namespace, key) "
            "DO UPDATE SET value = excluded.value", [namespace, key, json.dumps(value)])

    async def delete_json(self, namespace: str, key: str) -> None:
        await self.execute("DELETE FROM kv WHERE namespace = ? AND key = ?", [namespace, key])
