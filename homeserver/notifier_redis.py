"""A notifier shared by several worker processes through Redis pub/sub.

Same interface as InProcessNotifier (notify / listen / subscribe). `notify` wakes this
process's listeners and subscribers at once, and publishes the notification on a Redis channel;
every other process subscribed to that channel wakes its own listeners and calls its own
subscribers. A process ignores its own messages, so nothing is delivered twice locally.

Pub/sub is at-most-once: while Redis is unreachable, or when this process cannot publish fast
enough, messages are lost. Wake-ups are only hints (a woken /sync re-reads the stream
positions), so the recovery is simple: after (re)subscribing, and after dropping queued
messages, every listener is woken ("wake all") so that nobody sleeps through a lost message
until its timeout. Subscribers are called only for notifications that arrive.

Note for several workers: a listener woken by another process's notification still compares
stream positions read in this process (SyncHandler.current_token); those positions must be
shared too before workers can split the load.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from typing import Any, Iterable

import redis.asyncio as aioredis

from homeserver.notifier import InProcessNotifier

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # notifications waiting to be published
MAX_BATCH = 500  # notifications per published message
MAX_BATCH_BYTES = 256 * 1024  # ... and roughly this much JSON (one notification is never split)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # what a receiver accepts
RETRY_S = (0.2, 0.5, 1, 2, 5)


class RedisNotifier(InProcessNotifier):
    def __init__(self, redis_url: str, channel: str = "nexa:notify") -> None:
        super().__init__()
        self.redis_url = redis_url
        self.channel = channel
        self.origin = uuid.uuid4().hex
        # Shown by Redis CLIENT LIST for the subscribing connection.
        self.client_name = f"nexa-notify-{self.origin[:12]}"
        self._pending: deque[list[Any]] = deque()
        self._wake_all_pending = False  # queued notifications were dropped: tell the others
        self._have_pending = asyncio.Event()
        self._subscribed = asyncio.Event()
        self._pub: aioredis.Redis | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False

    # --- the Notifier interface ------------------------------------------------------------

    def notify(self, stream: str, position: int, rooms: Iterable[str] = (),
               users: Iterable[str] = ()) -> None:
        rooms, users = list(rooms), list(users)
        super().notify(stream, position, rooms, users)
        if len(self._pending) >= MAX_PENDING:
            self._pending.clear()
            self._wake_all_pending = True
            log.warning("redis notifier: publishing is behind; dropped queued notifications "
                        "(other processes will wake all their listeners)")
        self._pending.append([stream, position, rooms, users])
        self._have_pending.set()

    # listen() and subscribe() are InProcessNotifier's: listeners and subscribers are local.

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, timeout_s: float = 10.0) -> None:
        """Connect and subscribe; returns once the subscription is active."""
        self._stopping = False
        self._pub = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=5,
                                            socket_timeout=5)
        self._tasks = [
            asyncio.create_task(self._publisher(), name=f"nexa-notify-pub-{self.channel}"),
            asyncio.create_task(self._receiver(), name=f"nexa-notify-sub-{self.channel}"),
        ]
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        except asyncio.TimeoutError:
            await self.stop()
            raise RuntimeError(f"redis notifier: cannot subscribe to {self.channel!r} "
                               f"within {timeout_s:g}s (is Redis reachable?)") from None
        log.info("redis notifier: subscribed to %s", self.channel)

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._subscribed.clear()
        if self._pub is not None:
            await self._pub.aclose()
            self._pub = None

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    # --- publishing ------------------------------------------------------------------------

    async def _publisher(self) -> None:
        failures = 0
        while True:
            await self._have_pending.wait()
            batch, wake_all = self._take_batch()
            if not batch and not wake_all:
                continue
            message = {"o": self.origin, "n": batch}
            if wake_all:
                message["all"] = True
            try:
                assert self._pub is not None
                await self._pub.publish(self.channel, json.dumps(message, separators=(",", ":")))
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Put the batch back (bounded by notify's limit) and retry with backoff.
                self._pending.extendleft(reversed(batch))
                self._wake_all_pending = self._wake_all_pending or wake_all
                self._have_pending.set()
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning("redis notifier: publish failed (%s); retrying in %gs",
                            type(e).__name__, delay)
                await asyncio.sleep(delay)

    def _take_batch(self) -> tuple[list[list[Any]], bool]:
        batch: list[list[Any]] = []
        size = 0
        while self._pending and len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
            item = self._pending.popleft()
            size += len(json.dumps(item))
            batch.append(item)
        if not self._pending:
            self._have_pending.clear()
        wake_all, self._wake_all_pending = self._wake_all_pending, False
        return batch, wake_all

    # --- receiving -------------------------------------------------------------------------

    async def _receiver(self) -> None:
        failures = 0
        while not self._stopping:
            client = aioredis.Redis.from_url(self.redis_url, socket_connect_timeout=5,
                                             client_name=self.client_name)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    msg = await pubsub.get_message(timeout=30.0)
                    if msg is None:
                        continue
                    if msg.get("type") == "subscribe":
                        if not self._subscribed.is_set():
                            self._subscribed.set()
                            if failures:
                                # Messages may have been lost while unsubscribed.
                                self._wake_all()
                        failures = 0
                    elif msg.get("type") == "message":
                        self._deliver(msg.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._subscribed.clear()
                delay = RETRY_S[min(failures, len(RETRY_S) - 1)]
                failures += 1
                log.warning("redis notifier: subscription to %s lost (%s); retrying in %gs",
                            self.channel, type(e).__name__, delay)
                await asyncio.sleep(delay)
            finally:
                try:
                    await pubsub.aclose()
                    await client.aclose()
                except Exception:
                    pass

    def _deliver(self, data: Any) -> None:
        try:
            message = self._parse(data)
        except (ValueError, TypeError, RecursionError) as e:
            log.warning("redis notifier: ignoring a malformed message on %s (%s)",
                        self.channel, e)
            return
        if message is None:
            return
        wake_all, batch = message
        if wake_all:
            self._wake_all()
        for stream, position, rooms, users in batch:
            try:
                # Local delivery only: the base class wakes listeners and calls subscribers.
                InProcessNotifier.notify(self, stream, position, rooms, users)
            except Exception:
                log.exception("redis notifier: a subscriber failed on a %s notification", stream)

    def _parse(self, data: Any) -> tuple[bool, list[tuple[str, int, list[str], list[str]]]] | None:
        """(wake all?, notifications), or None for this process's own messages."""
        if isinstance(data, (bytes, bytearray)):
            if len(data) > MAX_MESSAGE_BYTES:
                raise ValueError("message too large")
            data = bytes(data).decode()
        if not isinstance(data, str):
            raise ValueError("not text")
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError("not an object")
        if message.get("o") == self.origin:
            return None  # our own notify already woke this process
        raw = message.get("n", [])
        if not isinstance(raw, list):
            raise ValueError("bad batch")
        batch = []
        for item in raw:
            if not (isinstance(item, list) and len(item) == 4):
                raise ValueError("bad notification")
            stream, position, rooms, users = item
            if not (isinstance(stream, str) and isinstance(position, int)
                    and isinstance(rooms, list) and isinstance(users, list)
                    and all(isinstance(x, str) for x in rooms + users)):
                raise ValueError("bad notification")
            batch.append((stream, position, rooms, users))
        return message.get("all") is True, batch

    def _wake_all(self) -> None:
        for listeners in list(self._by_user.values()):
            for lst in listeners:
                lst.event.set()
