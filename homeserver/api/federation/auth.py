"""Inbound federation request authentication: the X-Matrix Authorization scheme.

Every check runs before the route, so a request that fails it changes nothing.
"""

from __future__ import annotations

import logging
from functools import wraps
from typing import Any, Callable

from quart import request

from homeserver.api.common import hs
from homeserver.errors import MatrixError
from homeserver.events.canonical import parse_json
from homeserver.events.signing import SignatureError, verify_json
from homeserver.types import is_valid_server_name, now_ms

log = logging.getLogger(__name__)

_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789"
                         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_REQUIRED = ("origin", "key", "sig")
MAX_HEADER_LENGTH = 8192


def parse_xmatrix(header: str) -> dict[str, str]:
    """Parse `X-Matrix origin=…,destination=…,key=…,sig=…` into a dict; ValueError if malformed.

    Parameter names are case-insensitive; values are tokens or quoted strings (with backslash
    escapes); unknown parameters are ignored; `destination` is optional (older servers).
    """
    if not isinstance(header, str) or len(header) > MAX_HEADER_LENGTH:
        raise ValueError("Authorization header missing or too long")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "x-matrix":
        raise ValueError("Authorization scheme is not X-Matrix")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while True:
        while i < n and rest[i] in " \t,":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and rest[i] in _TOKEN_CHARS:
            i += 1
        name = rest[start:i].lower()
        if not name:
            raise ValueError(f"unexpected character {rest[i]!r} in X-Matrix header")
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n or rest[i] != "=":
            raise ValueError(f"parameter {name!r} has no value")
        i += 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars = []
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted string in X-Matrix header")
                c = rest[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise ValueError("dangling escape in X-Matrix header")
                    chars.append(rest[i + 1])
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                chars.append(c)
                i += 1
            value = "".join(chars)
        else:
            start = i
            while i < n and rest[i] not in " \t,":
                i += 1
            value = rest[start:i]
            if not value:
                raise ValueError(f"parameter {name!r} has an empty value")
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] != ",":
            raise ValueError("parameters must be separated by commas")
        if name in params:
            raise ValueError(f"parameter {name!r} given twice")
        params[name] = value
    missing = [p for p in _REQUIRED if not params.get(p)]
    if missing:
        raise ValueError(f"X-Matrix header lacks {', '.join(missing)}")
    return params


def _unauthorized(msg: str) -> MatrixError:
    return MatrixError(401, "M_UNAUTHORIZED", msg)


def request_uri() -> str:
    """The request target exactly as received (raw path plus query string)."""
    raw_path = request.scope.get("raw_path") or request.path.encode("utf-8")
    query = request.scope.get("query_string") or b""
    try:
        uri = raw_path.decode("ascii")
        if query:
            uri += "?" + query.decode("ascii")
    except UnicodeDecodeError:
        raise _unauthorized("Request target is not ASCII") from None
    return uri


async def authenticate_request() -> str:
    """Check the X-Matrix signature of the current request; the origin server name."""
    server = hs()
    fed = server.config.federation
    if not fed.enabled:
        raise MatrixError(403, "M_FORBIDDEN", "Federation is disabled on this server")
    headers = [h for h in request.headers.getlist("Authorization")
               if h.strip()[:9].lower() == "x-matrix "]
    if not headers:
        raise _unauthorized("Missing X-Matrix Authorization header")
    try:
        parsed = [parse_xmatrix(h) for h in headers[:4]]
    except ValueError as e:
        raise _unauthorized(str(e)) from None
    origin = parsed[0]["origin"]
    if any(p["origin"] != origin for p in parsed):
        raise _unauthorized("Authorization headers name different origins")
    if not is_valid_server_name(origin):
        raise _unauthorized("origin is not a valid server name")
    if origin == server.server_name:
        raise _unauthorized("Request claims to come from this server")
    for p in parsed:
        if p.get("destination", server.server_name) != server.server_name:
            raise _unauthorized(f"Request is addressed to {p['destination']}, "
                                f"not {server.server_name}")
    from homeserver.handlers.federation.transport import server_allowed

    if not server_allowed(fed, origin):
        raise MatrixError(403, "M_FORBIDDEN", f"{origin} may not federate with this server")

    signed: dict[str, Any] = {"method": request.method, "uri": request_uri(),
                              "origin": origin, "destination": server.server_name}
    raw = await request.get_data(cache=True)
    if raw and raw.strip():
        try:
            signed["content"] = parse_json(raw)
        except (ValueError, RecursionError):
            raise _unauthorized("Request body is not JSON, so its signature cannot verify") \
                from None

    from homeserver.handlers.federation.keyring import KeyNotFound

    problems = []
    for p in parsed:
        key_id = p["key"]
        try:
            verify_key = await server.keyring.get_verify_key(origin, key_id, at_ts=now_ms())
            verify_json({**signed, "signatures": {origin: {key_id: p["sig"]}}}, origin, key_id,
                        verify_key)
            return origin
        except (KeyNotFound, SignatureError, ValueError) as e:
            problems.append(str(e))
    log.info("rejected federation request from %s to %s: %s", origin, request.path,
             "; ".join(problems))
    raise _unauthorized("Invalid signature: " + "; ".join(problems))


def federation_authed(fn: Callable) -> Callable:
    """Authenticate a server-to-server request; the route gets `origin` first."""

    @wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        origin = await authenticate_request()
        return await fn(origin, *args, **kwargs)

    return wrapper


__all__ = ["authenticate_request", "federation_authed", "parse_xmatrix", "request_uri"]
