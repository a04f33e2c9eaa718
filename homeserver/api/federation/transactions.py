"""PUT /_matrix/federation/v1/send/{txnId}: PDUs and EDUs from another server."""

from __future__ import annotations

from quart import Blueprint

from homeserver.api.common import hs, json_object, respond
from homeserver.api.federation.auth import federation_authed
from homeserver.errors import MatrixError

bp = Blueprint("federation_send", __name__)

MAX_PDUS = 50
MAX_EDUS = 100


@bp.route("/_matrix/federation/v1/send/<txn_id>", methods=["PUT"])
@federation_authed
async def send_transaction(origin, txn_id):
    body = await json_object()
    pdus, edus = body.get("pdus", []), body.get("edus", [])
    if not isinstance(pdus, list) or not isinstance(edus, list):
        raise MatrixError(400, "M_BAD_JSON", "pdus and edus must be lists")
    if len(pdus) > MAX_PDUS or len(edus) > MAX_EDUS:
        raise MatrixError(400, "M_BAD_JSON", f"At most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")
    if body.get("origin", origin) != origin:
        raise MatrixError(400, "M_BAD_JSON", "origin does not match the signed origin")
    return respond(await hs().receiver.on_transaction(origin, txn_id, body))
