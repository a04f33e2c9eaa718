"""What every route shares: the homeserver in hand, JSON in and out, and authentication."""

from __future__ import annotations

from functools import wraps
from typing import Any, Callable, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from quart import Response, current_app, request

from homeserver.errors import MatrixError
from homeserver.handlers.auth import Requester

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """Request bodies: strict types (no "1" for 1) and unknown keys tolerated, as the spec says."""

    model_config = ConfigDict(strict=True, extra="allow")


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
    return data


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
    return request.args.get("access_token") or None


def authed(fn: Callable) -> Callable:
    """Resolves the requester from the access token and passes it as the first argument."""

    @wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = access_token()
        if not token:
            raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
        requester = await hs().auth.requester_for_token(token)
        return await fn(requester, *args, **kwargs)

    return wrapper


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
