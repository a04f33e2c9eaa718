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
        lost = await login_new_device(s2.base_url, bob, "lost")
        made.append(lost)
        await _until(lambda: _outbox_empty(s2), "server 2 to flush its queue")
        edus.on_edu = original
        status, body = await raw(alice.client, "POST", "/keys/query",
                                 {"device_keys": {bob.user_id: []}})
        # Nothing told server 1 yet: it still serves its cached snapshot.
        assert lost.device_id not in body["device_keys"][bob.user_id]

        # The next change carries prev_id = the lost one: a gap; server 1 refetches.
        third = await login_new_device(s2.base_url, bob, "third")
        made.append(third)

        async def both_visible():
            st, b = await raw(alice.client, "POST", "/keys/query",
                              {"device_keys": {bob.user_id: []}})
            return st == 200 and {lost.device_id, third.device_id} <= set(
                b["device_keys"][bob.user_id])

        await _until(both_visible, "both new devices after the gap")
        st, changes = await raw(alice.client, "GET", "/keys/changes",
                                params={"from": since})
        assert st == 200 and bob.user_id in changes["changed"], changes
        # Room membership: when bob leaves, alice's client is told he left.
        assert isinstance(await bob.client.room_leave(room_id), nio.RoomLeaveResponse)

        async def left():
            st, b = await raw(alice.client, "GET", "/keys/changes", params={"from": since})
            return st == 200 and bob.user_id in b["left"]

        await _until(left, "bob in device_lists.left")
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


async def _until(pred, what: str, limit_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit_s
    while True:
        res = pred()
        if asyncio.iscoroutine(res):
            res = await res
        if res:
            return
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
