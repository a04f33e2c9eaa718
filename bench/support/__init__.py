"""What bench/load.py and bench/federation.py share.

- `support.server`: a fresh Nexa subprocess per run (free loopback port, own temp data dir,
  optional fresh PostgreSQL database), stopped on every way out;
- `support.client`: a minimal Matrix client with retries, and the users' register / join /
  long-poll /sync loop that every benchmark runs;
- `support.stats`: percentiles, peak RSS and CPU read from /proc;
- `support.cli`: the common options, the printed tables and JSON line, the exit status.

The scripts run as `python bench/<name>.py`, which puts bench/ on sys.path: this directory is
imported as the top-level package `support`. Only loopback addresses are ever used.
"""

from __future__ import annotations

import ipaddress
import sys
import time


class BenchError(Exception):
    """A failure that stops the run (set-up, server start, unexpected responses)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
