"""Media serving policy: which Content-Type is kept, which is served inline, the file name in
Content-Disposition, and the safety headers on every media response.

Serving never trusts the declared type: only types a browser shows passively are served
`inline` (INLINE_CONTENT_TYPES); everything else, HTML and SVG included, is an `attachment`, and
every response carries nosniff and a sandboxing Content-Security-Policy, so uploaded content can
never run as a page of this server's origin. Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from homeserver.errors import invalid_param

MAX_FILENAME = 255
DEFAULT_CONTENT_TYPE = "application/octet-stream"

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
