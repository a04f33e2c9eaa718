"""The fuzzer: schemathesis runs (schema-conforming and schema-violating cases, with real and
with generated IDs) and the deterministic edge pass over every operation of the spec files, each
request recorded and, for rejected writes, checked against the store fingerprint."""

from __future__ import annotations

import json
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import requests
import yaml

from tests.fuzz.config import (CS_DIR, DESTRUCTIVE, REQUEST_TIMEOUT, SKIP_FILES,
                               SKIP_PATH_SUFFIXES, WRITE_METHODS)
from tests.fuzz.inputs import clamp_long_polls, edge_cases, fill_path, filled_params
from tests.fuzz.report import Failure, Stats, short
from tests.fuzz.seeding import Fixture
from tests.fuzz.store import StoreWatch


def is_not_set(value: Any) -> bool:
    return type(value).__name__ == "NotSet"



def load_schema(path: Path, base_url: str):
    """One spec file as a schemathesis schema, based at the server's prefix for that file."""
    import schemathesis

    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    # Some files key a path with a trailing space so that a merged spec keeps two entries for
    # one URL ("/rooms/{roomId}/invite ", "/events "); the URL itself has no space.
    raw["paths"] = {p.strip(): v for p, v in raw.get("paths", {}).items()}
    base_path = raw["servers"][0]["variables"]["basePath"]["default"]
    schema = schemathesis.openapi.from_dict(raw)
    schema.location = path.resolve().as_uri()  # relative $refs resolve next to the file
    schema.config.update(base_url=base_url + base_path)
    # Every request carries the real token: negative cases break parameters and bodies rather
    # than drop the Authorization header.
    schema.config.generation.update(with_security_parameters=False)
    return schema, base_url + base_path


