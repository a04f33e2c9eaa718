"""Server keys and X-Matrix request authentication between two real servers over loopback."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

import tests.servers as servers
from homeserver.api import federation as federation_api
from homeserver.api import keys as keys_api
from homeserver.events.hashing import add_content_hash
from homeserver.events.room_versions import get_room_version
from homeserver.events.signing import SignatureError, SigningKey, sign_event, sign_json, verify_json
from homeserver.handlers.federation.keyring import KeyNotFound, Keyring
from homeserver.handlers.federation.transport import (
    DestinationUnreachable,
    FederationClient,
    FederationError,
    xmatrix_header,
)
from homeserver.storage import sql
from homeserver.types import now_ms

PING = "/_matrix/federation/unstable/im.nexa.ping"
V10 = get_room_version("10")


def _wired(create_app):
    """Until the lead wires keyring, client and blueprints in, attach them here (idempotent)."""

    def wrapper(config, hs=None):
        app = create_app(config, hs)
        server = app.hs
        if not hasattr(server, "keyring"):
            server.keyring = Keyring(server)
        if not hasattr(server, "federation_client"):
            server.federation_client = FederationClient(server)

            @app.after_serving
            async def _close() -> None:
                await server.federation_client.close()
        for bp in [keys_api.bp, *federation_api.blueprints()]:
            if bp.name not in app.blueprints:
                app.register_blueprint(bp)
        return app

    return wrapper


@pytest.fixture(scope="module")
async def pair(backend, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(servers, "create_app", _wired(servers.create_app))
        tmp = tmp_path_factory.mktemp("fed")
        a = await servers.start_server(tmp, backend, federation={"plain_http": True})
        b = await servers.start_server(tmp, backend, federation={"plain_http": True})
    yield a, b
    await a.destroy()
    await b.destroy()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as s:
        yield s


async def _call(http, srv, method, path, headers=None, json=None):
    async with http.request(method, srv.base_url + path, headers=headers or {},
                            json=json) as r:
        return r.status, await r.json(content_type=None)


def _header_with_key(origin: str, destination: str, key: SigningKey, method: str, uri: str,
                     content=None) -> str:
    obj = {"method": method, "uri": uri, "origin": origin, "destination": destination}
    if content is not None:
        obj["content"] = content
    sig = sign_json(obj, origin, key)["signatures"][origin][key.key_id]
    return xmatrix_header(origin, destination, key.key_id, sig)


class _DbOf:
    """Run test code against one server's database."""

    def __init__(self, srv):
        self.srv = srv

    def __enter__(self):
        self.token = self.srv.hs.db.activate()

    def __exit__(self, *exc):
        self.srv.hs.db.deactivate(self.token)


# --- keys ----------------------------------------------------------------------------------

async def test_key_endpoint_is_self_signed(pair, http):
    _, b = pair
    for path in ("/_matrix/key/v2/server", f"/_matrix/key/v2/server/{b.hs.signing_key.key_id}"):
        status, body = await _call(http, b, "GET", path)
        assert status == 200
        assert body["server_name"] == b.server_name and body["old_verify_keys"] == {}
        assert body["valid_until_ts"] > now_ms() + 23 * 3600 * 1000
        (kid, entry), = body["verify_keys"].items()
        assert kid == b.hs.signing_key.key_id and kid.startswith("ed25519:")
        verify_json(body, b.server_name, kid, entry["key"])


async def test_signing_key_file_is_private(pair):
    a, _ = pair
    assert ((a.data_dir / "signing.key").stat().st_mode & 0o777) == 0o600


async def test_version_is_unauthenticated_and_unknown_paths_404(pair, http):
    a, _ = pair
    status, body = await _call(http, a, "GET", "/_matrix/federation/v1/version")
    assert status == 200 and body["server"]["name"] == "Nexa" and body["server"]["version"]
    status, body = await _call(http, a, "GET", "/_matrix/federation/v1/nonsense/x")
    assert (status, body["errcode"]) == (404, "M_UNRECOGNIZED")


