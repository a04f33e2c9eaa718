"""The media repository: uploads, downloads, thumbnails and remote media over federation.

Rules kept here (the routes in api/media.py only translate HTTP):

* Bytes are stored content-addressed (storage/media.py); an mxc:// URI is a random media ID
  (192 bits, URL-safe) mapped to a file by a `media` row.
* Uploads stream to disk under the configured size limit (413 M_TOO_LARGE, nothing kept).
* The declared Content-Type is kept when it is syntactically a MIME type, else
  application/octet-stream. Serving never trusts it: only types a browser shows passively are
  served `inline` (INLINE_CONTENT_TYPES); everything else, HTML and SVG included, is an
  `attachment`, and every response carries nosniff and a sandboxing Content-Security-Policy, so
  uploaded content can never run as a page of this server's origin.
* Thumbnails are made with Pillow in worker threads (EXIF orientation applied, metadata
  dropped, PNG or JPEG out) and cached per requested box and method.
* Remote media is fetched once from its origin (`/_matrix/federation/v1/media/download`,
  falling back to the legacy unauthenticated `/_matrix/media/v3/download`) and cached here.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import ipaddress
import logging
import math
import os
import re
import secrets
import time
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from yarl import URL

from homeserver.errors import MatrixError, forbidden, invalid_param, not_found, too_large
from homeserver.storage import media as media_store
from homeserver.handlers.federation.transport import quote_path, server_allowed
from homeserver.storage.media import MediaStore, TooLarge
from homeserver.types import is_valid_server_name, now_ms

if TYPE_CHECKING:
    from homeserver.handlers.auth import Requester
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MEDIA_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")
MAX_FILENAME = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# How long a client may wait for media that is still being uploaded (timeout_ms is capped).
DEFAULT_WAIT_MS = 20_000
MAX_WAIT_MS = 60_000
# IDs made by POST /media/v1/create: how long they accept an upload, and how many a user may
# have pending at once.
UNUSED_EXPIRY_MS = 24 * 3600 * 1000
MAX_PENDING_PER_USER = 50

# Thumbnails: requested boxes are clamped to this, at most this many sizes are cached per
# media (further sizes are generated on demand without being kept), and images with more pixels
# than this are not decoded at all (413 M_TOO_LARGE). With at most 4 decodes at a time, that
# bounds Pillow's memory to roughly 4 x 36M pixels x 4 bytes x 2 (source and converted copy).
MAX_THUMBNAIL_SIDE = 1600
MAX_THUMBNAILS_PER_MEDIA = 32
MAX_THUMBNAIL_SOURCE_PIXELS = 36_000_000  # an 8K screenshot (7680x4320) fits
# JPEG sources decode at a reduced scale (draft mode), so bigger photos are still cheap.
MAX_THUMBNAIL_JPEG_PIXELS = 160_000_000
THUMBNAIL_METHODS = ("scale", "crop")
# Pillow decoders we let near untrusted bytes: the common web formats only.
THUMBNAIL_SOURCE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")

# Remote fetches: whole-download and idle-read limits.
REMOTE_TOTAL_TIMEOUT = 300
REMOTE_READ_TIMEOUT = 60
MAX_REMOTE_JSON_PART = 64 * 1024

# --- serving policy ------------------------------------------------------------------------

# Types a browser displays without running anything: served `inline`. The list is the one the
# spec gives for serving inline content (as Synapse). Deliberately absent: text/html,
# image/svg+xml, application/xhtml+xml, text/xml, application/xml, JavaScript, PDF.
INLINE_CONTENT_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave",
    "audio/wav", "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})

# Synapse's media CSP: even content a browser does render is sandboxed (no scripts, no
# same-origin access, no forms).
MEDIA_CSP = ("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
             "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';")
# Media never changes once stored.
CACHE_PUBLIC = "public, max-age=31536000, immutable"
# Responses to authenticated requests: a shared cache must not hand them to anyone else.
CACHE_PRIVATE = "private, max-age=31536000, immutable"

# RFC 7230/7231: token = 1*tchar; media-type = type "/" subtype *( OWS ";" OWS parameter ).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*"'
_MIME_RE = re.compile(
    rf"^({_TOKEN})/({_TOKEN})((?:[ \t]*;[ \t]*{_TOKEN}=(?:{_TOKEN}|{_QUOTED}))*)[ \t]*$")
MAX_CONTENT_TYPE = 255


def normalize_content_type(value: str | None) -> str:
    """The Content-Type to store: the declared one when it is a well-formed MIME type (type and
    subtype lowercased, parameters kept), otherwise application/octet-stream."""
    if not value:
        return DEFAULT_CONTENT_TYPE
    value = value.strip()
    m = _MIME_RE.match(value)
    if m is None or len(value) > MAX_CONTENT_TYPE:
        return DEFAULT_CONTENT_TYPE
    return f"{m.group(1).lower()}/{m.group(2).lower()}{m.group(3)}"


def content_type_essence(content_type: str) -> str:
    """'Text/HTML; charset=utf-8' -> 'text/html'."""
    return content_type.split(";", 1)[0].strip().lower()


def is_inline_safe(content_type: str) -> bool:
    return content_type_essence(content_type) in INLINE_CONTENT_TYPES


def validate_filename(name: str | None) -> str | None:
    """An upload's (or a download path's) file name: None when absent or empty; 400
    M_INVALID_PARAM when too long or containing control characters."""
    if name is None or name == "":
        return None
    if len(name) > MAX_FILENAME:
        raise invalid_param(f"filename is too long (at most {MAX_FILENAME} characters)")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise invalid_param("filename must not contain control characters")
    return name


def content_disposition(disposition: str, filename: str | None) -> str:
    """`inline` or `attachment`, with the file name per RFC 6266: a quoted ASCII `filename`
    and, when the name is not plain printable ASCII, the exact name as RFC 5987 `filename*`."""
    if not filename:
        return disposition
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    out = f'{disposition}; filename="{fallback}"'
    if fallback != filename:
        out += "; filename*=utf-8''" + quote(filename, safe="!#$&+-.^_`|~")
    return out


def media_headers(content_type: str, filename: str | None, *, public: bool) -> dict[str, str]:
    """Response headers for stored media: type, disposition and the safety headers."""
    inline = is_inline_safe(content_type)
    return {
        "Content-Type": content_type,
        "Content-Disposition": content_disposition("inline" if inline else "attachment",
                                                   filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": MEDIA_CSP,
        "Cross-Origin-Resource-Policy": "cross-origin",
        "Cache-Control": CACHE_PUBLIC if public else CACHE_PRIVATE,
    }


# --- thumbnails (pure; Pillow work runs in worker threads) ---------------------------------

class CannotThumbnail(Exception):
    """The bytes are not an image Pillow may decode here."""


class SourceTooLarge(Exception):
    """The image has too many pixels to decode for a thumbnail."""


def thumbnail_geometry(src_w: int, src_h: int, want_w: int, want_h: int,
                       method: str) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """(source box to read, output size). Never upscales.

    scale: the whole image, fitted inside want_w x want_h (aspect kept).
    crop: the largest centred region with the requested aspect ratio, resized to exactly
    want_w x want_h (smaller, same aspect, when the source is smaller than that).
    """
    if method == "crop":
        aspect = want_w / want_h
        if src_w / src_h > aspect:
            ch, cw = src_h, max(1, min(src_w, round(src_h * aspect)))
        else:
            cw, ch = src_w, max(1, min(src_h, round(src_w / aspect)))
        left, top = (src_w - cw) // 2, (src_h - ch) // 2
        box = (left, top, left + cw, top + ch)
        if cw >= want_w and ch >= want_h:
            return box, (want_w, want_h)
        return box, (cw, ch)
    ratio = min(want_w / src_w, want_h / src_h)
    box = (0, 0, src_w, src_h)
    if ratio >= 1:
        return box, (src_w, src_h)
    return box, (max(1, round(src_w * ratio)), max(1, round(src_h * ratio)))


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    content_type: str
    width: int
    height: int


def make_thumbnail(path: Any, want_w: int, want_h: int, method: str) -> Thumbnail:
    """Blocking: decode the image at `path` and return a thumbnail. Runs in a worker thread.

    CannotThumbnail for anything that is not a decodable PNG/JPEG/GIF/WebP, SourceTooLarge
    for images over the pixel limit.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path, formats=THUMBNAIL_SOURCE_FORMATS) as im:
            raw_w, raw_h = im.size
            fmt = im.format
            limit = MAX_THUMBNAIL_JPEG_PIXELS if fmt == "JPEG" else MAX_THUMBNAIL_SOURCE_PIXELS
            if raw_w < 1 or raw_h < 1:
                raise CannotThumbnail("empty image")
            if raw_w * raw_h > limit:
                raise SourceTooLarge(f"{raw_w}x{raw_h}")
            orientation = im.getexif().get(0x0112, 1)
            swapped = orientation in (5, 6, 7, 8)
            ow, oh = (raw_h, raw_w) if swapped else (raw_w, raw_h)
            box, (tw, th) = thumbnail_geometry(ow, oh, want_w, want_h, method)
            if fmt == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the output.
                factor = max(tw / (box[2] - box[0]), th / (box[3] - box[1]))
                need = (max(1, math.ceil(raw_w * factor)), max(1, math.ceil(raw_h * factor)))
                im.draft(None, need)
            im.load()
            # exif_transpose copies even when there is nothing to do: only call it when needed.
            img = ImageOps.exif_transpose(im) if orientation in range(2, 9) else im
            has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
                img.mode == "P" and "transparency" in img.info)
            out_jpeg = fmt == "JPEG"
            target_mode = "RGB" if out_jpeg or not has_alpha else "RGBA"
            if img.mode != target_mode:
                img = img.convert(target_mode)
            # The box was computed on the full-size oriented image; draft may have shrunk it.
            fx, fy = img.width / ow, img.height / oh
            scaled_box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
            out = img.resize((tw, th), Image.Resampling.LANCZOS, box=scaled_box,
                             reducing_gap=3.0)
            buf = io.BytesIO()
            if out_jpeg:
                out.save(buf, "JPEG", quality=80, optimize=True)
                ctype = "image/jpeg"
            else:
                out.save(buf, "PNG", compress_level=6)
                ctype = "image/png"
            return Thumbnail(buf.getvalue(), ctype, tw, th)
    except (CannotThumbnail, SourceTooLarge):
        raise
    except Image.DecompressionBombError as e:
        raise SourceTooLarge(str(e)) from None
    except Exception as e:  # any decoder failure on untrusted bytes means: not thumbnailable
        raise CannotThumbnail(f"{type(e).__name__}: {e}") from None


