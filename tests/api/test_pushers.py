"""Push notifications: the pushers API, delivery to a real push gateway (retries, a gateway
that rejects the pushkey, a homeserver restart with notifications pending) and
GET /notifications."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import pytest
from aiohttp import web

from tests.client import Api, User
from tests.servers import LoopbackApp, free_port, start_server

NOTIFY = "/_matrix/push/v1/notify"
WAIT_S = 20
# Failures are retried within a fraction of a second, so recovery tests stay short; the test
# gateway listens on loopback.
FAST_RETRY = {"retry_base_ms": 20, "retry_max_ms": 200, "allow_private_gateways": True}


@pytest.fixture(scope="module")
async def server(backend, tmp_path_factory):
    srv = await start_server(tmp_path_factory.mktemp("hs"), backend, push=FAST_RETRY)
    yield srv
    await srv.destroy()


class Gateway(LoopbackApp):
    """A push gateway on a loopback port: every request is recorded as (status served, body);
    `status` and `answer` say what it answers; stop() and start() take it down and back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: asyncio.Queue[tuple[int, dict]] = asyncio.Queue()
        self.status = 200
        self.answer: dict[str, Any] = {"rejected": []}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{NOTIFY}"

    async def _notify(self, request: web.Request) -> web.Response:
        self.requests.put_nowait((self.status, await request.json()))
        if self.status != 200:
            return web.json_response({"error": "unavailable"}, status=self.status)
        return web.json_response(self.answer)

    def routes(self, app: web.Application) -> None:
        app.router.add_post(NOTIFY, self._notify)

    async def attempt(self) -> tuple[int, dict]:
        return await asyncio.wait_for(self.requests.get(), WAIT_S)

    async def delivered(self) -> dict:
        """The next notification the gateway accepted (failed attempts are passed over)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                status, body = await self.requests.get()
                if status == 200:
                    return body["notification"]


@pytest.fixture
async def gateway():
    gw = Gateway()
    await gw.start()
    yield gw
    await gw.stop()


class Outcomes:
    """The push sender's attempts as it reports them (to await a failed attempt)."""

    def __init__(self, srv) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.sender = srv.hs.pushers.sender
        self.sender.listeners.append(self._cb)

    def _cb(self, key: str, txn_id: str, what: str) -> None:
        self.queue.put_nowait(what)

    async def wait_for(self, what: str) -> None:
        async with asyncio.timeout(WAIT_S):
            while await self.queue.get() != what:
                pass

    def close(self) -> None:
        self.sender.listeners.remove(self._cb)


def pusher_body(url: str, pushkey: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "http", "app_id": "org.example.app", "pushkey": pushkey or secrets.token_hex(8),
        "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
        "data": {"url": url}}
    body.update(extra)
    return body


async def set_pusher(user: User, body: dict[str, Any]) -> None:
    r = await user.post("/pushers/set", body)
    assert r.status == 200, r
    assert r.json == {}


async def pushers(user: User) -> list[dict]:
    r = await user.get("/pushers")
    assert r.status == 200, r
    return r.json["pushers"]


async def send(user: User, room: str, content: dict) -> str:
    r = await user.put(f"/rooms/{room}/send/m.room.message/{secrets.token_hex(6)}", content)
    assert r.status == 200, r
    return r.json["event_id"]


async def set_name(user: User, name: str) -> None:
    r = await user.put(f"/profile/{user.user_id}/displayname", {"displayname": name})
    assert r.status == 200, r


async def room_of(api: Api, n: int = 2, name: str | None = None) -> tuple[list[User], str]:
    users = [await api.register() for _ in range(n)]
    extra = {"name": name} if name else {}
    room = await users[0].create_room(preset="public_chat", **extra)
    for u in users[1:]:
        await u.join(room)
    return users, room


# --- the pushers API -----------------------------------------------------------------------

