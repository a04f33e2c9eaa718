"""Knocking: a user asks to join a room whose join rule is `knock` (matrix-nio's room_knock),
sees the room's summary under rooms.knock in /sync meanwhile, the members see the knock and
let the user in with an invite. Rooms that are not knockable refuse with M_FORBIDDEN."""

from __future__ import annotations

import nio

from tests.client import by_state_key
from tests.e2e.nio_helpers import ok, raw, sync_until, timeline


async def _knock_room(owner: nio.AsyncClient, **create) -> str:
    return ok(await owner.room_create(name="Book club", initial_state=[{
        "type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        **create), nio.RoomCreateResponse).room_id


async def test_knock_then_invited_in(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await _knock_room(alice)
    ok(await alice.sync(timeout=0), nio.SyncResponse)
    status, first = await raw(bob, "GET", "/sync", params={"timeout": "0"})
    assert status == 200

    knocked = await bob.room_knock(room_id, reason="I like books")
    assert isinstance(knocked, nio.RoomKnockResponse), knocked
    status, res = await raw(bob, "GET", "/sync",
                            params={"since": first["next_batch"], "timeout": "0"})
    assert status == 200 and room_id in res["rooms"]["knock"], res["rooms"]
    knock_state = res["rooms"]["knock"][room_id]["knock_state"]["events"]
    by_type = by_state_key(knock_state)
    assert by_type[("m.room.join_rules", "")]["content"]["join_rule"] == "knock"
    assert by_type[("m.room.name", "")]["content"]["name"] == "Book club"
    assert by_type[("m.room.member", bob.user_id)]["content"]["membership"] == "knock"

    # The room's members see the knock, with its reason.
    knock = await sync_until(alice, lambda r: next((
        e for e in timeline(r, room_id) if isinstance(e, nio.RoomMemberEvent)
        and e.state_key == bob.user_id and e.membership == "knock"), None), what="the knock")
    assert knock.content.get("reason") == "I like books"

    # Let in: an invite, then bob joins.
    ok(await alice.room_invite(room_id, bob.user_id), nio.RoomInviteResponse)
    ok(await bob.join(room_id), nio.JoinResponse)
    status, members = await raw(alice, "GET", f"/rooms/{room_id}/joined_members")
    assert status == 200 and bob.user_id in members["joined"]


async def test_rooms_that_are_not_knockable_refuse(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    public = ok(await alice.room_create(preset=nio.RoomPreset.public_chat),
                nio.RoomCreateResponse).room_id
    private = ok(await alice.room_create(preset=nio.RoomPreset.private_chat),
                 nio.RoomCreateResponse).room_id
    v6 = await _knock_room(alice, room_version="6")  # knocking came with room version 7
    for room_id in (public, private, v6):
        status, body = await raw(bob, "POST", f"/knock/{room_id}", {})
        assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), (room_id, body)
    # A member cannot knock on their own room; an unknown alias is not found.
    knockable = await _knock_room(alice)
    status, body = await raw(alice, "POST", f"/knock/{knockable}", {})
    assert (status, body.get("errcode")) == (403, "M_FORBIDDEN"), body
    server = bob.user_id.split(":", 1)[1]
    status, body = await raw(bob, "POST", f"/knock/%23nowhere:{server}", {})
    assert (status, body.get("errcode")) == (404, "M_NOT_FOUND"), body
    status, body = await raw(bob, "POST", f"/knock/{knockable}", {"reason": 5})
    assert (status, body.get("errcode")) == (400, "M_BAD_JSON"), body
