"""Third-party networks, homeserver side: /thirdparty/... asked of the application services whose
registration lists the protocol (hs_token in the Authorization header), answers merged, an
unreachable or hanging service never holding the client up, and bad input answered with
Matrix errors."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.bridges.fake_as import FakeAppService
from tests.client import Api
from tests.servers import free_port

IRC_META = {
    "user_fields": ["network", "nickname"],
    "location_fields": ["network", "channel"],
    "icon": "mxc://example.org/irc",
    "field_types": {"network": {"regexp": "[a-z.]+", "placeholder": "irc.example.org"},
                    "nickname": {"regexp": "[^\\s]+", "placeholder": "nick"},
                    "channel": {"regexp": "#[^\\s]+", "placeholder": "#chan"}},
    "instances": [{"network_id": "libera", "desc": "Libera Chat", "fields": {"network": "libera"}},
                  {"desc": "no network_id: left out", "fields": {}}],
}
OFTC_META = {**IRC_META, "icon": "mxc://example.org/other",
             "instances": [{"network_id": "oftc", "desc": "OFTC", "fields": {"network": "oftc"}}]}
XMPP_META = {"user_fields": ["jid"], "location_fields": ["muc"], "icon": "mxc://example.org/x",
             "field_types": {}, "instances": [{"network_id": "xmpp", "desc": "XMPP",
                                                "fields": {}}]}


def reg(id: str, url: str, hs_token: str, protocols: list[str]) -> dict:
    return dict(id=id, url=url, as_token=f"as_{id}_{secrets.token_hex(8)}", hs_token=hs_token,
                sender=f"{id}bot", users=[(f"@{id}_.*", True)], protocols=protocols)


@pytest.fixture
async def setup(hs_with):
    """Two services bridging IRC (one also XMPP), one hanging on every lookup and one that
    is not there at all, both listing protocols of their own and IRC."""
    fakes = [FakeAppService("hs_" + secrets.token_hex(12)) for _ in range(3)]
    libera, oftc, hanging = fakes
    for f in fakes:
        await f.start()
    hanging.thirdparty_stall = asyncio.Event()
    libera.thirdparty[("protocol", "irc")] = (200, IRC_META)
    libera.thirdparty[("protocol", "xmpp")] = (200, XMPP_META)
    oftc.thirdparty[("protocol", "irc")] = (200, OFTC_META)
    srv = await hs_with(
        reg("libera", libera.url, libera.hs_token, ["irc", "xmpp"]),
        reg("oftc", oftc.url, oftc.hs_token, ["irc"]),
        reg("hanging", hanging.url, hanging.hs_token, ["irc", "slow"]),
        reg("gone", f"http://127.0.0.1:{free_port()}", "hs_gone", ["irc", "gone"]))
    try:
        async with Api(srv) as api:
            user = await api.register()
            yield srv, api, user, libera, oftc, hanging
    finally:
        hanging.thirdparty_stall.set()
        for f in fakes:
            await f.stop()


async def bounded(coro):
    # The hanging service never answers: a request still waiting on it would never end.
    return await asyncio.wait_for(coro, 30)


async def test_protocols_merged_with_instance_ids(setup):
    srv, api, user, libera, oftc, hanging = setup
    r = await bounded(user.get("/thirdparty/protocols"))
    assert r.status == 200, r
    # Protocols whose only services are down or hanging are left out.
    assert set(r.json) == {"irc", "xmpp"}
    irc = r.json["irc"]
    assert irc["user_fields"] == ["network", "nickname"]
    assert irc["field_types"]["channel"]["placeholder"] == "#chan"
    assert irc["icon"] == "mxc://example.org/irc"  # the first service's description
    assert [(i["instance_id"], i["network_id"], i["desc"]) for i in irc["instances"]] == [
        ("libera|libera", "libera", "Libera Chat"), ("oftc|oftc", "oftc", "OFTC")]
    assert r.json["xmpp"]["instances"][0]["instance_id"] == "libera|xmpp"
    # Asked with the hs_token in the Authorization header, and the hanging one was asked too.
    assert libera.bad_auth == oftc.bad_auth == hanging.bad_auth == 0
    assert ("protocol", "irc", {}) in libera.thirdparty_queries
    assert any(q[0] == "protocol" for q in hanging.thirdparty_queries)

    r = await bounded(user.get("/thirdparty/protocol/irc"))
    assert r.status == 200, r
    assert [i["instance_id"] for i in r.json["instances"]] == ["libera|libera", "oftc|oftc"]
    for path in ("/thirdparty/protocol/nosuch", "/thirdparty/protocol/slow",
                 "/thirdparty/protocol/gone"):
        r = await bounded(user.get(path))
        assert r.status == 404 and r.json["errcode"] == "M_NOT_FOUND", (path, r)
    r = await api.request("GET", "/thirdparty/protocols")
    assert r.status == 401 and r.json["errcode"] == "M_MISSING_TOKEN"


async def test_lookups_by_fields_are_merged(setup):
    srv, api, user, libera, oftc, hanging = setup
    hs_name = srv.server_name
    libera.thirdparty[("location", "irc")] = (200, [
        {"alias": f"#irc_libera_#matrix:{hs_name}", "protocol": "irc",
         "fields": {"network": "libera", "channel": "#matrix"}},
        {"protocol": "irc", "fields": {}},  # no alias: malformed, left out
    ])
    oftc.thirdparty[("location", "irc")] = (200, [
        {"alias": f"#irc_oftc_#matrix:{hs_name}", "protocol": "irc",
         "fields": {"network": "oftc", "channel": "#matrix"}}])
    oftc.thirdparty[("user", "irc")] = (200, [
        {"userid": f"@oftc_alice:{hs_name}", "protocol": "irc",
         "fields": {"network": "oftc", "nickname": "alice"}}])
    # libera has no such user: its 404 is "nothing", not a failure.

    r = await bounded(user.get("/thirdparty/location/irc",
                               params={"network": "libera", "channel": "#matrix"}))
    assert r.status == 200, r
    assert sorted(e["alias"] for e in r.json) == [f"#irc_libera_#matrix:{hs_name}",
                                                   f"#irc_oftc_#matrix:{hs_name}"]
    # The fields went to the service as query parameters; the client's token did not.
    assert ("location", "irc", {"network": "libera", "channel": "#matrix"}) \
        in libera.thirdparty_queries
    r = await bounded(api.request("GET", "/thirdparty/location/irc",
                                  params={"channel": "#x", "access_token": user.token}))
    assert r.status == 200, r
    assert libera.thirdparty_queries[-1] == ("location", "irc", {"channel": "#x"})

    r = await bounded(user.get("/thirdparty/user/irc", params={"nickname": "alice"}))
    assert r.status == 200, r
    assert r.json == [{"userid": f"@oftc_alice:{hs_name}", "protocol": "irc",
                       "fields": {"network": "oftc", "nickname": "alice"}}]
    # Nothing found anywhere: the spec's 404.
    r = await bounded(user.get("/thirdparty/user/xmpp", params={"jid": "nobody@example.org"}))
    assert r.status == 404 and r.json["errcode"] == "M_NOT_FOUND", r
    # Only the hanging and the missing service know "slow" / "gone": no answer at all.
    for proto in ("slow", "gone"):
        r = await bounded(user.get(f"/thirdparty/location/{proto}", params={"a": "b"}))
        assert r.status == 504 and r.json["errcode"] == "M_UNKNOWN", r
    r = await bounded(user.get("/thirdparty/location/nosuch"))
    assert r.status == 404 and r.json["errcode"] == "M_NOT_FOUND"
    r = await user.get("/thirdparty/user/irc", params={f"f{i}": "x" for i in range(30)})
    assert r.status == 400 and r.json["errcode"] == "M_INVALID_PARAM"


async def test_reverse_lookups(setup):
    srv, api, user, libera, oftc, hanging = setup
    hs_name = srv.server_name
    alias = f"#irc_oftc_#matrix:{hs_name}"
    oftc.thirdparty[("location", None)] = (200, [
        {"alias": alias, "protocol": "irc", "fields": {"network": "oftc", "channel": "#matrix"}}])
    libera.thirdparty[("user", None)] = (200, [
        {"userid": user.user_id, "protocol": "irc",
         "fields": {"network": "libera", "nickname": "me[m]"}}])

    r = await bounded(user.get("/thirdparty/location", params={"alias": alias}))
    assert r.status == 200, r
    assert r.json == [{"alias": alias, "protocol": "irc",
                       "fields": {"network": "oftc", "channel": "#matrix"}}]
    assert ("location", None, {"alias": alias}) in oftc.thirdparty_queries
    r = await bounded(user.get("/thirdparty/user", params={"userid": user.user_id}))
    assert r.status == 200, r
    assert [e["fields"]["nickname"] for e in r.json] == ["me[m]"]
    assert ("user", None, {"userid": user.user_id}) in libera.thirdparty_queries
    del oftc.thirdparty[("location", None)]  # answers 404 from now on
    r = await bounded(user.get("/thirdparty/location", params={"alias": f"#nothing:{hs_name}"}))
    assert r.status == 404 and r.json["errcode"] == "M_NOT_FOUND", r

    for path, params, errcode in [
            ("/thirdparty/location", {}, "M_MISSING_PARAM"),
            ("/thirdparty/location", {"alias": "not-an-alias"}, "M_INVALID_PARAM"),
            ("/thirdparty/user", {}, "M_MISSING_PARAM"),
            ("/thirdparty/user", {"userid": "bob"}, "M_INVALID_PARAM")]:
        r = await user.get(path, params=params)
        assert r.status == 400 and r.json["errcode"] == errcode, (path, params, r)


async def test_no_bridges_no_protocols(hs_with):
    srv = await hs_with()
    async with Api(srv) as api:
        user = await api.register()
        r = await user.get("/thirdparty/protocols")
        assert r.status == 200 and r.json == {}
        r = await user.get("/thirdparty/protocol/irc")
        assert r.status == 404 and r.json["errcode"] == "M_NOT_FOUND"
        r = await user.get("/thirdparty/user", params={"userid": user.user_id})
        assert r.status == 404 and r.json["errcode"] == "M_NOT_FOUND"
