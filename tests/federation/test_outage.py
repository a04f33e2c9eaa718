"""A server that was down catches up: nothing acknowledged elsewhere is missing, nothing twice."""

from __future__ import annotations

from tests.federation.helpers import Timeline


async def test_server_down_during_200_messages_catches_up_in_order(apis):
    (s1, a1), (s2, a2), (s3, a3) = apis
    alice, bob, carol = await a1.register(), await a2.register(), await a3.register()
    room_id = await alice.create_room(preset="public_chat")
    for user in (bob, carol):
        r = await user.post(f"/join/{room_id}", params={"server_name": s1.server_name})
        assert r.status == 200, r
    t_alice, t_bob, t_carol = Timeline(alice), Timeline(bob), Timeline(carol)
    for t in (t_alice, t_bob, t_carol):
        await t.poll()
    await t_bob.wait_for(lambda t: any(
        e["type"] == "m.room.member" and e["state_key"] == carol.user_id
        for e in t.events.get(room_id, [])), "carol's join")
    bob_token = t_bob.since

    await s2.stop()  # bob's server goes away
    sent: list[str] = []
    # Alice and carol take turns, each batch sent once the other side has the previous one,
    # so the history is one line and its order is unambiguous.
    for batch in range(20):
        writer, reader = (alice, t_carol) if batch % 2 == 0 else (carol, t_alice)
        texts = [f"m{batch:02d}-{i}" for i in range(10)]
        for text in texts:
            await writer.send_text(room_id, text)
        sent += texts
        await reader.wait_for(lambda t: set(texts) <= set(t.bodies(room_id)), f"batch {batch}")

    await s2.start()  # same port, same database
    t_bob.since = bob_token
    await t_bob.wait_for(lambda t: set(sent) <= set(t.bodies(room_id)), "all 200 messages",
                         limit_s=60)
    got = [b for b in t_bob.bodies(room_id) if b in set(sent)]
    assert got == sent  # exactly once each, in the order they were sent

    # And paginating back on bob's server gives the same history.
    page = (await bob.get(f"/rooms/{room_id}/messages", params={
        "dir": "b", "limit": "300", "filter": '{"types": ["m.room.message"]}'})).json
    assert [e["content"]["body"] for e in reversed(page["chunk"])] == sent
