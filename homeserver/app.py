"""create_app(config): one Quart application around one HomeServer, with no module globals."""

from __future__ import annotations

import logging
import uuid

from quart import Quart, request
from werkzeug.exceptions import HTTPException

from homeserver.api.common import reject_nul_in_url, respond
from homeserver.api.connection import WritesOutliveClientConnection
from homeserver.config import Config
from homeserver.errors import MatrixError
from homeserver.server import HomeServer

log = logging.getLogger(__name__)

CLIENT_PREFIX = "/_matrix/client/v3"
# r0 is v3's older name: the same endpoints, reached by rewriting the path in front of the
# router (registering every route twice cost a megabyte of routing tables and route code).
LEGACY_CLIENT_PREFIX = "/_matrix/client/r0/"
# Uploads have their own (larger) limit, enforced while streaming.
MEDIA_PREFIXES = ("/_matrix/media/", "/_matrix/client/v1/media/")

BODYLESS_METHODS = frozenset({"GET", "HEAD"})
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization, Date",
}


def create_app(config: Config, hs: HomeServer | None = None) -> Quart:
    from homeserver.api import appservice as appservice_api
    from homeserver.api import client as client_api
    from homeserver.api import federation as federation_api
    from homeserver.api import keys as keys_api
    from homeserver.api import media as media_api
    from homeserver.api import thirdparty as thirdparty_api
    from homeserver.api import web as web_api
    from homeserver.api import wellknown

    hs = hs or HomeServer(config)
    app = Quart("nexa", static_folder=None)
    app.asgi_http_class = WritesOutliveClientConnection
    # Matrix paths like /state/{type}/ (empty state key) must not redirect.
    app.url_map.strict_slashes = False
    app.config["NEXA_HS"] = hs
    # Media uploads have their own, larger limit; everything else is small JSON.
    app.config["MAX_CONTENT_LENGTH"] = max(config.limits.max_request_bytes,
                                           config.media.max_upload_bytes)
    app.config["BODY_TIMEOUT"] = 60

    app.register_blueprint(wellknown.bp)
    app.register_blueprint(keys_api.bp)
    for bp in federation_api.blueprints():
        app.register_blueprint(bp)
    for bp in [*client_api.blueprints(), thirdparty_api.bp]:
        app.register_blueprint(bp, url_prefix=CLIENT_PREFIX, name=f"{bp.name}_v3")
    for bp in client_api.v1_blueprints():
        app.register_blueprint(bp, url_prefix="/_matrix/client/v1")
    for bp in client_api.unstable_blueprints():
        app.register_blueprint(bp)
    app.register_blueprint(appservice_api.bp)
    media_api.register(app)
    # The web UI at / and /static, and gzip for large responses.
    web_api.register(app)

    @app.before_serving
    async def _start() -> None:
        await hs.start()

    @app.after_serving
    async def _stop() -> None:
        await hs.stop()

    @app.before_request
    async def _preflight():
        if request.method == "OPTIONS":
            return respond({})
        reject_nul_in_url()
        if request.method in BODYLESS_METHODS:  # bodies of these are never read
            return None
        length = request.content_length
        if (length is not None and length > config.limits.max_request_bytes
                and not request.path.startswith(MEDIA_PREFIXES)):
            raise MatrixError(413, "M_TOO_LARGE", "Request body too large")
        return None

    @app.after_request
    async def _cors(response):
        # One pass over the headers: werkzeug builds an exception for every lookup that misses,
        # and this runs on every response.
        present = {k.lower() for k in response.headers.keys()}
        for k, v in CORS_HEADERS.items():
            if k.lower() not in present:
                response.headers.add(k, v)
        return response

    @app.errorhandler(MatrixError)
    async def _matrix_error(e: MatrixError):
        return respond(e.to_json(), e.status)

    @app.errorhandler(HTTPException)
    async def _http_error(e: HTTPException):
        code = e.code or 500
        if code in (404, 405):
            return respond({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}, code)
        if code == 413:
            return respond({"errcode": "M_TOO_LARGE", "error": "Request body too large"}, 413)
        if code < 500:
            return respond({"errcode": "M_UNKNOWN", "error": e.description or e.name}, code)
        return respond({"errcode": "M_UNKNOWN", "error": "Internal server error"}, code)

    @app.errorhandler(Exception)
    async def _unexpected(e: Exception):
        if isinstance(e, (MatrixError, HTTPException)):
            raise e
        request_id = uuid.uuid4().hex[:12]
        log.exception("unexpected error (request %s) on %s %s", request_id, request.method,
                      request.path)
        return respond({"errcode": "M_UNKNOWN", "error": f"Internal error (request {request_id})"},
                       500)

    # Bind this server's database context for everything the app runs, so several
    # homeservers can share one process. Socket.IO (/_nexa/socket.io/) is dispatched in
    # front of Quart, inside that context; everything else, lifespan included, goes to Quart.
    inner = hs.realtime.mount(app.asgi_app)

    async def asgi(scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(LEGACY_CLIENT_PREFIX):
            scope = _legacy_client_path(scope)
        token = hs.db.activate()
        try:
            await inner(scope, receive, send)
        finally:
            hs.db.deactivate(token)

    app.asgi_app = asgi  # type: ignore[method-assign]
    app.hs = hs  # type: ignore[attr-defined]
    return app


def _legacy_client_path(scope: dict) -> dict:
    """The same request with /_matrix/client/r0/… read as /_matrix/client/v3/…."""
    rest = scope["path"][len(LEGACY_CLIENT_PREFIX) - 1:]
    scope = dict(scope, path=CLIENT_PREFIX + rest)
    raw = scope.get("raw_path")
    if raw is not None:
        scope["raw_path"] = CLIENT_PREFIX.encode() + raw[len(LEGACY_CLIENT_PREFIX) - 1:]
    return scope
