"""Application services on the Client-Server API: registration with the as_token, identity
assertion (?user_id=, device_id, ts), exclusive namespaces, ping, queries, login."""

from __future__ import annotations

import pytest

from tests.client import Api

AS_TOKEN = "as_token_for_api_tests"


def reg(fake, **kw):
    base = dict(id="bridge", url=fake.url, as_token=AS_TOKEN, hs_token=fake.hs_token,
                sender="bridgebot", users=[("@br_.*", True), ("@shared_.*", False)],
                aliases=[("#br_.*", True)])
    base.update(kw)
    return base


async def as_register(api: Api, username: str, token: str = AS_TOKEN, **extra):
    return await api.request("POST", "/register", {
        "type": "m.login.application_service", "username": username, **extra}, token=token)


async def test_registration_with_the_as_token(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    name = srv.server_name
    async with Api(srv) as api:
        r = await as_register(api, "br_alice", inhibit_login=True)
        assert r.status == 200, r
        assert r.json == {"user_id": f"@br_alice:{name}", "home_server": name}
        # Not inhibited: a session for the new user, owned by the service.
        r = await as_register(api, "br_bob", device_id="BOBDEV")
        assert r.status == 200, r
        assert r.json["device_id"] == "BOBDEV"
        who = await api.request("GET", "/account/whoami", token=r.json["access_token"])
        assert who.json["user_id"] == f"@br_bob:{name}"
        # Taken already; the sender exists from start-up.
        for taken in ("br_alice", "bridgebot"):
            r = await as_register(api, taken, inhibit_login=True)
            assert (r.status, r.json["errcode"]) == (400, "M_USER_IN_USE"), r
        # Outside the service's namespace.
        r = await as_register(api, "mallory", inhibit_login=True)
        assert (r.status, r.json["errcode"]) == (400, "M_EXCLUSIVE"), r
        # Also the auth-dict form some bridges use.
        r = await api.request("POST", "/register", {
            "username": "br_carol", "auth": {"type": "m.login.application_service"},
            "inhibit_login": True}, token=AS_TOKEN)
        assert r.status == 200, r
        # Bad input is a 4xx, never a 500.
        for bad in ("", "BR_Upper", "br bad", "br_" + "x" * 300, "@br_x:elsewhere.org"):
            r = await as_register(api, bad, inhibit_login=True)
            assert r.status == 400, (bad, r)
        # Without the as_token: no registration.
        r = await api.request("POST", "/register", {
            "type": "m.login.application_service", "username": "br_dave"})
        assert (r.status, r.json["errcode"]) == (401, "M_MISSING_TOKEN")
        r = await as_register(api, "br_dave", token="not-the-token")
        assert (r.status, r.json["errcode"]) == (401, "M_UNKNOWN_TOKEN")
        user = await api.register()
        r = await as_register(api, "br_dave", token=user.token)
        assert r.status == 401, r
        r = await api.request("GET", "/profile/@br_dave:" + name)
        assert r.status == 404


async def test_exclusive_namespaces_are_reserved(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    async with Api(srv) as api:
        r = await api.request("POST", "/register", {
            "username": "br_squatter", "password": "pw123456", "auth": {"type": "m.login.dummy"}})
        assert (r.status, r.json["errcode"]) == (400, "M_EXCLUSIVE"), r
        r = await api.request("GET", "/register/available", params={"username": "br_squatter"})
        assert (r.status, r.json["errcode"]) == (400, "M_EXCLUSIVE"), r
        # A non-exclusive namespace stays open to everyone.
        shared = await api.register("shared_one")
        assert shared.user_id.startswith("@shared_one:")
        # Aliases in an exclusive alias namespace are reserved too.
        room = await shared.create_room()
        r = await shared.put(f"/directory/room/#br_taken:{srv.server_name}", {"room_id": room})
        assert (r.status, r.json["errcode"]) == (400, "M_EXCLUSIVE"), r
        r = await shared.post("/createRoom", {"room_alias_name": "br_mine"})
        assert (r.status, r.json["errcode"]) == (400, "M_EXCLUSIVE"), r
        # ... but not for the service itself.
        await as_register(api, "br_owner", inhibit_login=True)
        r = await api.request("POST", "/createRoom", {"room_alias_name": "br_mine"},
                              token=AS_TOKEN, params={"user_id": f"@br_owner:{srv.server_name}"})
        assert r.status == 200, r


async def test_masquerading_rules(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    name = srv.server_name
    async with Api(srv) as api:
        await as_register(api, "br_alice", inhibit_login=True)
        ordinary = await api.register()
        shared = await api.register("shared_human")

        async def whoami(user_id=None, token=AS_TOKEN, **params):
            if user_id is not None:
                params["user_id"] = user_id
            return await api.request("GET", "/account/whoami", token=token, params=params)

        assert (await whoami()).json["user_id"] == f"@bridgebot:{name}"
        assert (await whoami(f"@bridgebot:{name}")).json["user_id"] == f"@bridgebot:{name}"
        assert (await whoami(f"@br_alice:{name}")).json["user_id"] == f"@br_alice:{name}"
        for user_id, why in [
            (ordinary.user_id, "outside the namespace"),
            (f"@br_ghost:{name}", "in the namespace but never registered"),
            (shared.user_id, "non-exclusive namespace, registered by someone else"),
            ("@br_alice:other.example.org", "another server"),
            ("not a user id", "malformed"),
        ]:
            r = await whoami(user_id)
            assert (r.status, r.json.get("errcode")) == (403, "M_FORBIDDEN"), (why, r)
        # Acting as the masqueraded user really is acting as them, and nothing leaks elsewhere.
        room = await ordinary.create_room(preset="public_chat")
        r = await api.request("POST", f"/join/{room}", {}, token=AS_TOKEN,
                              params={"user_id": ordinary.user_id})
        assert r.status == 403
        r = await api.request("POST", f"/join/{room}", {}, token=AS_TOKEN,
                              params={"user_id": f"@br_alice:{name}"})
        assert r.status == 200, r
        members = await ordinary.get(f"/rooms/{room}/joined_members")
        assert f"@br_alice:{name}" in members.json["joined"]
        # For an ordinary token, ?user_id= means nothing.
        r = await whoami(f"@br_alice:{name}", token=ordinary.token)
        assert r.json["user_id"] == ordinary.user_id


async def test_device_and_timestamp_assertion(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    name = srv.server_name
    alice = f"@br_alice:{name}"
    async with Api(srv) as api:
        r = await as_register(api, "br_alice", device_id="PHONE")
        assert r.status == 200
        r = await api.request("GET", "/account/whoami", token=AS_TOKEN,
                              params={"user_id": alice, "device_id": "PHONE"})
        assert r.json == {"user_id": alice, "device_id": "PHONE", "is_guest": False}
        r = await api.request("GET", "/account/whoami", token=AS_TOKEN,
                              params={"user_id": alice, "device_id": "NOPE"})
        assert r.status == 400, r
        # Creating a device for a user (spec 1.17): 201, then an ordinary update.
        r = await api.request("PUT", "/devices/LAPTOP", {"display_name": "Laptop"},
                              token=AS_TOKEN, params={"user_id": alice})
        assert r.status == 201, r
        r = await api.request("PUT", "/devices/LAPTOP", {"display_name": "Old laptop"},
                              token=AS_TOKEN, params={"user_id": alice})
        assert r.status == 200, r
        r = await api.request("GET", "/devices", token=AS_TOKEN, params={"user_id": alice})
        assert {d["device_id"] for d in r.json["devices"]} == {"PHONE", "LAPTOP"}
        # Deleting without user-interactive auth.
        r = await api.request("DELETE", "/devices/LAPTOP", {}, token=AS_TOKEN,
                              params={"user_id": alice})
        assert r.status == 200, r
        # Timestamp massaging on /send and /state.
        room = (await api.request("POST", "/createRoom", {}, token=AS_TOKEN,
                                  params={"user_id": alice})).json["room_id"]
        r = await api.request("PUT", f"/rooms/{room}/send/m.room.message/t1",
                              {"msgtype": "m.text", "body": "old news"}, token=AS_TOKEN,
                              params={"user_id": alice, "ts": "1234567890000"})
        assert r.status == 200, r
        ev = await api.request("GET", f"/rooms/{room}/event/{r.json['event_id']}",
                               token=AS_TOKEN, params={"user_id": alice})
        assert ev.json["origin_server_ts"] == 1234567890000
        r = await api.request("PUT", f"/rooms/{room}/state/m.room.topic/", {"topic": "t"},
                              token=AS_TOKEN, params={"user_id": alice, "ts": "1234567890001"})
        ev = await api.request("GET", f"/rooms/{room}/event/{r.json['event_id']}",
                               token=AS_TOKEN, params={"user_id": alice})
        assert ev.json["origin_server_ts"] == 1234567890001
        r = await api.request("PUT", f"/rooms/{room}/send/m.room.message/t2",
                              {"msgtype": "m.text", "body": "x"}, token=AS_TOKEN,
                              params={"user_id": alice, "ts": "yesterday"})
        assert r.status == 400
        # Ordinary users cannot rewrite time.
        user = await api.register()
        own = await user.create_room()
        r = await user.put(f"/rooms/{own}/send/m.room.message/t3", {"msgtype": "m.text",
                                                                    "body": "now"},
                           params={"ts": "1234567890000"})
        ev = await user.get(f"/rooms/{own}/event/{r.json['event_id']}")
        assert ev.json["origin_server_ts"] > 1234567890000


async def test_login_with_the_as_token(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    async with Api(srv) as api:
        await as_register(api, "br_alice", inhibit_login=True)
        body = {"type": "m.login.application_service",
                "identifier": {"type": "m.id.user", "user": "br_alice"}}
        r = await api.request("POST", "/login", body, token=AS_TOKEN)
        assert r.status == 200, r
        who = await api.request("GET", "/account/whoami", token=r.json["access_token"])
        assert who.json["user_id"] == f"@br_alice:{srv.server_name}"
        r = await api.request("POST", "/login", body)
        assert r.status == 401
        outsider = await api.register()
        r = await api.request("POST", "/login", {**body, "identifier": {
            "type": "m.id.user", "user": outsider.user_id}}, token=AS_TOKEN)
        assert r.status == 403


async def test_ping(hs_with, fake_as):
    down = dict(id="down", url="http://127.0.0.1:9", as_token="as_down", hs_token="hs_down",
                sender="downbot")
    silent = dict(id="silent", url=None, as_token="as_silent", hs_token="hs_silent",
                  sender="silentbot")
    srv = await hs_with(reg(fake_as), down, silent)
    async with Api(srv) as api:
        async def ping(service_id, token, body=None):
            return await api.request("POST", f"/appservice/{service_id}/ping",
                                     {} if body is None else body, token=token,
                                     prefix="/_matrix/client/v1")

        r = await ping("bridge", AS_TOKEN, {"transaction_id": "mautrix-1"})
        assert r.status == 200 and isinstance(r.json["duration_ms"], int), r
        assert fake_as.pings == [{"transaction_id": "mautrix-1"}]
        r = await ping("down", AS_TOKEN)
        assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
        r = await ping("down", "as_down")
        assert (r.status, r.json["errcode"]) == (502, "M_CONNECTION_FAILED"), r
        r = await ping("silent", "as_silent")
        assert (r.status, r.json["errcode"]) == (400, "M_URL_NOT_SET"), r
        user = await api.register()
        r = await ping("bridge", user.token)
        assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
        r = await ping("bridge", None)
        assert (r.status, r.json["errcode"]) == (401, "M_MISSING_TOKEN")
        r = await ping("bridge", "nonsense")
        assert r.status == 401
        r = await ping("bridge", AS_TOKEN, {"transaction_id": 5})
        assert r.status == 400
    # The service answering with an error: M_BAD_STATUS with what it said.
    fake_as.hs_token = "something-else"
    async with Api(srv) as api:
        r = await api.request("POST", "/appservice/bridge/ping", {}, token=AS_TOKEN,
                              prefix="/_matrix/client/v1")
        assert (r.status, r.json["errcode"], r.json["status"]) == (502, "M_BAD_STATUS", 403), r


async def test_unknown_users_and_aliases_are_asked_for(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    name = srv.server_name
    async with Api(srv) as api:
        async def make_user(user_id: str) -> bool:
            local = user_id[1:].split(":")[0]
            if local != "br_lazy":
                return False
            r = await as_register(api, local, inhibit_login=True)
            return r.status == 200

        async def make_room(alias: str) -> bool:
            if not alias.startswith("#br_lobby"):
                return False
            r = await api.request("POST", "/createRoom", {"room_alias_name": "br_lobby",
                                                          "preset": "public_chat"},
                                  token=AS_TOKEN)
            return r.status == 200

        fake_as.on_user_query = make_user
        fake_as.on_alias_query = make_room
        r = await api.request("GET", f"/profile/@br_lazy:{name}")
        assert r.status == 200, r
        assert fake_as.user_queries == [f"@br_lazy:{name}"]
        r = await api.request("GET", f"/profile/@br_nobody:{name}")
        assert r.status == 404
        r = await api.request("GET", f"/profile/@br_nobody:{name}")  # the "no" is remembered
        assert r.status == 404
        r = await api.request("GET", f"/profile/@outsider:{name}")
        assert r.status == 404
        assert fake_as.user_queries == [f"@br_lazy:{name}", f"@br_nobody:{name}"]
        # Invites to a user the service knows about.
        user = await api.register()
        room = await user.create_room()
        fake_as.on_user_query = None
        r = await user.post(f"/rooms/{room}/invite", {"user_id": f"@br_never:{name}"})
        assert r.status == 404
        r = await api.request("GET", f"/directory/room/#br_lobby:{name}")
        assert r.status == 200, r
        assert fake_as.alias_queries == [f"#br_lobby:{name}"]
        r = await user.post(f"/join/#br_lobby:{name}")
        assert r.status == 200, r
        r = await api.request("GET", f"/directory/room/#br_missing:{name}")
        assert r.status == 404
        r = await api.request("GET", f"/directory/room/#elsewhere:{name}")
        assert r.status == 404
        assert fake_as.alias_queries == [f"#br_lobby:{name}", f"#br_missing:{name}"]


@pytest.mark.parametrize("limited", [False, True])
async def test_rate_limits(hs_with, fake_as, limited):
    srv = await hs_with(reg(fake_as, rate_limited=limited),
                        limits={"messages": {"per_second": 0.1, "burst": 3}})
    name = srv.server_name
    async with Api(srv) as api:
        await as_register(api, "br_fast", inhibit_login=True)
        room = (await api.request("POST", "/createRoom", {"preset": "public_chat"},
                                  token=AS_TOKEN)).json["room_id"]
        await api.request("POST", f"/join/{room}", {}, token=AS_TOKEN,
                          params={"user_id": f"@br_fast:{name}"})
        statuses = []
        for i in range(8):
            r = await api.request("PUT", f"/rooms/{room}/send/m.room.message/f{i}",
                                  {"msgtype": "m.text", "body": str(i)}, token=AS_TOKEN,
                                  params={"user_id": f"@br_fast:{name}"})
            statuses.append(r.status)
        # rate_limited: false exempts the service's users; true limits them like anyone.
        assert statuses == ([200] * 3 + [429] * 5 if limited else [200] * 8), statuses
        # The sender itself is never limited.
        for i in range(5):
            r = await api.request("PUT", f"/rooms/{room}/send/m.room.message/s{i}",
                                  {"msgtype": "m.text", "body": str(i)}, token=AS_TOKEN)
            assert r.status == 200
        # An ordinary user is limited after the burst.
        user = await api.register()
        await user.join(room)
        codes = []
        for i in range(5):
            r = await user.put(f"/rooms/{room}/send/m.room.message/u{i}",
                               {"msgtype": "m.text", "body": str(i)})
            codes.append(r.status)
        assert 429 in codes
