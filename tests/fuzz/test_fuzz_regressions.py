"""One request for each kind of input the spec fuzzer found answered with a 500: each must now get a
Matrix error with a 4xx status, and store nothing."""

from __future__ import annotations

import secrets

import pytest

from tests.fuzz.store import table_counts


@pytest.fixture
async def alice(api):
    return await api.register()


def assert_matrix_error(r, status: int, errcode: str | None = None) -> None:
    assert r.status == status, r
    assert isinstance(r.json, dict) and r.json.get("errcode", "").startswith("M_"), r
    assert isinstance(r.json.get("error"), str), r
    if errcode:
        assert r.json["errcode"] == errcode, r


async def test_deeply_nested_json_is_rejected(alice):
    room = await alice.create_room()
    for depth, codes in ((500, {"M_BAD_JSON"}), (5000, {"M_BAD_JSON", "M_NOT_JSON"})):
        deep = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
        for path in (f"/rooms/{room}/send/m.x/{secrets.token_hex(4)}",
                     f"/rooms/{room}/state/m.x/", f"/user/{alice.user_id}/account_data/m.x"):
            r = await alice.request("PUT", path, raw=deep)
            assert_matrix_error(r, 400)
            assert r.json["errcode"] in codes, r  # the parser's own depth limit: not JSON


@pytest.mark.parametrize("path", [
    "/devices/a%00b", "/rooms/!a%00:localhost/event/$x", "/user/@u%00:localhost/account_data/x",
])
async def test_nul_in_path_is_rejected(alice, path):
    r = await alice.get(path)
    assert_matrix_error(r, 400, "M_INVALID_PARAM")


async def test_nul_in_query_is_rejected(alice):
    room = await alice.create_room()
    r = await alice.get(f"/rooms/{room}/messages", params={"from": "a\x00b", "dir": "b"})
    assert_matrix_error(r, 400, "M_INVALID_PARAM")


async def test_nul_in_typed_body_strings_is_rejected(alice, api):
    r = await alice.put(f"/devices/{alice.device_id}", {"display_name": "a\x00b"})
    assert_matrix_error(r, 400, "M_BAD_JSON")
    r = await api.request("POST", "/login", {
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "a\x00b"},
        "password": "x"})
    assert_matrix_error(r, 403, "M_FORBIDDEN")


async def test_overlong_device_ids_are_unknown_devices(alice):
    long_id = "x" * 3000
    for method in ("GET", "PUT", "DELETE"):
        r = await alice.request(method, f"/devices/{long_id}", {} if method != "GET" else None)
        assert_matrix_error(r, 404, "M_NOT_FOUND")


async def test_overlong_event_fields_are_too_large(alice, server):
    room = await alice.create_room()
    before = await table_counts(server.hs)
    for path in (f"/rooms/{room}/send/m.x/{'t' * 300}", f"/rooms/{room}/send/{'m' * 300}/t1",
                 f"/rooms/{room}/state/m.x/{'k' * 300}"):
        r = await alice.put(path, {"body": "x"})
        assert_matrix_error(r, 413, "M_TOO_LARGE")
    assert await table_counts(server.hs) == before


async def test_long_passwords_work(api):
    name = f"pw{secrets.token_hex(4)}"
    password = "p" * 99 + "1"  # beyond bcrypt's 72 bytes
    r = await api.request("POST", "/register", {"username": name, "password": password,
                                                "auth": {"type": "m.login.dummy"}})
    assert r.status == 200, r
    r = await api.request("POST", "/login", {"type": "m.login.password", "user": name,
                                             "password": password})
    assert r.status == 200, r


@pytest.mark.parametrize("body", [
    {"creation_content": {"x": 1.5}},
    {"creation_content": {"x": 2**64}},
    {"initial_state": [{"type": "m.x", "state_key": "", "content": {"n": 1e300}}]},
    {"initial_state": [{"type": "m.room.create", "state_key": "", "content": {}}]},
    {"power_level_content_override": {"ban": "fifty"}},
    {"power_level_content_override": {"users": {}}, "name": "locked out"},
    {"power_level_content_override": {"state_default": 101}},
])
async def test_rejected_create_room_stores_nothing(alice, server, body):
    before = await table_counts(server.hs)
    r = await alice.post("/createRoom", body)
    assert 400 <= r.status < 500, r
    assert r.json.get("errcode", "").startswith("M_"), r
    assert await table_counts(server.hs) == before


@pytest.mark.parametrize("token", ["s9999999999999999999", "t9223372036854775808",
                                   "t-9223372036854775809", "s1_9223372036854775808"])
async def test_tokens_beyond_64_bits_are_invalid(alice, token):
    room = await alice.create_room()
    r = await alice.get(f"/rooms/{room}/messages", params={"from": token, "dir": "b"})
    assert_matrix_error(r, 400, "M_INVALID_PARAM")
    r = await alice.get("/sync", params={"since": token, "timeout": "0"})
    assert_matrix_error(r, 400, "M_INVALID_PARAM")
