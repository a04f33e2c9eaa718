"""A server that joins late shows the earlier history by backfilling it from the room's server."""

from __future__ import annotations


async def test_messages_backfills_history_from_before_the_join(apis):
    (s1, a1), (s2, a2), _ = apis
    alice, bob = await a1.register(), await a2.register()
    room_id = await alice.create_room(preset="public_chat", name="History")
    sent = [await alice.send_text(room_id, f"old {i:02d}") for i in range(30)]
    r = await bob.post(f"/join/{room_id}", params={"server_name": s1.server_name})
    assert r.status == 200, r

    seen: list[dict] = []
    token = None
    for _ in range(30):
        params = {"dir": "b", "limit": "8"}
        if token:
            params["from"] = token
        page = (await bob.get(f"/rooms/{room_id}/messages", params=params)).json
        assert "chunk" in page, page
        seen += page["chunk"]
        token = page.get("end")
        if token is None:
            break
    ids = [e["event_id"] for e in seen]
    assert len(ids) == len(set(ids))  # nothing twice
    messages = [e["event_id"] for e in seen if e["type"] == "m.room.message"]
    assert messages == list(reversed(sent))  # all of it, newest first
    assert seen[-1]["type"] == "m.room.create"  # back to the very beginning


async def test_joined_only_history_is_not_backfilled_to_clients(apis):
    (s1, a1), (s2, a2), _ = apis
    alice, bob = await a1.register(), await a2.register()
    room_id = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}])
    secret = await alice.send_text(room_id, "before bob")
    r = await bob.post(f"/join/{room_id}", params={"server_name": s1.server_name})
    assert r.status == 200, r
    page = (await bob.get(f"/rooms/{room_id}/messages", params={"limit": "50"})).json
    assert secret not in [e["event_id"] for e in page["chunk"]]
