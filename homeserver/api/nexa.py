"""Nexa extension endpoints under /_nexa/client/v1 (not part of the Matrix spec)."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import client_ip, hs, respond
from homeserver.errors import missing_param

bp = Blueprint("nexa", __name__, url_prefix="/_nexa/client/v1")


@bp.route("/register/suggestions", methods=["GET"])
async def username_suggestions():
    """?username=wanted -> availability, validity and up to five free alternatives. No auth."""
    wanted = request.args.get("username")
    if wanted is None or wanted == "":
        raise missing_param("username is required")
    return respond(await hs().directory.username_suggestions(wanted, client_ip()))