async def test_set_get_replace_and_delete(api, gateway):
    alice = await api.register()
    assert await pushers(alice) == []
    first = pusher_body(gateway.url, "key-1", profile_tag="xyz",
                        data={"url": gateway.url, "format": "event_id_only", "custom": [1]})
    await set_pusher(alice, first)
    assert await pushers(alice) == [{
        "pushkey": "key-1", "kind": "http", "app_id": "org.example.app",
        "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
        "profile_tag": "xyz",
        "data": {"url": gateway.url, "format": "event_id_only", "custom": [1]}}]
    # The same app_id and pushkey: updated, not added.
    await set_pusher(alice, pusher_body(gateway.url, "key-1", device_display_name="Tablet",
                                        lang="fr"))
    [only] = await pushers(alice)
    assert (only["device_display_name"], only["lang"], only["data"]) == (
        "Tablet", "fr", {"url": gateway.url})
    assert "profile_tag" not in only
    # Another pushkey, or the same pushkey of another app: another pusher.
    await set_pusher(alice, pusher_body(gateway.url, "key-2"))
    await set_pusher(alice, pusher_body(gateway.url, "key-1", app_id="org.example.other"))
    assert sorted((p["app_id"], p["pushkey"]) for p in await pushers(alice)) == [
        ("org.example.app", "key-1"), ("org.example.app", "key-2"),
        ("org.example.other", "key-1")]
    # kind null deletes that one (and deleting one that does not exist is no error).
    await set_pusher(alice, {"kind": None, "app_id": "org.example.app", "pushkey": "key-1"})
    await set_pusher(alice, {"kind": None, "app_id": "org.example.app", "pushkey": "nothing"})
    assert sorted((p["app_id"], p["pushkey"]) for p in await pushers(alice)) == [
        ("org.example.app", "key-2"), ("org.example.other", "key-1")]


async def test_append_keeps_other_users_pushers_only_when_asked(api, gateway):
    alice, bob, carol = await api.register(), await api.register(), await api.register()
    await set_pusher(alice, pusher_body(gateway.url, "shared"))
    await set_pusher(bob, pusher_body(gateway.url, "shared", append=True))
    assert [p["pushkey"] for p in await pushers(alice)] == ["shared"]
    assert [p["pushkey"] for p in await pushers(bob)] == ["shared"]
    # append false (the default): the pushkey now belongs to carol alone.
    await set_pusher(carol, pusher_body(gateway.url, "shared"))
    assert await pushers(alice) == [] and await pushers(bob) == []
    assert [p["pushkey"] for p in await pushers(carol)] == ["shared"]


def _without(body: dict, key: str) -> dict:
    return {k: v for k, v in body.items() if k != key}


BAD_BODIES = [
    ("no kind", lambda b: _without(b, "kind"), "M_MISSING_PARAM"),
    ("no app_id", lambda b: _without(b, "app_id"), "M_MISSING_PARAM"),
    ("no pushkey", lambda b: _without(b, "pushkey"), "M_MISSING_PARAM"),
    ("no pushkey to delete", lambda b: {"kind": None, "app_id": "x"}, "M_MISSING_PARAM"),
    ("no lang", lambda b: _without(b, "lang"), "M_MISSING_PARAM"),
    ("no data", lambda b: _without(b, "data"), "M_MISSING_PARAM"),
    ("no app_display_name", lambda b: _without(b, "app_display_name"), "M_MISSING_PARAM"),
    ("no device_display_name", lambda b: _without(b, "device_display_name"), "M_MISSING_PARAM"),
    ("no url", lambda b: {**b, "data": {"format": "event_id_only"}}, "M_MISSING_PARAM"),
    ("email kind", lambda b: {**b, "kind": "email"}, "M_INVALID_PARAM"),
    ("kind not a string", lambda b: {**b, "kind": 5}, "M_INVALID_PARAM"),
    ("url not a string", lambda b: {**b, "data": {"url": 5}}, "M_INVALID_PARAM"),
    ("relative url", lambda b: {**b, "data": {"url": NOTIFY}}, "M_INVALID_PARAM"),
    ("ftp url", lambda b: {**b, "data": {"url": "ftp://127.0.0.1" + NOTIFY}}, "M_INVALID_PARAM"),
    ("wrong path", lambda b: {**b, "data": {"url": "https://gw.example/push"}},
     "M_INVALID_PARAM"),
    ("bad port", lambda b: {**b, "data": {"url": "https://gw.example:99999" + NOTIFY}},
     "M_INVALID_PARAM"),
    ("format not a string", lambda b: {**b, "data": {**b["data"], "format": 1}},
     "M_INVALID_PARAM"),
    ("data not an object", lambda b: {**b, "data": "https://gw.example" + NOTIFY},
     "M_INVALID_PARAM"),
    ("huge data", lambda b: {**b, "data": {**b["data"], "x": "y" * 5000}}, "M_INVALID_PARAM"),
    ("app_id of 65 characters", lambda b: {**b, "app_id": "a" * 65}, "M_INVALID_PARAM"),
    ("pushkey of 514 bytes", lambda b: {**b, "pushkey": "é" * 257}, "M_INVALID_PARAM"),
    ("empty pushkey", lambda b: {**b, "pushkey": ""}, "M_INVALID_PARAM"),
    ("lang not a string", lambda b: {**b, "lang": ["en"]}, "M_INVALID_PARAM"),
    ("long device name", lambda b: {**b, "device_display_name": "d" * 256}, "M_INVALID_PARAM"),
    ("append not a bool", lambda b: {**b, "append": "yes"}, "M_INVALID_PARAM"),
]


