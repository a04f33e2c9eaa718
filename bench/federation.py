#!/usr/bin/env python3
"""Nexa federation benchmark: 2 or 3 servers on loopback, one room, cross-server delivery latency.

    python bench/federation.py                   # 2 servers, 1 user each, 50 msg/s for 20 s
    python bench/federation.py --servers 3       # three servers
    python bench/federation.py -u 3 --senders all --rate 100 --duration 10

Only a client (aiohttp), built on bench/load.py's helpers; not part of the test suite. See
bench/README.md ("Federation run") for the figures. Every server is a fresh subprocess on a
free 127.0.0.1 port with its own temp data dir, federating over plain HTTP with loopback names
only (localhost:<port>); every loop and wait is bounded, and the servers are killed on every
way out.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import resource
import secrets
import signal
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (  # noqa: E402  (bench/load.py: same directory, not a package)
    BENCH_KEY,
    CLIENT,
    Api,
    BenchError,
    ServerProcess,
    cpu_seconds,
    host_busy_seconds,
    is_loopback_host,
    log,
    peak_rss_mib,
    percentile,
)

TARGET_P50_MS = 50.0  # the issue's target at 50 msg/s sustained
TARGET_P99_MS = 250.0
LAG_WARN_MS = 50.0  # sends issued later than this behind schedule: the rate was not held


# --------------------------------------------------------------------------------------------
# the servers
# --------------------------------------------------------------------------------------------

class FederatingServer(ServerProcess):
    """load.py's ServerProcess with plain-HTTP federation between loopback servers switched on."""

    def _env(self) -> dict[str, str]:
        env = super()._env()  # rate limits off, bcrypt 4, federation disabled, --env applied
        env.update({
            "NEXA_FEDERATION__ENABLED": "true",
            # Same as `nexa run --insecure-federation-http`; the server refuses it unless the
            # listener is on loopback (it is: --host 127.0.0.1).
            "NEXA_FEDERATION__PLAIN_HTTP": "true",
            "NEXA_FEDERATION__ALLOW": '["localhost:*"]',  # only the other bench servers
            "NEXA_FEDERATION__RETRY_MAX_MS": "1000",  # a hiccup must not park a queue for 60 s
        })
        for kv in self.args.env:  # the caller's --env still wins (validated by super()._env)
            k, _, v = kv.partition("=")
            env[k] = v
        return env

    @property
    def server_name(self) -> str:
        return f"localhost:{self.port}"


# --------------------------------------------------------------------------------------------
# users and the run
# --------------------------------------------------------------------------------------------

@dataclass
class FedUser:
    index: int  # global
    server: int  # index of its server (0 = the room's server)
    api: Api
    user_id: str = ""
    token: str = ""
    since: str | None = None
    seen: dict[int, int] = field(default_factory=dict)  # message index -> latency (ns)
    # message index -> latency from the message's *scheduled* send time (ns): differs from
    # `seen` only when sends were held back by the in-flight cap (coordinated omission)
    seen_sched: dict[int, int] = field(default_factory=dict)
    last_seen_ns: int = 0
    got_remote: int = 0  # how many of `seen` came from senders on other servers
    warm_seen: set[int] = field(default_factory=set)
    syncs: int = 0
    sync_errors: int = 0
    backfills: int = 0
    last_error: str = ""
    polling: asyncio.Event = field(default_factory=asyncio.Event)


