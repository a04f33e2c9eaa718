"""End-to-end encryption routes: /keys/*, /sendToDevice and /room_keys (key backup)."""

from __future__ import annotations

from quart import Blueprint, request

from homeserver.api.common import authed, hs, json_object, respond
from homeserver.errors import MatrixError, bad_json
from homeserver.types import StreamToken

bp = Blueprint("keys", __name__)


# --- keys ------------------------------------------------------------------------------------

@bp.route("/keys/upload", methods=["POST"])
@authed
async def upload_keys(requester):
    data = await json_object()
    return respond(await hs().e2e_keys.upload(requester, data))


@bp.route("/keys/query", methods=["POST"])
@authed
async def query_keys(requester):
    data = await json_object()
    if "device_keys" not in data:
        raise MatrixError(400, "M_MISSING_PARAM", "device_keys is required")
    return respond(await hs().e2e_keys.query(requester, data["device_keys"],
                                             data.get("timeout")))


@bp.route("/keys/claim", methods=["POST"])
@authed
async def claim_keys(requester):
    data = await json_object()
    if "one_time_keys" not in data:
        raise MatrixError(400, "M_MISSING_PARAM", "one_time_keys is required")
    return respond(await hs().e2e_keys.claim(requester, data["one_time_keys"],
                                             data.get("timeout")))


@bp.route("/keys/changes", methods=["GET"])
@authed
async def key_changes(requester):
    server = hs()
    raw_from = request.args.get("from")
    if not raw_from:
        raise MatrixError(400, "M_MISSING_PARAM", "from is required")
    since = StreamToken.parse(raw_from, param="from")
    raw_to = request.args.get("to")
    upto = StreamToken.parse(raw_to, param="to") if raw_to else server.sync.current_token()
    changed, left = await server.device_lists.changes_between(requester.user_id, since, upto)
    return respond({"changed": changed, "left": left})


@bp.route("/keys/device_signing/upload", methods=["POST"])
@authed
async def upload_signing_keys(requester):
    data = await json_object()
    await hs().e2e_keys.upload_signing_keys(requester, data)
    return respond({})


@bp.route("/keys/signatures/upload", methods=["POST"])
@authed
async def upload_signatures(requester):
    data = await json_object()
    return respond(await hs().e2e_keys.upload_signatures(requester, data))


# --- send-to-device --------------------------------------------------------------------------

@bp.route("/sendToDevice/<event_type>/<txn_id>", methods=["PUT"])
@authed
async def send_to_device(requester, event_type, txn_id):
    data = await json_object()
    if "messages" not in data:
        raise MatrixError(400, "M_MISSING_PARAM", "messages is required")
    await hs().to_device.send(requester, event_type, txn_id, data["messages"])
    return respond({})


# --- key backup ------------------------------------------------------------------------------

@bp.route("/room_keys/version", methods=["POST"])
@authed
async def create_backup(requester):
    data = await json_object()
    return respond({"version": await hs().key_backup.create_version(requester.user_id, data)})


@bp.route("/room_keys/version", methods=["GET"])
@authed
async def current_backup(requester):
    return respond(await hs().key_backup.get_version(requester.user_id, None))


@bp.route("/room_keys/version/<version>", methods=["GET"])
@authed
async def get_backup(requester, version):
    return respond(await hs().key_backup.get_version(requester.user_id, version))


@bp.route("/room_keys/version/<version>", methods=["PUT"])
@authed
async def update_backup(requester, version):
    data = await json_object()
    await hs().key_backup.update_version(requester.user_id, version, data)
    return respond({})


@bp.route("/room_keys/version/<version>", methods=["DELETE"])
@authed
async def delete_backup(requester, version):
    await hs().key_backup.delete_version(requester.user_id, version)
    return respond({})


def _version_arg() -> str | None:
    return request.args.get("version")


@bp.route("/room_keys/keys", methods=["PUT"])
@authed
async def put_all_keys(requester):
    data = await json_object()
    rooms = data.get("rooms")
    if not isinstance(rooms, dict):
        raise bad_json("rooms must be an object of room IDs to {sessions: ...}")
    shaped = {}
    for room_id, room in rooms.items():
        if not isinstance(room, dict) or not isinstance(room.get("sessions"), dict):
            raise bad_json(f"rooms.{room_id[:80]} must be an object with sessions")
        shaped[room_id] = room["sessions"]
    return respond(await hs().key_backup.put_keys(requester.user_id, _version_arg(), shaped))


@bp.route("/room_keys/keys/<room_id>", methods=["PUT"])
@authed
async def put_room_keys(requester, room_id):
    data = await json_object()
    if not isinstance(data.get("sessions"), dict):
        raise bad_json("sessions must be an object of session IDs to key data")
    return respond(await hs().key_backup.put_keys(requester.user_id, _version_arg(),
                                                  {room_id: data["sessions"]}))


@bp.route("/room_keys/keys/<room_id>/<session_id>", methods=["PUT"])
@authed
async def put_session_key(requester, room_id, session_id):
    data = await json_object()
    return respond(await hs().key_backup.put_keys(requester.user_id, _version_arg(),
                                                  {room_id: {session_id: data}}))


@bp.route("/room_keys/keys", methods=["GET"])
@authed
async def get_all_keys(requester):
    return respond(await hs().key_backup.get_keys(requester.user_id, _version_arg()))


@bp.route("/room_keys/keys/<room_id>", methods=["GET"])
@authed
async def get_room_keys(requester, room_id):
    return respond(await hs().key_backup.get_keys(requester.user_id, _version_arg(), room_id))


@bp.route("/room_keys/keys/<room_id>/<session_id>", methods=["GET"])
@authed
async def get_session_key(requester, room_id, session_id):
    return respond(await hs().key_backup.get_keys(requester.user_id, _version_arg(), room_id,
                                                  session_id))


@bp.route("/room_keys/keys", methods=["DELETE"])
@authed
async def delete_all_keys(requester):
    return respond(await hs().key_backup.delete_keys(requester.user_id, _version_arg()))


@bp.route("/room_keys/keys/<room_id>", methods=["DELETE"])
@authed
async def delete_room_keys(requester, room_id):
    return respond(await hs().key_backup.delete_keys(requester.user_id, _version_arg(),
                                                     room_id))


@bp.route("/room_keys/keys/<room_id>/<session_id>", methods=["DELETE"])
@authed
async def delete_session_key(requester, room_id, session_id):
    return respond(await hs().key_backup.delete_keys(requester.user_id, _version_arg(),
                                                     room_id, session_id))
