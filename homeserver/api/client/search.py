"""POST /search: server-side search of room events (message bodies, room names and topics)."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import authed, hs, json_object, respond

bp = Blueprint("search", __name__)


@bp.route("/search", methods=["POST"])
@authed
async def search(requester):
    body = await json_object()
    return respond(await hs().search.search(requester, body, request.args.get("next_batch")))
