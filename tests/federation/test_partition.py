"""Concurrent conflicting state changes during a network partition converge after it heals."""

from __future__ import annotations

import contextlib

from tests.federation.helpers import Timeline, state_ids
from tests.servers import free_port


@contextlib.contextmanager
def partitioned(a, b):
    """Cut the network between two servers (both stay up): requests fail to connect."""
    dead = f"http://127.0.0.1:{free_port()}"
    saved = []
    for x, y in ((a, b), (b, a)):
        client = x.hs.federation_client
        original = client.route

        async def route(name, _orig=original, _cut=y.server_name):
            return dead if name == _cut else await _orig(name)

        client.route = route
        saved.append((client, original))
    try:
        yield
    finally:
        for client, original in saved:
            client.route = original
        for x, y in ((a, b), (b, a)):
            x.hs.federation_sender.retry_now(y.server_name)


async def test_conflicting_changes_during_partition_converge(apis):
    (s1, a1), (s2, a2), (s3, a3) = apis
    alice, bob, carol = await a1.register(), await a2.register(), await a3.register()
    dave = await a2.register()
    room_id = await alice.create_room(preset="public_chat")
    for user in (bob, carol, dave):
        r = await user.post(f"/join/{room_id}", params={"server_name": s1.server_name})
        assert r.status == 200, r
    pl = (await alice.get(f"/rooms/{room_id}/state/m.room.power_levels")).json
    pl["users"][carol.user_id] = 100
    assert (await alice.put(f"/rooms/{room_id}/state/m.room.power_levels", pl)).status == 200
    t_carol = Timeline(carol)
    await t_carol.wait_for(lambda t: any(
        e["type"] == "m.room.power_levels" and carol.user_id in e["content"]["users"]
        for e in t.events.get(room_id, [])), "carol's promotion")

    with partitioned(s1, s3):
        # Server 1: alice bans bob and sets a topic.
        assert (await alice.post(f"/rooms/{room_id}/ban", {"user_id": bob.user_id})).status == 200
        assert (await alice.put(f"/rooms/{room_id}/state/m.room.topic",
                                {"topic": "from one"})).status == 200
        # Server 3, at the same time: carol raises bob's power and sets another topic.
        pl3 = (await carol.get(f"/rooms/{room_id}/state/m.room.power_levels")).json
        pl3["users"][bob.user_id] = 50
        assert (await carol.put(f"/rooms/{room_id}/state/m.room.power_levels", pl3)).status == 200
        assert (await carol.put(f"/rooms/{room_id}/state/m.room.topic",
                                {"topic": "from three"})).status == 200
        # The two sides really disagree while cut off.
        topic1 = (await alice.get(f"/rooms/{room_id}/state/m.room.topic")).json["topic"]
        topic3 = (await carol.get(f"/rooms/{room_id}/state/m.room.topic")).json["topic"]
        assert (topic1, topic3) == ("from one", "from three")

    # After the heal, a message from each side merges the forks.
    await alice.send_text(room_id, "after heal 1")
    await carol.send_text(room_id, "after heal 3")
    watchers = [Timeline(u) for u in (alice, carol, dave)]
    for t in watchers:
        await t.wait_for(lambda t: {"after heal 1", "after heal 3"} <= set(t.bodies(room_id)),
                         "both post-heal messages", limit_s=60)

    async def converged() -> bool:
        states = [await state_ids(u, room_id) for u in (alice, carol, dave)]
        return states[0] == states[1] == states[2]

    # Every server resolved the same state (checked again after a final merge point).
    if not await converged():
        await dave.send_text(room_id, "merge point")
        for t in watchers:
            await t.wait_for(lambda t: "merge point" in t.bodies(room_id), "merge point")
    assert await converged()
    final = await state_ids(alice, room_id)
    assert ("m.room.topic", "") in final
    topic = (await alice.get(f"/rooms/{room_id}/state/m.room.topic")).json["topic"]
    assert topic in ("from one", "from three")
    assert [(await u.get(f"/rooms/{room_id}/state/m.room.topic")).json["topic"]
            for u in (carol, dave)] == [topic, topic]
