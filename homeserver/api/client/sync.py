"""GET /sync."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import authed, hs, query_bool, query_int, respond
from homeserver.errors import MatrixError

bp = Blueprint("sync", __name__)


@bp.route("/sync", methods=["GET"])
@authed
async def sync(requester):
    timeout = query_int("timeout", 0, lo=0, hi=2**53)
    full_state = query_bool("full_state")
    presence = request.args.get("set_presence", "online")
    if presence not in ("online", "offline", "unavailable"):
        raise MatrixError(400, "M_INVALID_PARAM", "set_presence must be online, offline or unavailable")
    flt = await hs().filters.resolve(requester.user_id, request.args.get("filter")) \
        if request.args.get("filter") else None
    out = await hs().sync.sync(requester, request.args.get("since"), timeout, full_state, flt)
    return respond(out)
