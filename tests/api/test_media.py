"""The media repository over real HTTP: upload, download, thumbnails, safety headers, limits,
authentication, asynchronous uploads, restart, and remote media fetched over federation."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.client import Api
from tests.servers import start_server

MAX_UPLOAD = 100_000
LEGACY = "/_matrix/media/v3"
CLIENT = "/_matrix/client/v1/media"


@pytest.fixture(scope="module")
async def server(backend, tmp_path_factory):
    """This module's server has a small upload limit so the limit is cheap to exceed."""
    srv = await start_server(tmp_path_factory.mktemp("hs"), backend,
                             media={"max_upload_bytes": MAX_UPLOAD})
    yield srv
    await srv.destroy()


class Raw:
    """A response with its body as bytes (media is not JSON)."""

    def __init__(self, status: int, body: bytes, headers) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def json(self) -> Any:
        import json
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:200]!r}>"


async def call(api: Api, method: str, path: str, *, token: str | None = None,
               data: Any = None, headers: dict | None = None, params: dict | None = None,
               server=None) -> Raw:
    srv = server or api.server
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    async with api.session.request(method, srv.base_url + path, data=data, headers=hdrs,
                                   params=params) as r:
        return Raw(r.status, await r.read(), r.headers)


async def upload(api: Api, token: str, data: bytes, content_type: str | None = None,
                 filename: str | None = None, server=None) -> tuple[str, str]:
    headers = {"Content-Type": content_type} if content_type else {}
    params = {"filename": filename} if filename is not None else None
    r = await call(api, "POST", f"{LEGACY}/upload", token=token, data=data, headers=headers,
                   params=params, server=server)
    assert r.status == 200, r
    uri = r.json["content_uri"]
    assert uri.startswith("mxc://")
    server_name, media_id = uri[len("mxc://"):].split("/")
    return server_name, media_id


