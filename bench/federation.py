#!/usr/bin/env python3
"""Nexa federation benchmark: 2 or 3 servers on loopback, one room, cross-server delivery latency.

    python bench/federation.py                   # 2 servers, 1 user each, 50 msg/s for 20 s
    python bench/federation.py --servers 3       # three servers
    python bench/federation.py -u 3 --senders all --rate 100 --duration 10

Only a client (aiohttp), built on bench/support/ like bench/load.py; not part of the test
suite. See bench/README.md ("Federation run") for the figures. Every server is a fresh
subprocess on a free 127.0.0.1 port with its own temp data dir, federating over plain HTTP with
loopback names only (localhost:<port>); every loop and wait is bounded, and the servers are
killed on every way out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from support import BenchError, is_loopback_host, log
from support.cli import (Result, add_common_options, check_common, run_capped, run_main,
                         run_with_servers)
from support.client import BENCH_KEY, Api, SyncBench, SyncUser, bounded
from support.report import (TARGET_P50_MS, TARGET_P99_MS, federation_problems,
                            print_federation_tables)
from support.server import ServerProcess
from support.stats import cpu_between, peak_rss_mib, percentile, r2, snapshot, warn_if_busy

LAG_WARN_MS = 50.0  # sends issued later than this behind schedule: the rate was not held


# --------------------------------------------------------------------------------------------
# users and the run
# --------------------------------------------------------------------------------------------

@dataclass
class FedUser(SyncUser):
    server: int = 0  # index of its server (0 = the room's server)
    # message index -> latency from the message's *scheduled* send time (ns): differs from
    # `seen` only when sends were held back by the in-flight cap (coordinated omission)
    seen_sched: dict[int, int] = field(default_factory=dict)
    last_seen_ns: int = 0
    got_remote: int = 0  # how many of `seen` came from senders on other servers
    warm_seen: set[int] = field(default_factory=set)


class FedBench(SyncBench):
    user_prefix = "fed"

    def __init__(self, args: argparse.Namespace, servers: list[ServerProcess],
                 deadline: float) -> None:
        super().__init__(args, deadline)
        self.servers = servers
        self.m = max(1, round(args.rate * args.duration))
        self.senders: list[FedUser] = []
        self.lag_ns: list[int] = []  # issue time minus scheduled time, per message
        self.first_issue_ns = 0
        self.last_issue_ns = 0
        self.last_response_ns = 0
        self.issued = 0
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
        for u in self.users:  # counters kept by _record: this runs after every /sync answer
            rem += self.expected_for(u, True) - u.got_remote
            loc += self.expected_for(u, False) - (len(u.seen) - u.got_remote)
        return rem, loc

    # -- set-up -----------------------------------------------------------------------------

    def first_user_of(self, k: int) -> FedUser:
        return next(u for u in self.users if u.server == k)

    async def join_room(self, u: FedUser) -> None:
        if u.server == 0:
            await self.join(u, timeout=60, retries=2)
            return
        t = time.monotonic()
        await self.join(u, params={"server_name": self.servers[0].server_name}, timeout=60,
                        retries=2)
        log(f"{u.user_id} joined over federation in {time.monotonic() - t:.2f}s")

    async def wait_membership(self) -> None:
        """Every server lists every bench user as joined (bounded by --join-timeout)."""
        want = {u.user_id for u in self.users}
        until = min(self.deadline, time.monotonic() + self.args.join_timeout)
        pending = [self.first_user_of(k) for k in range(len(self.servers))]
        while pending:
            still = []
            for u in pending:
                _, res, _ = await u.api.call("GET", f"{self._room_path()}/joined_members",
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
        t = time.monotonic()
        await bounded((self.register(u) for u in self.users), 8)
        log(f"registered {len(self.users)} users ({self.args.users_per_server} per server) in "
            f"{time.monotonic() - t:.1f}s")
        await self.create_room(self.users[0], f"federation bench {self.run_id}")
        log(f"room {self.room_id} created on {self.servers[0].server_name}")
        # The first user of each remote server does the federated join (one server at a time,
        # so the set-up itself is deterministic); everybody else then joins in parallel
        # (locally, their server already being in the room).
        firsts = [self.first_user_of(k) for k in range(len(self.servers))]
        for u in firsts[1:]:
            await self.join_room(u)
        await bounded((self.join_room(u) for u in self.users if u not in firsts), 8)
        t = time.monotonic()
        await self.wait_membership()
        log(f"every server sees all {len(self.users)} members "
            f"(waited {time.monotonic() - t:.1f}s)")
        listed = await bounded((self.initial_sync(u) for u in self.users), 8)
        for u, ok in zip(self.users, listed):
            if not ok:
                log(f"warning: initial /sync of {u.user_id} does not list the joined room")

    # -- receiving --------------------------------------------------------------------------

    def _record(self, u: FedUser, own: bool, meta: dict, t_recv: int) -> None:
        if own:
            return
        if isinstance(meta.get("w"), int):  # warm-up message
            u.warm_seen.add(meta["w"])
            return
        i, t0 = meta.get("i"), meta.get("t0")
        if not isinstance(i, int) or not isinstance(t0, int) or not 0 <= i < self.m:
            return
        if i not in u.seen:
            u.seen[i] = t_recv - t0
            sched = meta.get("sched")
            u.seen_sched[i] = t_recv - (sched if isinstance(sched, int) else t0)
            u.last_seen_ns = max(u.last_seen_ns, t_recv)
            if self._is_remote_pair(u, i):
                u.got_remote += 1
            self.last_delivery_ns = max(self.last_delivery_ns, t_recv)

    # -- sending ----------------------------------------------------------------------------

    async def warm_up(self) -> None:
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
            await self.send_message(s, f"{self.run_id}-w{w}", content)
            others = [u for u in self.users if u is not s]
            until = min(self.deadline, time.monotonic() + self.args.join_timeout)
            if not await self.wait_progress(lambda: all(w in u.warm_seen for u in others),
                                            until):
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
                await self.send_message(sender, f"{self.run_id}-{i}", content)
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
        return snapshot([s.pid for s in self.servers])

    async def run(self, session: aiohttp.ClientSession) -> None:
        for k, srv in enumerate(self.servers):
            for _ in range(self.args.users_per_server):
                self.users.append(FedUser(len(self.users), Api(session, srv.base_url,
                                                               self.deadline), server=k))
        if self.args.senders == "all":
            self.senders = [self.first_user_of(k) for k in range(len(self.servers))]
        else:
            self.senders = [self.users[0]]
        await self.setup()
        try:
            await self.start_syncing()
            await self.warm_up()
            await asyncio.sleep(0.2)
            log(f"sending {self.m} messages at {self.args.rate:g}/s from "
                f"{len(self.senders)} sender(s), at most {self.args.concurrency} in flight")
            self.measure_start = self.snapshot()
            await self.send_all()
            phase = (self.last_response_ns - self.first_issue_ns) / 1e9 if self.issued else 0
            log(f"send phase: {phase:.2f}s, {len(self.send_errors)} errors; "
                "waiting for deliveries")
            until = min(self.deadline, time.monotonic() + self.args.delivery_timeout)
            await self.wait_progress(lambda: self.missing() == (0, 0), until)
            self.measure_end = self.snapshot()
        finally:
            await self.stop_syncing()

    # -- figures ----------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
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
        s0, s1 = self.measure_start, self.measure_end
        cpu = cpu_between(s0, s1) if s0 and s1 else None
        window = cpu["wall"] if cpu else None
        servers = []
        for k, srv in enumerate(self.servers):
            rss, _ = peak_rss_mib(srv.pid) if srv.pid and srv.proc.poll() is None else (None, 0)
            c = cpu["servers"][k] if cpu else None
            servers.append({"server": srv.server_name, "pid": srv.pid,
                            "peak_rss_mib": r2(rss), "cpu_s": r2(c),
                            "cpu_pct": r2(100 * c / window) if c is not None and window
                            else None})
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
            "client_cpu_s": r2(cpu["client"] if cpu else None),
            "other_cpu_s": r2(cpu["other"] if cpu else None),
            "wall_s": r2(window),
            "cpus": os.cpu_count(),
            **self.sync_figures(),
        }




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
    add_common_options(p, time_limit=300.0, database_help=(
        "PostgreSQL admin URL on loopback: each server gets a fresh database next to it, "
        "dropped afterwards (default: SQLite)"))
    p.add_argument("--join-timeout", type=float, default=60.0,
                   help="cap for every server to see every join, and per warm-up message")
    a = p.parse_args(argv)
    if a.users_per_server < 1 or a.rate <= 0 or a.duration <= 0 or a.concurrency < 1:
        p.error("need --users-per-server >= 1, --rate > 0, --duration > 0, --concurrency >= 1")
    if a.rate * a.duration > 1_000_000:
        p.error("more than 1,000,000 messages")
    if a.database_url and not is_loopback_host(urllib.parse.urlsplit(a.database_url).hostname):
        p.error("--database-url must point at a loopback address")
    check_common(p, a)
    return a


async def measure(args: argparse.Namespace, servers: list[ServerProcess]) -> Result:
    deadline = time.monotonic() + args.time_limit
    log("servers: " + ", ".join(f"{s.server_name} (pid {s.pid})" for s in servers))
    bench = FedBench(args, servers, deadline)
    n_conn = len(servers) * args.users_per_server + args.concurrency + 16
    connector = aiohttp.TCPConnector(limit=n_conn, limit_per_host=n_conn)
    async with aiohttp.ClientSession(connector=connector) as session:
        failure = await run_capped(bench.run(session), deadline, args.time_limit)
    if bench.measure_start and not bench.measure_end:
        bench.measure_end = bench.snapshot()
    failure = "; ".join(filter(None, [failure] + [s.exit_problem() for s in servers])) or None
    result = None
    if bench.room_id:
        result = bench.results()  # reads peak RSS, so before the servers are stopped
        warn_if_busy(result["other_cpu_s"], result["wall_s"])
        if (result["lag_p99_ms"] or 0) > LAG_WARN_MS:
            log(f"warning: schedule lag p99 {result['lag_p99_ms']:.0f} ms: the in-flight "
                f"cap was reached, the requested {args.rate:g} msg/s was not sustained")
    bench.log_errors()
    return result, failure


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(run_with_servers(args, args.servers, measure, print_federation_tables,
                                     federation_problems, federation=True))


if __name__ == "__main__":
    sys.exit(main())
