"""Media repository routes: HTTP in and out only; the rules are in handlers/media.py.

Mounted (see `register`):
* /_matrix/media/v3 and /_matrix/media/r0 — upload (POST, and PUT for IDs from /create),
  download, thumbnail, config. Download and thumbnail there stay unauthenticated (the spec
  deprecates them in favour of the authenticated forms below but still defines them, and older
  clients use them), but they serve only media this server already has: local uploads and
  remote media cached earlier. They never make this server fetch from another one, so an
  anonymous request cannot turn it into a proxy (the spec allows this 404 since v1.11).
  Upload and config need an access token, as the spec says.
* /_matrix/media/v1/create — reserve an mxc:// URI for a later upload.
* /_matrix/client/v1/media — download, thumbnail, config, with an access token.
* /_matrix/federation/v1/media — download and thumbnail for other servers (X-Matrix signed),
  answered multipart/mixed as the spec says; only media uploaded here is served.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, AsyncIterator

from quart import Blueprint, Quart, Response, request
from quart.wrappers.response import ResponseBody
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from homeserver.api.common import Requester, authed, hs, query_bool, query_int, respond
from homeserver.api.federation.auth import federation_authed
from homeserver.errors import MatrixError, missing_param, not_found
from homeserver.handlers.media import MediaFile, ThumbnailFile
from homeserver.handlers.media_policy import content_disposition, media_headers, validate_filename
from homeserver.storage.media import MediaStore

# A client that stops sending mid-upload is dropped after this long without a byte.
UPLOAD_IDLE_TIMEOUT = 60
FILE_BUFFER = 256 * 1024
# Sending a big file to a slow client takes longer than Quart's default 60 s response timeout.
DOWNLOAD_TIMEOUT = 3600
# Larger requests are refused: a thumbnail is never bigger than the handler's clamp anyway.
MAX_THUMBNAIL_PARAM = 100_000

legacy = Blueprint("media_legacy", __name__)
create_bp = Blueprint("media_create", __name__)
client_bp = Blueprint("media_client", __name__)
federation_bp = Blueprint("media_federation", __name__)

LEGACY_PREFIXES = ("/_matrix/media/v3", "/_matrix/media/r0")


def register(app: Quart) -> None:
    for i, prefix in enumerate(LEGACY_PREFIXES):
        app.register_blueprint(legacy, url_prefix=prefix, name=f"media_legacy_{i}")
    app.register_blueprint(create_bp, url_prefix="/_matrix/media/v1")
    app.register_blueprint(client_bp, url_prefix="/_matrix/client/v1/media")
    app.register_blueprint(federation_bp, url_prefix="/_matrix/federation/v1/media")


# --- request helpers -------------------------------------------------------------------------

async def _body_chunks() -> AsyncIterator[bytes]:
    """The request body as it arrives, without buffering it whole."""
    body = request.body.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(body.__anext__(), UPLOAD_IDLE_TIMEOUT)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise MatrixError(408, "M_UNKNOWN", "Upload stalled") from None
        yield chunk


def _upload_args() -> dict[str, Any]:
    return {"content_type": request.headers.get("Content-Type"),
            "filename": request.args.get("filename"),
            "content_length": request.content_length}


def _download_args(remote_ok: bool) -> dict[str, Any]:
    """Query parameters of a download; `remote_ok` False never fetches from other servers."""
    allow_remote = query_bool("allow_remote", True)
    return {"allow_remote": allow_remote and remote_ok,
            "timeout_ms": query_int("timeout_ms", None, lo=0, hi=2**62)}


def _thumbnail_args(remote_ok: bool) -> dict[str, Any]:
    width = query_int("width", None, lo=1, hi=MAX_THUMBNAIL_PARAM)
    height = query_int("height", None, lo=1, hi=MAX_THUMBNAIL_PARAM)
    if width is None or height is None:
        raise missing_param("width and height are required")
    return {"width": width, "height": height, "method": request.args.get("method", "scale"),
            **_download_args(remote_ok)}


# --- response helpers ------------------------------------------------------------------------

class StoredFileBody(ResponseBody):
    """A stored file's plaintext (the store decrypts), with a range for conditional requests.
    Like Quart's FileBody, but reading through MediaStore.open: files are sealed at rest."""

    def __init__(self, store: MediaStore, sha256: str, size: int) -> None:
        self.store = store
        self.sha256 = sha256
        self.size = size
        self.begin = 0
        self.end = size
        self._fh: Any = None
        self._pos = 0

    async def __aenter__(self) -> "StoredFileBody":
        self._fh = await asyncio.to_thread(self.store.open, self.sha256)
        if self.begin:
            await asyncio.to_thread(self._fh.seek, self.begin)
        self._pos = self.begin
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._fh is not None:
            await asyncio.to_thread(self._fh.close)
            self._fh = None

    def __aiter__(self) -> "StoredFileBody":
        return self

    async def __anext__(self) -> bytes:
        if self._pos >= self.end:
            raise StopAsyncIteration()
        chunk = await asyncio.to_thread(self._fh.read, min(FILE_BUFFER, self.end - self._pos))
        if not chunk:
            raise StopAsyncIteration()
        self._pos += len(chunk)
        return chunk

    async def make_conditional(self, begin: int, end: int | None) -> int:
        if begin < 0:  # a suffix range, "bytes=-N": the last N bytes
            if -begin > self.size:
                raise RequestedRangeNotSatisfiable()
            begin = self.size + begin
        self.begin = begin
        self.end = self.size if end is None else min(self.size, end)
        if self.begin >= self.end:
            raise RequestedRangeNotSatisfiable()
        return self.size


