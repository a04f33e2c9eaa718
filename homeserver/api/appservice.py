"""Application-service routes of the Client-Server API, and the as_token check they share."""

from __future__ import annotations

from pydantic import Field
from quart import Blueprint

from homeserver.api.common import Body, access_token, body, hs, respond
from homeserver.errors import MatrixError, forbidden

bp = Blueprint("appservice", __name__)


def request_appservice():
    """The application service whose as_token authenticates this request (401 otherwise)."""
    token = access_token()
    if not token:
        raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
    service = hs().appservices.for_token(token)
    if service is None:
        raise MatrixError(401, "M_UNKNOWN_TOKEN",
                          "This request needs an application service's as_token",
                          soft_logout=False)
    return service


class PingBody(Body):
    transaction_id: str | None = Field(None, max_length=255)


@bp.route("/_matrix/client/v1/appservice/<appservice_id>/ping", methods=["POST"])
async def ping(appservice_id: str):
    token = access_token()
    if not token:
        raise MatrixError(401, "M_MISSING_TOKEN", "Missing access token")
    service = hs().appservices.for_token(token)
    if service is None:
        # An ordinary user's token is a valid token, just not an application service's.
        await hs().auth.requester_for_token(token)
        raise forbidden("Provided access token is not the appservice's as_token")
    if service.id != appservice_id:
        raise forbidden("Provided access token is not the appservice's as_token")
    req = await body(PingBody, optional=True)
    duration = await hs().appservices.ping(service, req.transaction_id)
    return respond({"duration_ms": duration})
