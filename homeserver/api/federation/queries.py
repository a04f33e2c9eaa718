"""Queries from other servers: profiles, aliases, the public room directory."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.client.directory import PublicRoomsBody, PublicRoomsFilter
from homeserver.api.common import hs, json_object, query_int, respond, validate
from homeserver.api.federation.auth import federation_authed
from homeserver.handlers.directory import PublicRoomsQuery

bp = Blueprint("federation_queries", __name__)
V1 = "/_matrix/federation/v1"


@bp.route(f"{V1}/query/profile", methods=["GET"])
@federation_authed
async def query_profile(origin):
    return respond(await hs().fed_queries.on_query_profile(request.args.get("user_id"),
                                                           request.args.get("field")))


@bp.route(f"{V1}/query/directory", methods=["GET"])
@federation_authed
async def query_directory(origin):
    return respond(await hs().fed_queries.on_query_directory(request.args.get("room_alias")))


@bp.route(f"{V1}/publicRooms", methods=["GET"])
@federation_authed
async def public_rooms_get(origin):
    q = PublicRoomsQuery(limit=query_int("limit"), since=request.args.get("since"))
    return respond(await hs().directory.public_rooms(q))


@bp.route(f"{V1}/publicRooms", methods=["POST"])
@federation_authed
async def public_rooms_post(origin):
    b = validate(PublicRoomsBody, await json_object(optional=True))
    f = b.filter_ or PublicRoomsFilter()
    q = PublicRoomsQuery(limit=b.limit, since=b.since, search_term=f.generic_search_term,
                         room_types=f.room_types)
    return respond(await hs().directory.public_rooms(q))
