"""What every route shares: the homeserver in hand, JSON in and out, and authentication."""

from __future__ import annotations

import re
from functools import wraps
from typing import Any, Callable, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from quart import Response, current_app, request

from homeserver.errors import MatrixError
from homeserver.handlers.auth import Requester

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """Request bodies: strict types (no "1" for 1) and unknown keys tolerated, as the spec says."""

    model_config = ConfigDict(strict=True, extra="allow")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        # Typed string fields end up in text columns, and PostgreSQL text cannot hold NUL.
        items = value if isinstance(value, (list, tuple)) else (value,)
        if any(isinstance(v, str) and "\x00" in v for v in items):
            raise ValueError("must not contain NUL characters")
        return value


def hs():
    from homeserver.server import HomeServer

    server: HomeServer = current_app.config["NEXA_HS"]
    return server


def respond(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status=status, content_type="application/json")


async def json_object(optional: bool = False) -> dict[str, Any]:
    raw = await request.get_data(cache=True)
    if not raw.strip():
        if optional:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "Request body is empty; a JSON object is required")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise MatrixError(400, "M_NOT_JSON", f"Content not JSON: {e}") from None
    if not isinstance(data, dict):
        raise MatrixError(400, "M_BAD_JSON", "The request body must be a JSON object")
    if json_too_deep(data):
        raise MatrixError(400, "M_BAD_JSON", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return data


# Deeper values could be stored but never served again (orjson encodes at most 255 levels).
MAX_JSON_DEPTH = 100


def json_too_deep(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when objects/arrays nest deeper than `limit` (iterative: no RecursionError)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _field_errors(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{loc}: {e['msg']}")
    return "; ".join(parts)


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise MatrixError(400, "M_BAD_JSON", _field_errors(e)) from None


async def body(model: type[M], optional: bool = False) -> M:
    return validate(model, await json_object(optional))


def access_token() -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return _arg(request.args, "access_token") or None


def _arg(args: Any, name: str) -> str | None:
    # `in` first: a MultiDict.get that misses builds (and discards) a werkzeug exception, and
    # this runs for every authenticated request.
    return args.get(name) if name in args else None


def authed(fn: Callable) -> Callable:
    """Resolves the requester from the access token and passes it as the first argument."""

    @wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = access_token()
        if not token:
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        args_ = request.args
        user_id = _arg(args_, "user_id")
        device_id = _arg(args_, "device_id") or _arg(args_, "org.matrix.msc3202.device_id")
        requester = await hs().auth.requester_for_token(token, user_id=user_id,
                                                        device_id=device_id)
        if requester.appservice_id is None or "ts" not in args_:
            return await fn(requester, *args, **kwargs)
        # Application services may set origin_server_ts on /send and /state (spec: "timestamp
        # massaging"); the event pipeline reads it for this request only.
        from homeserver.handlers.appservice import MASSAGED_TS

        ts = query_int("ts", lo=0, hi=2**53) if _MASSAGE_PATH.search(request.path) else None
        reset = MASSAGED_TS.set(ts)
        try:
            return await fn(requester, *args, **kwargs)
        finally:
            MASSAGED_TS.reset(reset)

    return wrapper


_MASSAGE_PATH = re.compile(r"/rooms/[^/]+/(send|state)/")


def reject_nul_in_url() -> None:
    """No Matrix identifier, type or token contains NUL, and PostgreSQL text cannot store it:
    refuse it anywhere in the path or query string before a route sees it."""
    # The query string is still raw bytes here: a NUL can only arrive percent-encoded (the
    # HTTP parser refuses a bare one), and this check does not parse every request's query.
    if "\x00" in request.path or b"%00" in request.query_string:
        raise MatrixError(400, "M_INVALID_PARAM", "NUL characters are not allowed in the URL")


def query_int(name: str, default: int | None = None, *, lo: int = 0, hi: int = 2**31) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        val = int(raw)
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be an integer") from None
    if not lo <= val <= hi:
        raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be between {lo} and {hi}")
    return val


def timestamp_query() -> tuple[int, bool]:
    """/timestamp_to_event's `ts` and `dir` (client and federation): (ts, forward)."""
    direction = request.args.get("dir")
    if direction not in ("b", "f"):
        raise MatrixError(400, "M_INVALID_PARAM", "dir must be b or f")
    if not request.args.get("ts"):
        raise MatrixError(400, "M_MISSING_PARAM", "ts is required")
    return query_int("ts", 0, lo=0, hi=2**53), direction == "f"


def query_bool(name: str, default: bool = False) -> bool:
    raw = request.args.get(name)
    if raw is None:
        return default
    if raw in ("true", "1"):
        return True
    if raw in ("false", "0"):
        return False
    raise MatrixError(400, "M_INVALID_PARAM", f"{name} must be true or false")


def client_ip() -> str | None:
    return request.remote_addr


__all__ = ["Body", "Requester", "authed", "body", "hs", "json_object", "query_bool",
           "query_int", "respond", "validate", "client_ip"]
