"""The store fingerprint: a rejected write must leave every table's row count (and on SQLite
the connection's count of rows written) as it was."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from tests.fuzz.config import WRITE_METHODS

# Tables the federation sender works through in the background (draining the outbox,
# backing off from destinations): their changes are not the request's doing.
BACKGROUND_TABLES = {"federation_outbox", "federation_destinations"}
ROWS_CHANGED = "(rows changed)"


def store_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple]:
    # The write counter is only meaningful while the sender has nothing to do.
    quiet = before.get("federation_outbox", 0) == 0 == after.get("federation_outbox", 0)
    return {t: (before.get(t), after.get(t)) for t in set(before) | set(after)
            if t not in BACKGROUND_TABLES and (t != ROWS_CHANGED or quiet)
            and before.get(t) != after.get(t)}


class StoreWatch:
    """Fingerprints taken around write requests; a cached one serves the next request as long
    as nothing else wrote in between."""

    def __init__(self, fingerprint: Callable[[], dict[str, int]] | None) -> None:
        self.fingerprint = fingerprint
        self._fp: dict[str, int] | None = None

    def forget(self) -> None:
        """Something changed the store on purpose: the cached fingerprint is stale."""
        self._fp = None

    def before(self, method: str) -> dict[str, int] | None:
        if self.fingerprint is None or method not in WRITE_METHODS:
            return None
        if self._fp is None:
            self._fp = self.fingerprint()
        return self._fp

    def after(self, before: dict[str, int] | None, status: int,
              data: Any) -> dict[str, tuple] | None:
        """The tables a rejected write changed (None: not a checkable rejection)."""
        unrecognized = isinstance(data, dict) and data.get("errcode") == "M_UNRECOGNIZED"
        checkable = (before is not None and 400 <= status < 500
                     and status not in (401, 429) and not unrecognized)
        if not checkable:
            self._fp = None
            return None
        after = self.fingerprint()
        self._fp = after
        return store_diff(before, after)


async def table_counts(hs) -> dict[str, int]:
    """Row count of every table of one homeserver (its own database context)."""
    token = hs.db.activate()
    try:
        conn = hs.db.conn()
        if hs.db.is_sqlite:
            rows = await conn.execute_query_dict(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")
            tables = [r["name"] for r in rows]
        else:
            rows = await conn.execute_query_dict(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            tables = [r["tablename"] for r in rows]
        if not tables:
            return {}
        union = " UNION ALL ".join(
            f"SELECT '{t}' AS t, COUNT(*) AS n FROM \"{t}\"" for t in sorted(tables))
        if hs.db.is_sqlite:
            # Rows inserted, updated or deleted through the server's (single) connection: catches
            # updates too, which row counts miss.
            union += f" UNION ALL SELECT '{ROWS_CHANGED}' AS t, total_changes() AS n"
        return {r["t"]: int(r["n"]) for r in await conn.execute_query_dict(union)}
    finally:
        hs.db.deactivate(token)


def fingerprint_for(server, loop: asyncio.AbstractEventLoop) -> Callable[[], dict[str, int]]:
    def fp() -> dict[str, int]:
        return asyncio.run_coroutine_threadsafe(table_counts(server.hs), loop).result(30)

    return fp