def png(width: int, height: int, mode: str = "RGB", color: Any = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def media_files(server) -> set[Path]:
    root = server.data_dir / "media"
    return {p for p in root.rglob("*") if p.is_file()}


def assert_safety_headers(r: Raw) -> None:
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    csp = r.headers["Content-Security-Policy"]
    assert csp.startswith("sandbox;") and "script-src 'none'" in csp
    assert "default-src 'none'" in csp
    assert r.headers["Cross-Origin-Resource-Policy"] == "cross-origin"


async def test_upload_download_roundtrip(api):
    alice = await api.register()
    data = b"hello media\n" + secrets.token_bytes(64)
    sn, mid = await upload(api, alice.token, data, "text/plain", "notes.txt")
    assert sn == api.server.server_name
    assert len(mid) >= 22 and all(c.isalnum() or c in "-_" for c in mid)
    for path, token in ((f"{CLIENT}/download/{sn}/{mid}", alice.token),
                        (f"{LEGACY}/download/{sn}/{mid}", None),
                        (f"/_matrix/media/r0/download/{sn}/{mid}", None)):
        r = await call(api, "GET", path, token=token)
        assert r.status == 200, (path, r)
        assert r.body == data
        assert r.headers["Content-Type"] == "text/plain"
        assert r.headers["Content-Disposition"] == 'inline; filename="notes.txt"'
        assert "immutable" in r.headers["Cache-Control"]
        assert_safety_headers(r)
    # The authenticated form must not be stored by shared caches; the legacy one may.
    r = await call(api, "GET", f"{CLIENT}/download/{sn}/{mid}", token=alice.token)
    assert r.headers["Cache-Control"].startswith("private")
    # A file name in the path replaces the uploaded one; non-ASCII names use RFC 5987.
    r = await call(api, "GET", f"{CLIENT}/download/{sn}/{mid}/r%C3%A9sum%C3%A9.txt",
                   token=alice.token)
    assert r.status == 200 and r.body == data
    assert r.headers["Content-Disposition"] == (
        "inline; filename=\"r_sum_.txt\"; filename*=utf-8''r%C3%A9sum%C3%A9.txt")
    # No file name at upload: none in the header either.
    sn2, mid2 = await upload(api, alice.token, b"anonymous", "application/octet-stream")
    r = await call(api, "GET", f"{CLIENT}/download/{sn2}/{mid2}", token=alice.token)
    assert r.headers["Content-Disposition"] == "attachment"
    assert r.headers["Content-Type"] == "application/octet-stream"


async def test_range_and_revalidation(api):
    alice = await api.register()
    data = bytes(range(256)) * 8
    sn, mid = await upload(api, alice.token, data, "video/mp4")
    path = f"{CLIENT}/download/{sn}/{mid}"
    r = await call(api, "GET", path, token=alice.token, headers={"Range": "bytes=10-19"})
    assert r.status == 206 and r.body == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    full = await call(api, "GET", path, token=alice.token)
    etag = full.headers["ETag"]
    r = await call(api, "GET", path, token=alice.token, headers={"If-None-Match": etag})
    assert r.status == 304 and r.body == b""


async def test_same_bytes_stored_once(api):
    alice = await api.register()
    bob = await api.register()
    data = secrets.token_bytes(5000)
    sha = hashlib.sha256(data).hexdigest()
    _, mid1 = await upload(api, alice.token, data, "application/octet-stream", "a.bin")
    _, mid2 = await upload(api, bob.token, data, "image/png", "b.png")
    assert mid1 != mid2
    stored = api.server.data_dir / "media" / sha[:2] / sha[2:4] / sha
    # Stored once, sealed at rest: the file is not the bytes, the store opens it to them.
    assert data not in stored.read_bytes()
    assert await api.server.hs.media.store.read(sha) == data
    assert [p for p in media_files(api.server) if p.name == sha] == [stored]
    # Each ID keeps its own metadata.
    sn = api.server.server_name
    r1 = await call(api, "GET", f"{CLIENT}/download/{sn}/{mid1}", token=alice.token)
    r2 = await call(api, "GET", f"{CLIENT}/download/{sn}/{mid2}", token=alice.token)
    assert r1.body == r2.body == data
    assert r1.headers["Content-Disposition"] == 'attachment; filename="a.bin"'
    assert r2.headers["Content-Disposition"] == 'inline; filename="b.png"'


async def test_size_limit(api):
    alice = await api.register()
    before = media_files(api.server)
    r = await call(api, "POST", f"{LEGACY}/upload", token=alice.token,
                   data=secrets.token_bytes(MAX_UPLOAD + 1),
                   headers={"Content-Type": "application/octet-stream"})
    assert (r.status, r.json["errcode"]) == (413, "M_TOO_LARGE")

    # Without a Content-Length (chunked): refused while streaming, nothing kept either.
    async def chunks():
        for _ in range(MAX_UPLOAD // 10_000 + 2):
            yield secrets.token_bytes(10_000)

    r = await call(api, "POST", f"{LEGACY}/upload", token=alice.token, data=chunks())
    assert (r.status, r.json["errcode"]) == (413, "M_TOO_LARGE")
    # The refusal is the end of it: nothing is left behind once it is answered.
    assert media_files(api.server) == before
    # Exactly the limit is fine, and so is an empty file.
    await upload(api, alice.token, secrets.token_bytes(MAX_UPLOAD), "application/octet-stream")
    sn, mid = await upload(api, alice.token, b"", "text/plain")
    r = await call(api, "GET", f"{CLIENT}/download/{sn}/{mid}", token=alice.token)
    assert r.status == 200 and r.body == b""


async def test_config(api):
    alice = await api.register()
    for path in (f"{CLIENT}/config", f"{LEGACY}/config", "/_matrix/media/r0/config"):
        r = await call(api, "GET", path, token=alice.token)
        assert r.status == 200 and r.json == {"m.upload.size": MAX_UPLOAD}, path


async def test_authentication(api):
    alice = await api.register()
    sn, mid = await upload(api, alice.token, b"secret-ish", "text/plain")
    for path in (f"{CLIENT}/download/{sn}/{mid}", f"{CLIENT}/download/{sn}/{mid}/x.txt",
                 f"{CLIENT}/thumbnail/{sn}/{mid}?width=32&height=32", f"{CLIENT}/config",
                 f"{LEGACY}/config"):
        r = await call(api, "GET", path)
        assert (r.status, r.json["errcode"]) == (401, "M_MISSING_TOKEN"), path
        r = await call(api, "GET", path, token="nx_not_a_token")
        assert (r.status, r.json["errcode"]) == (401, "M_UNKNOWN_TOKEN"), path
    r = await call(api, "POST", f"{LEGACY}/upload", data=b"x")
    assert (r.status, r.json["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await call(api, "POST", "/_matrix/media/v1/create")
    assert (r.status, r.json["errcode"]) == (401, "M_MISSING_TOKEN")
    # The deprecated download stays open (documented choice in api/media.py).
    r = await call(api, "GET", f"{LEGACY}/download/{sn}/{mid}")
    assert r.status == 200 and r.body == b"secret-ish"


@pytest.mark.parametrize("ctype", ["text/html", "image/svg+xml", "application/xhtml+xml",
                                   "text/xml", "application/javascript", "TEXT/HTML",
                                   "text/html; charset=utf-8", "application/pdf"])
async def test_active_content_is_never_inline(api, ctype):
    alice = await api.register()
    payload = (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"
               if "svg" in ctype else b"<html><script>alert(document.cookie)</script></html>")
    sn, mid = await upload(api, alice.token, payload, ctype, "evil.html")
    for path, token in ((f"{CLIENT}/download/{sn}/{mid}", alice.token),
                        (f"{LEGACY}/download/{sn}/{mid}", None),
                        (f"{LEGACY}/download/{sn}/{mid}/page.html", None)):
        r = await call(api, "GET", path, token=token)
        assert r.status == 200 and r.body == payload
        assert r.headers["Content-Disposition"].startswith("attachment;"), r.headers
        assert r.headers["Content-Type"].split(";")[0] == ctype.split(";")[0].lower()
        assert_safety_headers(r)
    # Nor can such content be thumbnailed into something else.
    r = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=alice.token,
                   params={"width": "32", "height": "32"})
    assert (r.status, r.json["errcode"]) == (400, "M_UNKNOWN")


async def test_malformed_content_type_falls_back(api):
    alice = await api.register()
    for bad in ("not a type", "text/", "te(xt/html", "text/html;charset", "a/b; =x",
                "text/html, text/plain", "x" * 300 + "/y"):
        sn, mid = await upload(api, alice.token, b"data", bad)
        r = await call(api, "GET", f"{CLIENT}/download/{sn}/{mid}", token=alice.token)
        assert r.headers["Content-Type"] == "application/octet-stream", bad
        assert r.headers["Content-Disposition"] == "attachment"


async def test_thumbnails(api):
    alice = await api.register()
    sn, mid = await upload(api, alice.token, png(400, 300), "image/png", "pic.png")

    async def thumb(width, height, method="scale", path=CLIENT, token=alice.token):
        r = await call(api, "GET", f"{path}/thumbnail/{sn}/{mid}", token=token,
                       params={"width": str(width), "height": str(height), "method": method})
        assert r.status == 200, r
        assert r.headers["Content-Disposition"].startswith("inline; filename=\"thumbnail.")
        assert_safety_headers(r)
        img = Image.open(io.BytesIO(r.body))
        assert r.headers["Content-Type"] == f"image/{img.format.lower()}"
        return img

    assert (await thumb(200, 150)).size == (200, 150)
    assert (await thumb(100, 100)).size == (100, 75)  # fitted, aspect kept
    assert (await thumb(64, 64, "crop")).size == (64, 64)
    assert (await thumb(120, 40, "crop")).size == (120, 40)
    assert (await thumb(32, 32, "crop", path=LEGACY, token=None)).size == (32, 32)
    # Never upscaled; huge requests are clamped.
    assert (await thumb(1000, 1000)).size == (400, 300)
    assert (await thumb(5000, 5000, "crop")).size == (300, 300)
    # Cached: the same request gives the same bytes.
    a = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=alice.token,
                   params={"width": "64", "height": "64", "method": "crop"})
    b = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=alice.token,
                   params={"width": "64", "height": "64", "method": "crop"})
    assert a.body == b.body and a.headers["ETag"] == b.headers["ETag"]
    # `animated` is accepted and ignored.
    r = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=alice.token,
                   params={"width": "64", "height": "64", "animated": "true"})
    assert r.status == 200


