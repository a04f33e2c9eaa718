"""Three servers, one room with a user on each: everything reaches everyone."""

from __future__ import annotations

from tests.federation.helpers import Timeline, state_ids


async def test_messages_reach_every_server_and_state_matches(apis):
    (s1, a1), (s2, a2), (s3, a3) = apis
    alice, bob, carol = await a1.register(), await a2.register(), await a3.register()
    r = await alice.post("/createRoom", {"preset": "public_chat", "room_alias_name": "fed",
                                         "name": "Federated"})
    assert r.status == 200, r
    room_id, alias = r.json["room_id"], r.json["room_alias"]

    # Bob joins through the alias (resolved by asking server 1), carol by room ID.
    r = await bob.post(f"/join/{alias}")
    assert r.status == 200 and r.json["room_id"] == room_id, r
    r = await carol.post(f"/join/{room_id}", params={"server_name": s1.server_name})
    assert r.status == 200, r

    timelines = {u.user_id: Timeline(u) for u in (alice, bob, carol)}
    for t in timelines.values():
        await t.poll()
    await alice.send_text(room_id, "hello from 1")
    await bob.send_text(room_id, "hello from 2")
    await carol.send_text(room_id, "hello from 3")
    want = {"hello from 1", "hello from 2", "hello from 3"}
    for t in timelines.values():
        await t.wait_for(lambda t: want <= set(t.bodies(room_id)), "all three messages")

    # Everyone ends with the same room state.
    states = [await state_ids(u, room_id) for u in (alice, bob, carol)]
    assert states[0] == states[1] == states[2]
    members = {k[1] for k in states[0] if k[0] == "m.room.member"}
    assert members == {alice.user_id, bob.user_id, carol.user_id}
