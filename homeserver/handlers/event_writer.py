"""The event writer: one queue for every write to the events stream, committed in order.

Every event (local or remote) and every out-of-room membership change is queued here with its
stream position, which it was given at queueing. A single task takes what is queued and commits
it, several writes to one transaction when several wait (group commit: one commit, one fsync,
for all of them), so positions commit in the order they were handed out and readers never skip
one. After each commit the writes' effects on the caches (`on_commit`) run in that order, under
the persist lock, and then their callers wake.

Why a queue rather than a write per sender: the database is one connection (SQLite) and its
commit is the slowest step of an event. While one batch commits, the next events of a room are
already built (handlers/events.py releases the room lock once a message is queued), so the room
lock no longer spans the commit.

A write can depend on one queued before it (a message built on a message still being written).
When a write fails, its room's later writes must not commit on top of it: `stale` tells the
writer that a write was built on something that failed, and it is refused with StaleWrite
(the sender builds it again).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from homeserver.storage import sql

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

# Writes per transaction at most: a bigger batch holds the database longer for other queries.
MAX_BATCH = 64


class StaleWrite(Exception):
    """The write was built on a queued write that failed; build it again."""


@dataclass(eq=False)
class Write:
    statements: list[sql.Statement]
    # Run after the commit, in commit order, under the persist lock: the caches follow.
    on_commit: Callable[[], None] | None = None
    # Run when the write fails or is refused (with the error): undo what queueing it assumed.
    on_fail: Callable[[BaseException], None] | None = None
    # True when the write must not commit any more (it was built on a failed write).
    stale: Callable[[], bool] | None = None
    done: asyncio.Future | None = field(default=None, repr=False)


class EventWriter:
    def __init__(self, hs: HomeServer, lock: asyncio.Lock) -> None:
        self.hs = hs
        self._lock = lock  # the persist lock: held while a batch commits and its effects run
        self._queue: deque[Write] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False

    def queue(self, write: Write) -> Write:
        """Queue a write (no await between giving it a stream position and this call, so the
        queue's order is the positions' order). Await `committed(write)` for its outcome."""
        if self._closed:
            raise RuntimeError("the event writer is closed")
        write.done = asyncio.get_running_loop().create_future()
        self._queue.append(write)
        self._wake.set()
        if self._task is None:
            # A context of its own: the task outlives the request that happened to start it.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="event-writer", context=contextvars.Context())
        return write

    @staticmethod
    async def committed(write: Write) -> None:
        """Wait until the write has committed (its effects applied); raises its error."""
        await asyncio.shield(write.done)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def close(self) -> None:
        """Commit what is queued, then stop the task."""
        self._closed = True
        if self._task is None:
            return
        self._wake.set()
        await asyncio.shield(self._task)
        self._task = None

    async def _run(self) -> None:
        self.hs.db.activate()  # this server's database, in this task's own context
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(MAX_BATCH, len(self._queue)))]
            try:
                async with self._lock:
                    await self._commit(batch)
            except BaseException as e:  # never leave a caller waiting
                for w in batch:
                    if not w.done.done():
                        self._fail(w, e)
                if not isinstance(e, Exception):
                    raise

    async def _commit(self, batch: list[Write]) -> None:
        live = self._drop_stale(batch)
        if not live:
            return
        try:
            await sql.write_transaction([s for w in live for s in w.statements])
        except Exception as e:
            if len(live) == 1:
                self._fail(live[0], e)
                return
            # One of them failed, and the transaction with it: each alone, in order, so that
            # only the failing ones fail (and what was built on them, once they have).
            for w in live:
                if self._drop_stale([w]):
                    try:
                        await sql.write_transaction(w.statements)
                    except Exception as e:  # noqa: B025 - each write's own error
                        self._fail(w, e)
                    else:
                        self._succeed(w)
            return
        for w in live:
            self._succeed(w)

    def _drop_stale(self, writes: list[Write]) -> list[Write]:
        live = []
        for w in writes:
            if w.stale is not None and w.stale():
                self._fail(w, StaleWrite())
            else:
                live.append(w)
        return live

    @staticmethod
    def _succeed(w: Write) -> None:
        if w.on_commit is not None:
            try:
                w.on_commit()
            except Exception:  # the write is stored: its caller must hear so
                log.exception("applying a committed write failed")
        w.done.set_result(None)

    @staticmethod
    def _fail(w: Write, e: BaseException) -> None:
        if w.on_fail is not None:
            try:
                w.on_fail(e)
            except Exception:
                log.exception("undoing a failed write failed")
        w.done.set_exception(e)
