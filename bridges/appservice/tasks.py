"""Background-work helpers the adapters share: reconnect backoff, stopping tasks, and the
worker that drains a durable retry queue."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from typing import Any, Awaitable, Callable, Iterable

log = logging.getLogger(__name__)


def stop_on_signals(stopping: asyncio.Event) -> None:
    """SIGINT and SIGTERM set `stopping` (where the loop supports signal handlers)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stopping.set)
        except (NotImplementedError, RuntimeError):
            pass


def backoff_delay(base: float, ceiling: float, attempt: int, max_exponent: int = 30) -> float:
    """Exponential backoff with jitter: a random delay in the upper half of
    min(ceiling, base * 2**attempt), so many clients do not reconnect in lockstep."""
    top = min(ceiling, base * 2 ** min(attempt, max_exponent))
    return top / 2 + random.random() * top / 2


async def cancel_tasks(tasks: Iterable[asyncio.Task | None]) -> None:
    """Cancel the tasks and wait until they are done; whatever they raise is swallowed."""
    tasks = [t for t in tasks if t is not None]
    for t in tasks:
        t.cancel()
    for t in tasks:
        try:
            await t
        except (asyncio.CancelledError, Exception):
            pass


class QueueWorker:
    """Applies the rows of a durable queue (`head()` gives the next row with its `next_at`) one
    at a time, sleeping until the next row is due or `wake` is set. Subclasses set `label` and
    implement `handle_row` (which reschedules or deletes the row itself)."""

    label = "queue"

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()  # not in the middle of a row (a clean stop waits for it)
        self.idle.set()
        self.stopping = False

    async def before_row(self) -> None:
        """Awaited before each look at the queue (e.g. until the remote side is connected)."""

    async def handle_row(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        while not self.stopping:
            try:
                await self.before_row()
                row = await self.queue.head()
                if row is None or row["next_at"] > time.time():
                    wait = 60.0 if row is None else row["next_at"] - time.time()
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), max(0.01, wait))
                    except asyncio.TimeoutError:
                        pass
                    continue
                if self.stopping:
                    return
                self.idle.clear()
                try:
                    await self.handle_row(row)
                finally:
                    self.idle.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s worker error", self.label)
                await asyncio.sleep(1)


async def drain_table(store: Any, table: str, wake: asyncio.Event,
                      apply: Callable[[dict[str, Any]], Awaitable[None]], *,
                      retry_on: Callable[[Exception], bool], describe: Callable[[dict], str],
                      base_s: float, max_s: float, label: str,
                      quiet: tuple[type[Exception], ...] = ()) -> None:
    """Apply the rows of `table` (an `id` column gives their order) forever, deleting each
    once applied. A row failing in a way `retry_on` accepts (the other side is away) stops
    the batch and is tried again after a backoff; any other failure drops the row (logged
    briefly for `quiet` errors, with a traceback otherwise)."""
    attempt = 0
    while True:
        wake.clear()
        rows = await store.fetch(f"SELECT * FROM {table} ORDER BY id LIMIT 50")
        if not rows:
            await wake.wait()
            continue
        for row in rows:
            try:
                await apply(row)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if retry_on(e):
                    log.info("%s: %s waits (%s); retrying", label, describe(row),
                             e or type(e).__name__)
                    await asyncio.sleep(backoff_delay(base_s, max_s, attempt))
                    attempt += 1
                    break
                if isinstance(e, quiet):
                    log.warning("%s: %s refused: %s; dropped", label, describe(row), e)
                else:
                    log.exception("%s: %s failed; dropped", label, describe(row))
            await store.execute(f"DELETE FROM {table} WHERE id = ?", [row["id"]])
            attempt = 0
