"""Typing, receipts, read markers and presence: parse, authenticate, call the handler."""

from __future__ import annotations

from quart import Blueprint

from homeserver.api.common import Body, Requester, authed, body, hs, json_object, respond

bp = Blueprint("ephemeral", __name__)


class TypingBody(Body):
    typing: bool
    timeout: int | None = None


class PresenceBody(Body):
    presence: str
    status_msg: str | None = None


@bp.route("/rooms/<room_id>/typing/<user_id>", methods=["PUT"])
@authed
async def put_typing(requester: Requester, room_id: str, user_id: str):
    req = await body(TypingBody)
    await hs().typing.set_typing(requester.user_id, user_id, room_id, req.typing, req.timeout)
    return respond({})


@bp.route("/rooms/<room_id>/receipt/<receipt_type>/<event_id>", methods=["POST"])
@authed
async def post_receipt(requester: Requester, room_id: str, receipt_type: str, event_id: str):
    data = await json_object(optional=True)
    await hs().receipts.send_receipt(requester.user_id, room_id, receipt_type, event_id,
                                     data.get("thread_id"))
    return respond({})


@bp.route("/rooms/<room_id>/read_markers", methods=["POST"])
@authed
async def post_read_markers(requester: Requester, room_id: str):
    data = await json_object()
    await hs().receipts.set_read_markers(requester.user_id, room_id, data)
    return respond({})


@bp.route("/presence/<user_id>/status", methods=["GET"])
@authed
async def get_presence(requester: Requester, user_id: str):
    return respond(await hs().presence.get_status(requester.user_id, user_id))


@bp.route("/presence/<user_id>/status", methods=["PUT"])
@authed
async def put_presence(requester: Requester, user_id: str):
    req = await body(PresenceBody)
    await hs().presence.set_status(requester.user_id, user_id, req.presence, req.status_msg)
    return respond({})
