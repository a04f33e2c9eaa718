"""Media serving policy and thumbnailing, without a server: content types, dispositions, the
file store's limits and deduplication, and Pillow edge cases."""

from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image

from homeserver.errors import MatrixError
from homeserver.handlers import media as media_mod
from homeserver.handlers.media import (CannotThumbnail, SourceTooLarge, can_thumbnail,
                                       content_disposition, is_inline_safe, make_thumbnail,
                                       media_headers, new_media_id, normalize_content_type,
                                       thumbnail_geometry, validate_filename)
from homeserver.storage.media import MediaStore, TooLarge

ACTIVE = ["text/html", "TEXT/HTML", "text/html; charset=utf-8", " text/html ", "image/svg+xml",
          "application/xhtml+xml", "text/xml", "application/xml", "application/javascript",
          "text/javascript", "application/x-shockwave-flash", "application/pdf",
          "multipart/x-mixed-replace; boundary=x", "text/vtt", "application/octet-stream",
          "image/svg+xml; charset=utf-8", "text/html;charset=utf-8", "image/x-icon"]
PASSIVE = ["image/png", "image/jpeg", "image/gif", "image/webp", "IMAGE/PNG", "video/mp4",
           "audio/ogg", "text/plain", "text/plain; charset=utf-8", "application/json"]


@pytest.mark.parametrize("ctype", ACTIVE)
def test_active_types_are_attachments(ctype):
    assert not is_inline_safe(ctype)
    headers = media_headers(normalize_content_type(ctype), "x.html", public=True)
    assert headers["Content-Disposition"].startswith("attachment;")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"].startswith("sandbox;")


@pytest.mark.parametrize("ctype", PASSIVE)
def test_passive_types_are_inline(ctype):
    assert is_inline_safe(ctype)
    headers = media_headers(normalize_content_type(ctype), None, public=False)
    assert headers["Content-Disposition"] == "inline"
    assert headers["Cache-Control"].startswith("private")
    # Even inline content is sandboxed.
    assert "script-src 'none'" in headers["Content-Security-Policy"]


@pytest.mark.parametrize("value,expected", [
    (None, "application/octet-stream"),
    ("", "application/octet-stream"),
    ("Image/PNG", "image/png"),
    ("text/plain; charset=UTF-8", "text/plain; charset=UTF-8"),
    ('text/plain; name="a b"', 'text/plain; name="a b"'),
    ("text/plain;charset=utf-8;format=flowed", "text/plain;charset=utf-8;format=flowed"),
    ("text", "application/octet-stream"),
    ("text/", "application/octet-stream"),
    ("/html", "application/octet-stream"),
    ("text/html\r\nX-Injected: 1", "application/octet-stream"),
    ("text/html, image/png", "application/octet-stream"),
    ("text/html;", "application/octet-stream"),
    ("te xt/html", "application/octet-stream"),
    ("text/h\u00e9ml", "application/octet-stream"),
    ("a/" + "b" * 300, "application/octet-stream"),
])
def test_normalize_content_type(value, expected):
    assert normalize_content_type(value) == expected


def test_content_disposition_encoding():
    assert content_disposition("inline", None) == "inline"
    assert content_disposition("inline", "a.png") == 'inline; filename="a.png"'
    assert content_disposition("attachment", "my file.txt") == (
        'attachment; filename="my file.txt"')
    # Quotes and backslashes never appear inside the quoted string; the exact name goes to
    # filename* (RFC 5987), percent-encoded.
    out = content_disposition("attachment", 'a"b\\c.txt')
    assert out == "attachment; filename=\"a_b_c.txt\"; filename*=utf-8''a%22b%5Cc.txt"
    out = content_disposition("inline", "日本.png")
    assert out == "inline; filename=\"__.png\"; filename*=utf-8''%E6%97%A5%E6%9C%AC.png"
    assert all(32 <= ord(c) < 127 for c in out)
    out = content_disposition("attachment", "x; filename=evil.html")
    assert out.startswith('attachment; filename="x; filename=evil.html"')


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\x00b", "tab\there", "\x7f", "x" * 256,
                                  "\ud800"])
def test_bad_filenames_rejected(name):
    with pytest.raises(MatrixError) as e:
        validate_filename(name)
    assert e.value.errcode == "M_INVALID_PARAM"


def test_good_filenames():
    assert validate_filename(None) is None
    assert validate_filename("") is None
    assert validate_filename("Été 2024 (1).jpg") == "Été 2024 (1).jpg"


def test_media_ids_are_random_and_url_safe():
    ids = {new_media_id() for _ in range(1000)}
    assert len(ids) == 1000
    for mid in ids:
        assert media_mod.MEDIA_ID_RE.match(mid) and len(mid) == 32  # 192 bits


def test_can_thumbnail():
    assert can_thumbnail("image/png") and can_thumbnail("image/JPEG; x=y")
    assert not can_thumbnail("image/svg+xml")
    assert not can_thumbnail("text/html") and not can_thumbnail("application/octet-stream")


@pytest.mark.parametrize("src,want,method,out", [
    ((400, 300), (200, 200), "scale", (200, 150)),
    ((400, 300), (1000, 1000), "scale", (400, 300)),
    ((300, 400), (100, 100), "scale", (75, 100)),
    ((10000, 1), (100, 100), "scale", (100, 1)),
    ((400, 300), (64, 64), "crop", (64, 64)),
    ((400, 300), (120, 40), "crop", (120, 40)),
    ((400, 300), (1000, 1000), "crop", (300, 300)),
    ((100, 50), (200, 200), "crop", (50, 50)),
    ((1, 10000), (32, 32), "crop", (1, 1)),
])
def test_thumbnail_geometry(src, want, method, out):
    box, size = thumbnail_geometry(*src, *want, method)
    assert size == out
    left, top, right, bottom = box
    assert 0 <= left < right <= src[0] and 0 <= top < bottom <= src[1]
    if method == "crop":
        # The region read has the requested aspect ratio (to a pixel).
        assert abs((right - left) / (bottom - top) - want[0] / want[1]) < 0.05 or min(out) == 1


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _thumb(tmp_path, data: bytes, w: int, h: int, method: str = "scale"):
    path = tmp_path / "src"
    path.write_bytes(data)
    t = make_thumbnail(path, w, h, method)
    return t, Image.open(io.BytesIO(t.data))


