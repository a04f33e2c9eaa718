"""Links to Nexa media for remote users who cannot fetch mxc:// themselves."""

from __future__ import annotations

import re
from urllib.parse import quote

_MXC_RE = re.compile(r"mxc://([^/\s]+)/([A-Za-z0-9_-]+)")


def media_download_url(base_url: str, mxc: str, filename: str | None = None) -> str | None:
    """The download URL of an mxc:// URI under base_url, or None for anything malformed (so
    no path tricks reach the URL); the filename, if given, is appended escaped."""
    m = _MXC_RE.fullmatch(mxc or "")
    if not m:
        return None
    url = f"{base_url.rstrip('/')}/_matrix/media/v3/download/{m.group(1)}/{m.group(2)}"
    if filename:
        url += "/" + quote(filename, safe="")
    return url
