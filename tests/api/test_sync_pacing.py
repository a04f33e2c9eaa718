"""/sync pacing on a busy server (handlers/sync.py): an incremental response waits for the
device's coalescing window, except when the events already waiting could fill the client's
timeline limit (waiting would turn them into a limited timeline with a gap)."""

from __future__ import annotations

import json


async def test_no_pacing_when_the_waiting_events_fill_the_timeline_limit(server, api,
                                                                       monkeypatch):
    paced: list[str] = []

    def recording_pace(device_key: str) -> float:
        paced.append(device_key)
        return 0.0  # no window is waited out: the test records which responses asked for one

    monkeypatch.setattr(server.hs.sync, "_pace", recording_pace)

    alice, bob, room_id = await api.two_in_a_public_room()
    flt = json.dumps({"room": {"timeline": {"limit": 3}}})

    async def bob_sync(since: str | None) -> dict:
        params = {"filter": flt, "timeout": "0"}
        if since:
            params["since"] = since
        r = await bob.get("/sync", params=params)
        assert r.status == 200, r
        return r.json

    since = (await bob_sync(None))["next_batch"]
    await alice.send_text(room_id, "one")  # fewer than the limit waiting: paced
    res = await bob_sync(since)
    assert len(paced) == 1
    assert [e["content"]["body"] for e in res["rooms"]["join"][room_id]["timeline"]["events"]
            if e["type"] == "m.room.message"] == ["one"]

    for i in range(5):  # more than the limit waiting: answered at once, not paced
        await alice.send_text(room_id, f"m{i}")
    res = await bob_sync(res["next_batch"])
    assert len(paced) == 1
    timeline = res["rooms"]["join"][room_id]["timeline"]
    assert [e["content"]["body"] for e in timeline["events"]] == ["m2", "m3", "m4"]
    assert timeline["limited"] is True
