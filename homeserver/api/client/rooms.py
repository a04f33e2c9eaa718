"""Room routes: create, membership, aliases, state, members."""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint, request

from homeserver.api.common import Body, authed, body, hs, respond
from homeserver.errors import MatrixError, not_found
from homeserver.handlers.visibility import format_events

bp = Blueprint("rooms", __name__)


class CreateRoomBody(Body):
    visibility: str | None = Field(None, pattern="^(public|private)$")
    room_alias_name: str | None = Field(None, max_length=200)
    name: str | None = Field(None, max_length=1024)
    topic: str | None = Field(None, max_length=4096)
    invite: list[str] = Field(default_factory=list, max_length=500)
    room_version: str | None = Field(None, max_length=32)
    creation_content: dict | None = None
    initial_state: list[dict] = Field(default_factory=list, max_length=200)
    preset: str | None = None
    is_direct: bool = False
    power_level_content_override: dict | None = None


@bp.route("/createRoom", methods=["POST"])
@authed
async def create_room(requester):
    req = await body(CreateRoomBody)
    room_id, alias = await hs().rooms.create_room(requester, req)
    out = {"room_id": room_id}
    if alias:
        out["room_alias"] = alias
    return respond(out)


class ReasonBody(Body):
    reason: str | None = Field(None, max_length=2048)


class TargetBody(ReasonBody):
    user_id: str = Field(max_length=255)


@bp.route("/join/<path:room_id_or_alias>", methods=["POST"], defaults={"membership": "join"})
@bp.route("/knock/<path:room_id_or_alias>", methods=["POST"], defaults={"membership": "knock"})
@authed
async def join_or_knock(requester, room_id_or_alias, membership):
    """Join, or ask to join, a room by ID or alias; `via` (or the older `server_name`) names
    servers that can help with a room that lives elsewhere."""
    req = await body(ReasonBody, optional=True)
    via = (request.args.getlist("via") + request.args.getlist("server_name"))[:10]
    act = hs().rooms.join if membership == "join" else hs().rooms.knock
    return respond({"room_id": await act(requester, room_id_or_alias, req.reason, via=via)})


@bp.route("/rooms/<room_id>/join", methods=["POST"])
@authed
async def join_room(requester, room_id):
    req = await body(ReasonBody, optional=True)
    room_id = await hs().rooms.join(requester, room_id, req.reason)
    return respond({"room_id": room_id})


@bp.route("/rooms/<room_id>/leave", methods=["POST"])
@authed
async def leave(requester, room_id):
    req = await body(ReasonBody, optional=True)
    await hs().rooms.leave(requester, room_id, req.reason)
    return respond({})


@bp.route("/rooms/<room_id>/forget", methods=["POST"])
@authed
async def forget(requester, room_id):
    await hs().rooms.forget(requester, room_id)
    return respond({})


class InviteBody(TargetBody):
    is_direct: bool = False


@bp.route("/rooms/<room_id>/invite", methods=["POST"])
@authed
async def invite(requester, room_id):
    req = await body(InviteBody)
    await hs().rooms.invite(requester, room_id, req.user_id, req.reason)
    return respond({})


@bp.route("/rooms/<room_id>/kick", methods=["POST"])
@authed
async def kick(requester, room_id):
    req = await body(TargetBody)
    await hs().rooms.set_membership_of_other(requester, room_id, req.user_id, "leave", req.reason)
    return respond({})


@bp.route("/rooms/<room_id>/ban", methods=["POST"])
@authed
async def ban(requester, room_id):
    req = await body(TargetBody)
    await hs().rooms.set_membership_of_other(requester, room_id, req.user_id, "ban", req.reason)
    return respond({})


@bp.route("/rooms/<room_id>/unban", methods=["POST"])
@authed
async def unban(requester, room_id):
    req = await body(TargetBody)
    if await hs().state.membership_of(room_id, req.user_id) != "ban":
        raise MatrixError(403, "M_FORBIDDEN", f"{req.user_id} is not banned")
    await hs().rooms.set_membership_of_other(requester, room_id, req.user_id, "leave", req.reason)
    return respond({})


@bp.route("/joined_rooms", methods=["GET"])
@authed
async def joined_rooms(requester):
    return respond({"joined_rooms": await hs().rooms.joined_rooms(requester.user_id)})


# --- aliases ---------------------------------------------------------------------------------

class AliasBody(Body):
    room_id: str = Field(max_length=255)


@bp.route("/directory/room/<path:alias>", methods=["PUT"])
@authed
async def put_alias(requester, alias):
    req = await body(AliasBody)
    await hs().rooms.create_alias(requester, alias, req.room_id)
    return respond({})


@bp.route("/directory/room/<path:alias>", methods=["GET"])
async def get_alias(alias):
    return respond(await hs().rooms.get_alias(alias))


@bp.route("/directory/room/<path:alias>", methods=["DELETE"])
@authed
async def delete_alias(requester, alias):
    await hs().rooms.delete_alias(requester, alias)
    return respond({})


@bp.route("/rooms/<room_id>/aliases", methods=["GET"])
@authed
async def room_aliases(requester, room_id):
    return respond({"aliases": await hs().rooms.room_aliases(requester, room_id)})


# --- state and members -----------------------------------------------------------------------

@bp.route("/rooms/<room_id>/state", methods=["GET"])
@authed
async def get_state(requester, room_id):
    st = await hs().rooms.get_state(requester.user_id, room_id)
    return respond(await format_events(hs(), st.values()))


@bp.route("/rooms/<room_id>/state/<event_type>", methods=["GET"], defaults={"state_key": ""})
@bp.route("/rooms/<room_id>/state/<event_type>/", methods=["GET"], defaults={"state_key": ""})
@bp.route("/rooms/<room_id>/state/<event_type>/<path:state_key>", methods=["GET"])
@authed
async def get_state_event(requester, room_id, event_type, state_key):
    st = await hs().rooms.get_state(requester.user_id, room_id)
    row = st.get((event_type, state_key))
    if row is None:
        raise not_found("State event not found")
    if request.args.get("format") == "event":
        return respond((await format_events(hs(), [row]))[0])
    content = row.pdu.get("content", {})
    if row.redacted_by:
        content = (await format_events(hs(), [row]))[0]["content"]
    return respond(content)


@bp.route("/rooms/<room_id>/members", methods=["GET"])
@authed
async def members(requester, room_id):
    st = await hs().rooms.get_state(requester.user_id, room_id)
    want = request.args.get("membership")
    exclude = request.args.get("not_membership")
    rows = [r for (t, _), r in st.items() if t == "m.room.member"]
    if want:
        rows = [r for r in rows if r.pdu["content"].get("membership") == want]
    if exclude:
        rows = [r for r in rows if r.pdu["content"].get("membership") != exclude]
    return respond({"chunk": await format_events(hs(), rows)})


@bp.route("/rooms/<room_id>/joined_members", methods=["GET"])
@authed
async def joined_members(requester, room_id):
    st = await hs().rooms.get_state(requester.user_id, room_id)
    joined = {}
    for (t, sk), r in st.items():
        c = r.pdu.get("content", {})
        if t == "m.room.member" and c.get("membership") == "join":
            joined[sk] = {"display_name": c.get("displayname"), "avatar_url": c.get("avatar_url")}
    return respond({"joined": joined})