async def test_well_known_server_delegation(pair, http):
    a, _ = pair
    status, body = await _call(http, a, "GET", "/.well-known/matrix/server")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    try:
        a.hs.config.federation.well_known_server = "fed.example.org:443"
        assert await _call(http, a, "GET", "/.well-known/matrix/server") == (
            200, {"m.server": "fed.example.org:443"})
    finally:
        a.hs.config.federation.well_known_server = None


async def test_keyring_fetches_caches_and_stores(pair):
    a, b = pair
    kid = b.hs.signing_key.key_id
    with _DbOf(a):
        key = await a.hs.keyring.get_verify_key(b.server_name, kid)
        assert key.public_bytes_raw() == b.hs.signing_key.verify_key.public_bytes_raw()
        rows = await sql.fetch("SELECT key_id, verify_key, valid_until_ts FROM server_keys "
                               "WHERE server_name = ?", [b.server_name])
        assert [(r["key_id"], r["verify_key"]) for r in rows] == [
            (kid, b.hs.signing_key.verify_key_b64)]
        # A fresh keyring (as after a restart) finds it in the table without fetching.
        fresh = Keyring(a.hs)
        fresh._fetch = None  # type: ignore[assignment]  # would raise if called
        assert (await fresh.get_verify_key(b.server_name, kid)).public_bytes_raw() == \
            key.public_bytes_raw()


async def test_concurrent_lookups_share_one_fetch_and_failures_are_cached(pair, monkeypatch):
    a, b = pair
    kid = b.hs.signing_key.key_id
    client = a.hs.federation_client
    calls: list[str] = []
    real = client.get_server_keys

    async def counting(dest):
        calls.append(dest)
        await asyncio.sleep(0.05)
        return await real(dest)

    monkeypatch.setattr(client, "get_server_keys", counting)
    keyring = Keyring(a.hs)
    with _DbOf(a):
        await sql.execute("DELETE FROM server_keys WHERE server_name = ?", [b.server_name])
        keys = await asyncio.gather(*(keyring.get_verify_key(b.server_name, kid)
                                      for _ in range(5)))
        assert len({k.public_bytes_raw() for k in keys}) == 1 and calls == [b.server_name]
        # An unknown key ID right after a fetch does not make us fetch again.
        with pytest.raises(KeyNotFound):
            await keyring.get_verify_key(b.server_name, "ed25519:nope")
        assert len(calls) == 1
        # Port 9 on loopback refuses connections: the failure is remembered.
        dead = "127.0.0.1:9"
        for _ in range(3):
            with pytest.raises(KeyNotFound, match="127.0.0.1:9"):
                await keyring.get_verify_key(dead, "ed25519:x")
        assert calls.count(dead) == 1


async def test_old_keys_are_honoured_for_old_signatures(pair):
    a, _ = pair
    old = SigningKey.generate("old")
    dead = "127.0.0.1:7"
    with _DbOf(a):
        await sql.execute("INSERT INTO server_keys (server_name, key_id, verify_key, "
                          "valid_until_ts, fetched_ts) VALUES (?,?,?,?,?)",
                          [dead, old.key_id, old.verify_key_b64, 5000, now_ms()])
        keyring = Keyring(a.hs)
        assert await keyring.get_verify_key(dead, old.key_id, at_ts=4000)
        assert await keyring.get_verify_key(dead, old.key_id)
        with pytest.raises(KeyNotFound):
            await keyring.get_verify_key(dead, old.key_id, at_ts=6000)
        obj = sign_json({"x": 1}, dead, old)
        await keyring.verify_json_from(dead, obj)
        with pytest.raises(SignatureError):
            await keyring.verify_json_from(dead, {**obj, "x": 2})


