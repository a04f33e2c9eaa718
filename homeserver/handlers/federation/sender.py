"""Outbound federation: one queue per destination, drained into transactions with retries.

PDU rows are written to `federation_outbox` by the event pipeline in the event's own
transaction; durable EDUs (receipts, presence) by `queue_edu`. Typing notifications are kept in
memory only: they are worthless a few seconds later and would only pile up in the database
while a destination is down.

At most one task per destination. It loads up to 50 PDU rows and 100 EDU rows (oldest first),
gives that batch a transaction ID stored on the rows, and PUTs it. On a 2xx the rows are deleted;
on a network failure, a 5xx or a 429 the destination backs off (exponential, capped, full
jitter; persisted in `federation_destinations` so a restart honours it) and the SAME transaction
(same ID, same content) is sent again later; on any other 4xx the batch is dropped (it is
malformed and would never succeed). The task ends when the queue is empty; `wake()` starts it
again. A restart resumes from the rows: a transaction already given an ID is resent under it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import orjson

from homeserver.storage import federation_queue as queue
from homeserver.types import is_valid_server_name, now_ms

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MAX_PDUS_PER_TXN = 50  # the spec's limits for one transaction
MAX_EDUS_PER_TXN = 100
MAX_TYPING_PER_TXN = 50  # typing EDUs taken first; durable EDU rows fill the rest
DEFAULT_RETRY_BASE_MS = 500
DEFAULT_RETRY_MAX_MS = 60_000
TYPING_TTL_MS = 30_000  # a queued typing notification older than this is not worth sending
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


# --- per-destination state -----------------------------------------------------------------

@dataclass
class _Batch:
    txn_id: str
    row_ids: list[int]
    body: dict[str, Any]
    # Latest expiry of the in-memory typing EDUs it carries (0: none).
    typing_expires_ms: int = 0

    def is_stale(self, now: int) -> bool:
        """Only expired typing notifications in it: not worth sending (its ID is abandoned,
        never reused)."""
        return not self.row_ids and self.typing_expires_ms <= now


@dataclass
class _Destination:
    name: str
    task: asyncio.Task | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)
    # Set by wake(): rows may have been added since the last look at the queue.
    dirty: bool = False
    # Set by retry_now(): the destination is back, skip the remaining backoff.
    kicked: bool = False
    # None until loaded from federation_destinations.
    retry_at_ms: int | None = None
    backoff_ms: int = 0
    pending: _Batch | None = None
    # (room_id, user_id) -> (m.typing EDU, expiry ms); the latest per user and room.
    typing: dict[tuple[str, str], tuple[dict, int]] = field(default_factory=dict)
    # "waiting" (backoff) or "sending" (HTTP): stop() may cancel there; "" (database work).
    phase: str = ""


class FederationSender:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        fed = getattr(hs.config, "federation", None)
        self.retry_base_ms = int(getattr(fed, "retry_base_ms", DEFAULT_RETRY_BASE_MS))
        self.retry_max_ms = int(getattr(fed, "retry_max_ms", DEFAULT_RETRY_MAX_MS))
        self.max_pdus = int(getattr(fed, "max_pdus_per_txn", MAX_PDUS_PER_TXN))
        self.max_edus = int(getattr(fed, "max_edus_per_txn", MAX_EDUS_PER_TXN))
        self._dests: dict[str, _Destination] = {}
        self._bootstrap: asyncio.Task | None = None
        self._running = False
        # Called as cb(destination, txn_id, what): after each attempt with what = "sent",
        # "retry" or "dropped"; and "waiting" when a destination starts waiting out its
        # backoff (txn_id "" if no transaction is pending). For metrics and tests.
        self.listeners: list[Callable[[str, str, str], None]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Resume every destination that has queued rows (call once the database is open)."""
        if self._running:
            return
        self._running = True
        self._bootstrap = self._spawn(self._resume_all(), "federation-sender-resume")

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop every task. Nothing is lost: unacknowledged rows stay in the database and a
        transaction that was in flight is resent under the same ID after the next start.

        Tasks waiting (backoff) or waiting for an HTTP answer are cancelled at once; a task in
        the middle of a database step finishes that step and then ends by itself."""
        self._running = False
        tasks = [t for t in [self._bootstrap, *(d.task for d in self._dests.values())]
                 if t is not None and not t.done()]
        for d in self._dests.values():
            if d.task is not None and not d.task.done() and d.phase in ("waiting", "sending"):
                d.task.cancel()
            d.event.set()
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=timeout)
            for t in late:
                t.cancel()
            for t in tasks:
                try:
                    await t
                except (asyncio.CancelledError, Exception):
                    pass
        self._bootstrap = None
        for d in self._dests.values():
            d.task = None
            d.phase = ""

    async def _with_db(self, coro):
        """Run a task body with this server's database context bound (tasks may be started
        from contexts where it is not, e.g. lifespan hooks or another server's request)."""
        token = self.hs.db.activate()
        try:
            return await coro
        finally:
            self.hs.db.deactivate(token)

    async def _resume_all(self) -> None:
        try:
            dests = await queue.destinations_with_rows()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("federation sender: cannot list queued destinations")
            return
        if dests:
            log.info("federation sender: resuming %d destination(s)", len(dests))
        for d in dests:
            self.wake([d])

    # --- wake-ups ----------------------------------------------------------------------------

    def wake(self, destinations: list[str]) -> None:
        """New rows were committed for these destinations (called right after the commit)."""
        for name in destinations:
            if name == self.hs.server_name:
                continue
            d = self._dest(name)
            d.dirty = True
            d.event.set()
            self._ensure_task(d)

    def retry_now(self, destination: str) -> None:
        """The destination just talked to us: it is up, so forget its backoff."""
        d = self._dests.get(destination)
        if d is None:
            if not is_valid_server_name(destination):
                return
            # Nothing in memory: override whatever backoff is persisted, in case rows come.
            d = self._dest(destination)
        if d.retry_at_ms is not None and d.retry_at_ms <= now_ms() and d.backoff_ms == 0:
            return  # not backing off: nothing to do
        d.retry_at_ms = 0
        d.backoff_ms = 0
        d.kicked = True
        d.event.set()
        if d.task is not None or d.pending is not None:
            self._ensure_task(d)

    async def queue_edu(self, destination: str, edu: dict[str, Any]) -> None:
        """Queue one EDU. m.typing stays in memory (ephemeral); others become durable rows."""
        await self.queue_edus([destination], edu)

    async def queue_edus(self, destinations: list[str], edu: dict[str, Any]) -> None:
        dests = [d for d in dict.fromkeys(destinations) if d != self.hs.server_name]
        if not dests:
            return
        if edu.get("edu_type") == "m.typing":
            content = edu.get("content") or {}
            key = (str(content.get("room_id")), str(content.get("user_id")))
            expires = now_ms() + TYPING_TTL_MS
            for name in dests:
                d = self._dest(name)
                d.typing[key] = (edu, expires)
                d.event.set()
                self._ensure_task(d)
            return
        edu_json = orjson.dumps(edu).decode()
        await queue.queue_edus((name, edu_json) for name in dests)
        self.wake(dests)

    # --- introspection -----------------------------------------------------------------------

    def destination_status(self, destination: str) -> dict[str, Any]:
        d = self._dests.get(destination)
        if d is None:
            return {"known": False}
        return {
            "known": True,
            "running": d.task is not None and not d.task.done(),
            "phase": d.phase,
            "retry_at_ts": d.retry_at_ms,
            "backoff_ms": d.backoff_ms,
            "pending_txn_id": d.pending.txn_id if d.pending else None,
            "typing_queued": len(d.typing),
        }

    # --- the per-destination task ------------------------------------------------------------

    def _dest(self, name: str) -> _Destination:
        d = self._dests.get(name)
        if d is None:
            d = self._dests[name] = _Destination(name)
        return d

    def _ensure_task(self, d: _Destination) -> None:
        if not self._running:
            return  # rows stay queued; start() resumes them
        if d.task is not None and not d.task.done():
            return
        d.task = self._spawn(self._run(d), f"federation-sender:{d.name}")

    def _spawn(self, coro, name: str) -> asyncio.Task:
        # A fresh context: wake() is called from request handlers, whose context variables
        # (the request itself, possibly another server's database) must not be inherited.
        return asyncio.get_running_loop().create_task(
            self._with_db(coro), name=name, context=contextvars.Context())

    async def _run(self, d: _Destination) -> None:
        me = asyncio.current_task()
        try:
            while self._running:
                try:
                    if d.retry_at_ms is None:
                        await self._load_backoff(d)
                    await self._wait_out_backoff(d)
                    if not self._running:
                        return
                    d.kicked = False
                    batch = d.pending
                    if batch is not None and batch.is_stale(now_ms()):
                        batch = d.pending = None
                    if batch is None:
                        d.dirty = False
                        batch = await self._next_batch(d)
                        if batch is None:
                            if d.dirty or d.typing:
                                continue
                            return  # queue empty; wake() starts a new task
                        d.pending = batch
                    if not self._running:
                        return
                    await self._send(d, batch)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("federation sender: unexpected error for %s", d.name)
                    d.retry_at_ms = now_ms() + ERROR_RETRY_MS
        finally:
            # No await between deciding the queue is empty and this: a wake() that comes
            # later sees no task and starts one.
            d.phase = ""
            if d.task is me:
                d.task = None

    async def _load_backoff(self, d: _Destination) -> None:
        row = await queue.get_destination(d.name)
        if d.retry_at_ms is not None:  # retry_now() came in meanwhile
            return
        if row is None:
            d.retry_at_ms, d.backoff_ms = 0, 0
        else:
            d.retry_at_ms = int(row["retry_at_ts"] or 0)
            d.backoff_ms = int(row["backoff_ms"] or 0)

    async def _wait_out_backoff(self, d: _Destination) -> None:
        """Sleep until the retry time; only retry_now() (or stop()) cuts it short, wake()
        does not."""
        while not d.kicked and self._running:
            remaining = (d.retry_at_ms or 0) - now_ms()
            if remaining <= 0:
                return
            d.event.clear()
            d.phase = "waiting"
            self._notify(d.name, d.pending.txn_id if d.pending else "", "waiting")
            try:
                await asyncio.wait_for(d.event.wait(), remaining / 1000)
            except asyncio.TimeoutError:
                pass
            finally:
                d.phase = ""

    async def _next_batch(self, d: _Destination) -> _Batch | None:
        """The in-flight transaction from the database (after a restart), or a new one."""
        rows = await queue.in_flight_rows(d.name)
        typing_edus: list[dict] = []
        typing_expires = 0
        if rows:
            txn_id = rows[0]["txn_id"]
        else:
            now = now_ms()
            live = [(k, v) for k, v in d.typing.items() if v[1] > now]
            taken = live[:min(MAX_TYPING_PER_TXN, self.max_edus)]
            for k, (edu, expires) in taken:
                typing_edus.append(edu)
                typing_expires = max(typing_expires, expires)
            # What was taken (and what expired) leaves the memory queue; newer updates for the
            # same user and room queue up behind this transaction.
            taken_keys = {k for k, _ in taken}
            d.typing = {k: v for k, v in d.typing.items() if v[1] > now and k not in taken_keys}
            rows = await queue.unsent_rows(d.name, self.max_pdus,
                                           self.max_edus - len(typing_edus))
            if not rows and not typing_edus:
                return None
            txn_id = new_txn_id()
            await queue.assign_txn(d.name, [r["id"] for r in rows], txn_id)
        pdus, edus, unusable = await self._load_contents(rows)
        edus = _merge_edus(edus) + typing_edus
        if not pdus and not edus:
            # Every row points at something gone (e.g. a purged event): nothing to send.
            if rows:
                log.info("federation sender: %d unusable row(s) for %s dropped",
                         len(rows), d.name)
                await queue.delete_rows(d.name, [r["id"] for r in rows])
                d.dirty = True  # look again: more rows may be queued behind these
            return None
        if unusable:
            log.info("federation sender: %d unusable row(s) in %s for %s", unusable, txn_id,
                     d.name)
        body: dict[str, Any] = {"origin": self.hs.server_name, "origin_server_ts": now_ms(),
                                "pdus": pdus}
        if edus:
            body["edus"] = edus
        return _Batch(txn_id, [r["id"] for r in rows], body, typing_expires)

    async def _load_contents(self, rows: list[dict]) -> tuple[list[dict], list[dict], int]:
        event_ids = [r["event_id"] for r in rows if r["event_id"] is not None]
        events = await self.hs.state.get_events(event_ids) if event_ids else {}
        pdus: list[dict] = []
        edus: list[dict] = []
        unusable = 0
        for r in rows:
            if r["event_id"] is not None:
                ev = events.get(r["event_id"])
                if ev is None:
                    unusable += 1
                    continue
                pdus.append(ev.pdu_for_federation())
            else:
                try:
                    edu = orjson.loads(r["edu_json"] or "null")
                except orjson.JSONDecodeError:
                    edu = None
                if not isinstance(edu, dict) or not isinstance(edu.get("edu_type"), str):
                    unusable += 1
                    continue
                edus.append(edu)
        return pdus, edus, unusable

    async def _send(self, d: _Destination, batch: _Batch) -> None:
        from homeserver.handlers.federation.transport import (
            DestinationUnreachable,
            FederationError,
        )

        client = getattr(self.hs, "federation_client", None)
        outcome: str
        try:
            if not is_valid_server_name(d.name):
                raise ValueError("not a valid server name")
            if client is None:
                raise DestinationUnreachable(d.name, "no federation client configured")
            d.phase = "sending"
            try:
                response = await client.send_transaction(d.name, batch.txn_id, batch.body)
            finally:
                d.phase = ""
        except DestinationUnreachable as e:
            await self._failed(d, batch, str(e))
            outcome = "retry"
        except FederationError as e:
            if e.status == 429 or e.status >= 500:
                await self._failed(d, batch, str(e))
                outcome = "retry"
            else:
                log.warning("federation sender: %s rejected transaction %s (%d PDUs, %d EDUs) "
                            "with %s; dropping it", d.name, batch.txn_id,
                            len(batch.body["pdus"]), len(batch.body.get("edus", [])), e)
                await self._acknowledged(d, batch, success=False)
                outcome = "dropped"
        except ValueError as e:  # refused locally (e.g. a transaction to ourselves)
            log.warning("federation sender: cannot send to %s (%s); dropping %s", d.name, e,
                        batch.txn_id)
            await self._acknowledged(d, batch, success=False)
            outcome = "dropped"
        else:
            _log_pdu_errors(d.name, batch.txn_id, response)
            await self._acknowledged(d, batch, success=True)
            outcome = "sent"
        self._notify(d.name, batch.txn_id, outcome)

    def _notify(self, destination: str, txn_id: str, what: str) -> None:
        for cb in list(self.listeners):
            try:
                cb(destination, txn_id, what)
            except Exception:
                log.exception("federation sender listener failed")

    async def _acknowledged(self, d: _Destination, batch: _Batch, success: bool) -> None:
        await queue.acknowledge(d.name, batch.row_ids, now_ms() if success else None)
        d.pending = None
        d.backoff_ms = 0
        d.retry_at_ms = 0

    async def _failed(self, d: _Destination, batch: _Batch, reason: str) -> None:
        ceiling = next_backoff_ceiling(d.backoff_ms, self.retry_base_ms, self.retry_max_ms)
        delay = backoff_delay_ms(ceiling)
        d.backoff_ms = ceiling
        d.retry_at_ms = now_ms() + delay
        log.info("federation sender: transaction %s to %s failed (%s); retrying in %d ms",
                 batch.txn_id, d.name, reason, delay)
        await queue.set_backoff(d.name, d.retry_at_ms, d.backoff_ms)


