"""The web UI: `/` (index.html) and `/static/...`, plus response compression for the whole app.

Assets live in `web/` as plain files (no build step: a machine with only Python 3.11 serves the
UI). At the first UI request the files are read once and given content-hashed names
(`/static/js/app.3f2a9c1b0e.js`) served with `Cache-Control: immutable`; references between
assets (ES module imports, CSS `url()`) are rewritten to the hashed names, so a changed module
changes the hash of everything that imports it. `index.html` is rendered with the hashed URLs,
`modulepreload` links for every module (no request waterfall on slow connections) and a small
asset map (translations, images) and is served with `Cache-Control: no-cache`. Every UI response
carries a strict Content-Security-Policy.

`register(app)` also installs an after-request hook that gzips large JSON and text responses
when the client accepts it (never media downloads, the Socket.IO path, or bodies that are
already compressed or streamed).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import html
import json
import mimetypes
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from quart import Blueprint, Quart, Response, current_app, request
from quart.wrappers.response import DataBody

WEB_DIR = Path(os.environ.get("NEXA_WEB_DIR") or Path(__file__).resolve().parents[2] / "web")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'self'")
UI_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"

# Compression: types worth compressing, and paths whose bodies are never touched.
COMPRESSIBLE = ("application/json", "text/", "application/javascript", "image/svg+xml",
                "application/manifest+json")
SKIP_PREFIXES = ("/_nexa/socket.io", "/_matrix/media/", "/_matrix/client/v1/media/",
                 "/_matrix/federation/v1/media/")
MIN_COMPRESS_BYTES = 1024
THREAD_COMPRESS_BYTES = 256 * 1024
# Responses built per request (sync, messages) are compressed at the fastest level: on the
# benchmarked hot path level 6 cost several times the CPU for a few percent smaller bodies.
# Static assets are compressed once at level 9 when the server starts.
DYNAMIC_GZIP_LEVEL = 1

TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webmanifest": "application/manifest+json",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}

_JS_IMPORT = re.compile(
    r"""(\bimport\s*\(\s*|\bfrom\s*|\bimport\s+)(["'])(\.{1,2}/[^"'\s]+)\2""")
_CSS_URL = re.compile(r"""url\(\s*(["']?)(?!data:|https?:|/)([^"')\s]+)\1\s*\)""")
_HTML_REF = re.compile(r"""((?:src|href)=)(["'])/static/([^"']+)\2""")


@dataclass
class Asset:
    path: str  # logical path under static/, e.g. "js/app.js"
    url: str  # hashed URL, e.g. "/static/js/app.1a2b3c4d5e.js"
    body: bytes
    gz: bytes | None
    content_type: str
    etag: str


def _content_type(name: str) -> str:
    ext = PurePosixPath(name).suffix.lower()
    return TYPES.get(ext) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def _compressible(ctype: str) -> bool:
    return ctype.startswith(COMPRESSIBLE)


def _gzip(data: bytes, level: int = 9) -> bytes:
    return gzip.compress(data, compresslevel=level, mtime=0)


def _resolve(base: str, ref: str) -> str | None:
    """'js/views/a.js' + '../api.js' -> 'js/api.js' (None when it leaves static/)."""
    parts = list(PurePosixPath(base).parent.parts)
    for p in PurePosixPath(ref).parts:
        if p == ".":
            continue
        if p == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)


class Assets:
    """Everything under web/static, read once, with hashed names; plus the rendered index."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_path: dict[str, Asset] = {}
        self.by_url: dict[str, Asset] = {}
        self.index: Asset | None = None
        self._load()

    def _load(self) -> None:
        static = self.root / "static"
        raw: dict[str, bytes] = {}
        if static.is_dir():
            for f in sorted(static.rglob("*")):
                rel = f.relative_to(static).as_posix()
                if f.is_file() and not any(p.startswith(".") for p in rel.split("/")):
                    raw[rel] = f.read_bytes()
        deps = {p: self._refs(p, b) for p, b in raw.items()}
        self._deps = deps
        done: dict[str, str] = {}  # path -> hashed URL
        visiting: set[str] = set()

        def build(path: str) -> str:
            if path in done:
                return done[path]
            if path in visiting:  # an import cycle: refer by the plain name (served no-cache)
                return f"/static/{path}"
            visiting.add(path)
            urls = {ref: build(target) for ref, target in deps[path].items()}
            visiting.discard(path)
            body = self._rewrite(path, raw[path], urls)
            digest = hashlib.sha256(body).hexdigest()[:10]
            p = PurePosixPath(path)
            hashed = str(p.with_name(f"{p.stem}.{digest}{p.suffix}"))
            ctype = _content_type(path)
            gz = _gzip(body) if _compressible(ctype) and len(body) >= 256 else None
            if gz is not None and len(gz) >= len(body):
                gz = None
            asset = Asset(path, f"/static/{hashed}", body, gz, ctype, f'"{digest}"')
            self.by_path[path] = asset
            self.by_url[hashed] = asset
            done[path] = asset.url
            return asset.url

        for path in raw:
            build(path)
        self._render_index()

    @staticmethod
    def _refs(path: str, body: bytes) -> dict[str, str]:
        """Relative references inside a JS or CSS file: {reference as written: target path}."""
        out: dict[str, str] = {}
        if path.endswith((".js", ".mjs")):
            refs = [m.group(3) for m in _JS_IMPORT.finditer(body.decode("utf-8"))]
        elif path.endswith(".css"):
            refs = [m.group(2) for m in _CSS_URL.finditer(body.decode("utf-8"))]
        else:
            return out
        for ref in refs:
            target = _resolve(path, ref.split("?")[0].split("#")[0])
            if target is not None:
                out[ref] = target
        return out

    def _rewrite(self, path: str, body: bytes, urls: dict[str, str]) -> bytes:
        if not urls:
            return body
        text = body.decode("utf-8")
        if path.endswith((".js", ".mjs")):
            text = _JS_IMPORT.sub(
                lambda m: f"{m.group(1)}{m.group(2)}{urls.get(m.group(3), m.group(3))}"
                          f"{m.group(2)}", text)
        else:
            text = _CSS_URL.sub(
                lambda m: f"url({m.group(1)}{urls.get(m.group(2), m.group(2))}{m.group(1)})",
                text)
        return text.encode("utf-8")

    def _render_index(self) -> None:
        src = self.root / "index.html"
        if not src.is_file():
            return
        text = src.read_text("utf-8")
        entries = []

        def sub(m: re.Match) -> str:
            asset = self.by_path.get(m.group(3))
            if asset is None:
                return m.group(0)
            if asset.path.endswith(".js"):
                entries.append(asset.path)
            return f"{m.group(1)}{m.group(2)}{asset.url}{m.group(2)}"

        text = _HTML_REF.sub(sub, text)
        # Every module the entry points import, directly or not: fetched in parallel at once.
        preload = []
        for entry in entries:
            for url in self._graph_urls(entry):
                if url not in preload and not any(url == self.by_path[e].url for e in entries):
                    preload.append(url)
        links = "".join(f'\n    <link rel="modulepreload" href="{u}">' for u in preload)
        amap = {p: a.url for p, a in self.by_path.items()
                if not p.endswith((".js", ".css"))}
        meta = (f'\n    <meta name="nexa-assets" '
                f'content="{html.escape(json.dumps(amap, separators=(",", ":")), quote=True)}">')
        text = text.replace("</head>", f"{meta}{links}\n  </head>", 1)
        body = text.encode("utf-8")
        digest = hashlib.sha256(body).hexdigest()[:16]
        self.index = Asset("index.html", "/", body, _gzip(body), TYPES[".html"], f'"{digest}"')

    def _graph_urls(self, entry: str) -> list[str]:
        seen: list[str] = []
        stack = [entry]
        while stack:
            p = stack.pop()
            if p in seen or p not in self.by_path:
                continue
            seen.append(p)
            stack.extend(self._deps.get(p, {}).values())
        return [self.by_path[p].url for p in seen]


async def _assets() -> Assets:
    """This app's assets, read and compressed once (in a thread: file I/O and gzip)."""
    assets = current_app.config.get("NEXA_WEB_ASSETS")
    if assets is None:
        lock = current_app.config.setdefault("NEXA_WEB_ASSETS_LOCK", asyncio.Lock())
        async with lock:
            assets = current_app.config.get("NEXA_WEB_ASSETS")
            if assets is None:
                assets = await asyncio.to_thread(Assets, WEB_DIR)
                current_app.config["NEXA_WEB_ASSETS"] = assets
    return assets


@functools.lru_cache(maxsize=32)  # clients send the same few headers over and over
def accepts_gzip(header: str | None) -> bool:
    """True when Accept-Encoding allows gzip (or '*'), honouring q=0."""
    if not header:
        return False
    allowed: dict[str, float] = {}
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            k, _, v = param.strip().partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if name:
            allowed[name.strip().lower()] = q
    if "gzip" in allowed:
        return allowed["gzip"] > 0
    return allowed.get("*", 0) > 0


def _serve(asset: Asset, cache: str, extra: dict[str, str] | None = None) -> Response:
    headers = {**UI_HEADERS, "Cache-Control": cache, "ETag": asset.etag,
               "Vary": "Accept-Encoding", **(extra or {})}
    if request.headers.get("If-None-Match") == asset.etag:
        return Response(b"", 304, headers)
    if asset.gz is not None and accepts_gzip(request.headers.get("Accept-Encoding")):
        headers["Content-Encoding"] = "gzip"
        return Response(asset.gz, 200, headers, content_type=asset.content_type)
    return Response(asset.body, 200, headers, content_type=asset.content_type)


bp = Blueprint("web", __name__)


def _not_found() -> Response:
    return Response(b"Not found\n", 404, {**UI_HEADERS, "Cache-Control": NO_CACHE},
                    content_type="text/plain; charset=utf-8")


@bp.route("/", methods=["GET"])
async def index():
    assets = await _assets()
    if assets.index is None:
        return Response(b"The web UI is not installed (web/index.html is missing).\n", 404,
                        {**UI_HEADERS}, content_type="text/plain; charset=utf-8")
    return _serve(assets.index, NO_CACHE)


@bp.route("/static/<path:name>", methods=["GET"])
async def static(name: str):
    assets = await _assets()
    asset = assets.by_url.get(name)
    if asset is not None:
        return _serve(asset, IMMUTABLE)
    asset = assets.by_path.get(name)  # the plain name: always revalidated
    if asset is not None:
        return _serve(asset, NO_CACHE)
    return _not_found()


@bp.route("/favicon.ico", methods=["GET"])
async def favicon():
    asset = (await _assets()).by_path.get("img/icon.svg")
    return _serve(asset, "public, max-age=86400") if asset else _not_found()


async def compress_response(response: Response) -> Response:
    """gzip large compressible responses when the client accepts it."""
    body = response.response
    # Most API answers are small (a send's event ID): the cheapest test goes first.
    if not isinstance(body, DataBody) or len(body.data) < MIN_COMPRESS_BYTES:
        return response
    if (response.status_code < 200 or response.status_code in (204, 206, 304)
            or request.method == "HEAD" or "Content-Encoding" in response.headers
            or request.path.startswith(SKIP_PREFIXES)
            or not _compressible(response.content_type or "")):
        return response
    data = await response.get_data()
    vary = response.headers.get("Vary")
    if not vary:
        response.headers["Vary"] = "Accept-Encoding"
    elif "accept-encoding" not in vary.lower():
        response.headers["Vary"] = f"{vary}, Accept-Encoding"
    if not accepts_gzip(request.headers.get("Accept-Encoding")):
        return response
    if len(data) >= THREAD_COMPRESS_BYTES:
        packed = await asyncio.to_thread(_gzip, data, DYNAMIC_GZIP_LEVEL)
    else:
        packed = _gzip(data, DYNAMIC_GZIP_LEVEL)
    if len(packed) >= len(data):
        return response
    response.set_data(packed)
    response.headers["Content-Encoding"] = "gzip"
    return response


def register(app: Quart) -> None:
    """Mount the UI routes and the compression hook (called by create_app)."""
    app.register_blueprint(bp)
    app.after_request(compress_response)
