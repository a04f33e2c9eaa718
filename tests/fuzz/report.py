"""What a fuzz run found: every request's status, 5xx answers, rejected writes that changed the
store, timeouts; and the summary printed at the end."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Failure:
    operation: str
    phase: str
    status: int
    method: str
    url: str
    body: str
    response: str

    def __str__(self) -> str:
        return (f"{self.status} {self.operation} [{self.phase}]\n    {self.method} {self.url}\n"
                f"    body: {self.body[:300]}\n    -> {self.response[:300]}")


@dataclass
class Stats:
    requests: int = 0
    setup_requests: int = 0
    statuses: Counter = field(default_factory=Counter)
    per_operation: dict[str, Counter] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    store_changes: list[str] = field(default_factory=list)
    timeouts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # generation problems (per operation)
    load_errors: list[str] = field(default_factory=list)  # spec files that did not load
    unimplemented: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    operations: int = 0
    budget_hit: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    @property
    def server_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s >= 500)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "server_errors": self.server_errors,
            "statuses": dict(self.statuses),
            "per_operation": {k: dict(v) for k, v in self.per_operation.items()},
            "failures": [vars(f) for f in self.failures], "store_changes": self.store_changes,
            "timeouts": self.timeouts, "errors": self.errors, "load_errors": self.load_errors,
            "unimplemented": self.unimplemented,
        }

    def summary(self) -> str:
        lines = [
            f"spec fuzz: {self.operations} operations, {self.requests} requests "
            f"(+{self.setup_requests} setup), {self.server_errors} responses >= 500, "
            f"{len(self.store_changes)} rejected writes that changed the store, "
            f"{len(self.timeouts)} timeouts, {time.monotonic() - self.started:.0f}s",
            "  statuses: " + ", ".join(f"{s}x{n}" for s, n in sorted(self.statuses.items())),
        ]
        if self.unimplemented:
            lines.append(f"  unimplemented (404/405 M_UNRECOGNIZED): {len(self.unimplemented)}: "
                         + ", ".join(self.unimplemented))
        if self.skipped:
            lines.append("  skipped: " + "; ".join(self.skipped))
        if self.budget_hit:
            lines.append("  time budget cut short: " + ", ".join(self.budget_hit))
        for e in self.load_errors:
            lines.append(f"  spec file not loaded: {e}")
        for e in self.errors:
            lines.append(f"  generation problem: {e}")
        seen: set[tuple[str, int]] = set()
        for f in self.failures:
            key = (f.operation, f.status)
            if key in seen:
                continue
            seen.add(key)
            n = sum(1 for g in self.failures if (g.operation, g.status) == key)
            lines.append(f"  5xx x{n}: {f}")
        for s in self.store_changes[:30]:
            lines.append(f"  store changed by rejected request: {s}")
        for t in self.timeouts[:20]:
            lines.append(f"  timeout: {t}")
        return "\n".join(lines)


def short(data: Any, limit: int = 300) -> str:
    if isinstance(data, bytes):
        text = repr(data)
    else:
        try:
            text = json.dumps(data, ensure_ascii=True, default=repr)
        except Exception:
            text = repr(data)
    return text if len(text) <= limit else text[:limit] + "…"
