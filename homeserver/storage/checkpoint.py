"""Moving SQLite's write-ahead log into the database file, beside the writes, not inside one.

By default the commit that pushes the WAL past 1,000 pages copies it into the database file
and syncs both, while holding the connection: under a steady write load one commit in a few
hundred took 200 ms, and every send queued behind it (the delivery p99 of the bench). The
server's connection turns that off (`wal_autocheckpoint=0`), and this task checkpoints from
a connection of its own, in a thread, once a second. PASSIVE checkpoints never wait for the
writer; if the log still grows past WAL_RESTART_BYTES (a checkpoint that never catches up
under sustained load), one RESTART checkpoint waits for a gap between writes and lets the
log start over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading

log = logging.getLogger(__name__)

INTERVAL_S = 1.0
WAL_RESTART_BYTES = 64 * 1024 * 1024


class WalCheckpointer:
    def __init__(self, path: str, interval_s: float = INTERVAL_S,
                 restart_bytes: int = WAL_RESTART_BYTES) -> None:
        self.path = path
        self.interval_s = interval_s
        self.restart_bytes = restart_bytes
        self._conn: sqlite3.Connection | None = None
        self._task: asyncio.Task | None = None
        self._lock = threading.Lock()  # a checkpoint still running when stop() closes
        self.checkpoints = 0  # completed, for tests and diagnosis
        self.checkpointed = asyncio.Event()  # set after each of the task's checkpoints

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="sqlite-wal-checkpoints")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.checkpoint)
            except sqlite3.Error as e:  # busy or locked: the next round tries again
                log.debug("WAL checkpoint skipped: %s", e)
            else:
                self.checkpointed.set()

    def checkpoint(self) -> tuple[int, int, int]:
        """One checkpoint (in a worker thread): (busy, log frames, frames checkpointed)."""
        with self._lock:
            return self._checkpoint()

    def _checkpoint(self) -> tuple[int, int, int]:
        if self._conn is None:
            # Autocommit (isolation_level=None): the PRAGMA runs outside any transaction.
            self._conn = sqlite3.connect(self.path, isolation_level=None,
                                         check_same_thread=False, timeout=10)
            # It reads nothing through its page cache: keep that small.
            self._conn.execute("PRAGMA cache_size=-64")
        mode = "RESTART" if self._wal_size() > self.restart_bytes else "PASSIVE"
        busy, frames, done = self._conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        self.checkpoints += 1
        return busy, frames, done

    def _wal_size(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0
