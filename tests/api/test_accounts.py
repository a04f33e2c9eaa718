"""Registration, login, logout, whoami, passwords, devices — over real HTTP."""

from __future__ import annotations

import secrets

from tests.servers import start_server


async def test_register_needs_uia_then_succeeds(api):
    name = f"u{secrets.token_hex(4)}"
    r = await api.request("POST", "/register", {"username": name, "password": "pass phrase 1"})
    assert r.status == 401
    assert r.json["flows"] == [{"stages": ["m.login.dummy"]}]
    assert r.json["session"]
    r = await api.request("POST", "/register", {"username": name, "password": "pass phrase 1",
                                                "auth": {"type": "m.login.dummy",
                                                         "session": r.json["session"]}})
    assert r.status == 200
    assert r.json["user_id"] == f"@{name}:{api.server.server_name}"
    assert r.json["access_token"] and r.json["device_id"]


async def test_register_lowercases_and_rejects_taken_and_invalid(api):
    name = f"Mixed{secrets.token_hex(3)}"
    user = await api.register(name)
    assert user.user_id == f"@{name.lower()}:{api.server.server_name}"
    r = await api.request("POST", "/register", {"username": name.lower(), "password": "x",
                                                "auth": {"type": "m.login.dummy"}})
    assert (r.status, r.json["errcode"]) == (400, "M_USER_IN_USE")
    for bad in ["", "has space", "é", "a:b", "x" * 300]:
        r = await api.request("POST", "/register", {"username": bad, "password": "x",
                                                    "auth": {"type": "m.login.dummy"}})
        assert r.status == 400 and r.json["errcode"] == "M_INVALID_USERNAME", (bad, r)
    r = await api.request("GET", "/register/available", params={"username": name.lower()})
    assert (r.status, r.json["errcode"]) == (400, "M_USER_IN_USE")
    r = await api.request("GET", "/register/available", params={"username": "free" + secrets.token_hex(4)})
    assert (r.status, r.json) == (200, {"available": True})


