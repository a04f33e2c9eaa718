"""Scenarios 2, 3, 4 and 9 with matrix-nio: invites and joins, messages both ways over /sync
(including a parked long-poll woken by a message), back-pagination, and txnId idempotency."""

from __future__ import annotations

import secrets

import nio

from tests.e2e.nio_helpers import (ok, parked_sync, send_text, shared_room, sync_until, texts,
                                   timeline)


def member_events(events, user_id: str, membership: str) -> list:
    return [e for e in events if isinstance(e, nio.RoomMemberEvent)
            and e.state_key == user_id and e.membership == membership]


async def test_invite_shows_in_sync_then_join_visible_to_both(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    ok(await alice.sync(), nio.SyncResponse)
    ok(await bob.sync(), nio.SyncResponse)

    created = ok(await alice.room_create(name="Invite test", topic="nio e2e"),
                 nio.RoomCreateResponse)
    room_id = created.room_id
    ok(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)

    # Bob's long-poll shows the invite under rooms.invite, with stripped state naming the room
    # and his own invite membership.
    invite = await sync_until(bob, lambda r: r.rooms.invite.get(room_id), what="the invite")
    state = invite.invite_state
    assert any(isinstance(e, nio.InviteMemberEvent) and e.state_key == bob.user_id
               and e.membership == "invite" and e.sender == alice.user_id for e in state), state
    assert any(isinstance(e, nio.InviteNameEvent) and e.name == "Invite test" for e in state), state
    assert room_id in bob.invited_rooms
    assert room_id not in bob.rooms

    joined = ok(await bob.join(room_id), nio.JoinResponse)
    assert joined.room_id == room_id

    # Bob's sync moves the room to rooms.join; the room state he builds from it has both members.
    await sync_until(bob, lambda r: room_id in r.rooms.join, what="the joined room")
    assert room_id not in bob.invited_rooms
    bob_room = bob.rooms[room_id]
    assert set(bob_room.users) == {alice.user_id, bob.user_id}
    assert bob_room.name == "Invite test"
    assert bob_room.topic == "nio e2e"

    # Alice sees Bob's join as a membership event in her timeline.
    await sync_until(alice, lambda r: member_events(timeline(r, room_id), bob.user_id, "join"),
                     what="bob's join")
    alice_room = alice.rooms[room_id]
    assert set(alice_room.users) == {alice.user_id, bob.user_id}
    assert not alice_room.invited_users

    members = ok(await bob.joined_members(room_id), nio.JoinedMembersResponse)
    assert {m.user_id for m in members.members} == {alice.user_id, bob.user_id}
    rooms = ok(await alice.joined_rooms(), nio.JoinedRoomsResponse)
    assert room_id in rooms.rooms


async def test_messages_both_ways_via_sync(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)

    first = await send_text(alice, room_id, "hello from alice")
    got = await sync_until(bob, lambda r: [e for e in timeline(r, room_id)
                                           if isinstance(e, nio.RoomMessageText)],
                           what="alice's message")
    assert [(e.event_id, e.sender, e.body) for e in got] == [
        (first, alice.user_id, "hello from alice")]

    reply = await send_text(bob, room_id, "hi alice, bob here")
    got = await sync_until(alice, lambda r: [e for e in timeline(r, room_id)
                                             if isinstance(e, nio.RoomMessageText)
                                             and e.sender == bob.user_id],
                           what="bob's reply")
    assert [(e.event_id, e.sender, e.body) for e in got] == [
        (reply, bob.user_id, "hi alice, bob here")]

    # Incremental syncs do not replay what was already delivered.
    again = ok(await bob.sync(timeout=0), nio.SyncResponse)
    assert first not in {e.event_id for e in timeline(again, room_id)}


async def test_long_poll_returns_with_message(server, nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    ok(await bob.sync(timeout=0), nio.SyncResponse)  # caught up: nothing pending for Bob
    sent = []

    async def send() -> None:
        sent.append(await send_text(alice, room_id, "wake up, bob"))

    resp = await parked_sync(server, bob, send)
    msgs = [e for e in timeline(resp, room_id) if isinstance(e, nio.RoomMessageText)]
    assert [(e.event_id, e.sender, e.body) for e in msgs] == [
        (sent[0], alice.user_id, "wake up, bob")]


async def test_paginate_back_sees_every_message_once_in_order(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    sent = [await send_text(alice, room_id, f"msg {i:02d}") for i in range(30)]

    resp = await sync_until(bob, lambda r: r if room_id in r.rooms.join else None,
                            what="the 30 messages")
    tl = resp.rooms.join[room_id].timeline
    assert tl.limited, "30 new events cannot fit the default timeline limit"
    newest = [e for e in tl.events if isinstance(e, nio.RoomMessageText)]
    assert newest and newest[-1].event_id == sent[-1]

    token, pages, back = tl.prev_batch, 0, []
    while True:
        page = ok(await bob.room_messages(room_id, start=token, limit=10,
                                          direction=nio.MessageDirection.back),
                  nio.RoomMessagesResponse)
        pages += 1
        assert len(page.chunk) <= 10
        back.extend(page.chunk)
        if not page.chunk or not page.end:
            break
        assert page.end != token, "pagination token did not move"
        token = page.end
        assert pages < 20, "pagination never ended"

    assert isinstance(back[-1], nio.RoomCreateEvent), "paginating back must reach m.room.create"
    ordered = list(reversed(back)) + list(tl.events)
    msgs = [e for e in ordered if isinstance(e, nio.RoomMessageText)]
    assert [e.body for e in msgs] == [f"msg {i:02d}" for i in range(30)]
    assert [e.event_id for e in msgs] == sent
    ids = [e.event_id for e in ordered]
    assert len(ids) == len(set(ids)), "an event was returned twice"
    stamps = [e.server_timestamp for e in msgs]
    assert stamps == sorted(stamps), stamps

    # Forwards from the oldest token returns the same messages in the same order.
    fwd, token = [], page.end or token
    for _ in range(20):
        page = ok(await bob.room_messages(room_id, start=token, limit=10,
                                          direction=nio.MessageDirection.front),
                  nio.RoomMessagesResponse)
        fwd.extend(page.chunk)
        if not page.chunk or not page.end:
            break
        token = page.end
    assert texts(fwd) == [f"msg {i:02d}" for i in range(30)]


async def test_same_txn_id_sends_once(nio_user, nio_client):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    txn = f"txn-{secrets.token_hex(4)}"

    first = await send_text(alice, room_id, "only once", tx_id=txn)
    second = await send_text(alice, room_id, "only once", tx_id=txn)
    assert first == second
    other = await send_text(alice, room_id, "different txn", tx_id=txn + "-2")
    assert other != first

    # The same txnId from another device of the same user is a different transaction.
    laptop = nio_client(alice.user_id)
    ok(await laptop.login(alice.test_password), nio.LoginResponse)
    third = await send_text(laptop, room_id, "only once", tx_id=txn)
    assert third != first

    page = ok(await bob.room_messages(room_id, limit=50), nio.RoomMessagesResponse)
    assert [e.event_id for e in page.chunk].count(first) == 1
    assert sorted(texts(page.chunk)) == sorted(["only once", "different txn", "only once"])

    # The sending device sees its transaction_id echoed in sync; others do not.
    resp = ok(await alice.sync(timeout=0), nio.SyncResponse)
    by_id = {e.event_id: e for e in timeline(resp, room_id)}
    assert by_id[first].source.get("unsigned", {}).get("transaction_id") == txn
    assert "transaction_id" not in by_id[third].source.get("unsigned", {})
    resp = ok(await bob.sync(timeout=0), nio.SyncResponse)
    for e in timeline(resp, room_id):
        assert "transaction_id" not in e.source.get("unsigned", {}), e.source
