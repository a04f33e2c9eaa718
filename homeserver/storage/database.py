"""One database per homeserver: a TortoiseContext of its own, migrated at start-up.

Tortoise resolves connections through a context variable, so several homeservers can live in one
process (tests start many): `Database.activate()` binds this server's context for the caller.
"""

from __future__ import annotations

import asyncio
import logging
from contextvars import Token
from typing import Any

from tortoise.context import TortoiseContext, _current_context
from tortoise.migrations.executor import MigrationExecutor

from homeserver.storage.checkpoint import WalCheckpointer

log = logging.getLogger(__name__)

MODEL_MODULES = [
    "homeserver.storage.models_accounts",
    "homeserver.storage.models_events",
    "homeserver.storage.models_state",
    "homeserver.storage.models_userdata",
    "homeserver.storage.models_federation",
    "homeserver.storage.models_media",
    "homeserver.storage.models_e2e",
    "homeserver.storage.models_appservice",
    "homeserver.storage.models_push",
    "homeserver.storage.models_search",
]
MIGRATIONS_PACKAGE = "homeserver.storage.migrations"


def tortoise_config(url: str, sqlite_synchronous: str = "FULL",
                    sqlite_cache_kib: int = 1024, wal_checkpoints: bool = False
                    ) -> dict[str, Any]:
    if url.startswith("sqlite://"):
        credentials: dict[str, Any] = {
            "file_path": url[len("sqlite://"):],
            "journal_mode": "WAL",
            "synchronous": sqlite_synchronous,
            "busy_timeout": 10000,
            # Deleted and overwritten rows are zeroed, not left in free pages: a value
            # re-sealed by `nexa rotate-key` leaves no plaintext behind in the file.
            "secure_delete": "ON",
            "cache_size": -sqlite_cache_kib,  # negative: KiB, not pages
        }
        if wal_checkpoints:  # a WalCheckpointer does it beside the writes (checkpoint.py)
            credentials["wal_autocheckpoint"] = 0
        connection: Any = {"engine": "tortoise.backends.sqlite", "credentials": credentials}
    else:
        connection = url.replace("postgresql://", "postgres://", 1)
    return {
        "connections": {"default": connection},
        "apps": {
            "models": {
                "models": MODEL_MODULES,
                "migrations": MIGRATIONS_PACKAGE,
                "default_connection": "default",
            }
        },
    }


class _Context(TortoiseContext):
    # The at-rest keyring (crypto/keystore.LiveKeyring) of the server owning this database;
    # storage/sealed.py finds it through the current context, like models find connections.
    at_rest: Any = None


class Database:
    def __init__(self, url: str, sqlite_synchronous: str = "FULL", at_rest: Any = None,
                 sqlite_cache_kib: int = 1024, wal_checkpoints: bool = False) -> None:
        """`wal_checkpoints`: checkpoint SQLite's log in the background (the server does;
        one-off commands leave it to SQLite)."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite://")
        self.config = tortoise_config(url, sqlite_synchronous, sqlite_cache_kib,
                                      wal_checkpoints and self.is_sqlite)
        self.checkpointer = (WalCheckpointer(url[len("sqlite://"):])
                             if wal_checkpoints and self.is_sqlite else None)
        self.ctx = _Context()
        self.ctx.at_rest = at_rest

    @property
    def at_rest(self) -> Any:
        return self.ctx.at_rest

    @at_rest.setter
    def at_rest(self, keyring: Any) -> None:
        self.ctx.at_rest = keyring

    def activate(self) -> Token:
        """Make this database the one models use in the current task (and tasks it starts)."""
        return _current_context.set(self.ctx)

    @staticmethod
    def deactivate(token: Token) -> None:
        _current_context.reset(token)

    async def open(self) -> None:
        token = self.activate()
        try:
            await self.ctx.init(config=self.config, _create_db=False)
            await self.migrate()
        finally:
            self.deactivate(token)
        if self.checkpointer is not None:
            self.checkpointer.start()

    async def migrate(self) -> None:
        """Apply every migration not yet applied; upgrading keeps all data."""
        executor = MigrationExecutor(self.ctx.db(), {"models": self.config["apps"]["models"]})
        await executor.migrate()

    async def close(self) -> None:
        if self.checkpointer is not None:
            await self.checkpointer.stop()
        token = self.activate()
        try:
            await self.ctx.close_connections()
        finally:
            self.deactivate(token)

    def conn(self):
        return self.ctx.db()


class IdGenerator:
    """Monotonic positions for one stream, handed out in-process under a lock.

    Seeded from the table's current maximum at start-up; allocation and the write that uses
    it happen under the same lock, so positions become visible in increasing order.
    """

    def __init__(self, start: int, step: int = 1) -> None:
        self._current = start
        self._visible = start
        self._step = step
        self.lock = asyncio.Lock()

    @property
    def current(self) -> int:
        """The last position handed out (its write may not have committed yet)."""
        return self._current

    @property
    def visible(self) -> int:
        """The last position whose write has committed: readers never go past it, so a
        position still being written cannot be skipped by a token taken meanwhile."""
        return self._visible

    def mark_visible(self, position: int) -> None:
        self._visible = max(self._visible, position)

    def next(self) -> int:
        self._current += self._step
        return self._current


async def max_of(conn, table: str, column: str) -> int:
    rows = await conn.execute_query_dict(f"SELECT MAX({column}) AS m FROM {table}")
    return int(rows[0]["m"] or 0) if rows else 0


async def min_of(conn, table: str, column: str) -> int:
    rows = await conn.execute_query_dict(f"SELECT MIN({column}) AS m FROM {table}")
    return int(rows[0]["m"] or 0) if rows else 0
