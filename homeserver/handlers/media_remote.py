"""Remote media: fetched once from its origin server and stored here (the handler records it).

`/_matrix/federation/v1/media/download` (signed, multipart/mixed) first, falling back to the
legacy unauthenticated `/_matrix/media/v3/download` for older servers; a `Location` the origin
gives instead of the bytes is followed only to public http(s) hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator

import aiohttp
import orjson
from aiohttp.multipart import content_disposition_filename, parse_content_disposition
from yarl import URL

from homeserver.errors import MatrixError, not_found
from homeserver.handlers.federation.transport import quote_path, server_allowed
from homeserver.handlers.media_policy import normalize_content_type, validate_filename
from homeserver.storage.media import MediaStore, TooLarge

if TYPE_CHECKING:
    from homeserver.server import HomeServer

log = logging.getLogger(__name__)

# Whole-download and idle-read limits.
REMOTE_TOTAL_TIMEOUT = 300
REMOTE_READ_TIMEOUT = 60
MAX_REMOTE_JSON_PART = 64 * 1024

# (sha256, size, content type, file name)
RemoteContent = tuple[str, int, str, "str | None"]


class RemoteMediaFetcher:
    def __init__(self, hs: HomeServer, store: MediaStore) -> None:
        self.hs = hs
        self.store = store

    @property
    def max_upload_bytes(self) -> int:
        return self.hs.config.media.max_upload_bytes

    async def fetch(self, server_name: str, media_id: str, wait_ms: int) -> RemoteContent:
        """Download remote media from its origin server and store its bytes."""
        fed = self.hs.config.federation
        if not fed.enabled or not server_allowed(fed, server_name):
            raise not_found("Remote media is not available: this server does not federate "
                            "with its origin")
        client = self.hs.federation_client
        try:
            route = await client.route(server_name)
        except ValueError:
            raise not_found("Remote media: the server name cannot be resolved") from None
        try:
            got = await self._fetch_federation(client, route, server_name, media_id, wait_ms)
            if got is None:  # an older server: no federation media endpoint
                got = await self._fetch_legacy(client, route, server_name, media_id, wait_ms)
        except TooLarge:
            raise MatrixError(502, "M_TOO_LARGE", "Remote content is too large to serve") \
                from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            log.info("fetching mxc://%s/%s failed: %s: %s", server_name, media_id,
                     type(e).__name__, e)
            raise MatrixError(502, "M_UNKNOWN", "Could not fetch the remote media") from None
        return got

    @staticmethod
    def _remote_timeout(wait_ms: int) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=REMOTE_TOTAL_TIMEOUT + wait_ms / 1000,
                                     sock_read=REMOTE_READ_TIMEOUT + wait_ms / 1000)

    async def _fetch_federation(self, client: Any, route: Any, server_name: str, media_id: str,
                                wait_ms: int) -> RemoteContent | None:
        """GET /_matrix/federation/v1/media/download (signed, multipart/mixed). None when the
        remote server does not know the endpoint."""
        path = quote_path("/_matrix/federation/v1/media/download/{}", media_id)
        target = f"{path}?timeout_ms={wait_ms}"
        headers = {"Authorization": client.sign_request(server_name, "GET", target)}
        # The federation client's pooled session (TLS settings as configured); it has no
        # public streaming request, and media bodies must not be buffered as JSON.
        url, options = client.request_options(route, target, headers)
        async with client._get_session().get(url, allow_redirects=False,
                                             timeout=self._remote_timeout(wait_ms),
                                             **options) as resp:
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

    async def _fetch_legacy(self, client: Any, route: Any, server_name: str, media_id: str,
                            wait_ms: int) -> RemoteContent:
        """GET /_matrix/media/v3/download (unauthenticated), for servers without the
        federation media endpoint."""
        target = quote_path("/_matrix/media/v3/download/{}/{}", server_name, media_id)
        target += f"?allow_remote=false&timeout_ms={wait_ms}"
        url, options = client.request_options(route, target, {})
        async with client._get_session().get(url, allow_redirects=False,
                                              timeout=self._remote_timeout(wait_ms),
                                              **options) as resp:
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