class Fuzzer:
    def __init__(self, base_url: str, server_name: str, *, examples: int = 15,
                 budget_s: float = 180.0, max_requests: int = 40000,
                 store_fingerprint: Callable[[], dict[str, int]] | None = None,
                 only: str | None = None, log: Callable[[str], None] | None = None) -> None:
        self.base_url = base_url
        self.examples = examples
        self.budget_s = budget_s
        self.max_requests = max_requests
        self.store = StoreWatch(store_fingerprint)
        self.only = only
        self.log = log or (lambda s: None)
        self.stats = Stats()
        self.fx = Fixture(base_url, server_name, self.stats, on_call=self.store.forget)
        self.session = requests.Session()
        self._deadline = 0.0
        self._op_deadline = 0.0

    # ---- sending and recording -------------------------------------------------------------

    def _out_of_budget(self) -> bool:
        return (time.monotonic() > self._op_deadline
                or self.stats.requests >= self.max_requests)

    def _after(self, label: str, phase: str, method: str, url: str, body: Any, status: int,
               data: Any, before: dict[str, int] | None) -> None:
        self.stats.requests += 1
        self.stats.statuses[status] += 1
        self.stats.per_operation.setdefault(label, Counter())[status] += 1
        if status >= 500:
            self.stats.failures.append(Failure(label, phase, status, method, url[:500],
                                               short(body), short(data)))
        changed = self.store.after(before, status, data)
        if changed:
            self.stats.store_changes.append(
                f"{label} [{phase}] {method} {url[:200]} body={short(body, 200)} -> {status} "
                f"{short(data, 150)}; rows {changed}")

    def send_case(self, label: str, phase: str, case, token: str, base: str) -> None:
        before = self.store.before(case.method.upper())
        url = f"{base}{case.formatted_path}"
        try:
            resp = case.call(base_url=base, session=self.session,
                             headers={"Authorization": f"Bearer {token}"},
                             timeout=REQUEST_TIMEOUT, allow_redirects=False)
        except requests.Timeout:
            self.stats.timeouts.append(f"{label} [{phase}] {url[:300]}")
            self.store.forget()
            return
        try:
            data = json.loads(resp.content) if resp.content else None
        except ValueError:
            data = resp.content[:300]
        body = case.body if not is_not_set(case.body) else None
        self._after(label, phase, case.method.upper(), url, body, resp.status_code, data, before)

    def send_raw(self, label: str, phase: str, method: str, url: str, token: str,
                 raw: bytes | None) -> tuple[int, Any]:
        before = self.store.before(method)
        headers = {"Authorization": f"Bearer {token}"}
        if raw is not None:
            headers["Content-Type"] = "application/json"
        try:
            r = self.session.request(method, url, data=raw, headers=headers,
                                     timeout=REQUEST_TIMEOUT, allow_redirects=False)
        except requests.Timeout:
            self.stats.timeouts.append(f"{label} [{phase}] {method} {url[:300]}")
            self.store.forget()
            return 0, None
        try:
            data = r.json()
        except ValueError:
            data = r.text[:300]
        self._after(label, phase, method, url, raw, r.status_code, data, before)
        return r.status_code, data

    # ---- generation ------------------------------------------------------------------------

    def run_strategy(self, label: str, phase: str, op, mode, n: int, token_of: Callable[[], str],
                     base: str, path_parameters: dict[str, str] | None) -> None:
        from hypothesis import HealthCheck, Phase, given, seed, settings

        if n <= 0 or self._out_of_budget():
            return
        try:
            strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)
        except Exception as e:  # the generator cannot build this combination
            self.stats.errors.append(f"{label} [{phase}]: {type(e).__name__}: {str(e)[:200]}")
            return

        @seed(zlib.crc32(f"{label}/{phase}".encode()))
        @settings(max_examples=n, database=None, deadline=None, derandomize=False,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck),
                  report_multiple_bugs=False, print_blob=False)
        @given(case=strategy)
        def run(case) -> None:
            if self._out_of_budget():
                return
            clamp_long_polls(case)
            self.send_case(label, phase, case, token_of(), base)

        try:
            run()
        except Exception as e:
            if type(e).__name__ == "Unsatisfiable" and mode.is_negative:
                return  # nothing in this operation can be made schema-invalid
            self.stats.errors.append(f"{label} [{phase}]: {type(e).__name__}: {str(e)[:200]}")

    # ---- the deterministic edge pass -------------------------------------------------------

    def edge_cases(self, label: str, op, base: str, token_of: Callable[[], str],
                   values: dict[str, str]) -> None:
        method = op.method.upper()
        for phase, url, raw in edge_cases(op, base, label, values):
            if self._out_of_budget():
                return
            self.send_raw(label, phase, method, url, token_of(), raw)

    # ---- driving ---------------------------------------------------------------------------

    def probe(self, op, base: str, token: str, values: dict[str, str]) -> tuple[int, Any]:
        raw = b"{}" if op.method.upper() in ("PUT", "POST") else None
        return self.send_raw(f"{op.method.upper()} {op.path}", "probe", op.method.upper(),
                             fill_path(op, base, filled_params(op, values)), token, raw)

    def fuzz_operation(self, op, base: str, ops_left: int) -> None:
        from schemathesis import GenerationMode

        method = op.method.upper()
        label = f"{method} {op.path}"
        destructive = (method, op.path) in DESTRUCTIVE
        # Up to 1.5 fair shares of what is left: many operations finish well within one
        # (unimplemented ones at once), so the rest get more; no operation starves the later ones.
        remaining = self._deadline - time.monotonic()
        self._op_deadline = min(self._deadline, time.monotonic()
                                + max(1.5 * remaining / max(ops_left, 1), 0.3))
        self.stats.operations += 1

        def token_of() -> str:
            return (self.fx.fresh_throwaway() if destructive else self.fx.main)["token"]

        user = self.fx.throwaway if destructive else self.fx.main
        values = self.fx.path_values(user)
        names = [p.name for p in op.path_parameters]
        real = {n: values[n] for n in names if n in values}

        status, data = self.probe(op, base, token_of(), values)
        unimplemented = (status in (404, 405) and isinstance(data, dict)
                         and data.get("errcode") == "M_UNRECOGNIZED")
        n = self.examples
        if unimplemented:
            self.stats.unimplemented.append(label)
            self.run_strategy(label, "positive", op, GenerationMode.POSITIVE, 3, token_of, base,
                              real)
        else:
            # Most telling first, with at most half the operation's time.
            op_deadline = self._op_deadline
            self._op_deadline = (time.monotonic() + op_deadline) / 2
            self.edge_cases(label, op, base, token_of, values)
            self._op_deadline = op_deadline
            self.run_strategy(label, "positive", op, GenerationMode.POSITIVE, n, token_of,
                              base, real)
            self.run_strategy(label, "negative", op, GenerationMode.NEGATIVE, n, token_of,
                              base, real)
            if names:
                self.run_strategy(label, "positive-free-ids", op, GenerationMode.POSITIVE,
                                  max(n // 2, 4), token_of, base, None)
                self.run_strategy(label, "negative-free-ids", op, GenerationMode.NEGATIVE,
                                  max(n // 3, 3), token_of, base, None)
        if time.monotonic() > self._op_deadline:
            self.stats.budget_hit.append(label)
        mutated_room = method in WRITE_METHODS and any(
            n in ("roomId", "roomIdOrAlias") for n in names)
        self.fx.repair(check_room=mutated_room or method in WRITE_METHODS and "room" in op.path)

    def run(self) -> Stats:
        import schemathesis  # noqa: F401  (fail early when missing)

        self._deadline = time.monotonic() + self.budget_s
        self.fx.setup()
        work = []
        for path in sorted(CS_DIR.glob("*.yaml")):
            if path.name in SKIP_FILES:
                self.stats.skipped.append(f"{path.name} ({SKIP_FILES[path.name]})")
                continue
            if self.only and self.only not in path.name:
                continue
            try:
                schema, base = load_schema(path, self.base_url)
                for result in schema.get_all_operations():
                    op = result.ok()
                    if op.path.endswith(SKIP_PATH_SUFFIXES):
                        continue
                    work.append((path.name, op, base))
            except Exception as e:
                self.stats.load_errors.append(f"{path.name}: {type(e).__name__}: {str(e)[:200]}")
        for i, (fname, op, base) in enumerate(work):
            if time.monotonic() > self._deadline or self.stats.requests >= self.max_requests:
                self.stats.budget_hit.append(f"{len(work) - i} operations not reached")
                break
            t0 = time.monotonic()
            before = self.stats.requests
            try:
                self.fuzz_operation(op, base, len(work) - i)
            except Exception as e:
                self.stats.errors.append(f"{fname} {op.method.upper()} {op.path}: "
                                         f"{type(e).__name__}: {str(e)[:300]}")
                try:
                    self.fx.repair(check_room=True)
                except Exception:
                    pass
            self.log(f"{fname:32} {op.method.upper():6} {op.path:55} "
                     f"{self.stats.requests - before:4} req {time.monotonic() - t0:5.1f}s "
                     f"5xx so far {self.stats.server_errors}  " + " ".join(
                         f"{s}x{n}" for s, n in sorted(self.stats.per_operation.get(
                             f"{op.method.upper()} {op.path}", Counter()).items())))
        return self.stats