class FedBench:
    def __init__(self, args: argparse.Namespace, servers: list[FederatingServer],
                 deadline: float) -> None:
        self.args = args
        self.servers = servers
        self.deadline = deadline
        self.run_id = secrets.token_hex(4)
        self.m = max(1, round(args.rate * args.duration))
        self.users: list[FedUser] = []
        self.senders: list[FedUser] = []
        self.room_id = ""
        self.sync_filter = json.dumps(json.loads(args.sync_filter), separators=(",", ":"))
        self.send_lat_ns: list[int] = []
        self.lag_ns: list[int] = []  # issue time minus scheduled time, per message
        self.send_errors: list[str] = []
        self.first_issue_ns = 0
        self.last_issue_ns = 0
        self.last_response_ns = 0
        self.issued = 0
        self.last_delivery_ns = 0
        self.stopping = False
        self.progress = asyncio.Event()
        self.measure_start: dict[str, Any] | None = None  # CPU counters at the first send
        self.measure_end: dict[str, Any] | None = None

    # -- who sends what, who should receive it ----------------------------------------------

    def sender_of(self, i: int) -> FedUser:
        return self.senders[i % len(self.senders)]

    def expected_for(self, u: FedUser, remote: bool) -> int:
        """How many of the M messages user u should see (remote: from other servers)."""
        n = 0
        for k, s in enumerate(self.senders):
            if s is u or (s.server != u.server) != remote:
                continue
            n += len(range(k, self.m, len(self.senders)))
        return n

    def _is_remote_pair(self, u: FedUser, i: int) -> bool:
        return self.sender_of(i).server != u.server

    def missing(self) -> tuple[int, int]:
        """(remote missing, local missing) over all (message, expected receiver) pairs."""
        rem = loc = 0
        for u in self.users:  # counters kept by _take: this runs after every /sync answer
            rem += self.expected_for(u, True) - u.got_remote
            loc += self.expected_for(u, False) - (len(u.seen) - u.got_remote)
        return rem, loc

    # -- set-up -----------------------------------------------------------------------------

    async def register(self, u: FedUser) -> None:
        username = f"fed{self.run_id}_{u.index}"
        body: dict[str, Any] = {"username": username, "password": secrets.token_urlsafe(12),
                                "initial_device_display_name": "bench"}
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

    async def join(self, u: FedUser) -> None:
        quoted = urllib.parse.quote(self.room_id, safe="")
        params = None
        if u.server != 0:
            params = {"server_name": self.servers[0].server_name}
        t = time.monotonic()
        await u.api.call("POST", f"{CLIENT}/join/{quoted}", token=u.token, body={},
                         params=params, timeout=60, retries=2)
        if u.server != 0:
            log(f"{u.user_id} joined over federation in {time.monotonic() - t:.2f}s")

    async def wait_membership(self) -> None:
        """Every server lists every bench user as joined (bounded by --join-timeout)."""
        want = {u.user_id for u in self.users}
        quoted = urllib.parse.quote(self.room_id, safe="")
        until = min(self.deadline, time.monotonic() + self.args.join_timeout)
        by_server = [next(u for u in self.users if u.server == k)
                     for k in range(len(self.servers))]
        pending = list(by_server)
        while pending:
            still = []
            for u in pending:
                _, res, _ = await u.api.call("GET", f"{CLIENT}/rooms/{quoted}/joined_members",
                                             token=u.token, timeout=30)
                if not want <= set((res.get("joined") or {}).keys()):
                    still.append(u)
            pending = still
            if pending:
                if time.monotonic() > until:
                    names = ", ".join(self.servers[u.server].server_name for u in pending)
                    raise BenchError(f"not every server saw every join within "
                                     f"{self.args.join_timeout:.0f}s: {names}")
                await asyncio.sleep(0.1)

    async def setup(self) -> None:
        args = self.args
        sem = asyncio.Semaphore(8)

        async def bounded(coro):
            async with sem:
                return await coro

        t = time.monotonic()
        await asyncio.gather(*(bounded(self.register(u)) for u in self.users))
        log(f"registered {len(self.users)} users ({args.users_per_server} per server) in "
            f"{time.monotonic() - t:.1f}s")
        owner = self.users[0]
        _, res, _ = await owner.api.call(
            "POST", f"{CLIENT}/createRoom", token=owner.token,
            body={"preset": "public_chat", "name": f"federation bench {self.run_id}"})
        self.room_id = res["room_id"]
        log(f"room {self.room_id} created on {self.servers[0].server_name}")
        # The first user of each remote server does the federated join (one server at a time,
        # so the set-up itself is deterministic); everybody else then joins in parallel
        # (locally, their server already being in the room).
        for k in range(1, len(self.servers)):
            await self.join(next(u for u in self.users if u.server == k))
        firsts = {next(u for u in self.users if u.server == k).index
                  for k in range(len(self.servers))}
        await asyncio.gather(*(bounded(self.join(u)) for u in self.users
                               if u.index not in firsts))
        t = time.monotonic()
        await self.wait_membership()
        log(f"every server sees all {len(self.users)} members "
            f"(waited {time.monotonic() - t:.1f}s)")
        await asyncio.gather(*(bounded(self.initial_sync(u)) for u in self.users))

    async def initial_sync(self, u: FedUser) -> None:
        params = {"filter": self.sync_filter, "timeout": "0"}
        _, res, _ = await u.api.call("GET", f"{CLIENT}/sync", token=u.token, params=params,
                                     timeout=60)
        if self.room_id not in (res.get("rooms") or {}).get("join", {}):
            log(f"warning: initial /sync of {u.user_id} does not list the joined room")
        u.since = res["next_batch"]

    # -- receiving --------------------------------------------------------------------------

    def _take(self, u: FedUser, events: list[dict], t_recv: int) -> None:
        for ev in events:
            if ev.get("type") != "m.room.message" or ev.get("sender") == u.user_id:
                continue
            meta = (ev.get("content") or {}).get(BENCH_KEY)
            if not isinstance(meta, dict) or meta.get("run") != self.run_id:
                continue
            if isinstance(meta.get("w"), int):  # warm-up message
                u.warm_seen.add(meta["w"])
                continue
            i, t0 = meta.get("i"), meta.get("t0")
            if not isinstance(i, int) or not isinstance(t0, int) or not 0 <= i < self.m:
                continue
            if i not in u.seen:
                u.seen[i] = t_recv - t0
                sched = meta.get("sched")
                u.seen_sched[i] = t_recv - (sched if isinstance(sched, int) else t0)
                u.last_seen_ns = max(u.last_seen_ns, t_recv)
                if self._is_remote_pair(u, i):
                    u.got_remote += 1
                self.last_delivery_ns = max(self.last_delivery_ns, t_recv)

    async def _backfill(self, u: FedUser, prev_batch: str, until: str) -> None:
        """A limited timeline skipped events: page back with /messages, as clients do."""
        quoted = urllib.parse.quote(self.room_id, safe="")
        frm = prev_batch
        for _ in range(200):
            _, res, t_recv = await u.api.call(
                "GET", f"{CLIENT}/rooms/{quoted}/messages", token=u.token,
                params={"dir": "b", "from": frm, "to": until, "limit": "1000"}, timeout=60)
            chunk = res.get("chunk") or []
            self._take(u, chunk, t_recv)
            u.backfills += 1
            end = res.get("end")
            if not chunk or not end or end == frm:
                return
            frm = end

    async def sync_loop(self, u: FedUser) -> None:
        consecutive_errors = 0
        while not self.stopping and time.monotonic() < self.deadline:
            params = {"filter": self.sync_filter, "since": u.since,
                      "timeout": str(self.args.sync_timeout_ms)}
            u.polling.set()
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
            except Exception as e:
                u.sync_errors += 1
                u.last_error = str(e)[:300]
                consecutive_errors += 1
                if consecutive_errors >= self.args.max_sync_errors:
                    log(f"{u.user_id}: giving up /sync after {consecutive_errors} errors: "
                        f"{u.last_error}")
                    return
                await asyncio.sleep(min(0.1 * consecutive_errors, 2.0))

    async def _wait_progress(self, cond, until: float, tasks: list[asyncio.Task]) -> bool:
        while not cond():
            if time.monotonic() >= until or all(t.done() for t in tasks):
                return False
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
        return True

    # -- sending ----------------------------------------------------------------------------

    async def _put(self, sender: FedUser, txn: str, content: dict) -> None:
        quoted = urllib.parse.quote(self.room_id, safe="")
        await sender.api.call("PUT", f"{CLIENT}/rooms/{quoted}/send/m.room.message/{txn}",
                              token=sender.token, body=content, timeout=60)

    async def warm_up(self, tasks: list[asyncio.Task]) -> None:
        """A few messages per sender, one at a time, each awaited on every other user: proves
        the whole path works end to end and leaves nothing from the set-up in flight."""
        n = self.args.warmup
        if n <= 0:
            return
        t = time.monotonic()
        for w in range(n * len(self.senders)):
            s = self.senders[w % len(self.senders)]
            content = {"msgtype": "m.text", "body": f"warm-up {w}",
                       BENCH_KEY: {"run": self.run_id, "w": w}}
            await self._put(s, f"{self.run_id}-w{w}", content)
            others = [u for u in self.users if u is not s]
            until = min(self.deadline, time.monotonic() + self.args.join_timeout)
            if not await self._wait_progress(lambda: all(w in u.warm_seen for u in others),
                                             until, tasks):
                late = [u.user_id for u in others if w not in u.warm_seen]
                raise BenchError(f"warm-up message {w} from {s.user_id} did not reach "
                                 f"{', '.join(late)} within {self.args.join_timeout:.0f}s")
        log(f"warm-up: {n * len(self.senders)} messages delivered everywhere in "
            f"{time.monotonic() - t:.1f}s")

    async def send_one(self, i: int, sched_ns: int, sem: asyncio.Semaphore) -> None:
        try:
            sender = self.sender_of(i)
            t0 = time.perf_counter_ns()
            self.lag_ns.append(max(0, t0 - sched_ns))
            if not self.first_issue_ns:
                self.first_issue_ns = t0
            self.last_issue_ns = t0
            self.issued += 1
            content = {"msgtype": "m.text", "body": f"federation bench message {i} t0={t0}",
                       BENCH_KEY: {"run": self.run_id, "i": i, "t0": t0, "sched": sched_ns}}
            try:
                await self._put(sender, f"{self.run_id}-{i}", content)
            except Exception as e:
                self.send_errors.append(f"message {i}: {e}")
                return
            t1 = time.perf_counter_ns()
            self.send_lat_ns.append(t1 - t0)
            self.last_response_ns = max(self.last_response_ns, t1)
        finally:
            sem.release()

    async def send_all(self) -> None:
        """Open loop: message i is issued at start + i/rate whatever happened to the earlier
        ones; only the in-flight cap (--concurrency) can hold a send back (seen as lag)."""
        rate = self.args.rate
        sem = asyncio.Semaphore(self.args.concurrency)
        pending: list[asyncio.Task] = []
        start = time.perf_counter_ns() + 20_000_000
        for i in range(self.m):
            sched = start + int(i * 1e9 / rate)
            delay = (sched - time.perf_counter_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            await sem.acquire()
            if time.monotonic() > self.deadline:
                sem.release()
                self.send_errors.append(f"message {i}: overall time limit reached")
                continue
            pending.append(asyncio.create_task(self.send_one(i, sched, sem)))
        await asyncio.gather(*pending)

    # -- the run ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"servers": [cpu_seconds(s.pid) if s.pid else None for s in self.servers],
                "client": ru.ru_utime + ru.ru_stime, "host": host_busy_seconds(),
                "wall": time.monotonic()}

    async def run(self, session: aiohttp.ClientSession) -> None:
        per = self.args.users_per_server
        for k, srv in enumerate(self.servers):
            for _ in range(per):
                self.users.append(FedUser(len(self.users), k, Api(session, srv.base_url,
                                                                   self.deadline)))
        if self.args.senders == "all":
            self.senders = [next(u for u in self.users if u.server == k)
                            for k in range(len(self.servers))]
        else:
            self.senders = [self.users[0]]
        await self.setup()
        tasks = [asyncio.create_task(self.sync_loop(u)) for u in self.users]
        try:
            await asyncio.gather(*(u.polling.wait() for u in self.users))
            await asyncio.sleep(0.2)  # let the first long-polls reach the servers
            await self.warm_up(tasks)
            await asyncio.sleep(0.2)
            log(f"sending {self.m} messages at {self.args.rate:g}/s from "
                f"{len(self.senders)} sender(s), at most {self.args.concurrency} in flight")
            self.measure_start = self.snapshot()
            await self.send_all()
            phase = (self.last_response_ns - self.first_issue_ns) / 1e9 if self.issued else 0
            log(f"send phase: {phase:.2f}s, {len(self.send_errors)} errors; "
                "waiting for deliveries")
            until = min(self.deadline, time.monotonic() + self.args.delivery_timeout)
            await self._wait_progress(lambda: self.missing() == (0, 0), until, tasks)
            self.measure_end = self.snapshot()
        finally:
            self.stopping = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- figures ----------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        r2 = lambda x: None if x is None else round(x, 2)  # noqa: E731
        ms = lambda ns: ns / 1e6  # noqa: E731
        remote = sorted(ms(v) for u in self.users for i, v in u.seen.items()
                        if self._is_remote_pair(u, i))
        local = sorted(ms(v) for u in self.users for i, v in u.seen.items()
                       if not self._is_remote_pair(u, i))
        remote_sched = sorted(ms(v) for u in self.users for i, v in u.seen_sched.items()
                              if self._is_remote_pair(u, i))
        send = sorted(ms(v) for v in self.send_lat_ns)
        lag = sorted(ms(v) for v in self.lag_ns)
        miss_r, miss_l = self.missing() if self.senders else (0, 0)
        accepted = len(self.send_lat_ns)
        phase = ((self.last_response_ns - self.first_issue_ns) / 1e9
                 if self.issued and self.last_response_ns else None)
        issue_span = (self.last_issue_ns - self.first_issue_ns) / 1e9 if self.issued > 1 else None
        receivers = []
        for u in self.users:
            exp = self.expected_for(u, True) if self.senders else 0
            if not exp:
                continue
            lat = sorted(ms(v) for i, v in u.seen.items() if self._is_remote_pair(u, i))
            span = ((u.last_seen_ns - self.first_issue_ns) / 1e9
                    if lat and self.first_issue_ns else None)
            receivers.append({
                "user": u.user_id, "server": self.servers[u.server].server_name,
                "received": len(lat), "expected": exp,
                "p50_ms": r2(percentile(lat, 50)), "p99_ms": r2(percentile(lat, 99)),
                "max_ms": r2(lat[-1] if lat else None),
                "msgs_per_s": r2(len(lat) / span) if span else None,
            })
        servers = []
        s0, s1 = self.measure_start, self.measure_end
        window = (s1["wall"] - s0["wall"]) if s0 and s1 else None
        for k, srv in enumerate(self.servers):
            rss, _ = peak_rss_mib(srv.pid) if srv.pid and srv.proc.poll() is None else (None, 0)
            cpu = None
            if s0 and s1 and s0["servers"][k] is not None and s1["servers"][k] is not None:
                cpu = s1["servers"][k] - s0["servers"][k]
            servers.append({"server": srv.server_name, "pid": srv.pid,
                            "peak_rss_mib": r2(rss), "cpu_s": r2(cpu),
                            "cpu_pct": r2(100 * cpu / window) if cpu is not None and window
                            else None})
        client_cpu = other_cpu = None
        if s0 and s1:
            client_cpu = s1["client"] - s0["client"]
            if s0["host"] is not None and s1["host"] is not None:
                other_cpu = max(0.0, (s1["host"] - s0["host"]) - client_cpu
                                - sum(s["cpu_s"] or 0 for s in servers))
        p50, p99 = percentile(remote, 50), percentile(remote, 99)
        return {
            "servers": len(self.servers),
            "users_per_server": self.args.users_per_server,
            "senders": len(self.senders),
            "rate": self.args.rate,
            "duration_s": self.args.duration,
            "messages": self.m,
            "concurrency": self.args.concurrency,
            "backend": "postgres" if self.args.database_url else "sqlite",
            "accepted": accepted,
            "send_errors": len(self.send_errors),
            "issue_rate": r2((self.issued - 1) / issue_span) if issue_span else None,
            "send_rate": r2(accepted / phase) if phase else None,
            "send_phase_s": r2(phase),
            "send_p50_ms": r2(percentile(send, 50)),
            "send_p99_ms": r2(percentile(send, 99)),
            "lag_p99_ms": r2(percentile(lag, 99)),
            "lag_max_ms": r2(lag[-1] if lag else None),
            "deliveries": len(remote),
            "deliveries_expected": len(remote) + miss_r,
            "deliveries_missing": miss_r,
            "delivery_p50_ms": r2(p50),
            "delivery_p99_ms": r2(p99),
            "delivery_max_ms": r2(remote[-1] if remote else None),
            "sched_delivery_p50_ms": r2(percentile(remote_sched, 50)),
            "sched_delivery_p99_ms": r2(percentile(remote_sched, 99)),
            "local_deliveries": len(local),
            "local_missing": miss_l,
            "local_p50_ms": r2(percentile(local, 50)),
            "local_p99_ms": r2(percentile(local, 99)),
            "all_delivered_s": r2((self.last_delivery_ns - self.first_issue_ns) / 1e9
                                  if self.last_delivery_ns and self.first_issue_ns else None),
            "target_met": (p50 is not None and p99 is not None and p50 < TARGET_P50_MS
                           and p99 < TARGET_P99_MS and miss_r == 0),
            "receivers": receivers,
            "server_stats": servers,
            "client_cpu_s": r2(client_cpu),
            "other_cpu_s": r2(other_cpu),
            "wall_s": r2(window),
            "cpus": os.cpu_count(),
            "syncs": sum(u.syncs for u in self.users),
            "sync_errors": sum(u.sync_errors for u in self.users),
            "backfills": sum(u.backfills for u in self.users),
        }


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------

