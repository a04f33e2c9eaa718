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
    # Events that came over federation count as unread too (alice's own message came first).
    unread = (await alice.sync())["rooms"]["join"][room_id]["unread_notifications"]
    assert unread == {"notification_count": 2, "highlight_count": 0}

    # Everyone ends with the same room state.
    states = [await state_ids(u, room_id) for u in (alice, bob, carol)]
    assert states[0] == states[1] == states[2]
    members = {k[1] for k in states[0] if k[0] == "m.room.member"}
    assert members == {alice.user_id, bob.user_id, carol.user_id}


def _ephemeral(t: Timeline, room_id: str, etype: str) -> list[dict]:
    return [e for e in t.ephemeral.get(room_id, []) if e["type"] == etype]


async def test_typing_receipts_and_profile_reach_every_server(apis):
    (s1, a1), (s2, a2), (s3, a3) = apis
    alice, bob, carol = await a1.register(), await a2.register(), await a3.register()
    room_id = await alice.create_room(preset="public_chat")
    for user in (bob, carol):
        assert (await user.post(f"/join/{room_id}",
                                params={"server_name": s1.server_name})).status == 200
    t_alice, t_bob, t_carol = Timeline(alice), Timeline(bob), Timeline(carol)
    for t in (t_alice, t_bob, t_carol):
        await t.poll()
    event_id = await bob.send_text(room_id, "read me")
    for t in (t_alice, t_carol):
        await t.wait_for(lambda t: "read me" in t.bodies(room_id), "bob's message")

    # Typing on server 2 shows on servers 1 and 3.
    r = await bob.put(f"/rooms/{room_id}/typing/{bob.user_id}", {"typing": True, "timeout": 30000})
    assert r.status == 200, r
    for t in (t_alice, t_carol):
        await t.wait_for(lambda t: any(bob.user_id in e["content"]["user_ids"]
                                       for e in _ephemeral(t, room_id, "m.typing")),
                         "bob typing")

    # A read receipt from server 3 shows on servers 1 and 2.
    r = await carol.post(f"/rooms/{room_id}/receipt/m.read/{event_id}", {})
    assert r.status == 200, r
    for t in (t_alice, t_bob):
        await t.wait_for(lambda t: any(
            carol.user_id in e["content"].get(event_id, {}).get("m.read", {})
            for e in _ephemeral(t, room_id, "m.receipt")), "carol's receipt")

    # A display name change on server 1 arrives as a member event everywhere.
    r = await alice.put(f"/profile/{alice.user_id}/displayname", {"displayname": "Alice Prime"})
    assert r.status == 200, r
    for t in (t_bob, t_carol):
        await t.wait_for(lambda t: any(
            e["type"] == "m.room.member" and e["state_key"] == alice.user_id
            and e["content"].get("displayname") == "Alice Prime"
            for e in t.events.get(room_id, [])), "alice's new name")
    # Other servers answer profile queries for alice by asking server 1.
    r = await carol.get(f"/profile/{alice.user_id}/displayname")
    assert r.status == 200 and r.json["displayname"] == "Alice Prime", r
