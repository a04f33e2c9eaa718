"""Scenarios 5, 6 and 7 with matrix-nio: typing notices, read receipts and read markers, and a
display name change reaching the other member as an m.room.member event."""

from __future__ import annotations

import nio

from tests.e2e.nio_helpers import (ephemeral, initial_sync, ok, raw, send_text, shared_room,
                                   status_of, sync_until, timeline)


def typing_users(resp: nio.SyncResponse, room_id: str) -> list[str] | None:
    """The user list of the last m.typing in the room's ephemeral events, None if none."""
    found = [e for e in ephemeral(resp, room_id) if isinstance(e, nio.TypingNoticeEvent)]
    return list(found[-1].users) if found else None


def receipts(resp: nio.SyncResponse, room_id: str) -> list[nio.Receipt]:
    return [r for e in ephemeral(resp, room_id) if isinstance(e, nio.ReceiptEvent)
            for r in e.receipts]


def receipt_value(r: nio.Receipt) -> str:
    return getattr(r.receipt_type, "value", r.receipt_type)


async def test_typing_notice_reaches_other_member(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)

    ok(await alice.room_typing(room_id, True, timeout=30_000), nio.RoomTypingResponse)
    users = await sync_until(bob, lambda r: typing_users(r, room_id), what="alice typing")
    assert users == [alice.user_id]
    assert bob.rooms[room_id].typing_users == [alice.user_id]

    ok(await alice.room_typing(room_id, False), nio.RoomTypingResponse)
    await sync_until(bob, lambda r: typing_users(r, room_id) == [], what="alice stopped typing")
    assert bob.rooms[room_id].typing_users == []


async def test_typing_expires_by_itself(nio_user):
    """No stop from the client: the server's timer ends the notice and wakes Bob's long-poll."""
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    ok(await alice.room_typing(room_id, True, timeout=300), nio.RoomTypingResponse)
    await sync_until(bob, lambda r: typing_users(r, room_id), what="alice typing")
    await sync_until(bob, lambda r: typing_users(r, room_id) == [], what="the typing expiry")
    assert bob.rooms[room_id].typing_users == []