async def test_invalid_requests_are_refused_and_change_nothing(api, gateway):
    alice, bob = await api.register(), await api.register()
    good = pusher_body(gateway.url, "kept")
    await set_pusher(alice, good)
    await set_pusher(bob, pusher_body(gateway.url, "bobs"))
    before = await pushers(alice)
    for name, change, errcode in BAD_BODIES:
        r = await alice.post("/pushers/set", change(dict(good)))
        assert (r.status, r.json.get("errcode")) == (400, errcode), name
        assert r.json.get("error"), name
        # Replacing bob's pushkey (append false) with a bad body must not delete his either.
        r = await alice.post("/pushers/set", change(pusher_body(gateway.url, "bobs")))
        assert r.status == 400, name
    # Right at the limits is fine.
    await set_pusher(alice, pusher_body(gateway.url, "é" * 256, app_id="a" * 64, append=True))
    await set_pusher(alice, {"kind": None, "app_id": "a" * 64, "pushkey": "é" * 256})
    assert await pushers(alice) == before
    assert [p["pushkey"] for p in await pushers(bob)] == ["bobs"]
    r = await alice.request("POST", "/pushers/set", raw=b"not json")
    assert (r.status, r.json["errcode"]) == (400, "M_NOT_JSON")
    for method, path in (("GET", "/pushers"), ("POST", "/pushers/set"),
                         ("GET", "/notifications")):
        r = await api.request(method, path, {} if method == "POST" else None)
        assert (r.status, r.json["errcode"]) == (401, "M_MISSING_TOKEN")


async def test_logout_and_password_change_delete_the_devices_pushers(api, gateway):
    alice = await api.register()

    async def login() -> User:
        r = await api.request("POST", "/login", {
            "type": "m.login.password", "password": alice.password,
            "identifier": {"type": "m.id.user", "user": alice.user_id}})
        assert r.status == 200, r
        return User(api, alice.user_id, r.json["access_token"], r.json["device_id"],
                    alice.password)

    phone, tablet = await login(), await login()
    await set_pusher(alice, pusher_body(gateway.url, "first"))
    await set_pusher(phone, pusher_body(gateway.url, "phone"))
    await set_pusher(tablet, pusher_body(gateway.url, "tablet"))
    assert (await phone.post("/logout")).status == 200
    assert sorted(p["pushkey"] for p in await pushers(alice)) == ["first", "tablet"]
    # A password change that logs out the other devices leaves only this device's pushers.
    r = await alice.post("/account/password", {
        "new_password": "another horse 43", "logout_devices": True,
        "auth": {"type": "m.login.password", "password": alice.password,
                 "identifier": {"type": "m.id.user", "user": alice.user_id}}})
    assert r.status == 200, r
    assert [p["pushkey"] for p in await pushers(alice)] == ["first"]


# --- delivery --------------------------------------------------------------------------------

async def test_a_message_reaches_the_gateway_with_the_spec_body(api, gateway):
    (alice, bob), room = await room_of(api, 2, name="Tea room")
    await set_name(bob, "Bob Builder")
    await set_pusher(alice, pusher_body(gateway.url, "alice-phone",
                                        data={"url": gateway.url, "custom": "kept"}))
    event_id = await bob.send_text(room, "the kettle is on")
    note = await gateway.delivered()
    devices = note.pop("devices")
    assert note == {
        "event_id": event_id, "room_id": room, "type": "m.room.message",
        "sender": bob.user_id, "sender_display_name": "Bob Builder", "room_name": "Tea room",
        "content": {"msgtype": "m.text", "body": "the kettle is on"},
        "counts": {"unread": 1}, "prio": "high"}  # one-to-one rooms sound: high
    [device] = devices
    assert isinstance(device.pop("pushkey_ts"), int)
    assert device == {"app_id": "org.example.app", "pushkey": "alice-phone",
                      "data": {"custom": "kept"},  # everything but the url
                      "tweaks": {"sound": "default", "highlight": False}}
    # The count is what is unread when the push is made.
    second = await bob.send_text(room, "and the biscuits")
    note = await gateway.delivered()
    assert (note["event_id"], note["counts"]) == (second, {"unread": 2})