async def test_login_whoami_logout(api):
    user = await api.register()
    local = user.user_id[1:].split(":")[0]
    r = await api.request("POST", "/login", {"type": "m.login.password",
                                             "identifier": {"type": "m.id.user", "user": local},
                                             "password": user.password})
    assert r.status == 200
    token = r.json["access_token"]
    r = await api.request("GET", "/account/whoami", token=token)
    assert r.json["user_id"] == user.user_id
    r = await api.request("POST", "/login", {"type": "m.login.password", "user": user.user_id,
                                             "password": "wrong"})
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
    r = await api.request("POST", "/logout", {}, token=token)
    assert r.status == 200
    r = await api.request("GET", "/account/whoami", token=token)
    assert (r.status, r.json["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # The first session still works.
    assert (await user.get("/account/whoami")).status == 200


async def test_missing_and_unknown_tokens(api):
    r = await api.request("GET", "/account/whoami")
    assert (r.status, r.json["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await api.request("GET", "/account/whoami", token="nx_nope")
    assert (r.status, r.json["errcode"]) == (401, "M_UNKNOWN_TOKEN")


async def test_logout_all(api):
    user = await api.register()
    r = await api.request("POST", "/login", {"type": "m.login.password", "user": user.user_id,
                                             "password": user.password})
    second = r.json["access_token"]
    assert (await user.post("/logout/all")).status == 200
    for tok in (user.token, second):
        r = await api.request("GET", "/account/whoami", token=tok)
        assert r.status == 401


async def test_change_password_logs_out_other_devices(api):
    user = await api.register()
    r = await api.request("POST", "/login", {"type": "m.login.password", "user": user.user_id,
                                             "password": user.password})
    other = r.json["access_token"]
    r = await user.post("/account/password", {"new_password": "new pw 2024"})
    assert r.status == 401 and r.json["flows"] == [{"stages": ["m.login.password"]}]
    r = await user.post("/account/password", {"new_password": "new pw 2024", "auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id},
        "password": "wrong"}})
    assert r.status == 401 and r.json["errcode"] == "M_FORBIDDEN"
    r = await user.post("/account/password", {"new_password": "new pw 2024", "auth": {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id},
        "password": user.password}})
    assert r.status == 200
    assert (await api.request("GET", "/account/whoami", token=other)).status == 401
    assert (await user.get("/account/whoami")).status == 200
    r = await api.request("POST", "/login", {"type": "m.login.password", "user": user.user_id,
                                             "password": "new pw 2024"})
    assert r.status == 200


async def test_deactivate_blocks_login(api):
    user = await api.register()
    r = await user.post("/account/deactivate", {"auth": {"type": "m.login.password",
                                                         "user": user.user_id,
                                                         "password": user.password}})
    assert r.status == 200
    r = await api.request("POST", "/login", {"type": "m.login.password", "user": user.user_id,
                                             "password": user.password})
    assert r.status == 403


async def test_devices(api):
    user = await api.register()
    r = await user.get("/devices")
    assert [d["device_id"] for d in r.json["devices"]] == [user.device_id]
    assert (await user.put(f"/devices/{user.device_id}", {"display_name": "phone"})).status == 200
    r = await user.get(f"/devices/{user.device_id}")
    assert r.json["display_name"] == "phone"
    r = await user.get("/devices/NOPE")
    assert (r.status, r.json["errcode"]) == (404, "M_NOT_FOUND")


async def test_bad_bodies_get_matrix_errors(api):
    r = await api.request("POST", "/login", raw=b"{not json")
    assert (r.status, r.json["errcode"]) == (400, "M_NOT_JSON")
    r = await api.request("POST", "/login", raw=b'{"type": "m.login.password", "user": "\xff"}')
    assert (r.status, r.json["errcode"]) == (400, "M_NOT_JSON")
    r = await api.request("POST", "/login", {"type": 5})
    assert (r.status, r.json["errcode"]) == (400, "M_BAD_JSON")
    r = await api.request("POST", "/login", [1, 2])
    assert (r.status, r.json["errcode"]) == (400, "M_BAD_JSON")
    r = await api.request("GET", "/no/such/endpoint")
    assert (r.status, r.json["errcode"]) == (404, "M_UNRECOGNIZED")
    r = await api.request("DELETE", "/login")
    assert (r.status, r.json["errcode"]) == (405, "M_UNRECOGNIZED")


async def test_weak_passwords_refused_at_registration(api):
    name = f"w{secrets.token_hex(4)}"
    # Refused at the first request, before user-interactive auth, naming what is missing.
    r = await api.request("POST", "/register", {"username": name, "password": "abc"})
    assert (r.status, r.json["errcode"]) == (400, "M_WEAK_PASSWORD")
    assert r.json["error"] == ("The password is too weak: it needs at least 8 characters "
                               "and a digit")
    r = await api.request("POST", "/register", {"username": name, "password": "Password1",
                                                "auth": {"type": "m.login.dummy"}})
    assert (r.status, r.json["errcode"]) == (400, "M_WEAK_PASSWORD")
    assert "most common" in r.json["error"]
    # A UIA session started with a good password, finished with a weak one: refused too.
    r = await api.request("POST", "/register", {"username": name, "password": "good pass 1"})
    assert r.status == 401
    r = await api.request("POST", "/register", {"username": name, "password": "ALLCAPS123",
                                                "auth": {"type": "m.login.dummy",
                                                         "session": r.json["session"]}})
    assert (r.status, r.json["errcode"]) == (400, "M_WEAK_PASSWORD")
    assert r.json["error"].endswith("a lowercase letter")
    # Nothing was created.
    r = await api.request("GET", "/register/available", params={"username": name})
    assert (r.status, r.json) == (200, {"available": True})
    r = await api.request("POST", "/register", {"username": name, "password": "good pass 1",
                                                "auth": {"type": "m.login.dummy"}})
    assert r.status == 200


async def test_weak_password_refused_on_change(api):
    user = await api.register()
    auth = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": user.password}
    r = await user.post("/account/password", {"new_password": "nodigits"})
    assert (r.status, r.json["errcode"]) == (400, "M_WEAK_PASSWORD")  # before UIA
    assert r.json["error"].endswith("a digit")
    r = await user.post("/account/password", {"new_password": "nodigits", "auth": auth})
    assert (r.status, r.json["errcode"]) == (400, "M_WEAK_PASSWORD")
    # The old password still works, the session too.
    r = await api.request("POST", "/login", {"type": "m.login.password", "user": user.user_id,
                                             "password": user.password})
    assert r.status == 200
    assert (await user.get("/account/whoami")).status == 200


async def test_password_policy_endpoint(api):
    r = await api.request("GET", "/password_policy")  # no access token needed
    assert r.status == 200
    assert {k: v for k, v in r.json.items() if k.startswith("m.")} == {
        "m.minimum_length": 8, "m.require_digit": True, "m.require_lowercase": True,
        "m.require_uppercase": False, "m.require_symbol": False}
    assert "password1" in r.json["im.nexa.common_passwords"]


async def test_policy_can_be_configured(backend, tmp_path):
    srv = await start_server(tmp_path, backend, password_policy={
        "minimum_length": 12, "require_symbol": True, "refuse_common": False})
    try:
        from tests.client import Api

        async with Api(srv) as api:
            r = await api.request("POST", "/register", {"username": "strict", "password":
                                                        "abcdefgh123", "auth": {"type": "m.login.dummy"}})
            assert (r.status, r.json["errcode"]) == (400, "M_WEAK_PASSWORD")
            assert r.json["error"].endswith("at least 12 characters and a symbol")
            await api.register("strict", "abcdefgh-123")
            r = await api.request("GET", "/password_policy")
            assert r.json["m.minimum_length"] == 12 and r.json["m.require_symbol"] is True
            assert "im.nexa.common_passwords" not in r.json
        await srv.stop()
        srv.config_data["password_policy"] = {"enabled": False}
        await srv.start()
        async with Api(srv) as api:
            await api.register("lax", "x")
            assert (await api.request("GET", "/password_policy")).json == {}
    finally:
        await srv.destroy()


async def test_legacy_r0_prefix_reaches_the_same_endpoints(api):
    """/_matrix/client/r0/… is v3 under its old name (older clients and bots still use it):
    reads, writes with a body, percent-encoded path parts and unknown endpoints."""
    alice = await api.register()
    r0 = "/_matrix/client/r0"
    who = await api.request("GET", "/account/whoami", token=alice.token, prefix=r0)
    assert (who.status, who.json["user_id"]) == (200, alice.user_id)
    room_id = await alice.create_room(room_alias_name="legacy")
    sent = await api.request("PUT", f"/rooms/{room_id}/send/m.room.message/t1",
                             {"msgtype": "m.text", "body": "over r0"}, token=alice.token,
                             prefix=r0)
    assert sent.status == 200
    alias = f"#legacy:{api.server.server_name}"
    found = await api.request("GET", f"/directory/room/{alias}", prefix=r0)
    assert (found.status, found.json["room_id"]) == (200, room_id)
    ev = await alice.get(f"/rooms/{room_id}/event/{sent.json['event_id']}")
    assert ev.json["content"]["body"] == "over r0"
    missing = await api.request("GET", "/no/such/endpoint", prefix=r0)
    assert (missing.status, missing.json["errcode"]) == (404, "M_UNRECOGNIZED")
    # Only the prefix is rewritten: r0 elsewhere in a path stays as it is.
    not_r0 = await api.request("GET", "/_matrix/client/r0", prefix="")
    assert not_r0.status == 404
