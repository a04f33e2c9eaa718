"""Endpoints mounted under /_matrix/client/v1 only: /relations (events that relate to one
event), /threads (a room's threads), /hierarchy (a space's rooms) and /timestamp_to_event
(jumping to a date)."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import authed, hs, query_bool, query_int, respond, timestamp_query
from homeserver.errors import MatrixError
from homeserver.handlers import spaces

bp = Blueprint("relations", __name__)


@bp.route("/rooms/<room_id>/relations/<event_id>", methods=["GET"],
          defaults={"rel_type": None, "event_type": None})
@bp.route("/rooms/<room_id>/relations/<event_id>/<rel_type>", methods=["GET"],
          defaults={"event_type": None})
@bp.route("/rooms/<room_id>/relations/<event_id>/<rel_type>/<event_type>", methods=["GET"])
@authed
async def relations(requester, room_id, event_id, rel_type, event_type):
    direction = request.args.get("dir", "b")
    if direction not in ("b", "f"):
        raise MatrixError(400, "M_INVALID_PARAM", "dir must be b or f")
    limit = query_int("limit", 50, lo=0, hi=10_000)
    return respond(await hs().messages.relations(
        requester, room_id, event_id, rel_type, event_type, request.args.get("from"),
        request.args.get("to"), direction, min(limit, 1000)))


@bp.route("/rooms/<room_id>/timestamp_to_event", methods=["GET"])
@authed
async def timestamp_to_event(requester, room_id):
    ts, forward = timestamp_query()
    return respond(await hs().messages.event_at_time(requester, room_id, ts, forward))


@bp.route("/rooms/<room_id>/threads", methods=["GET"])
@authed
async def threads(requester, room_id):
    include = request.args.get("include", "all")
    if include not in ("all", "participated"):
        raise MatrixError(400, "M_INVALID_PARAM", "include must be all or participated")
    limit = query_int("limit", 20, lo=1, hi=10_000)
    return respond(await hs().threads.list(requester, room_id, include == "participated",
                                           request.args.get("from"), min(limit, 100)))


@bp.route("/rooms/<room_id>/hierarchy", methods=["GET"])
@authed
async def hierarchy(requester, room_id):
    limit = query_int("limit", spaces.DEFAULT_LIMIT, lo=1, hi=10_000)
    max_depth = query_int("max_depth", spaces.MAX_DEPTH, lo=0, hi=10_000)
    return respond(await hs().spaces.hierarchy(
        requester, room_id, query_bool("suggested_only"), min(limit, spaces.MAX_LIMIT),
        min(max_depth, spaces.MAX_DEPTH), request.args.get("from")))