async def test_event_id_only_and_low_priority(api, gateway):
    (alice, bob, _carol), room = await room_of(api, 3)
    await set_pusher(alice, pusher_body(gateway.url, "k", data={
        "url": gateway.url, "format": "event_id_only"}))
    event_id = await bob.send_text(room, "secret plans")
    note = await gateway.delivered()
    assert note == {
        "event_id": event_id, "room_id": room, "counts": {"unread": 1}, "prio": "low",
        "devices": [{"app_id": "org.example.app", "pushkey": "k",
                     "pushkey_ts": note["devices"][0]["pushkey_ts"],
                     "data": {"format": "event_id_only"}, "tweaks": {"highlight": False}}]}


async def test_own_messages_and_muted_rooms_are_not_pushed(api, gateway):
    (alice, bob), muted = await room_of(api, 2)
    loud = await alice.create_room(preset="public_chat")
    await bob.join(loud)
    r = await alice.put(f"/pushrules/global/room/{muted}", {"actions": []})
    assert r.status == 200, r
    await set_pusher(alice, pusher_body(gateway.url))
    await alice.send_text(loud, "my own words")
    await bob.send_text(muted, "nobody hears this")
    # Pushes go out in order: had either of those been pushed, it would come first.
    heard = await bob.send_text(loud, "hello alice")
    assert (await gateway.delivered())["event_id"] == heard
    assert gateway.requests.empty()


async def test_failing_gateway_gets_every_notification_once_when_back(api, server, gateway):
    (alice, bob), room = await room_of(api, 2)
    await set_pusher(alice, pusher_body(gateway.url))
    outcomes = Outcomes(server)
    try:
        gateway.status = 500
        first = await bob.send_text(room, "one")
        for _ in range(2):  # tried, and tried again
            status, body = await gateway.attempt()
            assert (status, body["notification"]["event_id"]) == (500, first)
        gateway.status = 200
        assert (await gateway.delivered())["event_id"] == first
        # Down altogether (connection refused), then back on the same port.
        await gateway.stop()
        second = await bob.send_text(room, "two")
        await outcomes.wait_for("retry")
        await gateway.start()
        assert (await gateway.delivered())["event_id"] == second
        third = await bob.send_text(room, "three")
        assert (await gateway.delivered())["event_id"] == third
        assert gateway.requests.empty()  # nothing twice
    finally:
        outcomes.close()


async def test_what_was_read_meanwhile_is_not_pushed(api, gateway):
    (alice, bob), room = await room_of(api, 2)
    await set_pusher(alice, pusher_body(gateway.url))
    gateway.status = 500
    seen = await bob.send_text(room, "read on the laptop")
    assert (await gateway.attempt())[1]["notification"]["event_id"] == seen
    assert (await alice.post(f"/rooms/{room}/receipt/m.read/{seen}")).status == 200
    unseen = await bob.send_text(room, "still unread")
    # Each retry is made again: once one is for the unread message, the read one is over.
    async with asyncio.timeout(WAIT_S):
        while (await gateway.requests.get())[1]["notification"]["event_id"] != unseen:
            pass
    gateway.status = 200
    note = await gateway.delivered()
    assert (note["event_id"], note["counts"]) == (unseen, {"unread": 1})  # counted now


async def test_delivery_survives_a_restart(backend, tmp_path, gateway):
    srv = await start_server(tmp_path, backend, push=FAST_RETRY)
    try:
        async with Api(srv) as api:
            (alice, bob), room = await room_of(api, 2)
            await set_pusher(alice, pusher_body(gateway.url))
            await gateway.stop()
            outcomes = Outcomes(srv)
            pending = await bob.send_text(room, "while you were out")
            await outcomes.wait_for("retry")
            await srv.stop()
            await gateway.start()
            await srv.start()
            assert (await gateway.delivered())["event_id"] == pending
            after = await bob.send_text(room, "welcome back")
            assert (await gateway.delivered())["event_id"] == after
            assert gateway.requests.empty()
    finally:
        await srv.destroy()


