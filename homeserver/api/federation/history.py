"""Room history for other servers: events, state, auth chains, backfill, missing events,
the event at a time."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import hs, json_object, query_int, respond, timestamp_query
from homeserver.api.federation.auth import federation_authed
from homeserver.errors import MatrixError

bp = Blueprint("federation_history", __name__)
V1 = "/_matrix/federation/v1"


def _event_id_param() -> str:
    eid = request.args.get("event_id")
    if not eid:
        raise MatrixError(400, "M_MISSING_PARAM", "event_id is required")
    return eid


@bp.route(f"{V1}/event/<event_id>", methods=["GET"])
@federation_authed
async def get_event(origin, event_id):
    return respond(await hs().fed_history.get_event(origin, event_id))


@bp.route(f"{V1}/state_ids/<room_id>", methods=["GET"])
@federation_authed
async def state_ids(origin, room_id):
    return respond(await hs().fed_history.state_ids(origin, room_id, _event_id_param()))


@bp.route(f"{V1}/state/<room_id>", methods=["GET"])
@federation_authed
async def state(origin, room_id):
    return respond(await hs().fed_history.state(origin, room_id, _event_id_param()))


@bp.route(f"{V1}/event_auth/<room_id>/<event_id>", methods=["GET"])
@federation_authed
async def event_auth(origin, room_id, event_id):
    return respond(await hs().fed_history.event_auth(origin, room_id, event_id))


@bp.route(f"{V1}/backfill/<room_id>", methods=["GET"])
@federation_authed
async def backfill(origin, room_id):
    v = request.args.getlist("v")
    if not v:
        raise MatrixError(400, "M_MISSING_PARAM", "v is required")
    limit = query_int("limit", 10, lo=1, hi=10_000)
    return respond(await hs().fed_history.backfill(origin, room_id, v[:20], limit))


@bp.route(f"{V1}/get_missing_events/<room_id>", methods=["POST"])
@federation_authed
async def get_missing_events(origin, room_id):
    body = await json_object()
    return respond(await hs().fed_history.get_missing_events(origin, room_id, body))


@bp.route(f"{V1}/timestamp_to_event/<room_id>", methods=["GET"])
@federation_authed
async def timestamp_to_event(origin, room_id):
    ts, forward = timestamp_query()
    return respond(await hs().fed_history.event_at_time(origin, room_id, ts, forward))
