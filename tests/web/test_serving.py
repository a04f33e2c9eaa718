"""How the UI is served: content-hashed assets with immutable caching, index.html and the
plain names revalidated, gzip when accepted, a strict CSP, and compression of large JSON."""

from __future__ import annotations

import gzip
import re

import aiohttp

from homeserver.api.web import CSP, accepts_gzip

HASHED = re.compile(r"/static/[\w/.-]+\.[0-9a-f]{10}\.(?:js|css|svg|json)")


async def fetch(server, path: str, **headers: str):
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async with s.get(server.base_url + path, headers=headers) as r:
            return r.status, r.headers, await r.read()


async def test_index_links_hashed_assets_with_csp(server):
    status, headers, body = await fetch(server, "/", **{"Accept-Encoding": "identity"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-cache"
    assert headers["Content-Security-Policy"] == CSP
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                      "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'"):
        assert directive in CSP
    html = body.decode()
    assert "<script>" not in html and " style=" not in html and "onload=" not in html
    urls = set(HASHED.findall(html))
    assert any(u.startswith("/static/js/main.") for u in urls)
    assert any('rel="modulepreload"' in line for line in html.splitlines())
    assert "http://" not in html.replace(server.base_url, "") and "https://" not in html


async def test_hashed_assets_are_immutable_and_compressed(server):
    _, _, body = await fetch(server, "/")
    html = body.decode() if not body.startswith(b"\x1f\x8b") else gzip.decompress(body).decode()
    main = next(u for u in HASHED.findall(html) if u.startswith("/static/js/main."))
    status, headers, raw = await fetch(server, main, **{"Accept-Encoding": "gzip, br"})
    assert status == 200
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert headers["Content-Type"].startswith("text/javascript")
    assert headers["Content-Encoding"] == "gzip"
    text = gzip.decompress(raw).decode()
    # Imports point at hashed names too, so a changed module changes every importer's URL.
    imports = re.findall(r"""from\s+["']([^"']+)["']""", text)
    assert imports and all(HASHED.fullmatch(i) for i in imports), imports
    # Same asset, no gzip accepted: identity, same cache policy.
    status, headers, plain = await fetch(server, main, **{"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in headers and plain.decode() == text
    # Revalidation.
    status, _, _ = await fetch(server, main, **{"If-None-Match": headers["ETag"]})
    assert status == 304


async def test_plain_names_are_revalidated_and_unknown_is_404(server):
    status, headers, _ = await fetch(server, "/static/js/main.js")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    status, headers, _ = await fetch(server, "/static/i18n/en.json")
    assert status == 200 and headers["Cache-Control"] == "no-cache"
    status, _, _ = await fetch(server, "/static/../pyproject.toml")
    assert status == 404
    status, _, _ = await fetch(server, "/static/js/nope.0123456789.js")
    assert status == 404


async def test_large_json_is_gzipped_small_is_not(api):
    user = await api.register()
    big = {"blob": "x" * 20000}
    r = await user.put(f"/user/{user.user_id}/account_data/im.nexa.test", big)
    assert r.status == 200
    path = f"/_matrix/client/v3/user/{user.user_id}/account_data/im.nexa.test"
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        hdrs = {"Authorization": f"Bearer {user.token}", "Accept-Encoding": "gzip"}
        async with s.get(api.server.base_url + path, headers=hdrs) as r:
            raw = await r.read()
            assert r.headers.get("Content-Encoding") == "gzip"
            assert "Accept-Encoding" in r.headers.get("Vary", "")
            assert len(raw) < 2000
            assert gzip.decompress(raw).startswith(b'{"blob":"xxx')
        async with s.get(api.server.base_url + "/_matrix/client/versions",
                         headers={"Accept-Encoding": "gzip"}) as r:
            assert "Content-Encoding" not in r.headers  # under the 1 KiB threshold
        hdrs["Accept-Encoding"] = "gzip;q=0, identity"
        async with s.get(api.server.base_url + path, headers=hdrs) as r:
            assert "Content-Encoding" not in r.headers


def test_accept_encoding_parsing():
    assert accepts_gzip("gzip")
    assert accepts_gzip("br, gzip;q=0.5")
    assert accepts_gzip("*")
    assert not accepts_gzip(None)
    assert not accepts_gzip("identity")
    assert not accepts_gzip("gzip;q=0")
    assert not accepts_gzip("*;q=0")
    assert not accepts_gzip("br")