def _f(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v:,}{unit}"


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None) -> None:
    allrows = ([header] if header else []) + rows
    widths = [max(len(r[c]) for r in allrows) for c in range(len(allrows[0]))]
    line = "-" * (sum(widths) + 2 * (len(widths) - 1))
    print(line)
    for j, r in enumerate(allrows):
        print("  ".join(c.rjust(w) if header and k > 0 else c.ljust(w)
                        for k, (c, w) in enumerate(zip(r, widths))).rstrip())
        if header and j == 0:
            print(line)
    print(line)


def print_tables(r: dict[str, Any]) -> None:
    ok = "met" if r["target_met"] else "NOT met"
    rows = [
        ("workload", f"{r['servers']} servers x {r['users_per_server']} user(s), "
                     f"{r['senders']} sender(s), {r['messages']:,} messages at "
                     f"{r['rate']:g}/s, max {r['concurrency']} in flight, {r['backend']}"),
        ("send rate issued / accepted", f"{_f(r['issue_rate'])} / {_f(r['send_rate'])} msg/s  "
                                        f"({r['accepted']:,} accepted, {r['send_errors']} "
                                        f"errors, schedule lag p99 "
                                        f"{_f(r['lag_p99_ms'], ' ms')}, max "
                                        f"{_f(r['lag_max_ms'], ' ms')})"),
        ("send latency p50 / p99", f"{_f(r['send_p50_ms'], ' ms')} / "
                                   f"{_f(r['send_p99_ms'], ' ms')}"),
        ("cross-server delivery p50 / p99", f"{_f(r['delivery_p50_ms'], ' ms')} / "
                                            f"{_f(r['delivery_p99_ms'], ' ms')}  (max "
                                            f"{_f(r['delivery_max_ms'], ' ms')}; target p50 < "
                                            f"{TARGET_P50_MS:g}, p99 < {TARGET_P99_MS:g}: {ok})"),
        ("  ... from the scheduled time", f"{_f(r['sched_delivery_p50_ms'], ' ms')} / "
                                         f"{_f(r['sched_delivery_p99_ms'], ' ms')}  (differs "
                                         "when sends lagged their schedule)"),
        ("cross-server deliveries missing", f"{r['deliveries_missing']} of "
                                            f"{r['deliveries_expected']:,}"),
    ]
    if r["local_deliveries"] or r["local_missing"]:
        rows.append(("same-server delivery p50 / p99",
                     f"{_f(r['local_p50_ms'], ' ms')} / {_f(r['local_p99_ms'], ' ms')}  "
                     f"({r['local_missing']} of {r['local_deliveries'] + r['local_missing']:,} "
                     "missing)"))
    rows += [
        ("all delivered after", f"{_f(r['all_delivered_s'], ' s')} from the first send"),
        ("CPU client / other", f"{_f(r['client_cpu_s'], ' s')} / {_f(r['other_cpu_s'], ' s')}"
                               f"  (over {_f(r['wall_s'], ' s')} on {r['cpus']} CPUs)"),
        ("syncs (errors, backfills)", f"{r['syncs']:,} ({r['sync_errors']}, {r['backfills']})"),
    ]
    _table(rows)
    _table([(x["user"], x["server"], f"{x['received']:,}/{x['expected']:,}",
             _f(x["p50_ms"]), _f(x["p99_ms"]), _f(x["max_ms"]), _f(x["msgs_per_s"]))
            for x in r["receivers"]],
           ("receiver (other servers)", "its server", "received", "p50 ms", "p99 ms", "max ms",
            "msgs/s"))
    _table([(s["server"], str(s["pid"]), _f(s["peak_rss_mib"]), _f(s["cpu_s"]),
             _f(s["cpu_pct"])) for s in r["server_stats"]],
           ("server", "pid", "peak RSS MiB", "CPU s", "CPU %"))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-s", "--servers", type=int, default=2, choices=[2, 3],
                   help="federating servers; the room is created on the first")
    p.add_argument("-u", "--users-per-server", type=int, default=1, help="users on each server")
    p.add_argument("--senders", choices=["first", "all"], default="first",
                   help="first: only the first user of server 1 sends; all: the first user of "
                        "every server sends, round-robin (the total rate stays --rate)")
    p.add_argument("-r", "--rate", type=float, default=50.0, help="messages per second, total")
    p.add_argument("-d", "--duration", type=float, default=20.0,
                   help="seconds of sending (messages = rate x duration)")
    p.add_argument("-c", "--concurrency", type=int, default=100,
                   help="cap on sends in flight; a send beyond it waits (reported as lag)")
    p.add_argument("--warmup", type=int, default=3,
                   help="unmeasured messages per sender, sent one by one before the run")
    p.add_argument("--database-url", help="PostgreSQL admin URL on loopback: each server gets a "
                   "fresh database next to it, dropped afterwards (default: SQLite)")
    p.add_argument("--env", action="append", default=[], metavar="NEXA_KEY=VALUE",
                   help="extra config override for every server (repeatable)")
    p.add_argument("--sync-timeout-ms", type=int, default=30000, help="/sync long-poll timeout")
    p.add_argument("--sync-filter", default='{"room":{"timeline":{"limit":500},'
                   '"state":{"lazy_load_members":true}}}', help="inline /sync filter JSON")
    p.add_argument("--join-timeout", type=float, default=60.0,
                   help="cap for every server to see every join, and per warm-up message")
    p.add_argument("--delivery-timeout", type=float, default=60.0,
                   help="seconds to wait after the send phase for every delivery")
    p.add_argument("--time-limit", type=float, default=300.0,
                   help="overall cap in seconds for the whole run")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="server start-up cap")
    p.add_argument("--max-sync-errors", type=int, default=20,
                   help="consecutive /sync failures after which a user's sync loop gives up")
    p.add_argument("--server-log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--stop-timeout", type=float, default=10.0,
                   help="seconds between SIGTERM and SIGKILL when stopping a server")
    p.add_argument("--keep-data", action="store_true", help="keep the temp data dirs and logs")
    a = p.parse_args(argv)
    if a.users_per_server < 1 or a.rate <= 0 or a.duration <= 0 or a.concurrency < 1:
        p.error("need --users-per-server >= 1, --rate > 0, --duration > 0, --concurrency >= 1")
    if a.rate * a.duration > 1_000_000:
        p.error("more than 1,000,000 messages")
    if a.database_url and not is_loopback_host(urllib.parse.urlsplit(a.database_url).hostname):
        p.error("--database-url must point at a loopback address")
    try:
        json.loads(a.sync_filter)
    except ValueError:
        p.error("--sync-filter is not JSON")
    return a