# --- helpers -------------------------------------------------------------------------------

def _log_pdu_errors(destination: str, txn_id: str, response: Any) -> None:
    results = response.get("pdus") if isinstance(response, dict) else None
    if not isinstance(results, dict):
        return
    for event_id, result in results.items():
        if isinstance(result, dict) and result.get("error"):
            log.warning("federation sender: %s rejected %s in transaction %s: %s",
                        destination, event_id, txn_id, str(result["error"])[:500])


def _merge_edus(edus: list[dict]) -> list[dict]:
    """Fold several m.presence / m.receipt EDUs of one transaction into one each (latest
    value wins per user); others pass unchanged. Deterministic, so a rebuilt transaction
    (after a restart) has the same content."""
    presence: dict[str, dict] = {}
    receipts: dict[str, dict] = {}
    out: list[dict] = []
    presence_at = receipts_at = -1
    for edu in edus:
        etype = edu.get("edu_type")
        content = edu.get("content")
        if etype == "m.presence" and isinstance(content, dict) \
                and isinstance(content.get("push"), list):
            for item in content["push"]:
                if isinstance(item, dict) and isinstance(item.get("user_id"), str):
                    presence.pop(item["user_id"], None)
                    presence[item["user_id"]] = item
            if presence_at < 0:
                presence_at = len(out)
                out.append({})
        elif etype == "m.receipt" and isinstance(content, dict):
            for room_id, by_type in content.items():
                if not isinstance(by_type, dict):
                    continue
                room = receipts.setdefault(room_id, {})
                for rtype, by_user in by_type.items():
                    if isinstance(by_user, dict):
                        room.setdefault(rtype, {}).update(by_user)
            if receipts_at < 0:
                receipts_at = len(out)
                out.append({})
        else:
            out.append(edu)
    if presence_at >= 0:
        out[presence_at] = {"edu_type": "m.presence", "content": {"push": list(presence.values())}}
    if receipts_at >= 0:
        out[receipts_at] = {"edu_type": "m.receipt", "content": receipts}
    return [e for e in out if e]
