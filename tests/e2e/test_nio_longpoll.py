"""A parked /sync long-poll (timeout 30 s) must be woken by every kind of news for the user,
and answer with that news: the server's notifier has to reach listeners by room *and* by user.

Each test parks a matrix-nio sync (a hook on the in-process notifier says when it is waiting),
does one thing from another client, then awaits the parked request. No sleeps: if the wake-up
is missing, the poll only answers at its 30 s timeout, empty, and the assertion fails."""

from __future__ import annotations

import nio

from tests.e2e.nio_helpers import (ephemeral, ok, parked_sync, raw, send_text, shared_room,
                                   timeline)


async def test_invite_wakes_invitee(server, nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    ok(await bob.sync(timeout=0), nio.SyncResponse)
    room = {}

    async def invite() -> None:
        room["id"] = ok(await alice.room_create(invite=[bob.user_id]),
                        nio.RoomCreateResponse).room_id

    resp = await parked_sync(server, bob, invite)
    assert room["id"] in resp.rooms.invite, resp.rooms


async def test_join_wakes_existing_member(server, nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = ok(await alice.room_create(invite=[bob.user_id]), nio.RoomCreateResponse).room_id
    ok(await alice.sync(timeout=0), nio.SyncResponse)

    async def join() -> None:
        ok(await bob.join(room_id), nio.JoinResponse)

    resp = await parked_sync(server, alice, join)
    assert [e for e in timeline(resp, room_id) if isinstance(e, nio.RoomMemberEvent)
            and e.state_key == bob.user_id and e.membership == "join"], resp.rooms.join


async def test_kick_wakes_kicked_user_with_leave(server, nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)

    async def kick() -> None:
        ok(await alice.room_kick(room_id, bob.user_id, reason="bye"), nio.RoomKickResponse)

    resp = await parked_sync(server, bob, kick)
    left = resp.rooms.leave.get(room_id)
    assert left is not None, resp.rooms
    kicks = [e for e in left.timeline.events if isinstance(e, nio.RoomMemberEvent)
             and e.state_key == bob.user_id and e.membership == "leave"]
    assert kicks and kicks[-1].sender == alice.user_id
    assert kicks[-1].content.get("reason") == "bye"
    assert room_id not in resp.rooms.join


async def test_typing_wakes_other_member(server, nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)

    async def typing() -> None:
        ok(await alice.room_typing(room_id, True), nio.RoomTypingResponse)

    resp = await parked_sync(server, bob, typing)
    notices = [e for e in ephemeral(resp, room_id) if isinstance(e, nio.TypingNoticeEvent)]
    assert notices and notices[-1].users == [alice.user_id], ephemeral(resp, room_id)


async def test_receipt_wakes_other_member(server, nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    event_id = await send_text(alice, room_id, "read me")
    ok(await alice.sync(timeout=0), nio.SyncResponse)

    async def receipt() -> None:
        ok(await bob.update_receipt_marker(room_id, event_id), nio.UpdateReceiptMarkerResponse)

    resp = await parked_sync(server, alice, receipt)
    got = [(r.event_id, r.user_id) for e in ephemeral(resp, room_id)
           if isinstance(e, nio.ReceiptEvent) for r in e.receipts]
    assert (event_id, bob.user_id) in got, ephemeral(resp, room_id)


async def test_displayname_wakes_room_mates(server, nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)

    async def rename() -> None:
        ok(await alice.set_displayname("Parked Alice"), nio.ProfileSetDisplayNameResponse)

    resp = await parked_sync(server, bob, rename)
    assert [e for e in timeline(resp, room_id) if isinstance(e, nio.RoomMemberEvent)
            and e.state_key == alice.user_id
            and e.content.get("displayname") == "Parked Alice"], resp.rooms.join


async def test_own_account_data_wakes_other_device(server, nio_user, nio_client):
    bob = await nio_user("bob")
    phone = nio_client(bob.user_id)
    ok(await phone.login(bob.test_password), nio.LoginResponse)
    ok(await bob.sync(timeout=0), nio.SyncResponse)

    async def put() -> None:
        status, body = await raw(phone, "PUT", f"/user/{bob.user_id}/account_data/org.example.x",
                                 {"hello": "device"})
        assert status == 200, body

    resp = await parked_sync(server, bob, put)
    data = [e for e in resp.account_data_events
            if isinstance(e, nio.UnknownAccountDataEvent) and e.type == "org.example.x"]
    assert data, resp.account_data_events
    assert data[-1].content == {"hello": "device"}


async def test_presence_wakes_room_mates(server, nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    await shared_room(alice, bob)
    ok(await bob.sync(timeout=0), nio.SyncResponse)

    async def away() -> None:
        ok(await alice.set_presence("unavailable", "out for lunch"), nio.PresenceSetResponse)

    resp = await parked_sync(server, bob, away)
    mine = [e for e in resp.presence_events if e.user_id == alice.user_id]
    assert mine, resp.presence_events
    assert (mine[-1].presence, mine[-1].status_msg) == ("unavailable", "out for lunch")
