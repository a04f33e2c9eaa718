"""End-to-end encryption with matrix-nio on one Nexa server: real Olm/Megolm clients (nio's
vodozemac backend) create an encrypted room, exchange messages both ways and decrypt each
other's; devices that appear later get the room keys sent from then on and never older ones.
The server only relays: it stores ciphertext and keys, and plaintext never reaches it."""

from __future__ import annotations

import nio
import pytest

from tests.e2e.nio_crypto import Crypto, encrypted_room, login_new_device, register, settle
from tests.e2e.nio_helpers import raw


@pytest.fixture
async def crypto_users(server):
    made: list[Crypto] = []

    async def make(prefix: str = "e2e") -> Crypto:
        c = await register(server.base_url, prefix)
        made.append(c)
        return c

    async def new_device(user: Crypto) -> Crypto:
        c = await login_new_device(server.base_url, user)
        made.append(c)
        return c

    make.new_device = new_device  # type: ignore[attr-defined]
    yield make
    for c in made:
        await c.close()


async def _stored_events(client: nio.AsyncClient, room_id: str) -> list[dict]:
    status, body = await raw(client, "GET", f"/rooms/{room_id}/messages",
                             params={"dir": "b", "limit": "50"})
    assert status == 200, body
    return body["chunk"]


async def test_two_nio_clients_exchange_encrypted_messages(crypto_users):
    alice, bob = await crypto_users("alice"), await crypto_users("bob")
    room_id = await encrypted_room(alice, bob)
    await settle(alice, bob)
    assert alice.client.rooms[room_id].encrypted and bob.client.rooms[room_id].encrypted

    await alice.send(room_id, "hello bob, secretly")
    await bob.wait_for_text(room_id, "hello bob, secretly")
    await bob.send(room_id, "hello alice, secretly")
    await alice.wait_for_text(room_id, "hello alice, secretly")
    await alice.send(room_id, "second from alice")
    await bob.wait_for_text(room_id, "second from alice")

    # What the server stored is ciphertext: m.room.encrypted events, no plaintext anywhere.
    events = await _stored_events(bob.client, room_id)
    messages = [e for e in events if e["type"] in ("m.room.message", "m.room.encrypted")]
    assert len(messages) == 3
    for e in messages:
        assert e["type"] == "m.room.encrypted"
        assert e["content"]["algorithm"] == "m.megolm.v1.aes-sha2"
        assert "secretly" not in str(e) and "second from" not in str(e)
    # The room key travelled as an Olm-encrypted to-device message.
    assert any(isinstance(e, nio.RoomKeyEvent) for e in bob.to_device), bob.to_device


async def test_later_devices_get_only_the_keys_they_are_entitled_to(crypto_users):
    alice, bob = await crypto_users("alice"), await crypto_users("bob")
    room_id = await encrypted_room(alice, bob)
    await settle(alice, bob)
    await alice.send(room_id, "before the new devices")
    await bob.wait_for_text(room_id, "before the new devices")

    # Bob logs in on a second device; carol, a new user, joins the room.
    bob2 = await crypto_users.new_device(bob)
    carol = await crypto_users("carol")
    ok_invite = await alice.client.room_invite(room_id, carol.user_id)
    assert isinstance(ok_invite, nio.RoomInviteResponse), ok_invite
    assert isinstance(await carol.client.join(room_id), nio.JoinResponse)
    await settle(alice, bob, bob2, carol)

    # Alice's client learns of the new devices through device_lists.changed and /keys/query.
    await alice.wait_for(lambda c: bob2.device_id in c.client.device_store[bob.user_id]
                         and carol.user_id in c.client.device_store.users,
                         "bob's second device and carol's device")
    await alice.send(room_id, "after the new devices")
    for c in (bob, bob2, carol):
        await c.wait_for_text(room_id, "after the new devices")
    await bob2.send(room_id, "from bob's second device")
    for c in (alice, bob, carol):
        await c.wait_for_text(room_id, "from bob's second device")

    # The message from before they existed stays unreadable for the new devices: no room key
    # for it was ever sent to them (the server delivered nothing older than the device).
    for c in (bob2, carol):
        await c.sync()
        assert "before the new devices" not in c.texts(room_id)
        old = c.undecrypted(room_id)
        assert old, f"{c.user_id} should still hold the older message, undecryptable"
        with pytest.raises(nio.EncryptionError):
            c.client.decrypt_event(old[0])
    assert "before the new devices" in bob.texts(room_id)


async def test_deleting_a_device_removes_it_from_other_clients(crypto_users):
    alice, bob = await crypto_users("alice"), await crypto_users("bob")
    room_id = await encrypted_room(alice, bob)
    bob2 = await crypto_users.new_device(bob)
    await settle(alice, bob, bob2)
    await alice.wait_for(lambda c: bob2.device_id in c.client.device_store[bob.user_id],
                         "bob's second device")

    # Bob deletes his second device (password UIA); its keys go and alice's client drops it.
    status, body = await raw(bob.client, "DELETE", f"/devices/{bob2.device_id}", {
        "auth": {"type": "m.login.password", "password": bob.client.test_password,
                 "identifier": {"type": "m.id.user", "user": bob.user_id}}})
    assert status == 200, body
    status, body = await raw(alice.client, "POST", "/keys/query",
                             {"device_keys": {bob.user_id: []}})
    assert status == 200 and bob2.device_id not in body["device_keys"][bob.user_id], body
    await alice.wait_for(lambda c: all(d.id != bob2.device_id for d in
                                       c.client.device_store.active_user_devices(bob.user_id)),
                         "bob's second device gone")
    await alice.send(room_id, "only bob's first device")
    await bob.wait_for_text(room_id, "only bob's first device")