async def test_verify_event_checks_sender_and_authorising_servers(pair):
    a, b = pair
    ev = add_content_hash({
        "room_id": f"!r:{b.server_name}", "sender": f"@u:{b.server_name}",
        "type": "m.room.message", "content": {"body": "hi"}, "origin_server_ts": now_ms(),
        "depth": 3, "prev_events": [], "auth_events": []})
    signed = sign_event(ev, b.server_name, b.hs.signing_key, V10)
    with _DbOf(a):
        await a.hs.keyring.verify_event(signed, V10)
        await a.hs.keyring.verify_event(signed, "10")
        with pytest.raises(SignatureError):
            await a.hs.keyring.verify_event({**signed, "origin_server_ts": 1}, V10)
        with pytest.raises(SignatureError):  # signed by the wrong server
            await a.hs.keyring.verify_event(
                sign_event(ev, a.server_name, a.hs.signing_key, V10), V10)
        join = add_content_hash({
            "room_id": f"!r:{b.server_name}", "sender": f"@j:{a.server_name}",
            "state_key": f"@j:{a.server_name}", "type": "m.room.member",
            "content": {"membership": "join",
                        "join_authorised_via_users_server": f"@admin:{b.server_name}"},
            "origin_server_ts": now_ms(), "depth": 4, "prev_events": [], "auth_events": []})
        only_joiner = sign_event(join, a.server_name, a.hs.signing_key, V10)
        with pytest.raises(SignatureError, match=b.server_name.replace(".", r"\.")):
            await a.hs.keyring.verify_event(only_joiner, V10)
        both = sign_event(only_joiner, b.server_name, b.hs.signing_key, V10)
        await a.hs.keyring.verify_event(both, V10)
        for bad in ({}, {"sender": "nobody"}, [], {"sender": "@x:y", "signatures": "z"}):
            with pytest.raises(SignatureError):
                await a.hs.keyring.verify_event(bad, V10)


async def test_notary_returns_keys_signed_by_both(pair, http):
    a, b = pair
    status, body = await _call(http, a, "GET", f"/_matrix/key/v2/query/{b.server_name}")
    assert status == 200
    (resp,), = [body["server_keys"]]
    kid_a, kid_b = a.hs.signing_key.key_id, b.hs.signing_key.key_id
    verify_json(resp, b.server_name, kid_b, b.hs.signing_key.verify_key)
    verify_json(resp, a.server_name, kid_a, a.hs.signing_key.verify_key)
    status, body = await _call(http, a, "POST", "/_matrix/key/v2/query", json={
        "server_keys": {b.server_name: {}, a.server_name: {kid_a: {}}, "127.0.0.1:9": {}}})
    assert status == 200
    assert sorted(r["server_name"] for r in body["server_keys"]) == sorted(
        [a.server_name, b.server_name])
    for bad in ({}, {"server_keys": []}, {"server_keys": {"x": 1}}):
        status, body = await _call(http, a, "POST", "/_matrix/key/v2/query", json=bad)
        assert status == 400, body


# --- request authentication ----------------------------------------------------------------

async def test_signed_request_is_accepted(pair):
    a, b = pair
    client = a.hs.federation_client
    assert await client.request(b.server_name, "GET", PING) == {"origin": a.server_name}
    assert await client.request(b.server_name, "POST", PING, json={"a": [1, "é"]},
                                query={"x": "!a:b/c", "v": ["1", "2"]}) == \
        {"origin": a.server_name}


async def test_unsigned_request_is_rejected(pair, http):
    _, b = pair
    status, body = await _call(http, b, "GET", PING)
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    status, body = await _call(http, b, "GET", PING, headers={"Authorization": "Bearer x"})
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")


async def test_tampered_signature_or_request_is_rejected(pair, http):
    a, b = pair
    client = a.hs.federation_client
    good = client.sign_request(b.server_name, "GET", PING)
    zeros = good.rsplit('sig="', 1)[0] + 'sig="' + "A" * 86 + '"'
    other_path = client.sign_request(b.server_name, "GET", PING + "?x=1")
    other_method = client.sign_request(b.server_name, "POST", PING)
    for header in (zeros, other_path, other_method):
        status, body = await _call(http, b, "GET", PING, headers={"Authorization": header})
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), header
    body_header = client.sign_request(b.server_name, "POST", PING, {"a": 1})
    status, _ = await _call(http, b, "POST", PING, headers={"Authorization": body_header},
                            json={"a": 2})
    assert status == 401
    status, _ = await _call(http, b, "POST", PING, headers={"Authorization": body_header},
                            json={"a": 1})
    assert status == 200


