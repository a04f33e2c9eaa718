"""X-Matrix headers: parsing (quoting, escaping, order), signing round trips, and failures;
plus the pure helpers of the federation transport and the key-response checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from homeserver.api.federation.auth import parse_xmatrix
from homeserver.config import FederationConfig
from homeserver.events.signing import SignatureError, SigningKey, sign_json, verify_json
from homeserver.handlers.federation.keyring import Keyring
from homeserver.types import is_ip_literal, split_server_name
from homeserver.handlers.federation.transport import (
    FederationClient,
    quote_path,
    server_allowed,
    xmatrix_header,
)
from homeserver.types import now_ms


def fake_hs(name: str = "origin.example", key: SigningKey | None = None, **fed):
    return SimpleNamespace(server_name=name, signing_key=key or SigningKey.generate(),
                           config=SimpleNamespace(federation=FederationConfig(**fed)))


# --- parsing -------------------------------------------------------------------------------

def test_parse_quoted_params():
    h = 'X-Matrix origin="a.example",destination="b.example",key="ed25519:k1",sig="AbC/+d"'
    assert parse_xmatrix(h) == {"origin": "a.example", "destination": "b.example",
                                "key": "ed25519:k1", "sig": "AbC/+d"}


def test_parse_unquoted_any_order_spaces_and_case():
    h = 'x-matrix  SIG=abc , key = ed25519:k1,origin=a.example:8448'
    assert parse_xmatrix(h) == {"sig": "abc", "key": "ed25519:k1", "origin": "a.example:8448"}


def test_parse_escapes_and_commas_inside_quotes():
    h = r'X-Matrix origin="we\"ird,name",key="ed25519:a\\b",sig="s"'
    p = parse_xmatrix(h)
    assert p["origin"] == 'we"ird,name'
    assert p["key"] == "ed25519:a\\b"


def test_parse_ignores_unknown_params_and_trailing_comma():
    p = parse_xmatrix('X-Matrix origin=o,key=ed25519:k,sig=s,realm="x",')
    assert p["realm"] == "x" and p["origin"] == "o"


@pytest.mark.parametrize("header", [
    "", "Bearer abc", "X-Matrix", "X-Matrix ", 'X-Matrix origin="o",key="ed25519:k"',
    'X-Matrix origin="o,key=ed25519:k,sig=s', 'X-Matrix origin=o key=ed25519:k sig=s',
    'X-Matrix origin=o,origin=p,key=ed25519:k,sig=s', 'X-Matrix origin,key=k,sig=s',
    'X-Matrix origin=,key=k,sig=s', 'X-Matrix =o,key=k,sig=s', 'X-Matrix origin="o\\',
    'X-Matrix origin="",key=k,sig=s', "X-Matrix " + "a" * 9000,
    'X-Matrix origin="o"x,key=k,sig=s', "X-Matrix (origin)=o,key=k,sig=s",
])
def test_parse_rejects_malformed(header):
    with pytest.raises(ValueError):
        parse_xmatrix(header)


def test_header_builder_round_trips_awkward_values():
    h = xmatrix_header('o"r\\g', "d", "ed25519:k", "s")
    assert parse_xmatrix(h) == {"origin": 'o"r\\g', "destination": "d", "key": "ed25519:k",
                                "sig": "s"}


# --- signing round trip --------------------------------------------------------------------

def _signed_request(header: str, method: str, uri: str, destination: str, content=None):
    p = parse_xmatrix(header)
    obj = {"method": method, "uri": uri, "origin": p["origin"], "destination": destination,
           "signatures": {p["origin"]: {p["key"]: p["sig"]}}}
    if content is not None:
        obj["content"] = content
    return p, obj


def test_sign_request_verifies_with_the_origin_key():
    hs = fake_hs()
    client = FederationClient(hs)
    uri = "/_matrix/federation/v1/send/t%201?x=%21y"
    header = client.sign_request("dest.example", "PUT", uri, {"pdus": [], "n": 1})
    p, obj = _signed_request(header, "PUT", uri, "dest.example", {"pdus": [], "n": 1})
    assert p["destination"] == "dest.example" and p["key"] == hs.signing_key.key_id
    verify_json(obj, "origin.example", p["key"], hs.signing_key.verify_key)
    # The same signature via the published base64 key.
    verify_json(obj, "origin.example", p["key"], hs.signing_key.verify_key_b64)


def test_sign_request_without_content():
    hs = fake_hs()
    header = FederationClient(hs).sign_request("d", "GET", "/x", None)
    p, obj = _signed_request(header, "GET", "/x", "d")
    verify_json(obj, "origin.example", p["key"], hs.signing_key.verify_key)


@pytest.mark.parametrize("change", [
    {"method": "POST"}, {"uri": "/_matrix/federation/v1/send/t%202"},
    {"destination": "other.example"}, {"content": {"pdus": [1]}}, {"origin": "evil.example"},
])
def test_signature_fails_when_anything_signed_changes(change):
    hs = fake_hs()
    uri = "/_matrix/federation/v1/send/t%201"
    header = FederationClient(hs).sign_request("dest.example", "PUT", uri, {"pdus": []})
    p, obj = _signed_request(header, "PUT", uri, "dest.example", {"pdus": []})
    obj.update(change)
    if "origin" in change:
        obj["signatures"] = {"evil.example": obj["signatures"]["origin.example"]}
    with pytest.raises(SignatureError):
        verify_json(obj, obj["origin"], p["key"], hs.signing_key.verify_key)


def test_signature_fails_with_another_key_or_garbage_sig():
    hs = fake_hs()
    header = FederationClient(hs).sign_request("d", "GET", "/x")
    p, obj = _signed_request(header, "GET", "/x", "d")
    with pytest.raises(SignatureError):
        verify_json(obj, "origin.example", p["key"], SigningKey.generate().verify_key)
    obj["signatures"]["origin.example"][p["key"]] = "not base64!"
    with pytest.raises(SignatureError):
        verify_json(obj, "origin.example", p["key"], hs.signing_key.verify_key)


# --- transport helpers ---------------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("example.org", ("example.org", None)), ("example.org:8448", ("example.org", 8448)),
    ("1.2.3.4:80", ("1.2.3.4", 80)), ("[::1]", ("[::1]", None)),
    ("[2001:db8::1]:1234", ("[2001:db8::1]", 1234)),
])
def test_split_server_name(name, expected):
    assert split_server_name(name) == expected


@pytest.mark.parametrize("name", ["", "a:b", "a:0", "a:70000", "::1", "[::1", "[::1]x",
                                  "a/b:1", "a b"])
def test_split_server_name_rejects(name):
    with pytest.raises(ValueError):
        split_server_name(name)


def test_ip_literal_and_quote_path():
    assert is_ip_literal("[::1]") and is_ip_literal("10.0.0.1") and not is_ip_literal("a.b")
    assert quote_path("/rooms/{}/event/{}", "!r:x.org", "$a/b+c") == \
        "/rooms/%21r%3Ax.org/event/%24a%2Fb%2Bc"


def test_allow_and_deny_lists():
    cfg = FederationConfig(deny=["bad.example", "*.evil.example"])
    assert server_allowed(cfg, "good.example")
    assert not server_allowed(cfg, "BAD.example")
    assert not server_allowed(cfg, "x.evil.example")
    cfg = FederationConfig(allow=["friend.example", "*.corp"], deny=["x.corp"])
    assert server_allowed(cfg, "friend.example") and server_allowed(cfg, "a.corp")
    assert not server_allowed(cfg, "x.corp") and not server_allowed(cfg, "stranger.example")


async def test_route_plain_http_and_explicit_ports():
    from homeserver.handlers.federation.discovery import Route

    plain = FederationClient(fake_hs(plain_http=True))
    assert await plain.route("localhost:8123") == "http://localhost:8123"
    assert await plain.route("localhost") == "http://localhost:8008"
    tls = FederationClient(fake_hs())
    assert await tls.route("example.org:443") == Route("example.org", 443, "example.org",
                                                       "example.org:443")
    assert await tls.route("192.0.2.1") == Route("192.0.2.1", 8448, "192.0.2.1", "192.0.2.1")
    route = await tls.route("[::1]")
    assert route == Route("::1", 8448, "::1", "[::1]")
    assert route.base_url == "https://[::1]:8448"


async def test_request_refuses_self_and_blocked_destinations():
    from homeserver.handlers.federation.transport import FederationError

    client = FederationClient(fake_hs(deny=["blocked.example"]))
    with pytest.raises(ValueError):
        await client.request("origin.example", "GET", "/x")
    with pytest.raises(FederationError) as e:
        await client.request("blocked.example", "GET", "/x")
    assert e.value.status == 403 and e.value.errcode == "M_FORBIDDEN"
    assert client._session is None  # nothing was sent


# --- key responses -------------------------------------------------------------------------

def _key_response(name: str, key: SigningKey, **extra):
    body = {"server_name": name, "verify_keys": {key.key_id: {"key": key.verify_key_b64}},
            "old_verify_keys": {}, "valid_until_ts": now_ms() + 1000, **extra}
    return sign_json(body, name, key)


def test_own_server_keys_are_self_signed():
    hs = fake_hs()
    body = Keyring(hs).own_server_keys()
    assert body["server_name"] == "origin.example" and body["old_verify_keys"] == {}
    assert body["valid_until_ts"] > now_ms() + 23 * 3600 * 1000
    kid = hs.signing_key.key_id
    verify_json(body, "origin.example", kid, body["verify_keys"][kid]["key"])


def test_check_response_accepts_self_signed_with_old_keys():
    key, old = SigningKey.generate("new"), SigningKey.generate("old")
    resp = _key_response("r.example", key, old_verify_keys={
        old.key_id: {"key": old.verify_key_b64, "expired_ts": 1234}})
    keys = Keyring._check_response("r.example", resp)
    assert keys[old.key_id][2] == 1234 and keys[key.key_id][2] == resp["valid_until_ts"]


@pytest.mark.parametrize("mutate", ["name", "unsigned", "other_signer", "tampered", "no_ts"])
def test_check_response_rejects(mutate):
    key = SigningKey.generate()
    resp = _key_response("r.example", key)
    if mutate == "name":
        resp = _key_response("other.example", key)
    elif mutate == "unsigned":
        del resp["signatures"]
    elif mutate == "other_signer":
        resp = sign_json({k: v for k, v in resp.items() if k != "signatures"}, "r.example",
                         SigningKey.generate())
    elif mutate == "tampered":
        resp["valid_until_ts"] += 1
    else:
        del resp["valid_until_ts"]
    with pytest.raises(ValueError):  # SignatureError is a ValueError
        Keyring._check_response("r.example", resp)


# --- discovery and TLS ---------------------------------------------------------------------

async def test_well_known_delegation_is_followed_and_cached(monkeypatch):
    client = FederationClient(fake_hs())
    answers = {"a.example": "deleg.example:1234", "b.example": "deleg.example",
               "c.example": None, "d.example": "bad name:x"}
    calls = []

    async def fake_fetch(host):
        calls.append(host)
        return answers[host]

    async def no_srv(_name):
        return []

    monkeypatch.setattr(client, "_fetch_well_known", fake_fetch)
    monkeypatch.setattr(client._dns, "srv", no_srv)
    bases = [(await client.route(name)).base_url
             for name in ("a.example", "b.example", "c.example", "d.example", "a.example")]
    assert bases == ["https://deleg.example:1234", "https://deleg.example:8448",
                     "https://c.example:8448", "https://d.example:8448",
                     "https://deleg.example:1234"]
    assert calls == ["a.example", "b.example", "c.example", "d.example"]  # then cached


async def test_outbound_tls_verification_uses_configured_trust(tmp_path):
    import ssl

    from aiohttp import web

    from homeserver.handlers.federation.transport import DestinationUnreachable

    from tests.tls import self_signed_cert

    cert_file, key_file = self_signed_cert(tmp_path)
    async def keys(_request):
        return web.json_response({"server_name": "tls"})

    app = web.Application()
    app.router.add_get("/_matrix/key/v2/server", keys)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    dest = f"localhost:{port}"
    clients = {"trusted": FederationClient(fake_hs(ca_file=cert_file)),
               "untrusted": FederationClient(fake_hs()),
               "unverified": FederationClient(fake_hs(tls_verify=False)),
               "plain": FederationClient(fake_hs(plain_http=True))}
    try:
        route = await clients["trusted"].route(dest)
        assert route.base_url == f"https://localhost:{port}"
        assert await clients["trusted"].get_server_keys(dest) == {"server_name": "tls"}
        assert await clients["unverified"].get_server_keys(dest) == {"server_name": "tls"}
        for name in ("untrusted", "plain"):
            with pytest.raises(DestinationUnreachable):
                await clients[name].get_server_keys(dest)
    finally:
        for c in clients.values():
            await c.close()
        await runner.cleanup()
