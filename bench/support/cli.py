"""The scripts' common options, and how a run goes: servers up, the workload under the overall
time cap, servers down on every way out, the report (support.report), the exit status."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any, Awaitable, Callable

from . import BenchError, log
from .report import finish
from .server import ServerProcess, start_servers, stop_servers

SYNC_FILTER = '{"room":{"timeline":{"limit":500},"state":{"lazy_load_members":true}}}'


def add_common_options(p: argparse.ArgumentParser, *, database_help: str,
                       time_limit: float) -> None:
    """Server set-up, /sync and time caps: the options every benchmark has."""
    p.add_argument("--database-url", help=database_help)
    p.add_argument("--env", action="append", default=[], metavar="NEXA_KEY=VALUE",
                   help="extra config override for every started server (repeatable), e.g. "
                        "NEXA_DATABASE__SQLITE_SYNCHRONOUS=NORMAL")
    p.add_argument("--sync-timeout-ms", type=int, default=30000, help="/sync long-poll timeout")
    p.add_argument("--sync-filter", default=SYNC_FILTER, help="inline /sync filter JSON")
    p.add_argument("--delivery-timeout", type=float, default=60.0,
                   help="seconds to wait after the send phase for every delivery")
    p.add_argument("--time-limit", type=float, default=time_limit,
                   help="overall cap in seconds for the whole run")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="server start-up cap")
    p.add_argument("--max-sync-errors", type=int, default=20,
                   help="consecutive /sync failures after which a user's sync loop gives up")
    p.add_argument("--server-log-level", default="WARNING",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--stop-timeout", type=float, default=10.0,
                   help="seconds between SIGTERM and SIGKILL when stopping a server")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the temp data dir(s) and server log(s)")


def check_common(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    try:
        json.loads(a.sync_filter)
    except ValueError:
        p.error("--sync-filter is not JSON")


async def run_capped(coro: Awaitable, deadline: float, time_limit: float) -> str | None:
    """Run the workload under the overall cap (every request has its own timeout, this caps
    their sum); the failure that stopped it, if any."""
    try:
        await asyncio.wait_for(coro, max(1.0, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        return f"overall time limit of {time_limit:.0f}s reached"
    except BenchError as e:
        return str(e)
    return None


Result = tuple[dict[str, Any] | None, str | None]  # (figures, why the run failed)


async def run_with_servers(args: argparse.Namespace, n: int,
                           work: Callable[[argparse.Namespace, list[ServerProcess]],
                                          Awaitable[Result]],
                           print_tables: Callable[[dict[str, Any]], None],
                           problems: Callable[[dict[str, Any]], str | None],
                           federation: bool = False) -> int:
    """Start n fresh servers, run work(args, servers) -> (figures, failure), stop the servers
    whatever happens; then print the report. Returns the exit status."""
    servers: list[ServerProcess] = []
    result: dict[str, Any] | None = None
    failure: str | None = None
    try:
        await start_servers(args, n, federation, into=servers)
        result, failure = await work(args, servers)
    except BenchError as e:
        failure = str(e)
    finally:
        await stop_servers(servers, failure)
    return finish(result, failure, print_tables, problems)


def run_main(run: Awaitable[int]) -> int:
    """asyncio.run(run), with SIGTERM/SIGHUP unwinding like Ctrl-C so that every `finally`
    (which stops the servers) runs."""
    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        return asyncio.run(run)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
