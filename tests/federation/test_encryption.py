"""End-to-end encryption across Nexa servers, with matrix-nio clients (Olm/Megolm).

Keys cross servers through /user/devices, /user/keys/query and /user/keys/claim; room keys
through m.direct_to_device EDUs; new and deleted devices through m.device_list_update EDUs
(with stream_id/prev_id, a receiver that sees a gap refetches the list)."""

from __future__ import annotations

import asyncio

import nio
import pytest

from tests.e2e.nio_crypto import Crypto, encrypted_room, login_new_device, register, settle
from tests.e2e.nio_helpers import raw
from tests.federation.conftest import FED
from tests.servers import start_server


@pytest.fixture
async def crypto(servers):
    made: list[Crypto] = []

    async def make(srv, prefix: str = "e2e") -> Crypto:
        c = await register(srv.base_url, prefix)
        made.append(c)
        return c

    async def new_device(srv, user: Crypto) -> Crypto:
        c = await login_new_device(srv.base_url, user)
        made.append(c)
        return c

    make.new_device = new_device  # type: ignore[attr-defined]
    yield make
    for c in made:
        await c.close()


async def test_encrypted_conversation_across_three_servers(servers, crypto):
    s1, s2, s3 = await servers(3)
    alice, bob = await crypto(s1, "alice"), await crypto(s2, "bob")
    room_id = await encrypted_room(alice, bob)
    await settle(alice, bob)

    await alice.send(room_id, "hi bob, over federation")
    await bob.wait_for_text(room_id, "hi bob, over federation")
    await bob.send(room_id, "hi alice, from server 2")
    await alice.wait_for_text(room_id, "hi alice, from server 2")

    # Server 2 stored only ciphertext of alice's message.
    status, body = await raw(bob.client, "GET", f"/rooms/{room_id}/messages",
                             params={"dir": "b", "limit": "50"})
    assert status == 200
    sent = [e for e in body["chunk"] if e["type"] in ("m.room.message", "m.room.encrypted")]
    assert sent and all(e["type"] == "m.room.encrypted" for e in sent)
    assert "over federation" not in str(body)

    # Bob adds a device on server 2: server 1 hears of it (m.device_list_update), alice's
    # client re-queries, and the next room key reaches the new device too.
    bob2 = await crypto.new_device(s2, bob)
    await alice.wait_for(lambda c: bob2.device_id in c.client.device_store[bob.user_id],
                         "bob's new device (via m.device_list_update)")
    # Carol on server 3 joins later.
    assert isinstance(await alice.client.room_invite(room_id, carol_id := (
        carol := await crypto(s3, "carol")).user_id), nio.RoomInviteResponse)
    assert isinstance(await carol.client.join(room_id), nio.JoinResponse)
    await settle(alice, bob, bob2, carol)
    await alice.wait_for(lambda c: carol_id in c.client.device_store.users, "carol's device")

    await alice.send(room_id, "welcome carol and bob's new device")
    for c in (bob, bob2, carol):
        await c.wait_for_text(room_id, "welcome carol and bob's new device")
    await carol.send(room_id, "carol from server 3")
    for c in (alice, bob, bob2):
        await c.wait_for_text(room_id, "carol from server 3")

    # Keys they were not entitled to never arrived: the earlier messages stay undecryptable.
    for c in (bob2, carol):
        assert "hi bob, over federation" not in c.texts(room_id)
        assert "hi alice, from server 2" not in c.texts(room_id)
        if c.undecrypted(room_id):
            with pytest.raises(nio.EncryptionError):
                c.client.decrypt_event(c.undecrypted(room_id)[0])