async def _file_response(sha256: str, size: int, headers: dict[str, str]) -> Response:
    await _require_file(sha256)
    body = StoredFileBody(hs().media.store, sha256, size)
    resp = Response(body, status=200, headers=headers)
    resp.timeout = DOWNLOAD_TIMEOUT
    resp.content_length = size
    resp.set_etag(sha256)
    # Ranges (video seeking) and If-None-Match revalidation.
    return await resp.make_conditional(request, accept_ranges=True, complete_length=size)


async def _media_response(media: MediaFile, file_name: str | None, public: bool) -> Response:
    name = validate_filename(file_name) if file_name is not None else media.upload_name
    return await _file_response(media.sha256, media.size,
                                media_headers(media.content_type, name, public=public))


async def _thumbnail_response(thumb: ThumbnailFile, public: bool) -> Response:
    headers = media_headers(thumb.content_type, thumb.filename, public=public)
    if thumb.data is not None:
        resp = Response(thumb.data, status=200, headers=headers)
        resp.set_etag(thumb.sha256)
        return await resp.make_conditional(request)
    return await _file_response(thumb.sha256, thumb.size, headers)


async def _require_file(sha256: str) -> None:
    if not await hs().media.store.exists(sha256):
        raise not_found("Media content is missing")


def _multipart(content_type: str, disposition: str, size: int,
               chunks: AsyncIterator[bytes]) -> Response:
    """multipart/mixed: an empty JSON metadata part, then the bytes (federation media)."""
    boundary = secrets.token_hex(16)
    head = (f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n"
            f"--{boundary}\r\nContent-Type: {content_type}\r\n"
            f"Content-Disposition: {disposition}\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        async for chunk in chunks:
            yield chunk
        yield tail

    resp = Response(body(), status=200,
                    content_type=f"multipart/mixed; boundary={boundary}",
                    headers={"X-Content-Type-Options": "nosniff"})
    resp.content_length = len(head) + size + len(tail)
    resp.timeout = DOWNLOAD_TIMEOUT
    return resp


# --- /_matrix/media/v3 and r0 ----------------------------------------------------------------

@legacy.route("/upload", methods=["POST"])
@authed
async def upload(requester: Requester):
    return respond(await hs().media.upload(requester, _body_chunks(), **_upload_args()))


@legacy.route("/upload/<server_name>/<media_id>", methods=["PUT"])
@authed
async def upload_to(requester: Requester, server_name: str, media_id: str):
    await hs().media.upload_to(requester, server_name, media_id, _body_chunks(),
                               **_upload_args())
    return respond({})


@legacy.route("/download/<server_name>/<media_id>", methods=["GET"])
@legacy.route("/download/<server_name>/<media_id>/<path:file_name>", methods=["GET"])
async def legacy_download(server_name: str, media_id: str, file_name: str | None = None):
    media = await hs().media.get_media(server_name, media_id,
                                       **_download_args(remote_ok=False))
    return await _media_response(media, file_name, public=True)


@legacy.route("/thumbnail/<server_name>/<media_id>", methods=["GET"])
async def legacy_thumbnail(server_name: str, media_id: str):
    thumb = await hs().media.get_thumbnail(server_name, media_id,
                                           **_thumbnail_args(remote_ok=False))
    return await _thumbnail_response(thumb, public=True)


@legacy.route("/config", methods=["GET"])
@authed
async def legacy_config(requester: Requester):
    return respond(hs().media.config())


# --- /_matrix/media/v1/create ----------------------------------------------------------------

@create_bp.route("/create", methods=["POST"])
@authed
async def create(requester: Requester):
    return respond(await hs().media.create(requester))


# --- /_matrix/client/v1/media (authenticated) ------------------------------------------------

@client_bp.route("/download/<server_name>/<media_id>", methods=["GET"])
@client_bp.route("/download/<server_name>/<media_id>/<path:file_name>", methods=["GET"])
@authed
async def download(requester: Requester, server_name: str, media_id: str,
                   file_name: str | None = None):
    media = await hs().media.get_media(server_name, media_id,
                                       **_download_args(remote_ok=True))
    return await _media_response(media, file_name, public=False)


@client_bp.route("/thumbnail/<server_name>/<media_id>", methods=["GET"])
@authed
async def thumbnail(requester: Requester, server_name: str, media_id: str):
    thumb = await hs().media.get_thumbnail(server_name, media_id,
                                           **_thumbnail_args(remote_ok=True))
    return await _thumbnail_response(thumb, public=False)


@client_bp.route("/config", methods=["GET"])
@authed
async def config(requester: Requester):
    return respond(hs().media.config())


# --- /_matrix/federation/v1/media ------------------------------------------------------------

@federation_bp.route("/download/<media_id>", methods=["GET"])
@federation_authed
async def federation_download(origin: str, media_id: str):
    media = await hs().media.get_local_media(media_id, query_int("timeout_ms", None, lo=0,
                                                                 hi=2**62))
    await _require_file(media.sha256)
    headers = media_headers(media.content_type, media.upload_name, public=False)
    return _multipart(media.content_type, headers["Content-Disposition"], media.size,
                      hs().media.store.iter_file(media.sha256))


@federation_bp.route("/thumbnail/<media_id>", methods=["GET"])
@federation_authed
async def federation_thumbnail(origin: str, media_id: str):
    thumb = await hs().media.get_thumbnail(hs().server_name, media_id,
                                           **_thumbnail_args(remote_ok=False))
    if thumb.data is not None:
        chunks = _one(thumb.data)
    else:
        await _require_file(thumb.sha256)
        chunks = hs().media.store.iter_file(thumb.sha256)
    return _multipart(thumb.content_type, content_disposition("inline", thumb.filename),
                      thumb.size, chunks)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


__all__ = ["register"]
