"""A durable delivery queue with one worker task per target: the machinery the federation sender
(targets: destination servers) and the application-service sender (targets: services) share.

The work itself lives in the database (rows queued by whoever produces it); this class only
decides when to look at it. Per target, at most one task runs: it waits out the target's
backoff, takes the pending batch (or builds one with `_next_batch`), and hands it to `_deliver`.
A batch carries a transaction ID that stays with it until the target acknowledges it or it is
dropped: a retry resends the same ID with the same content, and an ID is never given to other
content. A failure backs off (exponential, capped, full jitter) and the schedule is persisted,
so a restart honours it; the task ends when there is nothing left and `wake()` starts it again.

Subclasses say how to build, send, acknowledge and persist; see the abstract methods.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generic, Protocol, TypeVar

from homeserver.types import now_ms

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

DEFAULT_RETRY_BASE_MS = 500
DEFAULT_RETRY_MAX_MS = 60_000
ERROR_RETRY_MS = 1_000  # pause after an unexpected (local) error before trying again


# --- backoff (pure) ------------------------------------------------------------------------

def next_backoff_ceiling(previous_ms: int, base_ms: int = DEFAULT_RETRY_BASE_MS,
                         cap_ms: int = DEFAULT_RETRY_MAX_MS) -> int:
    """The backoff window after one more failure: base, then doubling, never above the cap."""
    base_ms = max(1, int(base_ms))
    cap_ms = max(1, int(cap_ms))
    if previous_ms <= 0:
        return min(base_ms, cap_ms)
    return min(cap_ms, max(base_ms, int(previous_ms) * 2))


def backoff_delay_ms(ceiling_ms: int, rand: Callable[[], float] = random.random) -> int:
    """Full jitter: a delay drawn uniformly from [0, ceiling]."""
    ceiling_ms = max(0, int(ceiling_ms))
    r = min(max(rand(), 0.0), 1.0)
    return int(round(r * ceiling_ms))


def backoff_after_failures(failures: int, base_ms: int = DEFAULT_RETRY_BASE_MS,
                           cap_ms: int = DEFAULT_RETRY_MAX_MS,
                           rand: Callable[[], float] = random.random) -> tuple[int, int]:
    """(ceiling, delay) after `failures` consecutive failures (>= 1)."""
    ceiling = 0
    for _ in range(max(1, failures)):
        ceiling = next_backoff_ceiling(ceiling, base_ms, cap_ms)
        if ceiling >= cap_ms:
            break
    return ceiling, backoff_delay_ms(ceiling, rand)


def new_txn_id() -> str:
    """Unique for this server across restarts: a millisecond clock plus randomness."""
    return f"{now_ms():x}{secrets.token_hex(6)}"


# --- per-target state ----------------------------------------------------------------------

class Batch(Protocol):
    txn_id: str


B = TypeVar("B", bound=Batch)

SENT, RETRY, DROPPED = "sent", "retry", "dropped"


@dataclass
class Target(Generic[B]):
    key: str
    task: asyncio.Task | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by wake(): work may have been added since the last look at the queue.
    dirty: bool = False
    # Set by retry_now(): the target is back, skip the remaining backoff.
    kicked: bool = False
    # None until loaded from the persisted schedule.
    retry_at_ms: int | None = None
    backoff_ms: int = 0
    pending: B | None = None
    # "waiting" (backoff) or "sending" (HTTP): stop() may cancel there; "" (database work).
    phase: str = ""


class DeliveryQueue(Generic[B]):
    """One task per target with work; see the module docstring."""

    kind = "delivery"  # names tasks and log lines

    def __init__(self, hs: HomeServer, retry_base_ms: int, retry_max_ms: int) -> None:
        self.hs = hs
        self.retry_base_ms = retry_base_ms
        self.retry_max_ms = retry_max_ms
        self._targets: dict[str, Target[B]] = {}
        self._bootstrap: asyncio.Task | None = None
        self._running = False
        # Called as cb(target, txn_id, what): after each attempt with what = "sent", "retry" or
        # "dropped"; and "waiting" when a target starts waiting out its backoff (txn_id "" if
        # no transaction is pending). For metrics and tests.
        self.listeners: list[Callable[[str, str, str], None]] = []

    # --- what a subclass provides ------------------------------------------------------------

    def _new_target(self, key: str) -> Target[B] | None:
        """State for a target this queue serves, None for one it does not."""
        return Target(key)

    async def _targets_with_work(self) -> list[str]:
        raise NotImplementedError

    async def _next_batch(self, t: Target[B]) -> B | None:
        """The stored in-flight transaction (after a restart), or a new one from queued work;
        None when nothing is queued (set t.dirty to look again at once)."""
        raise NotImplementedError

    async def _deliver(self, t: Target[B], batch: B) -> tuple[str, str]:
        """Send the batch: (SENT, ""), (RETRY, reason) or (DROPPED, reason). Network only:
        stop() may cancel it."""
        raise NotImplementedError

    async def _acknowledge(self, t: Target[B], batch: B, success: bool) -> None:
        """Remove an acknowledged (or dropped) batch from storage; reset the stored schedule."""
        raise NotImplementedError

    async def _stored_backoff(self, key: str) -> tuple[int, int] | None:
        """The persisted (retry_at_ms, backoff_ms)."""
        raise NotImplementedError

    async def _store_backoff(self, key: str, retry_at_ms: int, backoff_ms: int) -> None:
        raise NotImplementedError

    def _is_stale(self, batch: B) -> bool:
        """A pending batch not worth sending any more (its ID is abandoned, never reused)."""
        return False

    def _has_more(self, t: Target[B]) -> bool:
        """Work not in the database (in memory) waits for this target."""
        return False

    def _describe(self, batch: B) -> str:
        return batch.txn_id

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Resume every target that has queued work (call once the database is open)."""
        if self._running:
            return
        self._running = True
        self._bootstrap = self._spawn(self._resume_all(), f"{self.kind}-resume")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop every task. Nothing is lost: unacknowledged work stays in the database and a
        transaction that was in flight is resent under the same ID after the next start.

        Tasks waiting (backoff) or waiting for an HTTP answer are cancelled at once; a task in
        the middle of a database step finishes that step and then ends by itself."""
        self._running = False
        tasks = [x for x in [self._bootstrap, *(t.task for t in self._targets.values())]
                 if x is not None and not x.done()]
        for t in self._targets.values():
            if t.task is not None and not t.task.done() and t.phase in ("waiting", "sending"):
                t.task.cancel()
            t.event.set()
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=timeout)
            for x in late:
                x.cancel()
            for x in tasks:
                try:
                    await x
                except (asyncio.CancelledError, Exception):
                    pass
        self._bootstrap = None
        for t in self._targets.values():
            t.task = None
            t.phase = ""

    async def _with_db(self, coro):
        """Run a task body with this server's database context bound (tasks may be started
        from contexts where it is not, e.g. lifespan hooks or another server's request)."""
        token = self.hs.db.activate()
        try:
            return await coro
        finally:
            self.hs.db.deactivate(token)

    def _spawn(self, coro, name: str) -> asyncio.Task:
        # A fresh context: wake() is called from request handlers, whose context variables
        # (the request itself, possibly another server's database) must not be inherited.
        return asyncio.get_running_loop().create_task(
            self._with_db(coro), name=name, context=contextvars.Context())

    async def _resume_all(self) -> None:
        try:
            keys = await self._targets_with_work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: cannot list targets with queued work", self.kind)
            return
        if keys:
            log.info("%s: resuming %d target(s)", self.kind, len(keys))
        self.wake(keys)

    # --- wake-ups ----------------------------------------------------------------------------

    def wake(self, keys: list[str]) -> None:
        """New work was committed for these targets (called right after the commit)."""
        for key in keys:
            t = self._target(key)
            if t is None:
                continue
            t.dirty = True
            t.event.set()
            self._ensure_task(t)

    def retry_now(self, key: str) -> None:
        """The target is up (it talked to us, or answered a ping): forget its backoff."""
        t = self._target(key)
        if t is None:
            return
        if t.retry_at_ms is not None and t.retry_at_ms <= now_ms() and t.backoff_ms == 0:
            return  # not backing off: nothing to do
        t.retry_at_ms = 0
        t.backoff_ms = 0
        t.kicked = True
        t.event.set()
        if t.task is not None or t.pending is not None:
            self._ensure_task(t)

    # --- introspection -----------------------------------------------------------------------

    def is_down(self, key: str) -> bool:
        t = self._targets.get(key)
        return t is not None and (t.retry_at_ms or 0) > now_ms()

    def status(self, key: str) -> dict[str, Any]:
        t = self._targets.get(key)
        if t is None:
            return {"known": False}
        return {"known": True, "running": t.task is not None and not t.task.done(),
                "phase": t.phase, "retry_at_ts": t.retry_at_ms, "backoff_ms": t.backoff_ms,
                "pending_txn_id": t.pending.txn_id if t.pending else None}

    # --- the per-target task -----------------------------------------------------------------

    def _target(self, key: str) -> Target[B] | None:
        t = self._targets.get(key)
        if t is None:
            t = self._new_target(key)
            if t is not None:
                self._targets[key] = t
        return t

    def _ensure_task(self, t: Target[B]) -> None:
        if not self._running:
            return  # the work stays queued; start() resumes it
        if t.task is not None and not t.task.done():
            return
        t.task = self._spawn(self._run(t), f"{self.kind}:{t.key}")

    async def _run(self, t: Target[B]) -> None:
        me = asyncio.current_task()
        try:
            while self._running:
                try:
                    if t.retry_at_ms is None:
                        await self._load_backoff(t)
                    await self._wait_out_backoff(t)
                    if not self._running:
                        return
                    t.kicked = False
                    batch = t.pending
                    if batch is not None and self._is_stale(batch):
                        batch = t.pending = None
                    if batch is None:
                        t.dirty = False
                        batch = await self._next_batch(t)
                        if batch is None:
                            if t.dirty or self._has_more(t):
                                continue
                            return  # queue empty; wake() starts a new task
                        t.pending = batch
                    if not self._running:
                        return
                    await self._attempt(t, batch)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s: unexpected error for %s", self.kind, t.key)
                    t.retry_at_ms = now_ms() + ERROR_RETRY_MS
        finally:
            # No await between deciding the queue is empty and this: a wake() that comes
            # later sees no task and starts one.
            t.phase = ""
            if t.task is me:
                t.task = None

    async def _load_backoff(self, t: Target[B]) -> None:
        stored = await self._stored_backoff(t.key)
        if t.retry_at_ms is not None:  # retry_now() came in meanwhile
            return
        t.retry_at_ms, t.backoff_ms = stored or (0, 0)

    async def _wait_out_backoff(self, t: Target[B]) -> None:
        """Sleep until the retry time; only retry_now() (or stop()) cuts it short, wake()
        does not."""
        while not t.kicked and self._running:
            remaining = (t.retry_at_ms or 0) - now_ms()
            if remaining <= 0:
                return
            t.event.clear()
            t.phase = "waiting"
            self._notify(t.key, t.pending.txn_id if t.pending else "", "waiting")
            try:
                await asyncio.wait_for(t.event.wait(), remaining / 1000)
            except asyncio.TimeoutError:
                pass
            finally:
                t.phase = ""

    async def _attempt(self, t: Target[B], batch: B) -> None:
        t.phase = "sending"
        try:
            outcome, reason = await self._deliver(t, batch)
        finally:
            t.phase = ""
        if outcome == RETRY:
            ceiling = next_backoff_ceiling(t.backoff_ms, self.retry_base_ms, self.retry_max_ms)
            delay = backoff_delay_ms(ceiling)
            t.backoff_ms = ceiling
            t.retry_at_ms = now_ms() + delay
            log.info("%s: transaction %s to %s failed (%s); retrying in %d ms", self.kind,
                     self._describe(batch), t.key, reason, delay)
            await self._store_backoff(t.key, t.retry_at_ms, t.backoff_ms)
        else:
            await self._acknowledge(t, batch, outcome == SENT)
            t.pending = None
            t.backoff_ms = 0
            t.retry_at_ms = 0
        self._notify(t.key, batch.txn_id, outcome)

    def _notify(self, key: str, txn_id: str, what: str) -> None:
        for cb in list(self.listeners):
            try:
                cb(key, txn_id, what)
            except Exception:
                log.exception("%s listener failed", self.kind)