async def test_wrong_destination_is_rejected(pair, http):
    a, b = pair
    header = a.hs.federation_client.sign_request("elsewhere.example", "GET", PING)
    status, body = await _call(http, b, "GET", PING, headers={"Authorization": header})
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    assert "elsewhere.example" in body["error"]


async def test_unknown_key_id_is_rejected(pair, http):
    a, b = pair
    rogue = SigningKey.generate("rogue")
    header = _header_with_key(a.server_name, b.server_name, rogue, "GET", PING)
    status, body = await _call(http, b, "GET", PING, headers={"Authorization": header})
    assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
    # A right key ID with a signature from another key fails as well.
    impostor = SigningKey.generate(a.hs.signing_key.version)
    header = _header_with_key(a.server_name, b.server_name, impostor, "GET", PING)
    status, _ = await _call(http, b, "GET", PING, headers={"Authorization": header})
    assert status == 401


@pytest.mark.parametrize("header", [
    "X-Matrix", 'X-Matrix origin="a', "X-Matrix origin=a,key=ed25519:k,sig=s",
    'X-Matrix origin="bad name!",key="ed25519:k",sig="s"',
    'X-Matrix origin="127.0.0.1:9",key="ed25519:k",sig="s"',
    'X-Matrix origin="x.example",key="rsa:k",sig="s"', "X-Matrix " + "a=b," * 3000,
])
async def test_malformed_headers_are_401_never_500(pair, http, header):
    _, b = pair
    status, body = await _call(http, b, "GET", PING, headers={"Authorization": header})
    assert status in (401, 403, 431), body  # 431: hypercorn's own limit for huge headers


async def test_origin_is_this_server_or_body_not_json(pair, http):
    a, b = pair
    header = b.hs.federation_client.sign_request(b.server_name, "GET", PING)
    status, _ = await _call(http, b, "GET", PING, headers={"Authorization": header})
    assert status == 401
    header = a.hs.federation_client.sign_request(b.server_name, "POST", PING, {"a": 1})
    async with http.post(b.base_url + PING, data=b"{not json",
                         headers={"Authorization": header}) as r:
        assert r.status == 401


async def test_allow_and_deny_lists(pair, http):
    a, b = pair
    fed_b, client = b.hs.config.federation, a.hs.federation_client
    try:
        fed_b.deny = [a.server_name]
        with pytest.raises(FederationError) as e:
            await client.request(b.server_name, "GET", PING)
        assert (e.value.status, e.value.errcode) == (403, "M_FORBIDDEN")
        fed_b.deny = []
        fed_b.allow = ["friends.example"]
        with pytest.raises(FederationError) as e:
            await client.request(b.server_name, "GET", PING)
        assert e.value.status == 403
        fed_b.allow = ["localhost:*"]
        assert await client.request(b.server_name, "GET", PING) == {"origin": a.server_name}
    finally:
        fed_b.allow, fed_b.deny = None, []
    fed_a = a.hs.config.federation
    try:
        fed_a.deny = [b.server_name]
        with pytest.raises(FederationError) as e:  # refused locally, nothing sent
            await client.request(b.server_name, "GET", PING)
        assert e.value.status == 403 and e.value.body is None
    finally:
        fed_a.deny = []


async def test_client_errors_and_unreachable(pair):
    a, b = pair
    client = a.hs.federation_client
    with pytest.raises(FederationError) as e:
        await client.request(b.server_name, "GET", "/_matrix/federation/v1/nope")
    assert (e.value.status, e.value.errcode) == (404, "M_UNRECOGNIZED")
    with pytest.raises(DestinationUnreachable):
        await client.request("127.0.0.1:9", "GET", PING, timeout=5)
    with pytest.raises(ValueError):
        await client.request(a.server_name, "GET", PING)
    assert (await client.get_server_keys(b.server_name))["server_name"] == b.server_name
    assert (await client.request(b.server_name, "GET", "/_matrix/federation/v1/version",
                                 sign=False))["server"]["name"] == "Nexa"
