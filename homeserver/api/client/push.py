"""Pushers and the notifications list: parse, authenticate, call handlers/pushers.py."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import Requester, authed, hs, json_object, query_int, respond
from homeserver.handlers.pushers import DEFAULT_NOTIFICATIONS_LIMIT

bp = Blueprint("push", __name__)


@bp.route("/pushers", methods=["GET"])
@authed
async def get_pushers(requester: Requester):
    return respond({"pushers": await hs().pushers.get_pushers(requester.user_id)})


@bp.route("/pushers/set", methods=["POST"])
@authed
async def set_pusher(requester: Requester):
    await hs().pushers.set_pusher(requester, await json_object())
    return respond({})


@bp.route("/notifications", methods=["GET"])
@authed
async def get_notifications(requester: Requester):
    limit = query_int("limit", DEFAULT_NOTIFICATIONS_LIMIT, lo=1)
    return respond(await hs().pushers.notifications(
        requester.user_id, request.args.get("from"), limit, request.args.get("only")))
