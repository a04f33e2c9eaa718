"""The bridge's side of the application-service API: transactions that are not from the
homeserver change nothing, third-party lookups for `xmpp`, portal rooms made on demand; and a
bad configuration stops `nexa-bridge xmpp` with a message naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import nio
import pytest
import yaml

from tests.bridges.fake_as import write_registration
from tests.bridges.xmpp.conftest import MUC
from tests.bridges.xmpp.prosody import MUC_DOMAIN

ROOT = Path(__file__).resolve().parents[3]


async def test_transactions_need_the_hs_token(xmpp_env):
    env = xmpp_env
    await env.start_bridge()
    alice = await env.matrix("alice", "Alice")
    bob = await env.xmpp("bob", "Bob")
    await bob.wait_for(lambda: any(p["from"] == f"{MUC}/Alice" for p in bob.presences))
    base = f"http://127.0.0.1:{env.port}/_matrix/app/v1"
    forged = {"events": [{"type": "m.room.message", "room_id": env.room_id,
                          "sender": alice.user_id, "event_id": "$forged",
                          "content": {"msgtype": "m.text", "body": "forged"}}]}
    good = {"Authorization": f"Bearer {env.hs_token}"}
    async with aiohttp.ClientSession() as s:
        cases = [
            ("PUT", "/transactions/t1", {}, forged, None, 401, "M_UNAUTHORIZED"),
            ("PUT", "/transactions/t1", {"Authorization": "Bearer nope"}, forged, None, 403,
             "M_FORBIDDEN"),
            ("PUT", "/transactions/t1?access_token=nope", {}, forged, None, 403, "M_FORBIDDEN"),
            ("PUT", "/transactions/t2", good, None, b"{not json", 400, "M_NOT_JSON"),
            ("PUT", "/transactions/t3", good, {"events": "nope"}, None, 400, "M_BAD_JSON"),
            ("PUT", "/transactions/t4", good, [1, 2], None, 400, "M_BAD_JSON"),
            ("GET", "/users/@xmpp_bob=40localhost:x", {}, None, None, 401, "M_UNAUTHORIZED"),
            ("GET", "/rooms/%23xmpp_x:x", {"Authorization": "Bearer nope"}, None, None, 403,
             "M_FORBIDDEN"),
            ("GET", "/thirdparty/protocol/xmpp", {}, None, None, 401, "M_UNAUTHORIZED"),
            ("GET", "/thirdparty/user/xmpp?jid=bob@localhost", {"Authorization": "Bearer x"},
             None, None, 403, "M_FORBIDDEN"),
        ]
        for method, path, headers, body, raw, status, errcode in cases:
            kw = {"json": body} if raw is None else {"data": raw}
            async with s.request(method, base + path, headers=headers, **kw) as r:
                assert r.status == status, (path, r.status, await r.text())
                assert (await r.json())["errcode"] == errcode, path
        # Odd events inside a genuine transaction are skipped, not fatal.
        odd = {"events": [{"type": "m.room.message"}, {"type": 5, "content": []},
                          {"type": "m.room.message", "room_id": env.room_id, "sender": 7,
                           "content": {"body": "x"}}, "not an event"]}
        async with s.put(base + "/transactions/odd", headers=good, json=odd) as r:
            assert r.status == 200
    await alice.text(env.room_id, "the real one")
    await bob.wait_for(lambda: "the real one" in bob.muc_bodies(MUC, "Alice"))
    assert "forged" not in bob.muc_bodies(MUC)


async def test_thirdparty_lookups_and_portals(xmpp_env):
    env = xmpp_env
    await env.start_bridge()
    base = f"http://127.0.0.1:{env.port}/_matrix/app/v1/thirdparty"
    headers = {"Authorization": f"Bearer {env.hs_token}"}
    lobby = f"lobby@{MUC_DOMAIN}"
    lobby_alias = f"#xmpp_lobby=40{MUC_DOMAIN}:{env.server_name}"

    async with aiohttp.ClientSession(headers=headers) as s:
        async def get(path, **params):
            async with s.get(base + path, params=params) as r:
                return r.status, await r.json()

        status, proto = await get("/protocol/xmpp")
        assert status == 200
        assert proto["user_fields"] == ["jid"] and proto["location_fields"] == ["muc"]
        assert set(proto["field_types"]) == {"jid", "muc"} and "icon" in proto
        assert proto["instances"] and proto["instances"][0]["network_id"]
        assert (await get("/protocol/irc"))[0] == 404

        assert await get("/location/xmpp", muc=MUC) == (200, [
            {"alias": env.room_alias, "protocol": "xmpp", "fields": {"muc": MUC}}])
        assert await get("/location/xmpp", muc=lobby) == (200, [
            {"alias": lobby_alias, "protocol": "xmpp", "fields": {"muc": lobby}}])
        assert (await get("/location/xmpp", muc="room@elsewhere.example"))[0] == 404
        status, err = await get("/location/xmpp", muc="not a jid")
        assert status == 400 and err["errcode"] == "M_INVALID_PARAM"
        status, err = await get("/location/xmpp")
        assert status == 400 and err["errcode"] == "M_MISSING_PARAM"
        assert (await get("/location/irc", muc=MUC))[0] == 404

        puppet = env.puppet("bob@localhost")
        assert await get("/user/xmpp", jid="Bob@LocalHost") == (200, [
            {"userid": puppet, "protocol": "xmpp", "fields": {"jid": "bob@localhost"}}])
        assert (await get("/user/xmpp", jid="@@"))[0] == 400
        assert (await get("/user/xmpp"))[0] == 400
        assert await get("/user", userid=puppet) == (200, [
            {"userid": puppet, "protocol": "xmpp", "fields": {"jid": "bob@localhost"}}])
        assert (await get("/user", userid=f"@someone:{env.server_name}"))[0] == 404
        assert await get("/location", alias=lobby_alias) == (200, [
            {"alias": lobby_alias, "protocol": "xmpp", "fields": {"muc": lobby}}])
        assert (await get("/location", alias=f"#other:{env.server_name}"))[0] == 404

    # Joining a portal alias makes the room on demand, bridged to that MUC.
    bob = await env.xmpp("bob")
    await bob.join(lobby, "Bob")
    alice = await env.new_matrix_user("alice")
    await alice.c.set_displayname("Alice")
    resp = await alice.c.join(lobby_alias)
    assert isinstance(resp, nio.JoinResponse), resp
    await bob.wait_for(lambda: any(p["from"] == f"{lobby}/Alice" for p in bob.presences),
                       what="Alice in the lobby")
    await alice.text(resp.room_id, "hi lobby")
    await bob.wait_for(lambda: "hi lobby" in bob.muc_bodies(lobby, "Alice"))
    bob.groupchat(lobby, "hi portal").send()
    await alice.wait_for(lambda: "hi portal" in alice.bodies(resp.room_id))
    # A Nexa user can find the puppet of any JID (the homeserver asks the bridge).
    status, _ = await alice_get_profile(env, alice, env.puppet("dave@localhost"))
    assert status == 200


async def test_clients_find_xmpp_through_the_homeserver(xmpp_env):
    """The homeserver's /thirdparty/... asks the bridge (when the homeserver has them)."""
    env = xmpp_env
    await env.start_bridge()
    user = await env.new_matrix_user("finder")
    base = f"{env.srv.base_url}/_matrix/client/v3/thirdparty"
    async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {user.c.access_token}"}) as s:
        async def get(path, **params):
            async with s.get(base + path, params=params) as r:
                return r.status, await r.json()

        status, protocols = await get("/protocols")
        if status == 404 and protocols.get("errcode") == "M_UNRECOGNIZED":
            pytest.skip("this homeserver has no /thirdparty endpoints")
        assert status == 200 and "xmpp" in protocols, protocols
        assert protocols["xmpp"]["instances"][0]["desc"] == "XMPP"
        status, users = await get("/user/xmpp", jid="bob@localhost")
        assert status == 200 and users[0]["userid"] == env.puppet("bob@localhost")
        status, locations = await get("/location/xmpp", muc=MUC)
        assert status == 200 and locations[0]["alias"] == env.room_alias