async def test_thumbnail_cache_is_bounded(api, monkeypatch):
    import homeserver.handlers.media as media_handler

    monkeypatch.setattr(media_handler, "MAX_THUMBNAILS_PER_MEDIA", 2)
    alice = await api.register()
    sn, mid = await upload(api, alice.token, png(200, 200, color=(1, 2, 3)), "image/png")
    sizes = []
    for side in (10, 20, 30, 40):
        before = media_files(api.server)
        r = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=alice.token,
                       params={"width": str(side), "height": str(side)})
        assert r.status == 200
        sizes.append(Image.open(io.BytesIO(r.body)).size)
        new_files = media_files(api.server) - before
        # The first two sizes are kept; later ones are made on demand and not stored.
        assert len(new_files) == (1 if side <= 20 else 0), side
    assert sizes == [(10, 10), (20, 20), (30, 30), (40, 40)]


async def test_head_download(api):
    alice = await api.register()
    sn, mid = await upload(api, alice.token, b"0123456789", "text/plain", "h.txt")
    r = await call(api, "HEAD", f"{CLIENT}/download/{sn}/{mid}", token=alice.token)
    assert r.status == 200 and r.body == b""
    assert r.headers["Content-Length"] == "10"
    assert r.headers["Content-Disposition"] == 'inline; filename="h.txt"'


