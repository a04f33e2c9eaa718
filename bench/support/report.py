"""What the benchmarks print: a table of figures (the README quotes these lines), then one
JSON line with everything; and the exit status that goes with them."""

from __future__ import annotations

import json
from typing import Any, Callable

from . import log

TARGET_P50_MS = 50.0  # federation: the target at 50 msg/s sustained
TARGET_P99_MS = 250.0


def fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    return f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v:,}{unit}"


def print_table(rows: list[tuple[str, ...]], header: tuple[str, ...] | None = None,
                rule: int | None = None) -> None:
    """Columns padded to their widest cell (numbers right-aligned under a header), between
    two rules of `rule` dashes (default: the table's width)."""
    allrows = ([header] if header else []) + rows
    widths = [max(len(r[c]) for r in allrows) for c in range(len(allrows[0]))]
    line = "-" * (rule or sum(widths) + 2 * (len(widths) - 1))
    print(line)
    for j, r in enumerate(allrows):
        print("  ".join(c.rjust(w) if header and k > 0 else c.ljust(w)
                        for k, (c, w) in enumerate(zip(r, widths))).rstrip())
        if header and j == 0:
            print(line)
    print(line)


def finish(result: dict[str, Any] | None, failure: str | None,
           print_tables: Callable[[dict[str, Any]], None],
           problems: Callable[[dict[str, Any]], str | None]) -> int:
    """Print the tables and the JSON line; the exit status: 0 all well, 1 deliveries missing
    or send errors (as `problems` says), 2 the run failed."""
    if result is not None:
        print_tables(result)
        print(json.dumps(result, separators=(", ", ": ")), flush=True)
    if failure:
        log(f"FAILED: {failure}")
        return 2
    if result is None:
        return 2
    problem = problems(result)
    if problem:
        log(problem)
        return 1
    return 0


# -- bench/load.py ----------------------------------------------------------------------------

def print_load_tables(r: dict[str, Any]) -> None:
    f = fmt
    rows = [
        ("workload", f"{r['users']} users, {r['messages']} messages, concurrency "
                     f"{r['concurrency']}, {r['backend']}"),
        ("accepted messages/s", f"{f(r['msgs_per_s'])}  ({r['accepted']} accepted in "
                                f"{f(r['send_phase_s'], ' s')}, {r['send_errors']} send errors)"),
        ("send latency p50 / p99", f"{f(r['send_p50_ms'], ' ms')} / {f(r['send_p99_ms'], ' ms')}"),
        ("delivery latency p50 / p99", f"{f(r['delivery_p50_ms'], ' ms')} / "
                                       f"{f(r['delivery_p99_ms'], ' ms')}  (max "
                                       f"{f(r['delivery_max_ms'], ' ms')})"),
        ("deliveries missing", f"{r['deliveries_missing']} of {r['deliveries_expected']:,}"),
        ("all delivered after", f"{f(r['all_delivered_s'], ' s')} from the first send"),
        ("server peak RSS", f"{f(r['peak_rss_mib'], ' MiB')}"),
        ("CPU server / client / other", f"{f(r['server_cpu_s'], ' s')} / "
                                        f"{f(r['client_cpu_s'], ' s')} / "
                                        f"{f(r.get('other_cpu_s'), ' s')}  (over "
                                        f"{f(r.get('wall_s'), ' s')} on {r.get('cpus')} CPUs)"),
        ("syncs (errors, backfills)", f"{r['syncs']:,} ({r['sync_errors']}, {r['backfills']})"),
    ]
    print_table(rows, rule=max(len(k) for k, _ in rows) + 50)


def load_problems(r: dict[str, Any]) -> str | None:
    if r["deliveries_missing"] or r["send_errors"]:
        return f"{r['deliveries_missing']} deliveries missing, {r['send_errors']} send errors"
    return None


# -- bench/federation.py ----------------------------------------------------------------------

def print_federation_tables(r: dict[str, Any]) -> None:
    _f = fmt
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
    print_table(rows)
    print_table([(x["user"], x["server"], f"{x['received']:,}/{x['expected']:,}",
                  _f(x["p50_ms"]), _f(x["p99_ms"]), _f(x["max_ms"]), _f(x["msgs_per_s"]))
                 for x in r["receivers"]],
                ("receiver (other servers)", "its server", "received", "p50 ms", "p99 ms",
                 "max ms", "msgs/s"))
    print_table([(s["server"], str(s["pid"]), _f(s["peak_rss_mib"]), _f(s["cpu_s"]),
                  _f(s["cpu_pct"])) for s in r["server_stats"]],
                ("server", "pid", "peak RSS MiB", "CPU s", "CPU %"))


def federation_problems(r: dict[str, Any]) -> str | None:
    if r["deliveries_missing"] or r["local_missing"] or r["send_errors"]:
        return (f"{r['deliveries_missing']} cross-server and {r['local_missing']} "
                f"same-server deliveries missing, {r['send_errors']} send errors")
    return None
