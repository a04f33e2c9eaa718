"""Discovery: /.well-known/matrix/client and /_matrix/client/versions."""

from __future__ import annotations

from quart import Blueprint

from homeserver.api.common import hs, respond

bp = Blueprint("wellknown", __name__)

SPEC_VERSIONS = ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8",
                 "v1.9", "v1.10", "v1.11"]


@bp.route("/.well-known/matrix/client", methods=["GET"])
async def client_wellknown():
    return respond({"m.homeserver": {"base_url": hs().config.base_url}})


@bp.route("/_matrix/client/versions", methods=["GET"])
async def versions():
    return respond({"versions": SPEC_VERSIONS, "unstable_features": {}})