async def test_thumbnail_formats(api):
    alice = await api.register()
    # Transparent PNG -> PNG with alpha.
    sn, mid = await upload(api, alice.token, png(300, 300, "RGBA", (0, 0, 255, 100)),
                           "image/png")
    r = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=alice.token,
                   params={"width": "50", "height": "50"})
    img = Image.open(io.BytesIO(r.body))
    assert (img.format, img.mode, img.size) == ("PNG", "RGBA", (50, 50))
    assert img.getpixel((10, 10))[3] == 100
    # JPEG -> JPEG.
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (10, 200, 10)).save(buf, "JPEG")
    sn, mid = await upload(api, alice.token, buf.getvalue(), "image/jpeg")
    r = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=alice.token,
                   params={"width": "320", "height": "240"})
    assert r.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.body)).size == (320, 240)
    # Declared an image, but is not one.
    sn, mid = await upload(api, alice.token, b"\x89PNG but not really", "image/png")
    r = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=alice.token,
                   params={"width": "50", "height": "50"})
    assert (r.status, r.json["errcode"]) == (400, "M_UNKNOWN")


async def test_thumbnail_bad_params(api):
    alice = await api.register()
    sn, mid = await upload(api, alice.token, png(40, 40), "image/png")
    path = f"{CLIENT}/thumbnail/{sn}/{mid}"
    for params, code in (({"width": "abc", "height": "10"}, "M_INVALID_PARAM"),
                         ({"width": "10.5", "height": "10"}, "M_INVALID_PARAM"),
                         ({"width": "0", "height": "10"}, "M_INVALID_PARAM"),
                         ({"width": "-5", "height": "10"}, "M_INVALID_PARAM"),
                         ({"width": "10", "height": str(10**12)}, "M_INVALID_PARAM"),
                         ({"width": "10", "height": "9" * 400}, "M_INVALID_PARAM"),
                         ({"width": "10", "height": "10", "method": "zoom"}, "M_INVALID_PARAM"),
                         ({"width": "10"}, "M_MISSING_PARAM"),
                         ({}, "M_MISSING_PARAM")):
        r = await call(api, "GET", path, token=alice.token, params=params)
        assert (r.status, r.json["errcode"]) == (400, code), params


async def test_unknown_and_malformed_media(api):
    alice = await api.register()
    sn = api.server.server_name
    cases = [
        (f"{CLIENT}/download/{sn}/doesNotExist123", 404, "M_NOT_FOUND"),
        (f"{CLIENT}/download/{sn}/bad.id", 404, "M_NOT_FOUND"),
        (f"{CLIENT}/download/{sn}/%00", 400, "M_INVALID_PARAM"),
        (f"{CLIENT}/download/{sn}/{'a' * 300}", 404, "M_NOT_FOUND"),
        (f"{CLIENT}/download/bad%20server!/abc", 400, "M_INVALID_PARAM"),
        (f"{CLIENT}/thumbnail/{sn}/doesNotExist123?width=5&height=5", 404, "M_NOT_FOUND"),
        (f"{LEGACY}/download/{sn}/doesNotExist123", 404, "M_NOT_FOUND"),
        (f"{CLIENT}/download/{sn}/x?timeout_ms=abc", 400, "M_INVALID_PARAM"),
        # Remote, not cached, and we may not ask: not found.
        (f"{CLIENT}/download/localhost:1/abc?allow_remote=false", 404, "M_NOT_FOUND"),
    ]
    for path, status, code in cases:
        r = await call(api, "GET", path, token=alice.token)
        assert (r.status, r.json["errcode"]) == (status, code), path
    # A control character in the file name.
    r = await call(api, "POST", f"{LEGACY}/upload", token=alice.token, data=b"x",
                   params={"filename": "a\nb.txt"})
    assert (r.status, r.json["errcode"]) == (400, "M_INVALID_PARAM")


