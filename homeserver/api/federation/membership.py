"""Joining, leaving, knocking and inviting across servers (both v1 and v2 shapes where they
differ)."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import hs, json_object, respond
from homeserver.api.federation.auth import federation_authed

bp = Blueprint("federation_membership", __name__)
V1 = "/_matrix/federation/v1"
V2 = "/_matrix/federation/v2"


@bp.route(f"{V1}/make_join/<room_id>/<user_id>", methods=["GET"],
          defaults={"membership": "join"})
@bp.route(f"{V1}/make_leave/<room_id>/<user_id>", methods=["GET"],
          defaults={"membership": "leave"})
@bp.route(f"{V1}/make_knock/<room_id>/<user_id>", methods=["GET"],
          defaults={"membership": "knock"})
@federation_authed
async def make_membership(origin, room_id, user_id, membership):
    versions = request.args.getlist("ver")  # the room versions the asking server supports
    return respond(await hs().fed_membership.make_membership(origin, room_id, user_id,
                                                             membership, versions))


@bp.route(f"{V2}/send_join/<room_id>/<event_id>", methods=["PUT"],
          defaults={"membership": "join"})
@bp.route(f"{V2}/send_leave/<room_id>/<event_id>", methods=["PUT"],
          defaults={"membership": "leave"})
@bp.route(f"{V1}/send_knock/<room_id>/<event_id>", methods=["PUT"],
          defaults={"membership": "knock"})
@federation_authed
async def send_membership(origin, room_id, event_id, membership):
    pdu = await json_object()
    return respond(await hs().fed_membership.send_membership(origin, room_id, event_id, pdu,
                                                             membership))


@bp.route(f"{V1}/send_join/<room_id>/<event_id>", methods=["PUT"])
@federation_authed
async def send_join_v1(origin, room_id, event_id):
    pdu = await json_object()
    res = await hs().fed_membership.send_membership(origin, room_id, event_id, pdu, "join")
    return respond([200, res])


@bp.route(f"{V1}/send_leave/<room_id>/<event_id>", methods=["PUT"])
@federation_authed
async def send_leave_v1(origin, room_id, event_id):
    pdu = await json_object()
    await hs().fed_membership.send_membership(origin, room_id, event_id, pdu, "leave")
    return respond([200, {}])


@bp.route(f"{V2}/invite/<room_id>/<event_id>", methods=["PUT"])
@federation_authed
async def invite_v2(origin, room_id, event_id):
    body = await json_object()
    return respond(await hs().fed_membership.on_invite(origin, room_id, event_id, body))