async def alice_get_profile(env, user, user_id):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{env.srv.base_url}/_matrix/client/v3/profile/{user_id}",
                         headers={"Authorization": f"Bearer {user.c.access_token}"}) as r:
            return r.status, await r.json()


async def test_wrong_component_secret_is_reported(xmpp_env):
    env = xmpp_env
    config = yaml.safe_load(env.config_path.read_text())
    config["xmpp"]["component"]["secret"] = "not-the-secret"
    env.config_path.write_text(yaml.safe_dump(config))
    await env.start_bridge(wait_joined=False)
    await env.wait_log("refused the component handshake")
    await env.wait_log("reconnecting to the XMPP server")  # and keeps trying, backing off
    assert env.proc.returncode is None


def run_bridge(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridges", "xmpp", "-c", str(config)],
                          cwd=config.parent, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("xmpp, problem", [
    (None, "xmpp.component"),
    ({"component": {"jid": "matrix.example.org"}}, "xmpp.component.secret"),
    ({"component": {"jid": "not a domain", "secret": "s"}}, "xmpp.component.jid"),
    ({"component": {"jid": "m.example.org", "secret": "s"}, "rooms": [{"muc": "nope"}]},
     "xmpp.rooms.0.muc"),
    ({"component": {"jid": "m.example.org", "secret": "s"},
      "rooms": [{"muc": "a@c.example.org", "room": "general"}]}, "xmpp.rooms.0.room"),
    ({"component": {"jid": "m.example.org", "secret": "s"}, "puppet_prefix": "Bad Prefix"},
     "xmpp.puppet_prefix"),
    ({"component": {"jid": "m.example.org", "secret": "s"}, "bogus": 1}, "xmpp.bogus"),
    ({"component": {"jid": "m.example.org", "secret": "s"}, "puppet_prefix": "other_"},
     "xmpp.puppet_prefix: @other_probe:example.org is not in the registration"),
    ({"component": {"jid": "m.example.org", "secret": "s"}, "portal_domains": ["c.example.org"],
      "alias_prefix": "elsewhere_"}, "xmpp.alias_prefix"),
])
def test_bad_config_is_refused(tmp_path, xmpp, problem):
    write_registration(tmp_path / "reg.yaml", id="xmpp", url="http://127.0.0.1:1",
                       sender="xmppbot", users=[("@xmpp_.*", True)],
                       aliases=[("#xmpp_.*", True)])
    config = {"homeserver": {"url": "http://127.0.0.1:1", "server_name": "example.org"},
              "registration": "reg.yaml", "database": "x.db"}
    if xmpp is not None:
        config["xmpp"] = xmpp
    (tmp_path / "xmpp.yaml").write_text(yaml.safe_dump(config))
    out = run_bridge(tmp_path / "xmpp.yaml")
    assert out.returncode == 2, out.stderr
    assert problem in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