async def test_device_list_updates_and_gap_recovery(tmp_path, backend):
    """Server 1 caches bob's device list; an EDU lost on the way (server 1 down) shows up as
    a prev_id gap when the next one arrives, and server 1 fetches the list again."""
    s1 = await start_server(tmp_path, backend, federation=FED)
    s2 = await start_server(tmp_path, backend, federation=FED)
    made: list[Crypto] = []
    try:
        alice = await register(s1.base_url, "alice")
        bob = await register(s2.base_url, "bob")
        made += [alice, bob]
        room_id = await encrypted_room(alice, bob)
        await settle(alice, bob)
        # Alice's query fills server 1's cache of bob's devices.
        status, body = await raw(alice.client, "POST", "/keys/query",
                                 {"device_keys": {bob.user_id: []}})
        assert status == 200 and list(body["device_keys"][bob.user_id]) == [bob.device_id], body
        tokens = await raw(alice.client, "GET", "/sync", params={"timeout": "0"})
        since = tokens[1]["next_batch"]

        # Lose the EDU for a new device: server 1 drops whatever arrives meanwhile.
        edus = s1.hs.federation_edus
        original = edus.on_edu

        async def lossy(origin, edu):
            if isinstance(edu, dict) and edu.get("edu_type") == "m.device_list_update":
                return
            await original(origin, edu)

        edus.on_edu = lossy
        # Every EDU of the new device (its login and key upload are queued by the time
        # login_new_device returns) has been sent, and so dropped, once the outbox is empty.
        attempted = asyncio.Event()
        s2.hs.federation_sender.listeners.append(lambda *_: attempted.set())

        async def next_attempt():
            await attempted.wait()
            attempted.clear()

        lost = await login_new_device(s2.base_url, bob, "lost")
        made.append(lost)
        await _until(lambda: _outbox_empty(s2), "server 2 to flush its queue", next_attempt)
        edus.on_edu = original
        status, body = await raw(alice.client, "POST", "/keys/query",
                                 {"device_keys": {bob.user_id: []}})
        # Nothing told server 1 yet: it still serves its cached snapshot.
        assert lost.device_id not in body["device_keys"][bob.user_id]

        # Server 1's changes to bob's devices reach alice's /sync: a long-poll of it wakes.
        alice_since = since

        async def alice_news():
            nonlocal alice_since
            st, b = await raw(alice.client, "GET", "/sync",
                              params={"since": alice_since, "timeout": "10000"})
            assert st == 200, b
            alice_since = b["next_batch"]

        # The next change carries prev_id = the lost one: a gap; server 1 refetches.
        third = await login_new_device(s2.base_url, bob, "third")
        made.append(third)

        async def both_visible():
            st, b = await raw(alice.client, "POST", "/keys/query",
                              {"device_keys": {bob.user_id: []}})
            return st == 200 and {lost.device_id, third.device_id} <= set(
                b["device_keys"][bob.user_id])

        await _until(both_visible, "both new devices after the gap", alice_news)
        st, changes = await raw(alice.client, "GET", "/keys/changes",
                                params={"from": since})
        assert st == 200 and bob.user_id in changes["changed"], changes
        # Room membership: when bob leaves, alice's client is told he left.
        assert isinstance(await bob.client.room_leave(room_id), nio.RoomLeaveResponse)

        async def left():
            st, b = await raw(alice.client, "GET", "/keys/changes", params={"from": since})
            return st == 200 and bob.user_id in b["left"]

        await _until(left, "bob in device_lists.left", alice_news)
    finally:
        for c in made:
            await c.close()
        await s1.destroy()
        await s2.destroy()


async def _outbox_empty(srv) -> bool:
    token = srv.hs.db.activate()
    try:
        rows = await srv.hs.db.conn().execute_query_dict(
            "SELECT COUNT(*) AS n FROM federation_outbox")
        return int(rows[0]["n"]) == 0
    finally:
        srv.hs.db.deactivate(token)


