"""Thumbnails, pure: the geometry of scale and crop, and Pillow decoding and encoding (blocking,
run in worker threads by the media handler). EXIF orientation is applied, metadata dropped,
PNG or JPEG out; only common web formats are decoded, and never more pixels than the limits.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

from homeserver.handlers.media_policy import content_type_essence

# Images with more pixels than this are not decoded at all (413 M_TOO_LARGE). With at most
# 4 decodes at a time, that bounds Pillow's memory to roughly 4 x 36M pixels x 4 bytes x 2
# (source and converted copy).
MAX_THUMBNAIL_SOURCE_PIXELS = 36_000_000  # an 8K screenshot (7680x4320) fits
# JPEG sources decode at a reduced scale (draft mode), so bigger photos are still cheap.
MAX_THUMBNAIL_JPEG_PIXELS = 160_000_000
# Pillow decoders we let near untrusted bytes: the common web formats only.
THUMBNAIL_SOURCE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP")


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
    """Blocking: decode the image at `path` (a path or a readable, seekable file of the
    plaintext) and return a thumbnail. Runs in a worker thread.

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
