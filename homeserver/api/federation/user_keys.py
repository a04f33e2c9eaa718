"""Other servers asking for local users' keys: /user/keys/query, /user/keys/claim and
/user/devices/{userId} (the device list snapshot that m.device_list_update EDUs continue)."""

from __future__ import annotations

from quart import Blueprint

from homeserver.api.common import hs, json_object, respond
from homeserver.api.federation.auth import federation_authed
from homeserver.errors import MatrixError

bp = Blueprint("federation_user_keys", __name__)
V1 = "/_matrix/federation/v1"


@bp.route(f"{V1}/user/keys/query", methods=["POST"])
@federation_authed
async def user_keys_query(origin):
    data = await json_object()
    if "device_keys" not in data:
        raise MatrixError(400, "M_MISSING_PARAM", "device_keys is required")
    return respond(await hs().e2e_keys.federation_query(origin, data["device_keys"]))


@bp.route(f"{V1}/user/keys/claim", methods=["POST"])
@federation_authed
async def user_keys_claim(origin):
    data = await json_object()
    if "one_time_keys" not in data:
        raise MatrixError(400, "M_MISSING_PARAM", "one_time_keys is required")
    return respond(await hs().e2e_keys.federation_claim(origin, data["one_time_keys"]))


@bp.route(f"{V1}/user/devices/<user_id>", methods=["GET"])
@federation_authed
async def user_devices(origin, user_id):
    return respond(await hs().e2e_keys.user_devices(user_id))
