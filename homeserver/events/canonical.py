"""Canonical JSON and unpadded base64 (spec appendices)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import canonicaljson
import orjson
import unpaddedbase64

# Canonical JSON only allows integers that survive an IEEE double round trip.
MAX_SAFE_INT = 2**53 - 1
MIN_SAFE_INT = -(2**53) + 1


def _validate(obj: Any) -> None:
    """Reject values canonical JSON cannot represent.

    Iterative rather than recursive so hostile nesting depth cannot raise
    RecursionError instead of ValueError.
    """
    stack = [obj]
    while stack:
        value = stack.pop()
        if value is None or isinstance(value, (str, bool)):
            continue
        if isinstance(value, int):
            if not MIN_SAFE_INT <= value <= MAX_SAFE_INT:
                raise ValueError(f"integer {value} is outside the canonical JSON range")
            continue
        if isinstance(value, float):
            raise ValueError(f"float {value!r} is not allowed in canonical JSON")
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValueError(f"object key {key!r} is not a string")
                stack.append(item)
            continue
        if isinstance(value, (list, tuple)):
            stack.extend(value)
            continue
        raise ValueError(f"value of type {type(value).__name__} is not JSON-serialisable")


def canonical_json(obj: Any) -> bytes:
    """Encode ``obj`` as canonical JSON bytes.

    Raises ValueError for floats (including NaN/Infinity), integers outside
    ±(2**53-1), non-string keys and non-JSON types.
    """
    _validate(obj)
    try:
        # orjson with sorted keys writes the same bytes as the canonicaljson library (a
        # property test holds them equal) at a tenth of the cost; an event is encoded five
        # times on its way in (content check, size, content hash, signature, event ID).
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        pass  # nested deeper than orjson's 255 levels, or a lone surrogate: the library says
    try:
        return canonicaljson.encode_canonical_json(obj)
    except (TypeError, UnicodeEncodeError, RecursionError) as exc:  # lone surrogates, deep nesting
        raise ValueError(f"cannot encode as canonical JSON: {exc}") from exc


def _parse_number(text: str) -> int | float:
    # JSON has one number type; "1e10" or "2.0" denote integers and must
    # canonicalise as such (spec example {"b": 1e10} -> 10000000000).
    try:
        dec = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - json only passes numbers
        raise ValueError(f"bad number {text!r}") from exc
    # Bound the exponent first: Decimal("1e999999999") has a huge integral value.
    if dec.adjusted() > 20:
        raise ValueError(f"number {text} is outside the canonical JSON range")
    if dec == dec.to_integral_value():
        return int(dec)
    return float(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: str | bytes) -> Any:
    """Parse JSON text with Matrix semantics.

    Integral numbers written with a fraction or exponent become ``int``;
    NaN/Infinity are rejected. Non-integral numbers stay ``float`` so that
    :func:`canonical_json` can reject them where canonical JSON is required.
    """
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    return json.loads(
        data,
        parse_float=_parse_number,
        parse_constant=_reject_constant,
    )


def encode_b64(b: bytes) -> str:
    """Standard base64 without padding."""
    return unpaddedbase64.encode_base64(b)


def encode_b64_urlsafe(b: bytes) -> str:
    """URL-safe base64 (``-``/``_``) without padding."""
    return unpaddedbase64.encode_base64(b, urlsafe=True)


_B64_RE = re.compile(r"^[A-Za-z0-9+/\-_]*$")


def decode_b64(s: str) -> bytes:
    """Decode unpadded base64 (padding tolerated, as the spec recommends).

    Both the standard and URL-safe alphabets are accepted. Unlike the stdlib
    default, stray characters are an error rather than silently skipped.
    Raises ValueError on malformed input.
    """
    if not isinstance(s, str):
        raise ValueError("base64 input must be a string")
    body = s.rstrip("=")
    if len(s) - len(body) > 2 or not _B64_RE.match(body) or len(body) % 4 == 1:
        raise ValueError(f"invalid base64 string {s[:20]!r}")
    body = body.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except binascii.Error as exc:  # pragma: no cover - pre-validated above
        raise ValueError(f"invalid base64: {exc}") from exc