def test_exif_orientation_applied(tmp_path):
    # Stored 200x100, but EXIF says "rotate 90°": it is shown (and thumbnailed) as 100x200.
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    t, out = _thumb(tmp_path, _save(img, "JPEG", exif=exif), 50, 50)
    assert out.size == (25, 50)
    assert t.content_type == "image/jpeg"
    # The thumbnail carries no EXIF (no orientation to apply twice, no GPS).
    assert not out.getexif()


def test_jpeg_draft_large_photo(tmp_path):
    img = Image.new("RGB", (4000, 3000), (0, 128, 255))
    t, out = _thumb(tmp_path, _save(img, "JPEG", quality=50), 320, 240)
    assert out.size == (320, 240)
    t, out = _thumb(tmp_path, _save(img, "JPEG", quality=50), 96, 96, "crop")
    assert out.size == (96, 96)


@pytest.mark.parametrize("mode,color,fmt", [
    ("RGBA", (0, 0, 255, 100), "PNG"), ("LA", (100, 50), "PNG"), ("L", 128, "PNG"),
    ("1", 1, "PNG"), ("I;16", 30000, "PNG"), ("P", 3, "GIF"), ("RGB", (1, 2, 3), "WEBP"),
    ("CMYK", (0, 50, 100, 0), "JPEG"), ("L", 50, "JPEG"), ("RGBA", (1, 2, 3, 4), "WEBP"),
])
def test_modes_and_formats(tmp_path, mode, color, fmt):
    t, out = _thumb(tmp_path, _save(Image.new(mode, (120, 80), color), fmt), 60, 60)
    assert out.size == (60, 40)
    assert out.format == ("JPEG" if fmt == "JPEG" else "PNG")
    assert out.mode in ("RGB", "RGBA")
    if mode in ("RGBA", "LA"):
        assert out.mode == "RGBA"


def test_transparent_palette_gif(tmp_path):
    img = Image.new("P", (40, 40), 0)
    t, out = _thumb(tmp_path, _save(img, "GIF", transparency=0), 20, 20)
    assert out.mode == "RGBA" and out.getpixel((5, 5))[3] == 0


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    t, out = _thumb(tmp_path, buf.getvalue(), 32, 32)
    assert out.size == (32, 32) and out.format == "PNG"
    r, g, _b = out.convert("RGB").getpixel((16, 16))
    assert r > 200 and g < 50


@pytest.mark.parametrize("data", [
    b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
    b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"GIF89a",
])
def test_not_images(tmp_path, data):
    with pytest.raises(CannotThumbnail):
        _thumb(tmp_path, data, 32, 32)


def test_other_decoders_not_used(tmp_path):
    # BMP and TIFF decode fine in Pillow, but are not formats we let near untrusted bytes.
    for fmt in ("BMP", "TIFF", "ICO"):
        with pytest.raises(CannotThumbnail):
            _thumb(tmp_path, _save(Image.new("RGB", (32, 32)), fmt), 16, 16)


def test_truncated_image(tmp_path):
    data = _save(Image.effect_noise((200, 200), 50).convert("RGB"), "PNG")
    with pytest.raises(CannotThumbnail):
        _thumb(tmp_path, data[: len(data) // 2], 32, 32)


def test_pixel_limit(tmp_path, monkeypatch):
    from homeserver.handlers import media_thumbnails

    monkeypatch.setattr(media_thumbnails, "MAX_THUMBNAIL_SOURCE_PIXELS", 100 * 100)
    with pytest.raises(SourceTooLarge):
        _thumb(tmp_path, _save(Image.new("L", (101, 100)), "PNG"), 10, 10)
    _thumb(tmp_path, _save(Image.new("L", (100, 100)), "PNG"), 10, 10)


async def test_store_dedup_and_limit(tmp_path):
    store = MediaStore(tmp_path / "media")
    await store.prepare()

    async def chunks(*parts: bytes):
        for p in parts:
            yield p

    sha, size = await store.write_stream(chunks(b"abc", b"def"), 6)
    assert (sha, size) == (hashlib.sha256(b"abcdef").hexdigest(), 6)
    assert store.path_for(sha) == tmp_path / "media" / sha[:2] / sha[2:4] / sha
    assert await store.read(sha) == b"abcdef"
    sha2, _ = await store.write_stream(chunks(b"abcdef"), 100)
    assert sha2 == sha
    files = [p for p in (tmp_path / "media").rglob("*") if p.is_file()]
    assert files == [store.path_for(sha)]
    with pytest.raises(TooLarge):
        await store.write_stream(chunks(b"abc", b"defg"), 6)
    assert not list(store.tmp.iterdir())
    assert [p for p in (tmp_path / "media").rglob("*") if p.is_file()] == files

    async def failing():
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.write_stream(failing(), 100)
    assert not list(store.tmp.iterdir())
    assert b"".join([c async for c in store.iter_file(sha, chunk_size=4)]) == b"abcdef"
    with pytest.raises(ValueError):
        store.path_for("../../etc/passwd")
