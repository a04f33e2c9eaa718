"""The bridge's HTTP side: transactions and third-party lookups need the hs_token and refuse bad
input with 4xx (nothing reaches IRC); portals on demand by alias; bad configs refused."""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp
import yaml

from tests.bridges.irc.conftest import CHANNEL, ROOT, is_msg, privmsg


async def test_transactions_and_lookups_need_the_token(irc_env):
    env = irc_env
    alice, bob = await env.start_with_alice_and_bob()
    base = f"http://127.0.0.1:{env.port}/_matrix/app/v1"
    good = {"Authorization": f"Bearer {env.registration['hs_token']}"}
    forged = {"events": [{"type": "m.room.message", "room_id": env.room_id,
                          "sender": bob.user_id, "event_id": "$forged",
                          "content": {"msgtype": "m.text", "body": "forged"}}]}
    async with aiohttp.ClientSession() as s:
        async def call(method, path, headers=None, **kw):
            async with s.request(method, base + path, headers=headers, **kw) as r:
                return r.status, await r.json(content_type=None)

        status, body = await call("PUT", "/transactions/t1", json=forged)
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED")
        status, body = await call("PUT", "/transactions/t1", json=forged,
                                  headers={"Authorization": "Bearer wrong"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        status, body = await call("PUT", "/transactions/t2", data=b"{not json",
                                  headers={**good, "Content-Type": "application/json"})
        assert (status, body["errcode"]) == (400, "M_NOT_JSON")
        status, body = await call("PUT", "/transactions/t3", json={"events": "nope"},
                                  headers=good)
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        # Junk events inside a well-formed transaction are skipped, not fatal.
        status, _ = await call("PUT", "/transactions/t4", headers=good, json={"events": [
            {"type": "m.room.message", "room_id": env.room_id, "content": "x"},
            {"type": "m.room.member", "room_id": env.room_id, "state_key": 5}, 7]})
        assert status == 200

        # Third-party lookups (the homeserver proxies /_matrix/client/v3/thirdparty to these).
        status, proto = await call("GET", "/thirdparty/protocol/irc", headers=good)
        assert status == 200
        assert proto["user_fields"] == ["network", "nickname"]
        assert proto["location_fields"] == ["network", "channel"]
        assert set(proto["field_types"]) == {"network", "nickname", "channel"}
        assert proto["instances"] == [{"desc": "Test network", "icon": "",
                                       "fields": {"network": "testnet"},
                                       "network_id": "testnet"}]
        assert (await call("GET", "/thirdparty/protocol/xmpp", headers=good))[0] == 404
        assert (await call("GET", "/thirdparty/protocol/irc"))[0] == 401
        assert (await call("GET", "/thirdparty/protocol/irc",
                           headers={"Authorization": "Bearer x"}))[0] == 403
        status, locs = await call("GET", "/thirdparty/location/irc", headers=good,
                                  params={"channel": CHANNEL, "network": "testnet"})
        assert status == 200 and locs == [{"alias": env.alias, "protocol": "irc", "fields": {
            "network": "testnet", "channel": CHANNEL}}]
        assert (await call("GET", "/thirdparty/location/irc", headers=good,
                           params={"channel": "nochan"}))[0] == 400
        assert (await call("GET", "/thirdparty/location/irc", headers=good))[0] == 400
        assert (await call("GET", "/thirdparty/location/irc", headers=good,
                           params={"channel": CHANNEL, "network": "other"}))[0] == 404
        status, locs = await call("GET", "/thirdparty/location", headers=good,
                                  params={"alias": env.alias})
        assert status == 200 and locs[0]["fields"]["channel"] == CHANNEL
        assert (await call("GET", "/thirdparty/location", headers=good,
                           params={"alias": "#elsewhere:example.org"}))[0] == 404
        status, users = await call("GET", "/thirdparty/user/irc", headers=good,
                                   params={"nickname": "alice"})
        assert status == 200 and users == [{"userid": env.puppet_id("alice"), "protocol": "irc",
                                            "fields": {"network": "testnet",
                                                       "nickname": "alice"}}]
        assert (await call("GET", "/thirdparty/user/irc", headers=good,
                           params={"nickname": "#bad nick"}))[0] == 400
        status, users = await call("GET", "/thirdparty/user", headers=good,
                                   params={"userid": env.puppet_id("alice")})
        assert status == 200 and users[0]["fields"]["nickname"] == "alice"
        assert (await call("GET", "/thirdparty/user", headers=good,
                           params={"userid": bob.user_id}))[0] == 404
        assert (await call("GET", "/thirdparty/user",
                           params={"userid": bob.user_id}))[0] == 401

    # Nothing of the refused transactions reached IRC.
    await bob.text(env.room_id, "genuine")
    await alice.wait_for(privmsg("genuine", nick="Bob[m]"))
    assert [m.text for m in alice.messages(CHANNEL)] == ["genuine"]


async def test_portal_on_demand_by_alias(irc_env):
    env = irc_env
    await env.start()
    dave = await env.irc("dave", join=False)
    await dave.join("#other")
    bob = await env.matrix("bob", displayname="Bob", join=False)
    resp = await bob.client.join(f"#irc_other:{env.server_name}")
    assert getattr(resp, "room_id", None), resp
    room_id = resp.room_id
    await dave.wait_for(lambda m: m.command == "JOIN" and m.nick == "NexaBridge")
    await dave.wait_for(lambda m: m.command == "JOIN" and m.nick == "Bob[m]")
    await bob.text(room_id, "found you")
    await dave.wait_for(privmsg("found you", nick="Bob[m]"))
    await dave.privmsg("#other", "welcome")
    ev = await bob.wait_for(is_msg("welcome"))
    assert ev["room_id"] == room_id and ev["sender"] == env.puppet_id("dave")
    # An alias outside the channel syntax is not created.
    resp = await bob.client.join(f"#irc_:{env.server_name}")
    assert not getattr(resp, "room_id", None)


async def run_bridge(tmp_path, config: dict) -> tuple[int, str]:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridges", "irc", "-c", str(path), cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, err.decode()


async def test_bad_configs_are_refused_with_the_key(tmp_path):
    from tests.bridges.fake_as import write_registration

    write_registration(tmp_path / "reg.yaml", id="irc", url="http://127.0.0.1:1",
                       sender="ircbot", users=[("@irc_.*", True)])
    base = {"homeserver": {"url": "http://127.0.0.1:1", "server_name": "hs.test"},
            "registration": "reg.yaml", "listen": {"host": "127.0.0.1", "port": 0},
            "database": "b.db", "logging": {"level": "ERROR"}}
    server = {"host": "127.0.0.1", "port": 1}
    rc, err = await run_bridge(tmp_path, {**base, "irc": {"bogus": 1, "server": server}})
    assert rc == 2 and "irc.bogus: unknown key" in err
    rc, err = await run_bridge(tmp_path, {**base, "irc": {}})
    assert rc == 2 and "irc.server" in err
    rc, err = await run_bridge(tmp_path, {**base, "irc": {
        "server": server, "channels": [{"channel": "no-hash"}]}})
    assert rc == 2 and "irc.channels.0.channel" in err
    # The bridge only acts inside its registration's namespace.
    rc, err = await run_bridge(tmp_path, {**base, "irc": {
        "server": server, "puppet_prefix": "evil_"}})
    assert rc == 2 and "irc.puppet_prefix" in err and "namespace" in err
