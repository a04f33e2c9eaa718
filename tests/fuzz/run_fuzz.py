"""Property-based fuzzing of the Client-Server API, driven by the Matrix spec's own OpenAPI files.

For every operation in ../shared/matrix-spec/data/api/client-server/*.yaml, schemathesis
generates requests (schema-conforming and schema-violating ones) against a running Nexa server,
authenticated with a real access token and with path parameters filled with real IDs (a room, a
user, an event, a device, a filter, an alias) so the generated bodies and queries reach the code
behind the ID checks; a second pass leaves path parameters to the generator (unknown and malformed
IDs), and a deterministic edge pass adds what generators rarely produce: invalid UTF-8 and NUL
bytes in paths, queries and bodies, integers beyond 2**53 / 2**63, non-object JSON, deep nesting.

The one property checked: no response has a status >= 500. Besides, for write requests that were
rejected (4xx), the row count of every table (and on SQLite the connection's count of rows
written) must be unchanged: a rejected request stores nothing.

The server is hermetic (HERMETIC_CONFIG): it refuses to contact any other server, so generated
IDs on example.com or matrix.org exercise the refusal paths instead of the network.

Run it alone (starts its own server):

    python -m tests.fuzz.run_fuzz [--backend sqlite|postgres] [--budget 180] [--examples 15]

or through pytest: tests/fuzz/test_spec_fuzz.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_ROOT = REPO_ROOT / ".." / "shared" / "matrix-spec"
CS_DIR = SPEC_ROOT / "data" / "api" / "client-server"

# Spec files not fuzzed at all: areas Nexa does not implement by design. Other operations that
# are not implemented (yet) are found by a probe (404/405 M_UNRECOGNIZED) and get a few requests.
SKIP_FILES = {
    "administrative_contact.yaml": "3PID / identity-server binding (not implemented)",
    "sso_login_redirect.yaml": "SSO redirects (not implemented)",
}
# Single operations not fuzzed: identity-server token requests (3PID; not implemented).
SKIP_PATH_SUFFIXES = ("/requestToken",)

# Operations that end sessions or accounts: run with a throwaway user, re-registered as needed.
DESTRUCTIVE = {
    ("POST", "/logout"), ("POST", "/logout/all"), ("POST", "/account/deactivate"),
    ("POST", "/account/password"), ("DELETE", "/devices/{deviceId}"), ("POST", "/delete_devices"),
}

# The fuzzed server talks to no other server: generated IDs name hosts such as example.com or
# matrix.org, and a test must not reach out to them. Every remote destination is refused by
# config (the refusal paths are exercised instead).
HERMETIC_CONFIG: dict[str, Any] = {"federation": {"allow": []}}

WRITE_METHODS = {"PUT", "POST", "DELETE", "PATCH"}
REQUEST_TIMEOUT = 15.0

# Path segments (already percent-encoded) that no generator is likely to produce.
NASTY_PATH = [
    "%FF", "%C3%28", "%ED%A0%80", "%00", "a%00b", "%F0%9F%98%80", "@", "!", "$", "%23",
    "@%3A", "!x%3Alocalhost", "@u%3Alocalhost%00", "!%FF%3Alocalhost", "$%00",
    "9223372036854775808", "-1", "1e400", "NaN", "x" * 3000, "%20", "%2F", "%25",
]
NASTY_QUERY = [
    "", "-1", "0", "1.5", "9223372036854775808", "99999999999999999999999999",
    "-9223372036854775809", "1e400", "NaN", "true", "%FF", "%00", "a%00b", "x" * 3000, "[]",
    "%7B%22a%22%3A1%7D", "%ED%A0%80",
    # stream and pagination tokens with positions beyond 64 bits (BIGINT on PostgreSQL)
    "s9999999999999999999", "t9223372036854775808", "t-9223372036854775809",
    "s1_9223372036854775808_0", "s" + "9" * 40,
]
NASTY_BODIES = [
    b"", b"null", b"[]", b'"s"', b"1", b"1e999", b"{", b"\xff\xfe{}", b'{"a":"\xff"}',
    b'{"a":"\\u0000"}', b'{"a":"\\ud800"}', b'{"a":1e999}', b'{"a":99999999999999999999999}',
    b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"a":1,"a":2}', b"\x00",
]
NASTY_VALUES: list[Any] = [
    None, True, -1, 2**53, 2**53 + 1, 2**63, 2**64, 10**40, -(2**63) - 1, 1.5, 1e308, "",
    "\x00", "a\x00b", "\U0001F600" * 5, "é" * 100, "x" * 20000, [], {}, [None], {"": None},
    {"\x00": 1}, [2**64], "@", "!x:localhost",
]
MAX_EDGE_CASES = 70


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


def _short(data: Any, limit: int = 300) -> str:
    if isinstance(data, bytes):
        text = repr(data)
    else:
        try:
            text = json.dumps(data, ensure_ascii=True, default=repr)
        except Exception:
            text = repr(data)
    return text if len(text) <= limit else text[:limit] + "…"


class Fixture:
    """The real IDs the fuzzer fills in, and the requests that (re)create them."""

    def __init__(self, base_url: str, server_name: str, stats: Stats,
                 on_call: Callable[[], None] = lambda: None) -> None:
        self.base_url = base_url
        self.server_name = server_name
        self.stats = stats
        self.on_call = on_call  # the store changes: a cached fingerprint is stale
        self.session = requests.Session()
        self.main: dict[str, str] = {}
        self.other: dict[str, str] = {}
        self.throwaway: dict[str, str] = {}
        self.room_id = self.event_id = self.alias = ""
        self.filter_id = "0"
        self.media_id = "x"

    def call(self, method: str, path: str, body: Any = None, token: str | None = None,
             prefix: str = "/_matrix/client/v3") -> tuple[int, Any]:
        self.stats.setup_requests += 1
        self.on_call()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = self.session.request(method, self.base_url + prefix + path, json=body,
                                 headers=headers, timeout=REQUEST_TIMEOUT)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, r.text

    def register(self, prefix: str) -> dict[str, str]:
        password = secrets.token_hex(12)
        status, data = self.call("POST", "/register", {
            "username": f"{prefix}{secrets.token_hex(4)}", "password": password,
            "auth": {"type": "m.login.dummy"}})
        if status != 200:
            raise RuntimeError(f"fuzz setup: register failed: {status} {data}")
        return {"user_id": data["user_id"], "token": data["access_token"],
                "device_id": data["device_id"], "password": password}

    def setup(self) -> None:
        self.main = self.register("fuzzmain")
        self.other = self.register("fuzzother")
        self.throwaway = self.register("fuzzthrow")
        self.new_room()
        status, data = self.call("POST", f"/user/{self.main['user_id']}/filter",
                                 {"room": {"timeline": {"limit": 5}}}, self.main["token"])
        if status == 200 and isinstance(data, dict):
            self.filter_id = str(data.get("filter_id", "0"))
        self.upload_media()

    def upload_media(self) -> None:
        """A real media ID for {serverName}/{mediaId}, when the media repository is there."""
        self.stats.setup_requests += 1
        self.on_call()
        r = self.session.post(self.base_url + "/_matrix/media/v3/upload?filename=fuzz.txt",
                              data=b"fuzz", timeout=REQUEST_TIMEOUT,
                              headers={"Authorization": f"Bearer {self.main['token']}",
                                       "Content-Type": "text/plain"})
        try:
            uri = r.json().get("content_uri", "") if r.status_code == 200 else ""
        except ValueError:
            uri = ""
        if isinstance(uri, str) and uri.startswith("mxc://") and uri.count("/") == 3:
            self.media_id = uri.rsplit("/", 1)[1]

    def new_room(self) -> None:
        token = self.main["token"]
        local = f"fuzz{secrets.token_hex(4)}"
        status, data = self.call("POST", "/createRoom", {
            "preset": "public_chat", "room_alias_name": local, "name": "fuzz room",
            "topic": "fuzzing"}, token)
        if status != 200:
            raise RuntimeError(f"fuzz setup: createRoom failed: {status} {data}")
        self.room_id = data["room_id"]
        self.alias = f"#{local}:{self.server_name}"
        self.call("POST", f"/join/{self.room_id}", {}, self.other["token"])
        status, data = self.call(
            "PUT", f"/rooms/{self.room_id}/send/m.room.message/{secrets.token_hex(6)}",
            {"msgtype": "m.text", "body": "hello fuzz"}, token)
        if status != 200:
            raise RuntimeError(f"fuzz setup: send failed: {status} {data}")
        self.event_id = data["event_id"]

    def _valid(self, user: dict[str, str]) -> bool:
        status, _ = self.call("GET", "/account/whoami", token=user["token"])
        return status == 200

    def _relogin(self, user: dict[str, str], prefix: str) -> dict[str, str]:
        if self._valid(user):
            return user
        status, data = self.call("POST", "/login", {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user["user_id"]},
            "password": user["password"]})
        if status == 200:
            return {**user, "token": data["access_token"], "device_id": data["device_id"]}
        return self.register(prefix)

    def repair(self, check_room: bool) -> None:
        """After an operation: valid tokens again, and a fresh room when writes fuzzed the last
        one out of shape (someone left, or the main user lost power)."""
        main = self._relogin(self.main, "fuzzmain")
        fresh_room = main["user_id"] != self.main["user_id"]
        self.main = main
        self.other = self._relogin(self.other, "fuzzother")
        if fresh_room or check_room and not self._room_intact():
            self.new_room()

    def _room_intact(self) -> bool:
        token, me = self.main["token"], self.main["user_id"]
        status, pl = self.call("GET", f"/rooms/{self.room_id}/state/m.room.power_levels",
                               token=token)
        if status != 200 or not isinstance(pl, dict) or not isinstance(pl.get("users"), dict):
            return False
        if pl["users"].get(me) != 100 or pl.get("state_default", 50) != 50:
            return False
        status, data = self.call("GET", f"/rooms/{self.room_id}/joined_members", token=token)
        joined = data.get("joined") if status == 200 and isinstance(data, dict) else None
        return isinstance(joined, dict) and me in joined and self.other["user_id"] in joined

    def fresh_throwaway(self) -> dict[str, str]:
        if not self._valid(self.throwaway):
            self.throwaway = self.register("fuzzthrow")
        return self.throwaway

    def path_values(self, user: dict[str, str]) -> dict[str, str]:
        return {
            "roomId": self.room_id, "roomIdOrAlias": self.room_id, "roomAlias": self.alias,
            "userId": user["user_id"], "eventId": self.event_id, "deviceId": user["device_id"],
            "filterId": self.filter_id, "serverName": self.server_name, "mediaId": self.media_id,
        }


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
        self.fingerprint = store_fingerprint
        self.only = only
        self.log = log or (lambda s: None)
        self.stats = Stats()
        self.fx = Fixture(base_url, server_name, self.stats, on_call=self._forget_fingerprint)
        self.session = requests.Session()
        self._fp: dict[str, int] | None = None
        self._deadline = 0.0
        self._op_deadline = 0.0

    # ---- sending and recording -------------------------------------------------------------

    def _forget_fingerprint(self) -> None:
        self._fp = None

    def _out_of_budget(self) -> bool:
        return (time.monotonic() > self._op_deadline
                or self.stats.requests >= self.max_requests)

    def _before(self, method: str) -> dict[str, int] | None:
        if self.fingerprint is None or method not in WRITE_METHODS:
            return None
        if self._fp is None:
            self._fp = self.fingerprint()
        return self._fp

    def _after(self, label: str, phase: str, method: str, url: str, body: Any, status: int,
               data: Any, before: dict[str, int] | None) -> None:
        self.stats.requests += 1
        self.stats.statuses[status] += 1
        self.stats.per_operation.setdefault(label, Counter())[status] += 1
        if status >= 500:
            self.stats.failures.append(Failure(label, phase, status, method, url[:500],
                                               _short(body), _short(data)))
        unrecognized = isinstance(data, dict) and data.get("errcode") == "M_UNRECOGNIZED"
        checkable = (before is not None and 400 <= status < 500
                     and status not in (401, 429) and not unrecognized)
        if checkable:
            after = self.fingerprint()
            changed = _store_diff(before, after)
            if changed:
                self.stats.store_changes.append(
                    f"{label} [{phase}] {method} {url[:200]} body={_short(body, 200)} -> {status} "
                    f"{_short(data, 150)}; rows {changed}")
            self._fp = after
        else:
            self._fp = None

    def send_case(self, label: str, phase: str, case, token: str, base: str) -> None:
        before = self._before(case.method.upper())
        url = f"{base}{case.formatted_path}"
        try:
            resp = case.call(base_url=base, session=self.session,
                             headers={"Authorization": f"Bearer {token}"},
                             timeout=REQUEST_TIMEOUT, allow_redirects=False)
        except requests.Timeout:
            self.stats.timeouts.append(f"{label} [{phase}] {url[:300]}")
            self._fp = None
            return
        try:
            data = json.loads(resp.content) if resp.content else None
        except ValueError:
            data = resp.content[:300]
        body = case.body if not _is_not_set(case.body) else None
        self._after(label, phase, case.method.upper(), url, body, resp.status_code, data, before)

    def send_raw(self, label: str, phase: str, method: str, url: str, token: str,
                 raw: bytes | None) -> tuple[int, Any]:
        before = self._before(method)
        headers = {"Authorization": f"Bearer {token}"}
        if raw is not None:
            headers["Content-Type"] = "application/json"
        try:
            r = self.session.request(method, url, data=raw, headers=headers,
                                     timeout=REQUEST_TIMEOUT, allow_redirects=False)
        except requests.Timeout:
            self.stats.timeouts.append(f"{label} [{phase}] {method} {url[:300]}")
            self._fp = None
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
            _clamp_long_polls(case)
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
        names = [p.name for p in op.path_parameters]
        filled = {n: _quote(values.get(n) or _default_path_value(n)) for n in names}

        def url_for(params: dict[str, str], query: str = "") -> str:
            path = op.path
            for n, v in params.items():
                path = path.replace("{" + n + "}", v)
            return base + path + (("?" + query) if query else "")

        cases: list[tuple[str, str, bytes | None]] = []
        default_body = b"{}" if method in ("PUT", "POST") else None
        for n in names:
            for v in NASTY_PATH:
                cases.append(("edge-path", url_for({**filled, n: v}), default_body))
        for q in op.query:
            for v in NASTY_QUERY:
                cases.append(("edge-query", url_for(filled, f"{q.name}={v}"), default_body))
        if method in ("PUT", "POST"):
            for raw in NASTY_BODIES:
                cases.append(("edge-body", url_for(filled), raw))
            base_body = _example_body(op)
            muts = list(_mutations(base_body))
            random.Random(zlib.crc32(label.encode())).shuffle(muts)
            for m in muts[:max(0, MAX_EDGE_CASES - len(cases)) + 15]:
                try:
                    raw = json.dumps(m, ensure_ascii=False).encode("utf-8", "surrogatepass")
                except (TypeError, ValueError):
                    continue
                cases.append(("edge-json", url_for(filled), raw))
        if len(cases) > MAX_EDGE_CASES:
            rnd = random.Random(zlib.crc32(("cut" + label).encode()))
            cases = rnd.sample(cases, MAX_EDGE_CASES)
        for phase, url, raw in cases:
            if self._out_of_budget():
                return
            self.send_raw(label, phase, method, url, token_of(), raw)

    # ---- driving ---------------------------------------------------------------------------

    def probe(self, op, base: str, token: str, values: dict[str, str]) -> tuple[int, Any]:
        path = op.path
        for p in op.path_parameters:
            path = path.replace("{" + p.name + "}",
                                _quote(values.get(p.name) or _default_path_value(p.name)))
        raw = b"{}" if op.method.upper() in ("PUT", "POST") else None
        return self.send_raw(f"{op.method.upper()} {op.path}", "probe", op.method.upper(),
                             base + path, token, raw)

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


# Tables the federation sender works through in the background (draining the outbox,
# backing off from destinations): their changes are not the request's doing.
BACKGROUND_TABLES = {"federation_outbox", "federation_destinations"}
ROWS_CHANGED = "(rows changed)"


def _store_diff(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple]:
    # The write counter is only meaningful while the sender has nothing to do.
    quiet = before.get("federation_outbox", 0) == 0 == after.get("federation_outbox", 0)
    return {t: (before.get(t), after.get(t)) for t in set(before) | set(after)
            if t not in BACKGROUND_TABLES and (t != ROWS_CHANGED or quiet)
            and before.get(t) != after.get(t)}


def _is_not_set(value: Any) -> bool:
    return type(value).__name__ == "NotSet"


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _default_path_value(name: str) -> str:
    return {"eventType": "m.fuzz.test", "stateKey": "", "txnId": secrets.token_hex(6),
            "type": "m.fuzz.test", "kind": "override", "ruleId": ".m.rule.master",
            "receiptType": "m.read", "keyName": "displayname", "tag": "u.fuzz",
            "relType": "m.reference", "version": "1", "sessionId": "s"}.get(name, "x")


def _clamp_long_polls(case) -> None:
    """A valid long-poll timeout would make the request wait: keep it short (huge values stay,
    they must be rejected)."""
    q = case.query
    if isinstance(q, dict) and "timeout" in q:
        try:
            v = int(str(q["timeout"]))
        except ValueError:
            return
        if 0 < v <= 2**53:
            q["timeout"] = 50


def _example_body(op) -> Any:
    for body in op.body:
        try:
            examples = body.examples
            if examples:
                return examples[0]
            schema = body.resolved_schema or {}
            if "example" in schema:
                return schema["example"]
            props = schema.get("properties") or {}
            return {k: "x" for k in props}
        except Exception:
            continue
    return {}


def _mutations(base: Any, depth: int = 0):
    """The base body with one value (at any depth <= 2) replaced by a nasty value."""
    if isinstance(base, dict):
        for k, v in base.items():
            for nasty in NASTY_VALUES:
                yield {**base, k: nasty}
            if depth < 2 and isinstance(v, (dict, list)):
                for sub in _mutations(v, depth + 1):
                    yield {**base, k: sub}
        if depth == 0:
            for nasty in NASTY_VALUES[:8]:
                yield {**base, "\x00": nasty}
    elif isinstance(base, list) and base:
        for nasty in NASTY_VALUES:
            yield [nasty, *base[1:]]
        if depth < 2:
            for sub in _mutations(base[0], depth + 1):
                yield [sub, *base[1:]]


# ---- the store fingerprint, and a server of its own for running this file directly --------


async def table_counts(hs) -> dict[str, int]:
    """Row count of every table of one homeserver (its own database context)."""
    token = hs.db.activate()
    try:
        conn = hs.db.conn()
        if hs.db.is_sqlite:
            rows = await conn.execute_query_dict(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")
            tables = [r["name"] for r in rows]
        else:
            rows = await conn.execute_query_dict(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            tables = [r["tablename"] for r in rows]
        if not tables:
            return {}
        union = " UNION ALL ".join(
            f"SELECT '{t}' AS t, COUNT(*) AS n FROM \"{t}\"" for t in sorted(tables))
        if hs.db.is_sqlite:
            # Rows inserted, updated or deleted through the server's (single) connection: catches
            # updates too, which row counts miss.
            union += f" UNION ALL SELECT '{ROWS_CHANGED}' AS t, total_changes() AS n"
        return {r["t"]: int(r["n"]) for r in await conn.execute_query_dict(union)}
    finally:
        hs.db.deactivate(token)


def fingerprint_for(server, loop: asyncio.AbstractEventLoop) -> Callable[[], dict[str, int]]:
    def fp() -> dict[str, int]:
        return asyncio.run_coroutine_threadsafe(table_counts(server.hs), loop).result(30)

    return fp


async def fuzz_server(server, **kw: Any) -> Stats:
    """Fuzz a running tests.servers.RunningServer from a worker thread (the server keeps
    running on this event loop)."""
    loop = asyncio.get_running_loop()
    fuzzer = Fuzzer(server.base_url, server.server_name,
                    store_fingerprint=fingerprint_for(server, loop), **kw)
    return await asyncio.to_thread(fuzzer.run)


async def _main(args: argparse.Namespace) -> int:
    from tests.servers import start_server

    with tempfile.TemporaryDirectory() as tmp:
        server = await start_server(Path(tmp), args.backend, **HERMETIC_CONFIG)
        try:
            log = (lambda s: print(s, flush=True)) if args.verbose else None
            stats = await fuzz_server(server, examples=args.examples, budget_s=args.budget,
                                      only=args.only, log=log)
        finally:
            await server.destroy()
    print(stats.summary())
    if args.report:
        Path(args.report).write_text(json.dumps(stats.to_json(), indent=1, default=repr))
    return 1 if stats.server_errors or stats.store_changes else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="sqlite", choices=["sqlite", "postgres"])
    ap.add_argument("--budget", type=float, default=180.0, help="seconds for all operations")
    ap.add_argument("--examples", type=int, default=15, help="generated cases per mode")
    ap.add_argument("--only", help="only spec files whose name contains this")
    ap.add_argument("--report", help="write every failure and per-operation statuses as JSON")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if not CS_DIR.is_dir():
        sys.exit(f"Matrix spec not found at {CS_DIR.resolve()}")
    sys.exit(asyncio.run(_main(args)))


if __name__ == "__main__":
    main()
