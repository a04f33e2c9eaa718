"""Invites across servers: the invitee's server keeps the room summary the inviting server
sent (invite_room_state), so the invite shows the room's name before anyone joins."""

from __future__ import annotations

from tests.client import Api, by_state_key


async def test_remote_invite_shows_the_room_summary(servers):
    s1, s2 = await servers(2)
    async with Api(s1) as a1, Api(s2) as a2:
        alice, bob = await a1.register(), await a2.register()
        room_id = await alice.create_room(name="Secret plans", preset="private_chat")
        before = (await bob.sync(None, timeout=0))["next_batch"]
        r = await alice.post(f"/rooms/{room_id}/invite", {"user_id": bob.user_id})
        assert r.status == 200, r
        res = await bob.sync(before, timeout=10_000)
        events = res["rooms"]["invite"][room_id]["invite_state"]["events"]
        by_type = by_state_key(events)
        assert by_type[("m.room.name", "")]["content"]["name"] == "Secret plans"
        assert by_type[("m.room.join_rules", "")]["content"]["join_rule"] == "invite"
        assert by_type[("m.room.member", bob.user_id)]["content"]["membership"] == "invite"