async def test_typing_for_someone_else_is_forbidden(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    # nio always types as itself; pretend to be bob by swapping the user ID it puts in the path.
    alice.user_id, real = bob.user_id, alice.user_id
    try:
        err = ok(await alice.room_typing(room_id, True), nio.RoomTypingError)
    finally:
        alice.user_id = real
    assert err.status_code == "M_FORBIDDEN"


async def test_read_receipt_reaches_sender(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    first = await send_text(alice, room_id, "please read me")
    second = await send_text(alice, room_id, "and me")
    await sync_until(bob, lambda r: second in {e.event_id for e in timeline(r, room_id)},
                     what="alice's messages")
    ok(await alice.sync(timeout=0), nio.SyncResponse)

    ok(await bob.update_receipt_marker(room_id, first), nio.UpdateReceiptMarkerResponse)
    got = await sync_until(alice, lambda r: [x for x in receipts(r, room_id)
                                             if x.user_id == bob.user_id], what="bob's receipt")
    assert [(x.event_id, receipt_value(x)) for x in got] == [(first, "m.read")]
    assert got[0].timestamp > 0

    # Read markers: the public read receipt moves on, the fully-read marker stays private.
    ok(await bob.room_read_markers(room_id, fully_read_event=second, read_event=second),
       nio.RoomReadMarkersResponse)
    got = await sync_until(alice, lambda r: [x for x in receipts(r, room_id)
                                             if x.user_id == bob.user_id and x.event_id == second],
                           what="bob's read marker receipt")
    assert receipt_value(got[0]) == "m.read"

    fully_read = await sync_until(
        bob, lambda r: [e for e in (r.rooms.join[room_id].account_data
                                    if room_id in r.rooms.join else [])
                        if isinstance(e, nio.FullyReadEvent)], what="bob's m.fully_read")
    assert fully_read[-1].event_id == second
    # Alice's full view of the room carries no trace of Bob's m.fully_read.
    full = ok(await alice.sync(timeout=0, full_state=True), nio.SyncResponse)
    assert not [e for e in full.rooms.join[room_id].account_data
                if isinstance(e, nio.FullyReadEvent)]
    # An initial sync gives the latest receipt per (user, type, thread): nio's receipt went to
    # the "main" thread, the read marker's is unthreaded.
    fresh = await initial_sync(alice)
    bob_receipts = {(x.event_id, x.thread_id) for x in receipts(fresh, room_id)
                    if x.user_id == bob.user_id}
    assert bob_receipts == {(first, "main"), (second, None)}, bob_receipts
    # Moving the "main" receipt forward replaces it; receipts never move backwards. (m.receipt
    # content has one slot per event, type and user, so only one of Bob's two receipts on
    # `second` can be shown.)
    ok(await bob.update_receipt_marker(room_id, second), nio.UpdateReceiptMarkerResponse)
    ok(await bob.update_receipt_marker(room_id, first), nio.UpdateReceiptMarkerResponse)
    fresh = await initial_sync(alice)
    bob_receipts = {x.event_id for x in receipts(fresh, room_id) if x.user_id == bob.user_id}
    assert bob_receipts == {second}, bob_receipts


async def test_displayname_change_seen_by_other_member(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)

    ok(await alice.set_displayname("Alice Wonderland"), nio.ProfileSetDisplayNameResponse)

    def alice_renamed(r):
        return [e for e in timeline(r, room_id) if isinstance(e, nio.RoomMemberEvent)
                and e.state_key == alice.user_id
                and e.content.get("displayname") == "Alice Wonderland"]

    events = await sync_until(bob, alice_renamed, what="alice's new display name")
    ev = events[-1]
    assert ev.membership == "join" and ev.prev_membership == "join"
    assert ev.sender == alice.user_id
    assert (ev.prev_content or {}).get("displayname") != "Alice Wonderland"
    assert bob.rooms[room_id].user_name(alice.user_id) == "Alice Wonderland"

    name = ok(await bob.get_displayname(alice.user_id), nio.ProfileGetDisplayNameResponse)
    assert name.displayname == "Alice Wonderland"
    state = ok(await bob.room_get_state_event(room_id, "m.room.member", alice.user_id),
               nio.RoomGetStateEventResponse)
    assert state.content.get("displayname") == "Alice Wonderland"
    assert state.content.get("membership") == "join"


async def test_room_specific_displayname_via_state(nio_user):
    """Clients set a per-room nickname (Element's /myroomnick) by sending their own m.room.member
    through PUT /state (the spec's own example event type for that endpoint). Room mates see it;
    the user directory keeps showing the profile name to outsiders (Complement:
    TestRoomSpecificUsernameChange)."""
    alice, bob = await nio_user("alice"), await nio_user("bob")
    outsider = await nio_user("outsider")
    ok(await alice.set_displayname("Alice Profile"), nio.ProfileSetDisplayNameResponse)
    room_id = await shared_room(alice, bob)

    put = await alice.room_put_state(room_id, "m.room.member",
                                     {"membership": "join", "displayname": "Alice In Room"},
                                     state_key=alice.user_id)
    ok(put, nio.RoomPutStateResponse)

    await sync_until(bob, lambda r: [e for e in timeline(r, room_id)
                                     if isinstance(e, nio.RoomMemberEvent)
                                     and e.content.get("displayname") == "Alice In Room"],
                     what="alice's room nickname")
    assert bob.rooms[room_id].user_name(alice.user_id) == "Alice In Room"
    profile = ok(await bob.get_displayname(alice.user_id), nio.ProfileGetDisplayNameResponse)
    assert profile.displayname == "Alice Profile"

    status, body = await raw(outsider, "POST", "/user_directory/search",
                             {"search_term": "Alice In Room"})
    assert status == 200 and alice.user_id not in [r["user_id"] for r in body["results"]], body
    status, body = await raw(outsider, "POST", "/user_directory/search",
                             {"search_term": "Alice Profile"})
    found = [r for r in body["results"] if r["user_id"] == alice.user_id]
    assert found and found[0].get("display_name") == "Alice Profile", body

    # Bob (power 0) cannot remove Alice by writing her membership through /state. (The spec
    # allows membership changes on this path, answering 403 when not permitted; Nexa refuses all
    # but one's own restated join with 400. Either way: refused, and Alice stays.)
    err = ok(await bob.room_put_state(room_id, "m.room.member",
                                      {"membership": "leave"}, state_key=alice.user_id),
             nio.RoomPutStateError)
    assert status_of(err) in (400, 403), err
    members = ok(await bob.joined_members(room_id), nio.JoinedMembersResponse)
    assert alice.user_id in {m.user_id for m in members.members}
