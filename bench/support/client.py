"""A minimal Matrix client, and what every benchmark does with its users.

`SyncBench` registers users, creates and joins the room, and runs one long-poll /sync loop per
user (filling limited timelines from /messages, as the spec tells clients to); a benchmark
subclass sends its workload and records in `_record` what each /sync delivers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

import aiohttp

from . import BenchError, log

try:  # the server depends on orjson, so it is normally there; parse faster when it is
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

CLIENT = "/_matrix/client/v3"
BENCH_KEY = "nexa.bench"  # custom content field carrying (run id, message index, send time)


class HttpError(BenchError):
    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        super().__init__(f"{method} {path} -> {status}: {str(body)[:300]}")
        self.status = status
        self.body = body


class Api:
    def __init__(self, session: aiohttp.ClientSession, base_url: str, deadline: float) -> None:
        self.s = session
        self.base = base_url.rstrip("/")
        self.deadline = deadline  # monotonic time after which nothing retries any more

    async def call(self, method: str, path: str, *, token: str | None = None,
                   body: Any = None, params: dict | None = None, timeout: float = 30,
                   ok: tuple[int, ...] = (200,), retries: int = 5) -> tuple[int, Any, int]:
        """One request with retry on 429 (honouring retry_after_ms), 5xx and transport errors.

        Returns (status, parsed JSON body, perf_counter_ns when the body was read).
        """
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        url = self.base + path
        last: Exception | None = None
        for attempt in range(retries + 1):
            try:
                async with self.s.request(method, url, data=data, params=params, headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout)) as r:
                    raw = await r.read()
                    t_read = time.perf_counter_ns()
                    try:
                        parsed = _loads(raw) if raw else {}
                    except ValueError:
                        parsed = {"raw": raw[:200].decode(errors="replace")}
                    if r.status in ok:
                        return r.status, parsed, t_read
                    err = HttpError(method, path, r.status, parsed)
                    if r.status == 429:
                        wait = (parsed.get("retry_after_ms") or 500) / 1000 if isinstance(
                            parsed, dict) else 0.5
                        last = err
                        await self._sleep(min(wait, 5.0))
                        continue
                    if r.status >= 500:
                        last = err
                        await self._sleep(0.2 * (attempt + 1))
                        continue
                    raise err
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                last = BenchError(f"{method} {path}: {type(e).__name__}: {e}")
                await self._sleep(0.2 * (attempt + 1))
        raise last or BenchError(f"{method} {path} failed")

    async def _sleep(self, seconds: float) -> None:
        if time.monotonic() + seconds > self.deadline:
            raise BenchError("overall time limit reached")
        await asyncio.sleep(seconds)


@dataclass
class SyncUser:
    index: int
    api: Api | None = None  # set before the set-up
    user_id: str = ""
    token: str = ""
    since: str | None = None
    # message index -> delivery latency (ns), for messages sent by *other* users
    seen: dict[int, int] = field(default_factory=dict)
    syncs: int = 0
    sync_errors: int = 0
    backfills: int = 0
    last_error: str = ""
    polling: asyncio.Event = field(default_factory=asyncio.Event)


async def bounded(coros: Iterable[Awaitable], limit: int) -> list:
    """gather() with at most `limit` of them running at once."""
    sem = asyncio.Semaphore(limit)

    async def one(coro):
        async with sem:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


class SyncBench:
    """Users in one room, each long-polling /sync; the subclass sends and records."""

    user_prefix = "bench"

    def __init__(self, args: argparse.Namespace, deadline: float) -> None:
        self.args = args
        self.deadline = deadline
        self.run_id = secrets.token_hex(4)
        self.users: list = []  # of SyncUser subclasses
        self.room_id = ""
        self.sync_filter = json.dumps(json.loads(args.sync_filter), separators=(",", ":"))
        self.send_lat_ns: list[int] = []
        self.send_errors: list[str] = []
        self.last_delivery_ns = 0
        self.stopping = False
        self.progress = asyncio.Event()
        self.sync_tasks: list[asyncio.Task] = []

    # -- set-up -----------------------------------------------------------------------------

    def _room_path(self) -> str:
        return f"{CLIENT}/rooms/{urllib.parse.quote(self.room_id, safe='')}"

    async def register(self, u: SyncUser) -> None:
        username = f"{self.user_prefix}{self.run_id}_{u.index}"
        # Strong-looking, so a password policy never refuses it.
        body: dict[str, Any] = {"username": username,
                                "password": secrets.token_urlsafe(12) + "Aa1!",
                                "initial_device_display_name": "bench"}
        # User-interactive auth: the first request answers 401 with the flows and a session.
        status, res, _ = await u.api.call("POST", f"{CLIENT}/register", body=body, ok=(200, 401))
        if status == 401:
            flows = [f.get("stages") for f in res.get("flows", [])]
            if ["m.login.dummy"] not in flows:
                raise BenchError(f"registration needs {flows}, not m.login.dummy")
            body["auth"] = {"type": "m.login.dummy"}
            if res.get("session"):
                body["auth"]["session"] = res["session"]
            status, res, _ = await u.api.call("POST", f"{CLIENT}/register", body=body)
        u.user_id, u.token = res["user_id"], res["access_token"]

    async def create_room(self, owner: SyncUser, name: str) -> None:
        _, res, _ = await owner.api.call("POST", f"{CLIENT}/createRoom", token=owner.token,
                                         body={"preset": "public_chat", "name": name})
        self.room_id = res["room_id"]

    async def join(self, u: SyncUser, **kw: Any) -> None:
        quoted = urllib.parse.quote(self.room_id, safe="")
        await u.api.call("POST", f"{CLIENT}/join/{quoted}", token=u.token, body={}, **kw)

    async def initial_sync(self, u: SyncUser) -> bool:
        """Sets the user's starting since token; False if the joined room is not listed (wrong
        per the spec, but messages may still arrive: the caller notes it and carries on)."""
        params = {"filter": self.sync_filter, "timeout": "0"}
        _, res, _ = await u.api.call("GET", f"{CLIENT}/sync", token=u.token, params=params,
                                     timeout=60)
        u.since = res["next_batch"]
        return self.room_id in (res.get("rooms") or {}).get("join", {})

    # -- sending ----------------------------------------------------------------------------

    async def send_message(self, sender: SyncUser, txn: str, content: dict) -> None:
        # A retry uses the same txn: the server deduplicates.
        await sender.api.call("PUT", f"{self._room_path()}/send/m.room.message/{txn}",
                              token=sender.token, body=content, timeout=60)

    # -- receiving --------------------------------------------------------------------------

    def _record(self, u: SyncUser, own: bool, meta: dict, t_recv: int) -> None:
        """One of this run's messages reached u (own: u sent it) at t_recv."""
        raise NotImplementedError

    def _take(self, u: SyncUser, events: list[dict], t_recv: int) -> None:
        for ev in events:
            if ev.get("type") != "m.room.message":
                continue
            meta = (ev.get("content") or {}).get(BENCH_KEY)
            if not isinstance(meta, dict) or meta.get("run") != self.run_id:
                continue
            self._record(u, ev.get("sender") == u.user_id, meta, t_recv)

    async def _backfill(self, u: SyncUser, prev_batch: str, until: str) -> None:
        """A limited timeline skipped events: page back with /messages to the previous token."""
        frm = prev_batch
        for _ in range(200):  # bounded: 200 pages x 1000 events
            _, res, t_recv = await u.api.call(
                "GET", f"{self._room_path()}/messages", token=u.token,
                params={"dir": "b", "from": frm, "to": until, "limit": "1000"}, timeout=60)
            chunk = res.get("chunk") or []
            self._take(u, chunk, t_recv)
            u.backfills += 1
            end = res.get("end")
            if not chunk or not end or end == frm:
                return
            frm = end

    async def sync_loop(self, u: SyncUser) -> None:
        consecutive_errors = 0
        while not self.stopping and time.monotonic() < self.deadline:
            params = {"filter": self.sync_filter, "since": u.since,
                      "timeout": str(self.args.sync_timeout_ms)}
            u.polling.set()  # the first long-poll is on its way
            try:
                _, res, t_recv = await u.api.call(
                    "GET", f"{CLIENT}/sync", token=u.token, params=params,
                    timeout=self.args.sync_timeout_ms / 1000 + 30, retries=2)
                room = ((res.get("rooms") or {}).get("join") or {}).get(self.room_id)
                if room:
                    tl = room.get("timeline") or {}
                    self._take(u, tl.get("events") or [], t_recv)
                    if tl.get("limited") and tl.get("prev_batch"):
                        await self._backfill(u, tl["prev_batch"], u.since)
                u.since = res["next_batch"]
                u.syncs += 1
                consecutive_errors = 0
                self.progress.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # keep syncing; a run with a broken /sync reports missing
                u.sync_errors += 1
                u.last_error = str(e)[:300]
                consecutive_errors += 1
                if consecutive_errors >= self.args.max_sync_errors:
                    log(f"{u.user_id}: giving up /sync after {consecutive_errors} errors: "
                        f"{u.last_error}")
                    return
                await asyncio.sleep(min(0.1 * consecutive_errors, 2.0))

    async def start_syncing(self) -> None:
        """One /sync loop per user; returns once every first long-poll is on its way. The
        caller stops them with stop_syncing() on every way out."""
        self.sync_tasks = [asyncio.create_task(self.sync_loop(u)) for u in self.users]
        await asyncio.gather(*(u.polling.wait() for u in self.users))
        await asyncio.sleep(0.2)  # let the first long-polls reach the server

    async def wait_progress(self, cond: Callable[[], bool], until: float) -> bool:
        """Wait until cond() holds, re-checking after every /sync answer; False when `until`
        passed or every sync loop gave up first."""
        while not cond():
            if time.monotonic() >= until or all(t.done() for t in self.sync_tasks):
                return False
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
        return True

    async def stop_syncing(self) -> None:
        self.stopping = True
        for t in self.sync_tasks:
            t.cancel()
        await asyncio.gather(*self.sync_tasks, return_exceptions=True)

    # -- figures ----------------------------------------------------------------------------

    def sync_figures(self) -> dict[str, int]:
        return {"syncs": sum(u.syncs for u in self.users),
                "sync_errors": sum(u.sync_errors for u in self.users),
                "backfills": sum(u.backfills for u in self.users)}

    def log_errors(self) -> None:
        if self.send_errors:
            log(f"{len(self.send_errors)} send errors, first: {self.send_errors[0]}")
        errs = [u for u in self.users if u.last_error]
        if errs:
            log(f"{len(errs)} users had /sync errors, e.g. {errs[0].user_id}: "
                f"{errs[0].last_error}")
