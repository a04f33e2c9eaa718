"""Room tags (favourites, low priority, user tags): set, list, delete, delivered by /sync as the
room's m.tag account data; bad input is refused and changes nothing."""

from __future__ import annotations

import asyncio


def _room_tags(sync: dict, room_id: str) -> dict | None:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    for ev in room.get("account_data", {}).get("events", []):
        if ev["type"] == "m.tag":
            return ev["content"]["tags"]
    return None


async def test_tags_round_trip_and_sync(api):
    alice = await api.register()
    room_id = await alice.create_room()
    base = f"/user/{alice.user_id}/rooms/{room_id}/tags"
    assert (await alice.get(base)).json == {"tags": {}}
    since = (await alice.sync())["next_batch"]
    assert (await alice.put(f"{base}/m.favourite", {"order": 0.25})).status == 200
    assert (await alice.put(f"{base}/u.work", {})).status == 200
    assert (await alice.get(base)).json == {"tags": {"m.favourite": {"order": 0.25}, "u.work": {}}}
    batch = await alice.sync(since=since)
    assert _room_tags(batch, room_id) == {"m.favourite": {"order": 0.25}, "u.work": {}}
    assert (await alice.request("DELETE", f"{base}/m.favourite")).status == 200
    assert (await alice.request("DELETE", f"{base}/m.favourite")).status == 200  # already gone
    assert (await alice.get(base)).json == {"tags": {"u.work": {}}}
    assert _room_tags(await alice.sync(since=batch["next_batch"]), room_id) == {"u.work": {}}
    assert _room_tags(await alice.sync(), room_id) == {"u.work": {}}  # initial sync too


async def test_concurrent_tag_changes_are_all_kept(api):
    alice = await api.register()
    room_id = await alice.create_room()
    base = f"/user/{alice.user_id}/rooms/{room_id}/tags"
    results = await asyncio.gather(*(alice.put(f"{base}/u.t{i}", {"order": i / 20})
                                     for i in range(20)))
    assert {r.status for r in results} == {200}
    assert sorted((await alice.get(base)).json["tags"]) == sorted(f"u.t{i}" for i in range(20))


async def test_bad_tag_requests_are_refused_and_change_nothing(api):
    alice, bob = await api.register(), await api.register()
    room_id = await alice.create_room()
    base = f"/user/{alice.user_id}/rooms/{room_id}/tags"
    assert (await alice.put(f"{base}/u.keep", {"order": 0.5})).status == 200
    cases = [
        (lambda: alice.put(f"{base}/u.x", {"order": "first"}), 400, "M_BAD_JSON"),
        (lambda: alice.put(f"{base}/u.x", {"order": 2}), 400, "M_BAD_JSON"),
        (lambda: alice.put(f"{base}/u.x", {"order": True}), 400, "M_BAD_JSON"),
        (lambda: alice.put(f"{base}/u.x", raw=b"[1]"), 400, "M_BAD_JSON"),
        (lambda: alice.put(f"{base}/u.x", raw=b"{nope"), 400, "M_NOT_JSON"),
        (lambda: alice.put(f"{base}/{'t' * 300}", {}), 400, "M_INVALID_PARAM"),
        (lambda: alice.put(f"/user/{alice.user_id}/rooms/not-a-room/tags/u.x", {}), 400, "M_INVALID_PARAM"),
        (lambda: bob.put(f"{base}/u.x", {}), 403, "M_FORBIDDEN"),
        (lambda: bob.get(base), 403, "M_FORBIDDEN"),
        (lambda: bob.request("DELETE", f"{base}/u.keep"), 403, "M_FORBIDDEN"),
    ]
    for call, status, errcode in cases:
        r = await call()
        assert (r.status, r.json.get("errcode")) == (status, errcode), r
    assert (await alice.get(base)).json == {"tags": {"u.keep": {"order": 0.5}}}
