"""Knocking across servers: make_knock/send_knock. A user of another server knocks, sees the
room's summary under rooms.knock, the room's members see the knock and invite the user in."""

from __future__ import annotations

from tests.client import Api, by_state_key
from tests.federation.helpers import Timeline


async def test_remote_user_knocks_and_is_let_in(servers):
    s1, s2 = await servers(2)
    async with Api(s1) as a1, Api(s2) as a2:
        alice, bob = await a1.register(), await a2.register()
        room_id = await alice.create_room(name="Book club", initial_state=[{
            "type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
        before = (await bob.sync(None, timeout=0))["next_batch"]

        r = await bob.post(f"/knock/{room_id}", {"reason": "I like books"},
                           params={"via": s1.server_name})
        assert r.status == 200 and r.json == {"room_id": room_id}, r
        res = await bob.sync(before, timeout=0)
        knock_state = res["rooms"]["knock"][room_id]["knock_state"]["events"]
        by_type = by_state_key(knock_state)
        assert by_type[("m.room.join_rules", "")]["content"]["join_rule"] == "knock"
        assert by_type[("m.room.name", "")]["content"]["name"] == "Book club"
        assert by_type[("m.room.member", bob.user_id)]["content"]["membership"] == "knock"

        t_alice = Timeline(alice)
        await t_alice.wait_for(lambda t: any(
            e["type"] == "m.room.member" and e["state_key"] == bob.user_id
            and e["content"].get("membership") == "knock"
            for e in t.events.get(room_id, [])), "bob's knock")

        assert (await alice.post(f"/rooms/{room_id}/invite", {"user_id": bob.user_id})).status \
            == 200
        t_bob = Timeline(bob)
        t_bob.since = res["next_batch"]
        invited = False
        for _ in range(50):  # bounded: each poll is a long-poll woken by news
            got = await bob.sync(t_bob.since, timeout=2000)
            t_bob.since = got["next_batch"]
            if room_id in got["rooms"]["invite"]:
                invited = True
                break
        assert invited, "the invite never reached bob"
        r = await bob.post(f"/join/{room_id}", params={"server_name": s1.server_name})
        assert r.status == 200, r
        members = (await alice.get(f"/rooms/{room_id}/joined_members")).json["joined"]
        assert bob.user_id in members


async def test_knock_refused_by_the_rooms_server(servers):
    s1, s2 = await servers(2)
    async with Api(s1) as a1, Api(s2) as a2:
        alice, bob = await a1.register(), await a2.register()
        public = await alice.create_room(preset="public_chat")
        r = await bob.post(f"/knock/{public}", {}, params={"via": s1.server_name})
        assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN"), r
        m = await bob.get(f"/rooms/{public}/state/m.room.member/{bob.user_id}")
        assert m.status in (403, 404)  # nothing was remembered for the refused knock
