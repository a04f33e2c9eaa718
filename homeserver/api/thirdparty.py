"""Third-party networks (Client-Server API, /thirdparty/...): answered by the application
services that bridge them (handlers/appservice/thirdparty.py)."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import Requester, authed, hs, respond

bp = Blueprint("thirdparty", __name__)


def _fields() -> dict[str, str]:
    """The query parameters are the lookup's fields (the token is not one of them)."""
    return {k: v for k, v in request.args.items() if k != "access_token"}


@bp.route("/thirdparty/protocols", methods=["GET"])
@authed
async def protocols(requester: Requester):
    return respond(await hs().appservices.thirdparty.get_protocols())


@bp.route("/thirdparty/protocol/<protocol>", methods=["GET"])
@authed
async def protocol(requester: Requester, protocol: str):
    return respond(await hs().appservices.thirdparty.get_protocol(protocol))


@bp.route("/thirdparty/location/<protocol>", methods=["GET"])
@authed
async def location(requester: Requester, protocol: str):
    return respond(await hs().appservices.thirdparty.lookup("location", protocol, _fields()))


@bp.route("/thirdparty/user/<protocol>", methods=["GET"])
@authed
async def user(requester: Requester, protocol: str):
    return respond(await hs().appservices.thirdparty.lookup("user", protocol, _fields()))


@bp.route("/thirdparty/location", methods=["GET"])
@authed
async def location_by_alias(requester: Requester):
    return respond(await hs().appservices.thirdparty.reverse_lookup("location",
                                                                    request.args.get("alias")))


@bp.route("/thirdparty/user", methods=["GET"])
@authed
async def user_by_id(requester: Requester):
    return respond(await hs().appservices.thirdparty.reverse_lookup("user",
                                                                    request.args.get("userid")))