async def _until(pred, what: str, wake, limit_s: float = 30) -> None:
    """Check `pred` again each time `wake()` returns (when something may have changed); a
    change during a check must make the next `wake()` return at once."""
    try:
        async with asyncio.timeout(limit_s):
            while not await pred():
                await wake()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_keys_and_to_device_over_federation_raw(servers):
    """The federation endpoints and EDUs without nio: keys of a stranger come from
    /user/keys/query (nothing cached), to-device messages cross once per txnId, cross-signing
    keys follow m.signing_key_update, and bad input is refused before anything is queued."""
    from tests.api.test_e2e_keys import Device, SigningKey, _xkey, claim, query
    from tests.client import Api
    from tests.federation.helpers import Timeline

    s1, s2 = await servers(2)
    async with Api(s1) as a1, Api(s2) as a2:
        alice, bob, stranger = await a1.register(), await a2.register(), await a2.register()
        await Device(bob).upload(otks=2)
        await Device(stranger).upload(otks=1)
        # No shared room: asked live through /user/keys/query and /user/keys/claim.
        got = await query(alice, stranger.user_id)
        assert list(got["device_keys"][stranger.user_id]) == [stranger.device_id], got
        assert got["failures"] == {}
        assert len(await claim(alice, stranger)) == 1
        assert await claim(alice, stranger) == {}  # one-time: there was only one
        r = await alice.post("/keys/query", {"device_keys": {"@x:unreachable.invalid": []}})
        assert r.status == 200 and "unreachable.invalid" in r.json["failures"], r

        room_id = await alice.create_room()
        assert (await alice.post(f"/rooms/{room_id}/invite",
                                 {"user_id": bob.user_id})).status == 200
        r = await bob.post(f"/join/{room_id}")
        assert r.status == 200, r
        t_bob = Timeline(bob)
        await t_bob.poll()

        # To-device across servers: '*' reaches every device; a repeated txnId sends nothing.
        body = {"messages": {bob.user_id: {"*": {"secret": "ciphertext"}}}}
        for _ in range(2):
            r = await alice.put("/sendToDevice/m.room.encrypted/tx1", body)
            assert r.status == 200, r
        r = await alice.put("/sendToDevice/m.room.encrypted/tx2", {"messages": {
            bob.user_id: {bob.device_id: {"blob": "x" * 70_000}}}})
        assert r.status == 413 and r.json["errcode"] == "M_TOO_LARGE"
        r = await alice.put("/sendToDevice/m.room.encrypted/tx3", {"messages": {
            bob.user_id: {bob.device_id: {"n": 3}}}})
        assert r.status == 200
        received: list[dict] = []
        since = t_bob.since
        for _ in range(40):
            res = await bob.sync(since, timeout=1000)
            since = res["next_batch"]
            received += res.get("to_device", {}).get("events", [])
            if len(received) >= 2:
                break
        # tx3 went after the repeated tx1: a duplicate would have come before it.
        assert [e["content"] for e in received] == [{"secret": "ciphertext"}, {"n": 3}], received
        assert all(e["sender"] == alice.user_id for e in received)

        # Bob's cross-signing keys reach alice through server 1's cache update.
        await query(alice, bob.user_id)  # cached now (they share a room)
        alice_since = (await alice.sync())["next_batch"]
        master = SigningKey()
        r = await bob.post("/keys/device_signing/upload",
                           {"master_key": _xkey(bob, master, "master")})
        assert r.status == 200, r
        # Applying m.signing_key_update marks bob's keys changed: alice's long-poll wakes.
        async with asyncio.timeout(30):
            while bob.user_id not in (got := await query(alice, bob.user_id))["master_keys"]:
                alice_since = (await alice.sync(alice_since, timeout=10000))["next_batch"]
        assert got["master_keys"][bob.user_id]["keys"] == {f"ed25519:{master.pub}": master.pub}
        assert got["user_signing_keys"] == {}


