"""The media repository: uploads, downloads and thumbnails, and remote media via
media_remote.py. Rules kept here and beside it (the routes in api/media.py only translate
HTTP):

* Bytes are stored content-addressed (storage/media.py), sealed with the server's at-rest
  keys; an mxc:// URI is a random media ID (192 bits, URL-safe) mapped to a file by a `media`
  row.
* Uploads stream to disk under the configured size limit (413 M_TOO_LARGE, nothing kept).
* What is kept of the declared Content-Type and how media is served: media_policy.py.
* Thumbnails are made with Pillow in worker threads (media_thumbnails.py) and cached per
  requested box and method.
* Remote media is fetched once from its origin (media_remote.py) and cached here.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterable, Awaitable, Callable

from homeserver.errors import MatrixError, forbidden, invalid_param, not_found, too_large
# Re-exported: the routes and tests know these names from here.
from homeserver.handlers.media_policy import (DEFAULT_CONTENT_TYPE,  # noqa: F401
                                              content_disposition, is_inline_safe,
                                              media_headers, normalize_content_type,
                                              validate_filename)
from homeserver.handlers.media_remote import RemoteMediaFetcher
from homeserver.handlers.media_thumbnails import (CannotThumbnail, SourceTooLarge,  # noqa: F401
                                                  Thumbnail, can_thumbnail, make_thumbnail,
                                                  thumbnail_geometry)
from homeserver.storage import media as media_store
from homeserver.storage.media import MediaStore, TooLarge
from homeserver.types import is_valid_server_name, now_ms

if TYPE_CHECKING:
    from homeserver.handlers.auth import Requester
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

MEDIA_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,255}$")

# How long a client may wait for media that is still being uploaded (timeout_ms is capped).
DEFAULT_WAIT_MS = 20_000
MAX_WAIT_MS = 60_000
# IDs made by POST /media/v1/create: how long they accept an upload, and how many a user may
# have pending at once.
UNUSED_EXPIRY_MS = 24 * 3600 * 1000
MAX_PENDING_PER_USER = 50

# Thumbnails: requested boxes are clamped to this, and at most this many sizes are cached per
# media (further sizes are generated on demand without being kept).
MAX_THUMBNAIL_SIDE = 1600
MAX_THUMBNAILS_PER_MEDIA = 32
THUMBNAIL_METHODS = ("scale", "crop")


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
                     sha256=row["sha256"],
                     content_type=row["content_type"] or DEFAULT_CONTENT_TYPE,
                     size=int(row["size"] or 0), upload_name=row["upload_name"])


class MediaHandler:
    def __init__(self, hs: HomeServer) -> None:
        self.hs = hs
        # Files are sealed with the keys the server loads at start (hs.db.at_rest).
        self.store = MediaStore(hs.config.data_dir / "media", lambda: hs.db.at_rest)
        self.remote = RemoteMediaFetcher(hs, self.store)
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
        def decode() -> Thumbnail:
            # Pillow reads the plaintext through the decrypting file, never a copy on disk.
            with self.store.open(media.sha256) as fh:
                return make_thumbnail(fh, width, height, method)

        async with self._pillow:
            try:
                thumb = await asyncio.to_thread(decode)
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
        sha256, size, ctype, filename = await self.remote.fetch(server_name, media_id, wait_ms)
        await media_store.insert_media(
            server_name, media_id, sha256=sha256, content_type=ctype, size=size,
            upload_name=filename, user_id=None, created_ts=now_ms())
        row = await media_store.get_media(server_name, media_id)
        if row is None or row["sha256"] is None:
            raise RuntimeError("remote media row missing right after insert")
        return _row_to_file(row)


__all__ = ["MediaFile", "MediaHandler", "ThumbnailFile", "content_disposition",
           "is_inline_safe", "make_thumbnail", "media_headers", "normalize_content_type",
           "thumbnail_geometry"]