class ParkedSignal(asyncio.Event):
    """The media handler's upload signal, telling the test when a download starts waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = asyncio.Event()

    async def wait(self) -> bool:
        self.waited.set()
        return await super().wait()


async def test_async_upload(api):
    alice = await api.register()
    bob = await api.register()
    r = await call(api, "POST", "/_matrix/media/v1/create", token=alice.token)
    assert r.status == 200, r
    uri = r.json["content_uri"]
    assert r.json["unused_expires_at"] > 0
    sn, mid = uri[len("mxc://"):].split("/")
    # Not there yet.
    r = await call(api, "GET", f"{CLIENT}/download/{sn}/{mid}", token=alice.token,
                   params={"timeout_ms": "0"})
    assert (r.status, r.json["errcode"]) == (504, "M_NOT_YET_UPLOADED")
    # Somebody else may not fill it.
    r = await call(api, "PUT", f"{LEGACY}/upload/{sn}/{mid}", token=bob.token, data=b"nope")
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
    r = await call(api, "PUT", f"{LEGACY}/upload/{sn}/neverCreated", token=alice.token,
                   data=b"x")
    assert (r.status, r.json["errcode"]) == (404, "M_NOT_FOUND")
    # A download waiting for the upload gets it as soon as it lands.
    media = api.server.hs.media
    media._upload_signal = parked = ParkedSignal()  # what waiting downloads wait on
    waiting = asyncio.create_task(call(api, "GET", f"{CLIENT}/download/{sn}/{mid}",
                                       token=alice.token, params={"timeout_ms": "10000"}))
    await asyncio.wait_for(parked.waited.wait(), 10)
    assert not waiting.done()
    r = await call(api, "PUT", f"{LEGACY}/upload/{sn}/{mid}", token=alice.token,
                   data=b"late bytes", headers={"Content-Type": "text/plain"},
                   params={"filename": "late.txt"})
    assert r.status == 200 and r.json == {}
    got = await asyncio.wait_for(waiting, 10)
    assert got.status == 200 and got.body == b"late bytes"
    assert got.headers["Content-Disposition"] == 'inline; filename="late.txt"'
    r = await call(api, "PUT", f"{LEGACY}/upload/{sn}/{mid}", token=alice.token, data=b"again")
    assert (r.status, r.json["errcode"]) == (409, "M_CANNOT_OVERWRITE_MEDIA")


async def test_restart_keeps_media(backend, tmp_path):
    srv = await start_server(tmp_path, backend)
    try:
        async with Api(srv) as api:
            alice = await api.register()
            data = png(64, 48)
            sn, mid = await upload(api, alice.token, data, "image/png", "keep.png")
            thumb1 = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=alice.token,
                                params={"width": "32", "height": "32", "method": "crop"})
            # A leftover temporary file from a "crash" is cleaned up at start.
            (srv.data_dir / "media" / "tmp" / "dead.part").write_bytes(b"partial")
        await srv.stop()
        await srv.start()
        assert not os.listdir(srv.data_dir / "media" / "tmp")
        async with Api(srv) as api:
            r = await api.request("POST", "/login", {
                "type": "m.login.password", "identifier": {"type": "m.id.user",
                                                           "user": alice.user_id},
                "password": alice.password})
            token = r.json["access_token"]
            r = await call(api, "GET", f"{CLIENT}/download/{sn}/{mid}", token=token)
            assert r.status == 200 and r.body == data
            assert r.headers["Content-Disposition"] == 'inline; filename="keep.png"'
            thumb2 = await call(api, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=token,
                                params={"width": "32", "height": "32", "method": "crop"})
            assert thumb2.body == thumb1.body
    finally:
        await srv.destroy()


async def test_remote_media_over_federation(backend, tmp_path):
    a = await start_server(tmp_path, backend)
    b = await start_server(tmp_path, backend)
    try:
        async with Api(a) as api_a, Api(b) as api_b:
            alice = await api_a.register()
            bob = await api_b.register()
            data = png(300, 200)
            sn, mid = await upload(api_a, alice.token, data, "image/png", "über.png")
            assert sn == a.server_name
            # The unauthenticated legacy endpoint never makes b fetch from another server.
            r = await call(api_b, "GET", f"{LEGACY}/download/{sn}/{mid}")
            assert (r.status, r.json["errcode"]) == (404, "M_NOT_FOUND")
            # Bob's server fetches it from alice's server, then serves it itself.
            r = await call(api_b, "GET", f"{CLIENT}/download/{sn}/{mid}", token=bob.token)
            assert r.status == 200, r
            assert r.body == data and r.headers["Content-Type"] == "image/png"
            assert "filename*=utf-8''%C3%BCber.png" in r.headers["Content-Disposition"]
            r = await call(api_b, "GET", f"{CLIENT}/thumbnail/{sn}/{mid}", token=bob.token,
                           params={"width": "150", "height": "150"})
            assert r.status == 200
            assert Image.open(io.BytesIO(r.body)).size == (150, 100)
            # Cached now, so the legacy endpoint serves it too.
            r = await call(api_b, "GET", f"{LEGACY}/download/{sn}/{mid}")
            assert r.status == 200 and r.body == data
            # Unknown on the origin: 404 here too.
            r = await call(api_b, "GET", f"{CLIENT}/download/{sn}/noSuchMedia1", token=bob.token)
            assert (r.status, r.json["errcode"]) == (404, "M_NOT_FOUND")
            # The federation endpoint itself wants a signed request.
            r = await call(api_b, "GET", f"/_matrix/federation/v1/media/download/{mid}",
                           server=a)
            assert r.status == 401
            # Cached: still served while the origin is down.
            await a.stop()
            r = await call(api_b, "GET", f"{CLIENT}/download/{sn}/{mid}", token=bob.token)
            assert r.status == 200 and r.body == data
            r = await call(api_b, "GET", f"{CLIENT}/download/{sn}/otherMedia", token=bob.token)
            assert r.status in (404, 502)
    finally:
        await a.destroy()
        await b.destroy()


async def test_federation_media_multipart(server):
    """A signed request as another server would make it, parsed as multipart/mixed."""
    import aiohttp

    from homeserver.handlers.federation.transport import FederationClient

    async with Api(server) as api:
        alice = await api.register()
        data = b"federated bytes"
        _, mid = await upload(api, alice.token, data, "text/plain", "f.txt")

    # Sign as a second running server, whose key the first can fetch.
    other = await start_server(server.data_dir.parent, server.backend)
    try:
        client: FederationClient = other.hs.federation_client
        path = f"/_matrix/federation/v1/media/download/{mid}"
        auth = client.sign_request(server.server_name, "GET", path)
        async with aiohttp.ClientSession() as s:
            async with s.get(server.base_url + path, headers={"Authorization": auth}) as r:
                assert r.status == 200, await r.text()
                assert r.headers["Content-Type"].startswith("multipart/mixed; boundary=")
                reader = aiohttp.MultipartReader(r.headers, r.content)
                meta = await reader.next()
                assert meta.headers["Content-Type"] == "application/json"
                assert await meta.json() == {}
                part = await reader.next()
                assert part.headers["Content-Type"] == "text/plain"
                assert part.headers["Content-Disposition"] == 'inline; filename="f.txt"'
                assert await part.read() == data
            auth = client.sign_request(server.server_name, "GET",
                                       "/_matrix/federation/v1/media/download/missing1")
            async with s.get(server.base_url + "/_matrix/federation/v1/media/download/missing1",
                             headers={"Authorization": auth}) as r:
                assert r.status == 404 and (await r.json())["errcode"] == "M_NOT_FOUND"
    finally:
        await other.destroy()
