#!/usr/bin/env python3
"""Nexa load benchmark: N users in one public room, M messages, long-poll /sync delivery latency.

    python bench/load.py                      # fresh server on SQLite, 20 users, 2000 messages
    python bench/load.py -n 5 -m 200          # small run
    python bench/load.py --database-url postgres://postgres@127.0.0.1:5432/postgres
    python bench/load.py --url http://127.0.0.1:8008 --server-pid 1234

Only a client (aiohttp); not part of the test suite. See bench/README.md for the figures.
Everything here talks to loopback addresses only, every loop is bounded, and the server
subprocess (when this script started one) is killed on every way out.
The server process, the client, the sync loops and the report are in bench/support/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp

from support import is_loopback_host, log
from support.cli import (Result, add_common_options, check_common, run_capped, run_main,
                         run_with_servers)
from support.client import BENCH_KEY, Api, SyncBench, SyncUser, bounded
from support.report import load_problems, print_load_tables
from support.server import ServerProcess
from support.stats import cpu_between, peak_rss_mib, percentile, r2, snapshot, warn_if_busy


@dataclass
class User(SyncUser):
    own_echoes: int = 0


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------

class Bench(SyncBench):
    def __init__(self, args: argparse.Namespace, base_url: str, deadline: float) -> None:
        super().__init__(args, deadline)
        self.base_url = base_url
        self.users = [User(i) for i in range(args.users)]
        self.sender_of: dict[int, int] = {}  # message index -> sender index, accepted only
        self.send_wall_s = 0.0
        self.send_start_ns = 0

    async def setup(self) -> None:
        limit = self.args.concurrency
        t = time.monotonic()
        await bounded((self.register(u) for u in self.users), limit)
        log(f"registered {len(self.users)} users in {time.monotonic() - t:.1f}s")
        await self.create_room(self.users[0], f"bench {self.run_id}")
        await bounded((self.join(u) for u in self.users[1:]), limit)
        log(f"room {self.room_id} created, {len(self.users) - 1} users joined")
        # Initial sync: each user's starting since token (and a check the room is there).
        listed = await bounded((self.initial_sync(u) for u in self.users), limit)
        if not all(listed):
            log(f"warning: {listed.count(False)} initial /sync responses did not "
                "list the joined room")
        log("initial syncs done")

    def _record(self, u: User, own: bool, meta: dict, t_recv: int) -> None:
        i, t0 = meta.get("i"), meta.get("t0")
        if not isinstance(i, int) or not isinstance(t0, int):
            return
        if own:
            u.own_echoes += 1
        elif i not in u.seen:
            u.seen[i] = t_recv - t0
            self.last_delivery_ns = max(self.last_delivery_ns, t_recv)

    async def send_all(self) -> None:
        m, n = self.args.messages, len(self.users)
        counter = iter(range(m))

        async def worker() -> None:
            for i in counter:  # shared iterator: each index is taken exactly once
                if time.monotonic() > self.deadline:
                    self.send_errors.append(f"message {i}: overall time limit reached")
                    continue
                sender = self.users[i % n]
                t0 = time.perf_counter_ns()
                content = {"msgtype": "m.text", "body": f"bench message {i} t0={t0}",
                           BENCH_KEY: {"run": self.run_id, "i": i, "t0": t0}}
                try:
                    await self.send_message(sender, f"{self.run_id}-{i}", content)
                except Exception as e:
                    self.send_errors.append(f"message {i}: {e}")
                    continue
                self.send_lat_ns.append(time.perf_counter_ns() - t0)
                self.sender_of[i] = sender.index

        self.send_start_ns = time.perf_counter_ns()
        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        self.send_wall_s = (time.perf_counter_ns() - self.send_start_ns) / 1e9

    def missing(self) -> int:
        # Every requested message should reach every user except its sender.
        expected = self.args.messages * (len(self.users) - 1)
        return expected - sum(len(u.seen) for u in self.users)

    async def run(self) -> None:
        n_conn = len(self.users) + self.args.concurrency + 8
        connector = aiohttp.TCPConnector(limit=n_conn, limit_per_host=n_conn)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = Api(session, self.base_url, self.deadline)
            for u in self.users:
                u.api = api
            await self.setup()
            try:
                await self.start_syncing()
                log(f"sending {self.args.messages} messages, concurrency {self.args.concurrency}")
                await self.send_all()
                log(f"send phase: {self.send_wall_s:.2f}s, {len(self.send_errors)} errors; "
                    "waiting for deliveries")
                until = min(self.deadline, time.monotonic() + self.args.delivery_timeout)
                await self.wait_progress(lambda: self.missing() <= 0, until)
            finally:
                await self.stop_syncing()

    def results(self) -> dict[str, Any]:
        n = len(self.users)
        send = sorted(v / 1e6 for v in self.send_lat_ns)
        deliv = sorted(v / 1e6 for u in self.users for v in u.seen.values())
        accepted = len(self.send_lat_ns)
        last = ((self.last_delivery_ns - self.send_start_ns) / 1e9
                if self.last_delivery_ns else None)
        return {
            "users": n,
            "messages": self.args.messages,
            "concurrency": self.args.concurrency,
            "accepted": accepted,
            "send_errors": len(self.send_errors),
            "send_phase_s": r2(self.send_wall_s),
            "msgs_per_s": r2(accepted / self.send_wall_s) if self.send_wall_s else None,
            "send_p50_ms": r2(percentile(send, 50)),
            "send_p99_ms": r2(percentile(send, 99)),
            "deliveries": len(deliv),
            "deliveries_expected": self.args.messages * (n - 1),
            "deliveries_missing": self.missing(),
            "delivery_p50_ms": r2(percentile(deliv, 50)),
            "delivery_p99_ms": r2(percentile(deliv, 99)),
            "delivery_max_ms": r2(deliv[-1] if deliv else None),
            "all_delivered_s": r2(last),
            **self.sync_figures(),
        }


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-n", "--users", type=int, default=20, help="users in the room (>= 2)")
    p.add_argument("-m", "--messages", type=int, default=2000, help="messages to send")
    p.add_argument("-c", "--concurrency", type=int, default=10, help="sends in flight at once")
    p.add_argument("--url", help="benchmark an already running server (loopback only) "
                                 "instead of starting one; its rate limits must allow the load")
    p.add_argument("--server-pid", type=int, help="with --url: pid to read peak RSS/CPU from")
    add_common_options(p, time_limit=900.0, database_help=(
        "PostgreSQL admin URL on loopback, e.g. postgres://postgres@127.0.0.1:5432/postgres: "
        "a fresh database is created next to it for the run and dropped afterwards "
        "(default: SQLite)"))
    p.add_argument("--hold", type=float, default=0.0,
                   help="seconds to keep the started server running after the run (for "
                        "py-spy etc.)")
    a = p.parse_args(argv)
    if a.users < 2 or a.messages < 1 or a.concurrency < 1:
        p.error("need --users >= 2, --messages >= 1, --concurrency >= 1")
    if a.url:
        host = urllib.parse.urlsplit(a.url).hostname
        if not is_loopback_host(host):
            p.error("--url must point at a loopback address")
        if a.database_url:
            p.error("--database-url only applies to a server this script starts")
    check_common(p, a)
    return a


async def measure(args: argparse.Namespace, servers: list[ServerProcess]) -> Result:
    deadline = time.monotonic() + args.time_limit
    if servers:
        base_url, pid = servers[0].base_url, servers[0].pid
    else:
        base_url, pid = args.url, args.server_pid
    s0 = snapshot([pid])
    bench = Bench(args, base_url, deadline)
    failure = await run_capped(bench.run(), deadline, args.time_limit)
    result = bench.results()
    cpu = cpu_between(s0, snapshot([pid]))
    rss, _ = peak_rss_mib(pid) if pid else (None, 0)
    if servers and servers[0].exit_problem():
        failure = "; ".join(filter(None, [failure, servers[0].exit_problem()]))
    result.update({
        "backend": "postgres" if args.database_url else ("sqlite" if not args.url else "url"),
        "peak_rss_mib": None if rss is None else round(rss, 1),
        "server_cpu_s": r2(cpu["servers"][0]),
        "client_cpu_s": r2(cpu["client"]),
        "other_cpu_s": r2(cpu["other"]),
        "wall_s": r2(cpu["wall"]),
        "cpus": os.cpu_count(),
    })
    warn_if_busy(cpu["other"], cpu["wall"])
    bench.log_errors()
    if args.hold > 0 and servers:
        log(f"holding server pid {pid} for {args.hold:.0f}s")
        await asyncio.sleep(min(args.hold, max(0.0, deadline - time.monotonic())))
    return result, failure


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(run_with_servers(args, 0 if args.url else 1, measure, print_load_tables,
                                     load_problems))


if __name__ == "__main__":
    sys.exit(main())
