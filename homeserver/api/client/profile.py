"""Profile endpoints: GET /profile/{userId}, GET/PUT/DELETE /profile/{userId}/{keyName}.

User IDs may contain '/' (and the path arrives decoded), so one path-converter route per method
takes the rest of the path and splits it.
"""

from __future__ import annotations

from quart import Blueprint

from homeserver.api.common import Requester, authed, hs, json_object, respond
from homeserver.errors import missing_param, unrecognized
from homeserver.types import is_valid_user_id

bp = Blueprint("profile", __name__)


def _split(rest: str) -> tuple[str, str | None]:
    """'@u:hs' -> ('@u:hs', None); '@u:hs/displayname' -> ('@u:hs', 'displayname').

    Localparts may contain '/', server names never do, so a valid whole is a bare user ID.
    """
    if is_valid_user_id(rest) or "/" not in rest:
        return rest, None
    user_id, _, key = rest.rpartition("/")
    return user_id, key


@bp.route("/profile/<path:rest>", methods=["GET"])
async def get_profile(rest: str):
    user_id, key = _split(rest)
    if key is None:
        return respond(await hs().profile.get_profile(user_id))
    return respond(await hs().profile.get_field(user_id, key))


@bp.route("/profile/<path:rest>", methods=["PUT"])
@authed
async def set_profile_field(requester: Requester, rest: str):
    user_id, key = _split(rest)
    if key is None:
        raise unrecognized()
    data = await json_object()
    if key not in data:
        raise missing_param(f"The body must contain {key!r}")
    await hs().profile.set_field(requester, user_id, key, data[key])
    return respond({})


@bp.route("/profile/<path:rest>", methods=["DELETE"])
@authed
async def delete_profile_field(requester: Requester, rest: str):
    user_id, key = _split(rest)
    if key is None:
        raise unrecognized()
    await hs().profile.delete_field(requester, user_id, key)
    return respond({})
