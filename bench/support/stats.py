"""Figures: percentiles, and peak RSS / CPU time of server processes read from /proc."""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from . import log


def percentile(sorted_vals: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no data."""
    if not sorted_vals:
        return None
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def r2(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _proc_children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (bounded walk)."""
    seen: list[int] = []
    todo = [pid]
    while todo and len(seen) < 10_000:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_proc_children(p))
    return seen


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_rss_mib(pid: int) -> tuple[float | None, int]:
    """Sum of VmHWM (peak resident set) over the process and its descendants, in MiB."""
    total, n = 0, 0
    for p in process_tree(pid):
        kib = _status_kib(p, "VmHWM")
        if kib is not None:
            total += kib
            n += 1
    return (total / 1024.0 if n else None), n


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process and its descendants (as far as /proc shows them)."""
    tick = os.sysconf("SC_CLK_TCK")
    total, found = 0.0, False
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields_ = f.read().rsplit(")", 1)[1].split()
            total += (int(fields_[11]) + int(fields_[12])) / tick
            found = True
        except (OSError, ValueError, IndexError):
            pass
    return total if found else None


def host_busy_seconds() -> float | None:
    """Non-idle CPU seconds of the whole machine so far (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    busy = sum(vals[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def snapshot(pids: list[int | None]) -> dict[str, Any]:
    """CPU counters now: of each server (None: unknown pid), this process, the machine."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"servers": [cpu_seconds(p) if p else None for p in pids],
            "client": ru.ru_utime + ru.ru_stime, "host": host_busy_seconds(),
            "wall": time.monotonic()}


def cpu_between(s0: dict[str, Any], s1: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds between two snapshots: per server, this process, and everything else on
    the machine (on a shared box the last one explains bad runs)."""
    servers = [None if a is None or b is None else b - a
               for a, b in zip(s0["servers"], s1["servers"])]
    client = s1["client"] - s0["client"]
    other = None
    if s0["host"] is not None and s1["host"] is not None:
        other = max(0.0, (s1["host"] - s0["host"]) - client - sum(c or 0 for c in servers))
    return {"servers": servers, "client": client, "other": other,
            "wall": s1["wall"] - s0["wall"]}


def warn_if_busy(other_cpu_s: float | None, wall_s: float | None) -> None:
    if other_cpu_s is None or not wall_s:
        return
    cpus = os.cpu_count() or 1
    if other_cpu_s > 0.1 * wall_s * cpus:
        log(f"warning: other processes used {other_cpu_s:.0f} CPU-seconds during this "
            f"{wall_s:.0f}s run on {os.cpu_count()} CPUs; figures are not reliable")
