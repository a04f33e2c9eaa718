"""Room state as matrix-nio rebuilds it from /sync: state changes hidden in a limited timeline's
gap, uploaded filters (timeline limit, lazy-loaded members), and /context tokens that
continue into /messages."""

from __future__ import annotations

import nio

from tests.e2e.nio_helpers import initial_sync, ok, send_text, shared_room, sync_until, texts


async def test_state_change_in_timeline_gap_reaches_client(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob, name="Old name")
    assert bob.rooms[room_id].name == "Old name"

    ok(await alice.room_put_state(room_id, "m.room.name", {"name": "New name"}),
       nio.RoomPutStateResponse)
    ok(await alice.update_room_topic(room_id, "a topic set in the gap"),
       nio.RoomPutStateResponse)
    for i in range(15):  # more than the default timeline limit: the name change is in the gap
        await send_text(alice, room_id, f"filler {i}")

    resp = await sync_until(bob, lambda r: r if room_id in r.rooms.join else None,
                            what="the room update")
    room = resp.rooms.join[room_id]
    assert room.timeline.limited
    assert not [e for e in room.timeline.events if isinstance(e, nio.RoomNameEvent)]
    names = [e for e in room.state if isinstance(e, nio.RoomNameEvent)]
    assert [e.name for e in names] == ["New name"], [e.source for e in room.state]
    assert bob.rooms[room_id].name == "New name"
    assert bob.rooms[room_id].topic == "a topic set in the gap"


async def test_uploaded_filter_limits_timeline_and_prev_batch_continues(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    flt = ok(await bob.upload_filter(room={"timeline": {"limit": 3, "types": ["m.room.message"]}}),
             nio.UploadFilterResponse)
    sent = [await send_text(alice, room_id, f"m{i}") for i in range(7)]

    resp = await initial_sync(bob, sync_filter=flt.filter_id)
    tl = resp.rooms.join[room_id].timeline
    assert tl.limited
    assert [e.event_id for e in tl.events] == sent[-3:]
    page = ok(await bob.room_messages(room_id, start=tl.prev_batch, limit=10,
                                      message_filter={"types": ["m.room.message"]}),
              nio.RoomMessagesResponse)
    assert [e.event_id for e in page.chunk] == list(reversed(sent[:-3]))


async def test_lazy_loaded_members_cover_timeline_senders(nio_user):
    alice, bob, carol, dave = (await nio_user("alice"), await nio_user("bob"),
                               await nio_user("carol"), await nio_user("dave"))
    room_id = await shared_room(alice, bob, carol, dave)
    for i in range(12):
        await send_text(alice if i % 2 else carol, room_id, f"talk {i}")
    flt = ok(await dave.upload_filter(room={"timeline": {"limit": 5},
                                            "state": {"lazy_load_members": True}}),
             nio.UploadFilterResponse)

    resp = await initial_sync(dave, sync_filter=flt.filter_id)
    room = resp.rooms.join[room_id]
    assert {e.sender for e in room.timeline.events} == {alice.user_id, carol.user_id}
    members = {e.state_key for e in [*room.state, *room.timeline.events]
               if isinstance(e, nio.RoomMemberEvent)}
    # Senders in the timeline and the syncing user; not Bob, who said nothing.
    assert {alice.user_id, carol.user_id, dave.user_id} <= members
    assert bob.user_id not in members
    assert room.summary is not None and room.summary.joined_member_count == 4


async def test_context_tokens_continue_into_messages(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    sent = [await send_text(alice, room_id, f"c{i:02d}") for i in range(20)]

    ctx = ok(await bob.room_context(room_id, sent[10], limit=4), nio.RoomContextResponse)
    assert ctx.event.event_id == sent[10]
    assert [e.event_id for e in ctx.events_before] == [sent[9], sent[8]]
    assert [e.event_id for e in ctx.events_after] == [sent[11], sent[12]]

    back = ok(await bob.room_messages(room_id, start=ctx.start, limit=5,
                                      direction=nio.MessageDirection.back),
              nio.RoomMessagesResponse)
    assert [e.event_id for e in back.chunk] == [sent[7], sent[6], sent[5], sent[4], sent[3]]
    fwd = ok(await bob.room_messages(room_id, start=ctx.end, limit=5,
                                     direction=nio.MessageDirection.front),
             nio.RoomMessagesResponse)
    assert [e.event_id for e in fwd.chunk] == sent[13:18]
    assert texts(fwd.chunk) == [f"c{i:02d}" for i in range(13, 18)]
    # The context's state includes the members of the room at that point.
    members = {e.state_key for e in ctx.state if isinstance(e, nio.RoomMemberEvent)}
    assert {alice.user_id, bob.user_id} <= members
