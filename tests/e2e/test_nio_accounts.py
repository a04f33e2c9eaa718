"""Scenario 1 with matrix-nio: register (m.login.dummy), log in with a password, whoami."""

from __future__ import annotations

import nio

from tests.e2e.nio_helpers import new_client, ok, random_name, status_of


async def test_register_login_whoami(server, nio_client):
    name = random_name("reg")
    reg_client = nio_client()
    reg = ok(await reg_client.register(name, "s3cret pass", device_name="first"),
             nio.RegisterResponse)
    assert reg.user_id == f"@{name}:{server.server_name}"
    assert reg.access_token and reg.device_id
    # nio adopts the session from the registration response.
    assert (reg_client.user_id, reg_client.access_token) == (reg.user_id, reg.access_token)
    me = ok(await reg_client.whoami(), nio.WhoamiResponse)
    assert me.user_id == reg.user_id
    assert me.device_id == reg.device_id

    # A second nio client logs in with the password: a new device, a new token.
    login_client = nio_client(name)
    login = ok(await login_client.login("s3cret pass", device_name="second"), nio.LoginResponse)
    assert login.user_id == reg.user_id
    assert login.access_token != reg.access_token
    assert login.device_id != reg.device_id
    me2 = ok(await login_client.whoami(), nio.WhoamiResponse)
    assert (me2.user_id, me2.device_id) == (reg.user_id, login.device_id)

    # The full user ID works as the login identifier too.
    by_mxid = nio_client(reg.user_id)
    ok(await by_mxid.login("s3cret pass"), nio.LoginResponse)

    # Both devices exist for the account.
    devices = ok(await login_client.devices(), nio.DevicesResponse)
    assert {d.id for d in devices.devices} >= {reg.device_id, login.device_id}


async def test_wrong_password_and_taken_username(server, nio_client):
    name = random_name("reg")
    first = nio_client()
    ok(await first.register(name, "right horse 1"), nio.RegisterResponse)

    bad = nio_client(name)
    err = ok(await bad.login("wrong"), nio.LoginError)
    assert err.status_code == "M_FORBIDDEN"
    assert status_of(err) == 403
    assert not bad.logged_in

    again = nio_client()
    err2 = ok(await again.register(name, "other"), nio.responses.RegisterErrorResponse)
    assert err2.status_code == "M_USER_IN_USE"

    # A free name with a weak password: refused with the reason, and no account is made.
    weak = nio_client()
    free = random_name("reg")
    err3 = ok(await weak.register(free, "short1"), nio.responses.RegisterErrorResponse)
    assert err3.status_code == "M_WEAK_PASSWORD" and "at least 8 characters" in err3.message
    ok(await weak.register(free, "longer and 1 digit"), nio.RegisterResponse)


async def test_logout_invalidates_token(server, nio_client):
    c = nio_client()
    ok(await c.register(random_name("out"), "pw pw pw 1"), nio.RegisterResponse)
    token = c.access_token
    ok(await c.logout(), nio.LogoutResponse)
    # A fresh client reusing the old token is rejected with M_UNKNOWN_TOKEN.
    stale = new_client(server.base_url)
    try:
        stale.restore_login(c.user_id, c.device_id, token)
        err = ok(await stale.whoami(), nio.WhoamiError)
        assert err.status_code == "M_UNKNOWN_TOKEN"
        assert status_of(err) == 401
    finally:
        await stale.close()
