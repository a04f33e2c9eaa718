"""What the generators rarely produce: nasty path segments, query values and bodies, and the
deterministic edge cases built from them for one operation."""

from __future__ import annotations

import json
import random
import secrets
import zlib
from typing import Any

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


def quote_segment(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def default_path_value(name: str) -> str:
    return {"eventType": "m.fuzz.test", "stateKey": "", "txnId": secrets.token_hex(6),
            "type": "m.fuzz.test", "kind": "override", "ruleId": ".m.rule.master",
            "receiptType": "m.read", "keyName": "displayname", "tag": "u.fuzz",
            "relType": "m.reference", "version": "1", "sessionId": "s"}.get(name, "x")


def clamp_long_polls(case) -> None:
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


def example_body(op) -> Any:
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


def mutations(base: Any, depth: int = 0):
    """The base body with one value (at any depth <= 2) replaced by a nasty value."""
    if isinstance(base, dict):
        for k, v in base.items():
            for nasty in NASTY_VALUES:
                yield {**base, k: nasty}
            if depth < 2 and isinstance(v, (dict, list)):
                for sub in mutations(v, depth + 1):
                    yield {**base, k: sub}
        if depth == 0:
            for nasty in NASTY_VALUES[:8]:
                yield {**base, "\x00": nasty}
    elif isinstance(base, list) and base:
        for nasty in NASTY_VALUES:
            yield [nasty, *base[1:]]
        if depth < 2:
            for sub in mutations(base[0], depth + 1):
                yield [sub, *base[1:]]


def fill_path(op, base: str, params: dict[str, str], query: str = "") -> str:
    """The operation's URL with its path parameters replaced (values already quoted)."""
    path = op.path
    for n, v in params.items():
        path = path.replace("{" + n + "}", v)
    return base + path + (("?" + query) if query else "")


def filled_params(op, values: dict[str, str]) -> dict[str, str]:
    """Every path parameter: the real ID where there is one, else a plausible value."""
    return {p.name: quote_segment(values.get(p.name) or default_path_value(p.name))
            for p in op.path_parameters}


def edge_cases(op, base: str, label: str,
               values: dict[str, str]) -> list[tuple[str, str, bytes | None]]:
    """(phase, url, raw body) for one operation: each nasty path segment and query value with
    everything else real, nasty bodies, and the example body with one value made nasty; at
    most MAX_EDGE_CASES, the same ones on every run."""
    method = op.method.upper()
    filled = filled_params(op, values)
    cases: list[tuple[str, str, bytes | None]] = []
    default_body = b"{}" if method in ("PUT", "POST") else None
    for n in filled:
        for v in NASTY_PATH:
            cases.append(("edge-path", fill_path(op, base, {**filled, n: v}), default_body))
    for q in op.query:
        for v in NASTY_QUERY:
            cases.append(("edge-query", fill_path(op, base, filled, f"{q.name}={v}"),
                          default_body))
    if method in ("PUT", "POST"):
        for raw in NASTY_BODIES:
            cases.append(("edge-body", fill_path(op, base, filled), raw))
        muts = list(mutations(example_body(op)))
        random.Random(zlib.crc32(label.encode())).shuffle(muts)
        for m in muts[:max(0, MAX_EDGE_CASES - len(cases)) + 15]:
            try:
                raw = json.dumps(m, ensure_ascii=False).encode("utf-8", "surrogatepass")
            except (TypeError, ValueError):
                continue
            cases.append(("edge-json", fill_path(op, base, filled), raw))
    if len(cases) > MAX_EDGE_CASES:
        rnd = random.Random(zlib.crc32(("cut" + label).encode()))
        cases = rnd.sample(cases, MAX_EDGE_CASES)
    return cases
