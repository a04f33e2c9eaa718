"""Membership lifecycle through matrix-nio: leave and rejoin, what a departed member may still
read, bans, invite-only rooms, and forgetting a room."""

from __future__ import annotations

import nio

from tests.e2e.nio_helpers import (initial_sync, ok, send_text, shared_room, status_of,
                                   sync_until, texts, timeline)


async def all_texts_back(client: nio.AsyncClient, room_id: str) -> list[str]:
    out, token = [], None
    for _ in range(20):
        page = ok(await client.room_messages(room_id, start=token, limit=50),
                  nio.RoomMessagesResponse)
        out.extend(texts(page.chunk))
        if not page.chunk or not page.end:
            return out
        token = page.end
    raise AssertionError("pagination never ended")


async def test_leave_then_read_only_up_to_departure_then_rejoin(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob, preset=nio.RoomPreset.public_chat)
    await send_text(alice, room_id, "while bob is here")

    ok(await bob.room_leave(room_id), nio.RoomLeaveResponse)
    left = await sync_until(bob, lambda r: r.rooms.leave.get(room_id), what="bob's leave")
    assert [e for e in left.timeline.events if isinstance(e, nio.RoomMemberEvent)
            and e.state_key == bob.user_id and e.membership == "leave"]
    assert room_id not in ok(await bob.joined_rooms(), nio.JoinedRoomsResponse).rooms

    await send_text(alice, room_id, "after bob left")
    # A former member reads history up to the leave, nothing after; nor does sync bring it.
    assert await all_texts_back(bob, room_id) == ["while bob is here"]
    quiet = ok(await bob.sync(timeout=0), nio.SyncResponse)
    assert room_id not in quiet.rooms.join
    assert "after bob left" not in texts(timeline(quiet, room_id))
    left_room = quiet.rooms.leave.get(room_id)
    assert left_room is None or "after bob left" not in texts(left_room.timeline.events)
    err = ok(await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "x"}),
             nio.RoomSendError)
    assert status_of(err) == 403

    # Rejoining a public room: the room comes back in sync, and "shared" history is readable.
    ok(await bob.join(room_id), nio.JoinResponse)
    await sync_until(bob, lambda r: room_id in r.rooms.join, what="the rejoined room")
    assert set(bob.rooms[room_id].users) == {alice.user_id, bob.user_id}
    assert await all_texts_back(bob, room_id) == ["after bob left", "while bob is here"]


async def test_ban_blocks_rejoin_and_unban_allows_it(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob, preset=nio.RoomPreset.public_chat)

    ok(await alice.room_ban(room_id, bob.user_id, reason="spam"), nio.RoomBanResponse)
    left = await sync_until(bob, lambda r: r.rooms.leave.get(room_id), what="bob's ban")
    bans = [e for e in left.timeline.events if isinstance(e, nio.RoomMemberEvent)
            and e.state_key == bob.user_id]
    assert bans and bans[-1].membership == "ban" and bans[-1].content.get("reason") == "spam"

    err = ok(await bob.join(room_id), nio.JoinError)
    assert (status_of(err), err.status_code) == (403, "M_FORBIDDEN")
    ok(await alice.room_unban(room_id, bob.user_id), nio.RoomUnbanResponse)
    ok(await bob.join(room_id), nio.JoinResponse)
    members = ok(await alice.joined_members(room_id), nio.JoinedMembersResponse)
    assert {m.user_id for m in members.members} == {alice.user_id, bob.user_id}


async def test_invite_only_room_refuses_uninvited_and_unprivileged(nio_user):
    alice, bob, eve = await nio_user("alice"), await nio_user("bob"), await nio_user("eve")
    room_id = await shared_room(alice, bob)  # private_chat: invite only

    err = ok(await eve.join(room_id), nio.JoinError)
    assert (status_of(err), err.status_code) == (403, "M_FORBIDDEN")
    # Bob (power 0) may talk but not rename the room or kick Alice.
    await send_text(bob, room_id, "members may talk")
    err = ok(await bob.room_put_state(room_id, "m.room.name", {"name": "bob's room"}),
             nio.RoomPutStateError)
    assert (status_of(err), err.status_code) == (403, "M_FORBIDDEN")
    err = ok(await bob.room_kick(room_id, alice.user_id), nio.RoomKickError)
    assert status_of(err) == 403
    # Nothing of this room reaches Eve.
    resp = await initial_sync(eve)
    assert room_id not in resp.rooms.join and room_id not in resp.rooms.invite


async def test_forget_after_leave_removes_access(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    await send_text(alice, room_id, "remember me")

    err = ok(await bob.room_forget(room_id), nio.RoomForgetError)  # still joined
    assert status_of(err) == 400
    ok(await bob.room_leave(room_id), nio.RoomLeaveResponse)
    assert await all_texts_back(bob, room_id) == ["remember me"]
    ok(await bob.room_forget(room_id), nio.RoomForgetResponse)
    err = ok(await bob.room_messages(room_id, limit=10), nio.RoomMessagesError)
    assert (status_of(err), err.status_code) == (403, "M_FORBIDDEN")
    # A forgotten room is not in an initial sync, even asking for left rooms.
    resp = await initial_sync(bob, sync_filter={"room": {"include_leave": True}})
    assert room_id not in resp.rooms.leave and room_id not in resp.rooms.join