def can_thumbnail(content_type: str) -> bool:
    essence = content_type_essence(content_type)
    return essence.startswith("image/") and essence != "image/svg+xml"


# --- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MediaFile:
    """Stored media to serve: where its bytes are and what to say about them."""

    server_name: str
    media_id: str
    sha256: str
    content_type: str
    size: int
    upload_name: str | None


@dataclass(frozen=True)
class ThumbnailFile:
    sha256: str
    content_type: str
    size: int
    # Set when the thumbnail was not kept on disk (the media's thumbnail cache is full).
    data: bytes | None = None

    @property
    def filename(self) -> str:
        return "thumbnail.jpg" if self.content_type == "image/jpeg" else "thumbnail.png"


def mxc_uri(server_name: str, media_id: str) -> str:
    return f"mxc://{server_name}/{media_id}"


def new_media_id() -> str:
    # 192 random bits, URL-safe base64: [A-Za-z0-9_-]{32}.
    return secrets.token_urlsafe(24)


def check_media_path(server_name: str, media_id: str) -> None:
    if not is_valid_server_name(server_name):
        raise invalid_param("serverName is not a valid server name")
    if not MEDIA_ID_RE.match(media_id):
        raise not_found("Unknown media")


def _row_to_file(row: dict[str, Any]) -> MediaFile:
    return MediaFile(server_name=row["server_name"], media_id=row["media_id"],
                     sha256=row["sha256"], content_type=row["content_type"] or DEFAULT_CONTENT_TYPE,
                     size=int(row["size"] or 0), upload_name=row["upload_name"])


class MediaHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        self.store = MediaStore(hs.config.data_dir / "media")
        # Set (and replaced) whenever an ID made by /create gets its content: wakes the
        # downloads waiting for one, which then look again.
        self._upload_signal = asyncio.Event()
        # One generation / remote fetch per key at a time; others await the same task.
        self._inflight: dict[tuple, asyncio.Task] = {}
        self._pillow = asyncio.Semaphore(max(1, min(4, os.cpu_count() or 1)))
        self._last_cleanup = 0.0

    @property
    def max_upload_bytes(self) -> int:
        return self.hs.config.media.max_upload_bytes

    async def start(self) -> None:
        await self.store.prepare()
        token = self.hs.db.activate()
        try:
            await self._cleanup_expired(force=True)
        finally:
            self.hs.db.deactivate(token)

    async def stop(self) -> None:
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()

    def config(self) -> dict[str, Any]:
        return {"m.upload.size": self.max_upload_bytes}

    # --- uploads ---------------------------------------------------------------------------

    def _check_declared_length(self, content_length: int | None) -> None:
        if content_length is not None and content_length > self.max_upload_bytes:
            raise self._too_large()

    def _too_large(self) -> MatrixError:
        return too_large(f"Cannot upload files larger than {self.max_upload_bytes} bytes")

    async def _store_stream(self, chunks: AsyncIterable[bytes]) -> tuple[str, int]:
        try:
            return await self.store.write_stream(chunks, self.max_upload_bytes)
        except TooLarge:
            raise self._too_large() from None

    async def upload(self, requester: Requester, chunks: AsyncIterable[bytes], *,
                     content_type: str | None, filename: str | None,
                     content_length: int | None = None) -> dict[str, str]:
        """POST /upload: store the body; {"content_uri": "mxc://…"}."""
        filename = validate_filename(filename)
        self._check_declared_length(content_length)
        ctype = normalize_content_type(content_type)
        sha256, size = await self._store_stream(chunks)
        server_name = self.hs.server_name
        for _ in range(5):
            media_id = new_media_id()
            if await media_store.insert_media(
                    server_name, media_id, sha256=sha256, content_type=ctype, size=size,
                    upload_name=filename, user_id=requester.user_id, created_ts=now_ms()):
                return {"content_uri": mxc_uri(server_name, media_id)}
        raise RuntimeError("could not allocate a unique media ID")

    async def create(self, requester: Requester) -> dict[str, Any]:
        """POST /media/v1/create: reserve an mxc:// URI for a later upload."""
        now = now_ms()
        await self._cleanup_expired()
        if await media_store.count_pending(requester.user_id, now) >= MAX_PENDING_PER_USER:
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "Too many pending media uploads",
                              retry_after_ms=60_000)
        expires = now + UNUSED_EXPIRY_MS
        server_name = self.hs.server_name
        for _ in range(5):
            media_id = new_media_id()
            if await media_store.insert_media(
                    server_name, media_id, sha256=None, content_type=None, size=None,
                    upload_name=None, user_id=requester.user_id, created_ts=now,
                    unused_expires_ts=expires):
                return {"content_uri": mxc_uri(server_name, media_id),
                        "unused_expires_at": expires}
        raise RuntimeError("could not allocate a unique media ID")

    async def upload_to(self, requester: Requester, server_name: str, media_id: str,
                        chunks: AsyncIterable[bytes], *, content_type: str | None,
                        filename: str | None, content_length: int | None = None) -> None:
        """PUT /upload/{serverName}/{mediaId}: the content for an ID made by /create."""
        check_media_path(server_name, media_id)
        filename = validate_filename(filename)
        if server_name != self.hs.server_name:
            raise not_found("Unknown media ID (not created on this server)")
        row = await media_store.get_media(server_name, media_id)
        if row is None:
            raise not_found("Unknown media ID")
        if row["user_id"] != requester.user_id:
            raise forbidden("This media ID was created by another user")
        if row["sha256"] is not None:
            raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
        if row["unused_expires_ts"] is not None and row["unused_expires_ts"] <= now_ms():
            raise not_found("This media ID has expired")
        self._check_declared_length(content_length)
        ctype = normalize_content_type(content_type)
        sha256, size = await self._store_stream(chunks)
        if not await media_store.complete_pending(server_name, media_id, sha256=sha256,
                                                  content_type=ctype, size=size,
                                                  upload_name=filename):
            raise MatrixError(409, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
        signal, self._upload_signal = self._upload_signal, asyncio.Event()
        signal.set()

    async def _cleanup_expired(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_cleanup < 3600:
            return
        self._last_cleanup = time.monotonic()
        await media_store.delete_expired_pending(now_ms())

    # --- downloads -------------------------------------------------------------------------

    async def get_media(self, server_name: str, media_id: str, *, allow_remote: bool = True,
                        timeout_ms: int | None = None) -> MediaFile:
        """The stored media behind an mxc:// URI, fetching (and caching) remote media when
        allowed. 404 M_NOT_FOUND when unknown, 504 M_NOT_YET_UPLOADED when still pending."""
        check_media_path(server_name, media_id)
        wait_ms = min(DEFAULT_WAIT_MS if timeout_ms is None else timeout_ms, MAX_WAIT_MS)
        if server_name == self.hs.server_name:
            return await self._local(server_name, media_id, wait_ms)
        row = await media_store.get_media(server_name, media_id)
        if row is not None and row["sha256"] is not None:
            return _row_to_file(row)
        if not allow_remote:
            raise not_found("Remote media not cached here, and allow_remote is false")
        return await self._once(("remote", server_name, media_id),
                                lambda: self._fetch_remote(server_name, media_id, wait_ms))

    async def get_local_media(self, media_id: str, timeout_ms: int | None = None) -> MediaFile:
        """Media uploaded to this server (the federation endpoints serve nothing else)."""
        return await self.get_media(self.hs.server_name, media_id, allow_remote=False,
                                    timeout_ms=timeout_ms)

    async def _local(self, server_name: str, media_id: str, wait_ms: int) -> MediaFile:
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            row = await media_store.get_media(server_name, media_id)
            if row is None:
                raise not_found("Unknown media")
            if row["sha256"] is not None:
                return _row_to_file(row)
            if row["unused_expires_ts"] is not None and row["unused_expires_ts"] <= now_ms():
                raise not_found("Unknown media")
            left = deadline - time.monotonic()
            if left <= 0:
                raise MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
            try:
                # Re-check at least every second: another worker may have done the upload.
                await asyncio.wait_for(self._upload_signal.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass

    async def _once(self, key: tuple, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run `make()` once per key at a time; concurrent callers share its result."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(make())
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    # --- thumbnails ------------------------------------------------------------------------

    async def get_thumbnail(self, server_name: str, media_id: str, width: int, height: int,
                            method: str, *, allow_remote: bool = True,
                            timeout_ms: int | None = None) -> ThumbnailFile:
        if method not in THUMBNAIL_METHODS:
            raise invalid_param("method must be scale or crop")
        if width < 1 or height < 1:
            raise invalid_param("width and height must be positive")
        width, height = min(width, MAX_THUMBNAIL_SIDE), min(height, MAX_THUMBNAIL_SIDE)
        media = await self.get_media(server_name, media_id, allow_remote=allow_remote,
                                     timeout_ms=timeout_ms)
        if not can_thumbnail(media.content_type):
            raise MatrixError(400, "M_UNKNOWN",
                              "Cannot generate thumbnails for the requested content")
        cached = await media_store.get_thumbnail(media.server_name, media.media_id, width,
                                                 height, method)
        if cached is not None and await self.store.exists(cached["sha256"]):
            return ThumbnailFile(cached["sha256"], cached["content_type"], int(cached["size"]))
        key = ("thumb", media.server_name, media.media_id, width, height, method)
        return await self._once(key, lambda: self._generate(media, width, height, method))

    async def _generate(self, media: MediaFile, width: int, height: int,
                        method: str) -> ThumbnailFile:
        path = self.store.path_for(media.sha256)
        async with self._pillow:
            try:
                thumb = await asyncio.to_thread(make_thumbnail, path, width, height, method)
            except SourceTooLarge:
                raise MatrixError(413, "M_TOO_LARGE", "Content is too large to thumbnail") \
                    from None
            except CannotThumbnail as e:
                log.info("cannot thumbnail %s: %s", mxc_uri(media.server_name, media.media_id),
                         e)
                raise MatrixError(400, "M_UNKNOWN",
                                  "Cannot generate thumbnails for the requested content") \
                    from None
            except FileNotFoundError:
                log.warning("media file missing for %s", mxc_uri(media.server_name,
                                                                 media.media_id))
                raise not_found("Media content is missing") from None
        size = len(thumb.data)
        if await media_store.count_thumbnails(media.server_name,
                                              media.media_id) >= MAX_THUMBNAILS_PER_MEDIA:
            # Enough sizes of this one kept: serve this one from memory, store nothing.
            return ThumbnailFile(hashlib.sha256(thumb.data).hexdigest(), thumb.content_type,
                                 size, data=thumb.data)
        sha256 = await self.store.write_bytes(thumb.data)
        await media_store.insert_thumbnail(
            media.server_name, media.media_id, width, height, method, sha256=sha256,
            content_type=thumb.content_type, size=size, created_ts=now_ms())
        return ThumbnailFile(sha256, thumb.content_type, size)

    # --- remote media ----------------------------------------------------------------------

    async def _fetch_remote(self, server_name: str, media_id: str, wait_ms: int) -> MediaFile:
        """Download remote media from its origin server, store it, and record it."""
        fed = self.hs.config.federation
        if not fed.enabled or not server_allowed(fed, server_name):
            raise not_found("Remote media is not available: this server does not federate "
                            "with its origin")
        client = self.hs.federation_client
        try:
            base = await client.resolve(server_name)
        except ValueError:
            raise not_found("Remote media: the server name cannot be resolved") from None
        try:
            got = await self._fetch_federation(client, base, server_name, media_id, wait_ms)
            if got is None:  # an older server: no federation media endpoint
                got = await self._fetch_legacy(client, base, server_name, media_id, wait_ms)
        except TooLarge:
            raise MatrixError(502, "M_TOO_LARGE", "Remote content is too large to serve") \
                from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            log.info("fetching %s failed: %s: %s", mxc_uri(server_name, media_id),
                     type(e).__name__, e)
            raise MatrixError(502, "M_UNKNOWN", "Could not fetch the remote media") from None
        sha256, size, ctype, filename = got
        await media_store.insert_media(
            server_name, media_id, sha256=sha256, content_type=ctype, size=size,
            upload_name=filename, user_id=None, created_ts=now_ms())
        row = await media_store.get_media(server_name, media_id)
        if row is None or row["sha256"] is None:
            raise RuntimeError("remote media row missing right after insert")
        return _row_to_file(row)

    @staticmethod
    def _remote_timeout(wait_ms: int) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=REMOTE_TOTAL_TIMEOUT + wait_ms / 1000,
                                     sock_read=REMOTE_READ_TIMEOUT + wait_ms / 1000)

    async def _fetch_federation(self, client: Any, base: str, server_name: str, media_id: str,
                                wait_ms: int) -> RemoteContent | None:
        """GET /_matrix/federation/v1/media/download (signed, multipart/mixed). None when the
        remote server does not know the endpoint."""
        path = quote_path("/_matrix/federation/v1/media/download/{}", media_id)
        target = f"{path}?timeout_ms={wait_ms}"
        headers = {"Authorization": client.sign_request(server_name, "GET", target)}
        # The federation client's pooled session (TLS settings as configured); it has no
        # public streaming request, and media bodies must not be buffered as JSON.
        session = client._get_session()
        async with session.get(URL(base + target, encoded=True), headers=headers,
                               allow_redirects=False,
                               timeout=self._remote_timeout(wait_ms)) as resp:
            if resp.status != 200:
                errcode = await _remote_errcode(resp)
                if errcode == "M_UNRECOGNIZED" or (
                        resp.status in (404, 405, 501) and errcode is None):
                    return None
                raise _remote_failure(resp.status, errcode)
            if not resp.headers.get("Content-Type", "").lower().startswith("multipart/"):
                raise ValueError("federation media response is not multipart")
            reader = aiohttp.MultipartReader(resp.headers, resp.content)
            meta = await reader.next()
            if not isinstance(meta, aiohttp.BodyPartReader):
                raise ValueError("federation media response lacks its metadata part")
            await _drain(meta, MAX_REMOTE_JSON_PART)
            part = await reader.next()
            if not isinstance(part, aiohttp.BodyPartReader):
                raise ValueError("federation media response lacks its content part")
            location = part.headers.get("Location")
            if location:
                return await self._fetch_location(location, wait_ms)
            sha256, size = await self._store_remote(_part_chunks(part))
            return (sha256, size, normalize_content_type(part.headers.get("Content-Type")),
                    _disposition_filename(part.headers.get("Content-Disposition")))

    async def _fetch_legacy(self, client: Any, base: str, server_name: str, media_id: str,
                            wait_ms: int) -> RemoteContent:
        """GET /_matrix/media/v3/download (unauthenticated), for servers without the
        federation media endpoint."""
        target = quote_path("/_matrix/media/v3/download/{}/{}", server_name, media_id)
        target += f"?allow_remote=false&timeout_ms={wait_ms}"
        async with client._get_session().get(URL(base + target, encoded=True),
                                              allow_redirects=False,
                                              timeout=self._remote_timeout(wait_ms)) as resp:
            if resp.status != 200:
                raise _remote_failure(resp.status, await _remote_errcode(resp))
            return await self._store_response(resp)

    async def _fetch_location(self, location: str, wait_ms: int) -> RemoteContent:
        """Follow the `Location` a remote server may give instead of the bytes. Only http(s);
        hosts that are internal IP addresses are refused (unless federating over plain HTTP
        on loopback for tests)."""
        url = URL(location)
        plain = self.hs.config.federation.plain_http
        if url.scheme not in (("https", "http") if plain else ("https",)) or not url.host:
            raise ValueError(f"refusing to fetch media from {location!r}")
        try:
            ip = ipaddress.ip_address(url.host.strip("[]"))
        except ValueError:
            ip = None
        if ip is not None and not ip.is_global and not plain:
            raise ValueError(f"refusing to fetch media from internal address {url.host}")
        session = self.hs.federation_client._get_session()
        async with session.get(url, allow_redirects=False,
                               timeout=self._remote_timeout(wait_ms)) as resp:
            if resp.status != 200:
                raise _remote_failure(resp.status, None)
            return await self._store_response(resp)

    async def _store_response(self, resp: aiohttp.ClientResponse) -> RemoteContent:
        sha256, size = await self._store_remote(resp.content.iter_chunked(64 * 1024))
        return (sha256, size, normalize_content_type(resp.headers.get("Content-Type")),
                _disposition_filename(resp.headers.get("Content-Disposition")))

    async def _store_remote(self, chunks: AsyncIterable[bytes]) -> tuple[str, int]:
        return await self.store.write_stream(chunks, self.max_upload_bytes)


# (sha256, size, content type, file name)
RemoteContent = tuple[str, int, str, "str | None"]


async def _part_chunks(part: aiohttp.BodyPartReader) -> AsyncIterator[bytes]:
    while True:
        chunk = await part.read_chunk(64 * 1024)
        if not chunk:
            return
        yield chunk


async def _drain(part: aiohttp.BodyPartReader, limit: int) -> None:
    total = 0
    async for chunk in _part_chunks(part):
        total += len(chunk)
        if total > limit:
            raise ValueError("federation media metadata part too large")


async def _remote_errcode(resp: aiohttp.ClientResponse) -> str | None:
    """The errcode of a remote error response (None if it has none, or is not JSON)."""
    try:
        # Whole body, bounded (StreamReader.read(n) would return only what has arrived).
        raw = bytearray()
        async for chunk in resp.content.iter_chunked(16 * 1024):
            raw += chunk
            if len(raw) > MAX_REMOTE_JSON_PART:
                return None
        body = orjson.loads(raw)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    code = body.get("errcode") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _remote_failure(status: int, errcode: str | None) -> MatrixError:
    """What the client sees when the origin server answered with an error."""
    if status == 404:
        return not_found("Remote media not found")
    if errcode == "M_NOT_YET_UPLOADED":
        return MatrixError(504, "M_NOT_YET_UPLOADED", "Content has not yet been uploaded")
    if errcode == "M_TOO_LARGE":
        return MatrixError(502, "M_TOO_LARGE", "Remote content is too large to serve")
    return MatrixError(502, "M_UNKNOWN", f"The remote server answered {status}")


def _disposition_filename(header: str | None) -> str | None:
    if not header:
        return None
    try:
        _kind, params = parse_content_disposition(header)
        name = content_disposition_filename(params, "filename")
        return validate_filename(name) if name else None
    except (MatrixError, ValueError):
        return None


__all__ = ["MediaFile", "MediaHandler", "ThumbnailFile", "content_disposition",
           "is_inline_safe", "make_thumbnail", "media_headers", "normalize_content_type",
           "thumbnail_geometry"]