async def test_a_rejected_pushkey_removes_the_pusher(api, server, gateway):
    (alice, bob), room = await room_of(api, 2)
    await set_pusher(alice, pusher_body(gateway.url, "stale"))
    await set_pusher(alice, pusher_body(gateway.url, "fresh"))
    gateway.answer = {"rejected": ["stale"]}
    outcomes = Outcomes(server)
    try:
        await bob.send_text(room, "anyone there?")
        keys = {(await gateway.delivered())["devices"][0]["pushkey"] for _ in range(2)}
        assert keys == {"stale", "fresh"}
        await outcomes.wait_for("dropped")
    finally:
        outcomes.close()
    assert [p["pushkey"] for p in await pushers(alice)] == ["fresh"]


# --- GET /notifications ----------------------------------------------------------------------

async def test_notifications_list(api):
    (alice, bob, _carol), room = await room_of(api, 3)
    await set_name(alice, "Alice Liddell")
    m1 = await bob.send_text(room, "first")
    m2 = await bob.send_text(room, "is alice liddell around?")  # her display name: highlight
    m3 = await bob.send_text(room, "third")
    mine = await alice.send_text(room, "my own, not a notification")

    r = await alice.get("/notifications")
    assert r.status == 200, r
    got = r.json["notifications"]
    assert "next_token" not in r.json
    assert [n["event"]["event_id"] for n in got] == [m3, m2, m1]  # newest first
    for n in got:
        assert n["room_id"] == room and n["read"] is False and isinstance(n["ts"], int)
        assert "notify" in n["actions"] and "room_id" not in n["event"]
        assert n["event"]["sender"] == bob.user_id
    assert {"set_tweak": "highlight"} in got[1]["actions"]
    assert got[1]["event"]["content"]["body"] == "is alice liddell around?"
    assert {"set_tweak": "highlight"} not in got[0]["actions"]

    r = await alice.get("/notifications", params={"only": "highlight"})
    assert [n["event"]["event_id"] for n in r.json["notifications"]] == [m2]

    # Pages of two: a token while there is more.
    r = await alice.get("/notifications", params={"limit": "2"})
    assert [n["event"]["event_id"] for n in r.json["notifications"]] == [m3, m2]
    r = await alice.get("/notifications", params={"limit": "2", "from": r.json["next_token"]})
    assert [n["event"]["event_id"] for n in r.json["notifications"]] == [m1]
    assert "next_token" not in r.json

    # A read receipt marks what it covers as read.
    assert (await alice.post(f"/rooms/{room}/receipt/m.read/{m2}")).status == 200
    r = await alice.get("/notifications")
    assert [n["read"] for n in r.json["notifications"]] == [False, True, True]
    # bob's own messages are not his notifications; alice's is.
    r = await bob.get("/notifications")
    assert [n["event"]["event_id"] for n in r.json["notifications"]] == [mine]


@pytest.mark.parametrize("params", [
    {"from": "abc"}, {"from": "-5"}, {"from": "1e3"}, {"limit": "x"}, {"limit": "-1"},
    {"limit": "0"},
])
async def test_notifications_bad_parameters(api, params):
    alice = await api.register()
    r = await alice.get("/notifications", params=params)
    assert (r.status, r.json["errcode"]) == (400, "M_INVALID_PARAM"), r


async def test_private_gateways_are_refused_by_default(gateway, backend, tmp_path):
    """Without push.allow_private_gateways, no user can point a pusher into the server's own
    network: an address literal is refused at once, and a name that resolves to one never
    receives a request."""
    srv = await start_server(tmp_path, backend)
    try:
        async with Api(srv) as other:
            alice = await other.register()
            for host in ("127.0.0.1", "10.0.0.8", "[::1]", "169.254.169.254"):
                body = {**pusher_body(f"http://{host}:{gateway.port}{NOTIFY}", "k-" + host)}
                r = await alice.post("/pushers/set", body)
                assert (r.status, r.json["errcode"]) == (400, "M_INVALID_PARAM"), r
            assert (await alice.get("/pushers")).json == {"pushers": []}
            # "localhost" passes the set-time check but cannot be connected to.
            r = await alice.post("/pushers/set",
                                 pusher_body(f"http://localhost:{gateway.port}{NOTIFY}", "k-name"))
            assert r.status == 200, r
            outcomes = Outcomes(srv)
            try:
                bob = await other.register()
                room_id = await alice.create_room(invite=[bob.user_id], is_direct=True)
                await bob.join(room_id)
                await bob.send_text(room_id, "are you there?")
                await outcomes.wait_for("retry")
            finally:
                outcomes.close()
            assert gateway.requests.empty()
    finally:
        await srv.destroy()