async def test_forged_and_malformed_e2e_federation_input(tmp_path, backend):
    """A (scripted) remote server may speak only for its own users: to-device messages and
    device list updates it sends for anyone else are ignored, repeats are applied once, and
    the /user/* endpoints answer only for local users and refuse malformed bodies."""
    from tests.api.test_e2e_keys import Device, claim
    from tests.client import Api
    from tests.federation.fake_server import FakeServer, path

    fake, other = FakeServer(), FakeServer()
    await fake.start()
    await other.start()
    victim = await start_server(tmp_path, backend, federation=FED)
    try:
        async with Api(victim) as api:
            admin, friend = await api.register(), await api.register()
            await Device(admin).upload(otks=2)
            room_id = await admin.create_room(preset="public_chat")
            alice = fake.user("alice")
            await fake.join(victim, room_id, alice)
            since = (await admin.sync())["next_batch"]

            def to_device(sender: str, message_id: str, target: str = admin.user_id,
                          content: dict | None = None) -> dict:
                return {"edu_type": "m.direct_to_device", "content": {
                    "sender": sender, "type": "m.room.encrypted", "message_id": message_id,
                    "messages": {target: {"*": content or {"from": sender}}}}}

            def device_update(user_id: str, stream_id: int, device_id: str = "DEV") -> dict:
                return {"edu_type": "m.device_list_update", "content": {
                    "user_id": user_id, "device_id": device_id, "stream_id": stream_id,
                    "prev_id": [], "deleted": False}}

            edus = [
                to_device(other.user("bob"), "m1"),         # not the fake's user
                to_device(friend.user_id, "m2"),            # a local user, forged
                to_device(alice, "m3", content={"x": "y" * 70_000}),  # too large
                to_device(alice, "m4", target="@x:" + other.server_name),  # not ours
                {"edu_type": "m.direct_to_device", "content": {"sender": alice}},
                {"edu_type": "m.direct_to_device", "content": "nope"},
                device_update(other.user("bob"), 1),
                device_update(friend.user_id, 1),
                device_update(alice, "1"),  # type: ignore[arg-type]
                {"edu_type": "m.device_list_update", "content": {"user_id": alice}},
                to_device(alice, "ok1"),
                to_device(alice, "ok1"),  # the same message ID again
                device_update(alice, 5),
            ]
            r = await fake.send_transaction(victim, "t1", [], edus)
            assert r.status == 200, r
            r = await fake.send_transaction(victim, "t2", [], [to_device(alice, "ok1")])
            assert r.status == 200, r
            res = await admin.sync(since)
            assert [(e["sender"], e["content"]) for e in res["to_device"]["events"]] == [
                (alice, {"from": alice})]
            assert res["device_lists"]["changed"] == [alice]
            assert (await friend.sync())["to_device"]["events"] == []

            # /user/* endpoints: local users only; malformed bodies refused.
            uri = "/_matrix/federation/v1/user/keys/query"
            r = await fake.request(victim, "POST", uri, {"device_keys": {
                admin.user_id: [], other.user("bob"): []}})
            assert r.status == 200 and list(r.json["device_keys"]) == [admin.user_id], r
            assert "user_signing_keys" not in r.json
            for bad in ({}, {"device_keys": []}, {"device_keys": {"nope": []}},
                        {"device_keys": {admin.user_id: "x"}}):
                r = await fake.request(victim, "POST", uri, bad)
                assert r.status == 400, (bad, r)
            uri = "/_matrix/federation/v1/user/keys/claim"
            claimed = set()
            for _ in range(3):
                r = await fake.request(victim, "POST", uri, {"one_time_keys": {
                    admin.user_id: {admin.device_id: "signed_curve25519"}}})
                assert r.status == 200, r
                claimed |= set(r.json["one_time_keys"].get(admin.user_id, {}).get(
                    admin.device_id, {}))
            assert len(claimed) == 2 and await claim(friend, admin) == {}
            r = await fake.request(victim, "POST", uri, {"one_time_keys": {admin.user_id: []}})
            assert r.status == 400, r
            r = await fake.request(victim, "GET", path("/_matrix/federation/v1/user/devices/{}",
                                                       admin.user_id))
            assert r.status == 200 and r.json["user_id"] == admin.user_id, r
            assert [d["device_id"] for d in r.json["devices"]] == [admin.device_id]
            assert r.json["stream_id"] > 0
            r = await fake.request(victim, "GET", path("/_matrix/federation/v1/user/devices/{}",
                                                       alice))
            assert r.status == 400, r
            r = await fake.request(victim, "GET", path("/_matrix/federation/v1/user/devices/{}",
                                                       admin.user_id), authorization=False)
            assert r.status == 401, r
    finally:
        await victim.destroy()
        await other.stop()
        await fake.stop()