async def amain(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.time_limit
    servers: list[FederatingServer] = []
    bench: FedBench | None = None
    result: dict[str, Any] | None = None
    failure: str | None = None
    try:
        for _ in range(args.servers):
            srv = FederatingServer(args)
            atexit.register(srv.stop_sync)
            servers.append(srv)
        # One at a time: each start probes a free port, and starts are cheap next to the run.
        for srv in servers:
            await srv.start()
        log("servers: " + ", ".join(f"{s.server_name} (pid {s.pid})" for s in servers))
        bench = FedBench(args, servers, deadline)
        n_conn = len(servers) * args.users_per_server + args.concurrency + 16
        connector = aiohttp.TCPConnector(limit=n_conn, limit_per_host=n_conn)
        async with aiohttp.ClientSession(connector=connector) as session:
            try:
                await asyncio.wait_for(bench.run(session), max(1.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                failure = f"overall time limit of {args.time_limit:.0f}s reached"
            except BenchError as e:
                failure = str(e)
        if bench.measure_start and not bench.measure_end:
            bench.measure_end = bench.snapshot()
        for srv in servers:
            if srv.proc and srv.proc.poll() is not None:
                failure = ((failure + "; ") if failure else "") + \
                    f"server {srv.server_name} exited with {srv.proc.returncode}"
        if bench.room_id:
            result = bench.results()  # reads peak RSS, so before the servers are stopped
        if result and result["other_cpu_s"] is not None and result["wall_s"]:
            if result["other_cpu_s"] > 0.1 * result["wall_s"] * (os.cpu_count() or 1):
                log(f"warning: other processes used {result['other_cpu_s']:.0f} CPU-seconds "
                    f"during this {result['wall_s']:.0f}s run on {os.cpu_count()} CPUs; "
                    "figures are not reliable")
        if result and (result["lag_p99_ms"] or 0) > LAG_WARN_MS:
            log(f"warning: schedule lag p99 {result['lag_p99_ms']:.0f} ms: the in-flight cap "
                f"was reached, the requested {args.rate:g} msg/s was not sustained")
        if bench.send_errors:
            log(f"{len(bench.send_errors)} send errors, first: {bench.send_errors[0]}")
        errs = [u for u in bench.users if u.last_error]
        if errs:
            log(f"{len(errs)} users had /sync errors, e.g. {errs[0].user_id}: {errs[0].last_error}")
    except BenchError as e:
        failure = str(e)
    finally:
        for srv in servers:
            if failure and srv.proc is not None and srv.log_tail() not in failure:
                log(f"server {srv.server_name} log tail:\n" + srv.log_tail())
            await srv.stop()
    if result is not None:
        print_tables(result)
        print(json.dumps(result, separators=(", ", ": ")), flush=True)
    if failure:
        log(f"FAILED: {failure}")
        return 2
    if result is None:
        return 2
    if result["deliveries_missing"] or result["local_missing"] or result["send_errors"]:
        log(f"{result['deliveries_missing']} cross-server and {result['local_missing']} "
            f"same-server deliveries missing, {result['send_errors']} send errors")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum, frame):  # unwind like Ctrl-C so `finally` stops the servers
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
