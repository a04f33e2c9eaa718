"""Room event routes: send, state, redact, /event, /context, /messages."""

from __future__ import annotations

import orjson
from pydantic import Field
from quart import Blueprint, request

from homeserver.api.common import Body, authed, body, hs, json_object, query_int, respond
from homeserver.errors import MatrixError

bp = Blueprint("room_events", __name__)


@bp.route("/rooms/<room_id>/send/<event_type>/<txn_id>", methods=["PUT"])
@authed
async def send_message(requester, room_id, event_type, txn_id):
    content = await json_object()
    row = await hs().messages.send(requester, room_id, event_type, content, txn_id=txn_id)
    return respond({"event_id": row.event_id})


@bp.route("/rooms/<room_id>/send/<event_type>", methods=["POST"])
@authed
async def send_message_no_txn(requester, room_id, event_type):
    content = await json_object()
    row = await hs().messages.send(requester, room_id, event_type, content)
    return respond({"event_id": row.event_id})


@bp.route("/rooms/<room_id>/state/<event_type>", methods=["PUT"], defaults={"state_key": ""})
@bp.route("/rooms/<room_id>/state/<event_type>/", methods=["PUT"], defaults={"state_key": ""})
@bp.route("/rooms/<room_id>/state/<event_type>/<path:state_key>", methods=["PUT"])
@authed
async def send_state(requester, room_id, event_type, state_key):
    content = await json_object(optional=True)
    row = await hs().messages.send(requester, room_id, event_type, content, state_key=state_key)
    return respond({"event_id": row.event_id})


class RedactBody(Body):
    reason: str | None = Field(None, max_length=4096)


@bp.route("/rooms/<room_id>/redact/<event_id>/<txn_id>", methods=["PUT"])
@bp.route("/rooms/<room_id>/redact/<event_id>", methods=["POST"], defaults={"txn_id": None})
@authed
async def redact(requester, room_id, event_id, txn_id):
    req = await body(RedactBody, optional=True)
    row = await hs().messages.redact(requester, room_id, event_id, req.reason, txn_id)
    return respond({"event_id": row.event_id})


@bp.route("/rooms/<room_id>/event/<event_id>", methods=["GET"])
@authed
async def get_event(requester, room_id, event_id):
    return respond(await hs().messages.get_event(requester, room_id, event_id))


def _filter_param() -> dict | None:
    raw = request.args.get("filter")
    if not raw:
        return None
    try:
        flt = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MatrixError(400, "M_BAD_JSON", "filter is not valid JSON") from None
    if not isinstance(flt, dict):
        raise MatrixError(400, "M_BAD_JSON", "filter must be a JSON object")
    return flt


class _F:
    """RoomEventFilter fields /messages and /context use."""

    def __init__(self, d: dict | None) -> None:
        d = d or {}
        for name in ("types", "not_types", "senders", "not_senders"):
            v = d.get(name)
            if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
                raise MatrixError(400, "M_BAD_JSON", f"filter.{name} must be a list of strings")
            setattr(self, name, v)
        self.lazy_load_members = bool(d.get("lazy_load_members", False))


@bp.route("/rooms/<room_id>/messages", methods=["GET"])
@authed
async def messages(requester, room_id):
    direction = request.args.get("dir", "b")
    if direction not in ("b", "f"):
        raise MatrixError(400, "M_INVALID_PARAM", "dir must be b or f")
    limit = query_int("limit", 10, lo=0, hi=10_000)
    flt = _F(_filter_param())
    out = await hs().messages.paginate(requester, room_id, request.args.get("from"),
                                       request.args.get("to"), direction, min(limit, 1000), flt)
    return respond(out)


@bp.route("/rooms/<room_id>/context/<event_id>", methods=["GET"])
@authed
async def context(requester, room_id, event_id):
    limit = query_int("limit", 10, lo=0, hi=10_000)
    flt = _F(_filter_param())
    return respond(await hs().messages.context(requester, room_id, event_id, min(limit, 100), flt))
