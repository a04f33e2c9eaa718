"""User directory search and the public room directory (room aliases live in the rooms module)."""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint, request

from homeserver.api.common import Body, Requester, authed, body, hs, json_object, query_int, \
    respond, validate
from homeserver.types import is_valid_server_name
from homeserver.errors import invalid_param, missing_param
from homeserver.handlers.directory import USER_SEARCH_DEFAULT_LIMIT, PublicRoomsQuery

bp = Blueprint("directory", __name__)


class UserSearchBody(Body):
    search_term: str | None = None
    limit: int = USER_SEARCH_DEFAULT_LIMIT


class PublicRoomsFilter(Body):
    generic_search_term: str | None = None
    room_types: list[str | None] | None = None


class PublicRoomsBody(Body):
    limit: int | None = None
    since: str | None = None
    filter_: PublicRoomsFilter | None = Field(None, alias="filter")
    include_all_networks: bool = False
    third_party_instance_id: str | None = None
    server: str | None = None


class VisibilityBody(Body):
    visibility: str = "public"


@bp.route("/user_directory/search", methods=["POST"])
@authed
async def search_users(requester: Requester):
    b = await body(UserSearchBody)
    if b.search_term is None:
        raise missing_param("search_term is required")
    if b.limit < 1:
        raise invalid_param("limit must be at least 1")
    return respond(await hs().directory.search_users(requester.user_id, b.search_term, b.limit))


def _remote_server(server: str | None) -> str | None:
    """The other server whose directory is asked for, or None for ours."""
    if not server or server == hs().server_name:
        return None
    if not is_valid_server_name(server):
        raise invalid_param("server is not a valid server name")
    return server


@bp.route("/publicRooms", methods=["GET"])
async def get_public_rooms():
    remote = _remote_server(request.args.get("server"))
    q = PublicRoomsQuery(limit=query_int("limit"), since=request.args.get("since"))
    if remote:
        params = {k: v for k, v in (("limit", q.limit), ("since", q.since)) if v is not None}
        return respond(await hs().fed_queries.remote_public_rooms(remote, params))
    return respond(await hs().directory.public_rooms(q))


@bp.route("/publicRooms", methods=["POST"])
@authed
async def post_public_rooms(_requester: Requester):
    data = await json_object(optional=True)
    b = validate(PublicRoomsBody, data)
    remote = _remote_server(request.args.get("server"))
    if remote:
        return respond(await hs().fed_queries.remote_public_rooms(remote, data))
    f = b.filter_ or PublicRoomsFilter()
    q = PublicRoomsQuery(limit=b.limit, since=b.since, search_term=f.generic_search_term,
                         room_types=f.room_types)
    return respond(await hs().directory.public_rooms(q))


@bp.route("/directory/list/room/<path:room_id>", methods=["GET"])
async def get_room_visibility(room_id: str):
    return respond({"visibility": await hs().directory.get_visibility(room_id)})


@bp.route("/directory/list/room/<path:room_id>", methods=["PUT"])
@authed
async def set_room_visibility(requester: Requester, room_id: str):
    b = validate(VisibilityBody, await json_object(optional=True))
    await hs().directory.set_visibility(requester.user_id, room_id, b.visibility,
                                        is_admin=requester.is_admin)
    return respond({})
