"""Rooms of the versions before 10 (6 to 9) work across servers: created, joined over
federation, chatted in, moderated with the string power levels those versions allow."""

from __future__ import annotations

import pytest

from tests.client import Api
from tests.federation.helpers import Timeline, state_ids


@pytest.mark.parametrize("version", ["6", "9"])
async def test_an_older_room_version_federates(servers, version):
    s1, s2 = await servers(2)
    async with Api(s1) as a1, Api(s2) as a2:
        alice, bob = await a1.register(), await a2.register()
        r = await alice.post("/createRoom", {"preset": "public_chat", "room_version": version})
        assert r.status == 200, r
        room_id = r.json["room_id"]
        create = (await alice.get(f"/rooms/{room_id}/state/m.room.create/")).json
        assert create["room_version"] == version and create["creator"] == alice.user_id

        r = await bob.post(f"/join/{room_id}", params={"server_name": s1.server_name})
        assert r.status == 200, r
        # Before v10, power levels may be strings holding integers; both servers accept them.
        pl = (await alice.get(f"/rooms/{room_id}/state/m.room.power_levels/")).json
        pl["users"] = {**pl["users"], alice.user_id: "100", bob.user_id: "50"}
        pl["kick"] = "50"
        r = await alice.put(f"/rooms/{room_id}/state/m.room.power_levels/", pl)
        assert r.status == 200, r

        timelines = [Timeline(alice), Timeline(bob)]
        for t in timelines:
            await t.poll()
        await alice.send_text(room_id, f"v{version} from 1")
        await bob.send_text(room_id, f"v{version} from 2")
        want = {f"v{version} from 1", f"v{version} from 2"}
        for t in timelines:
            await t.wait_for(lambda t: want <= set(t.bodies(room_id)), "both messages")

        # Bob (50, kick "50") removes a third member who joined through him.
        carol = await a2.register()
        r = await carol.post(f"/join/{room_id}", params={"server_name": s1.server_name})
        assert r.status == 200, r
        r = await bob.post(f"/rooms/{room_id}/kick", {"user_id": carol.user_id})
        assert r.status == 200, r
        await timelines[0].wait_for(
            lambda t: any(e["type"] == "m.room.member" and e["state_key"] == carol.user_id
                          and e["content"].get("membership") == "leave"
                          for e in t.events.get(room_id, [])), "carol's kick")
        assert await state_ids(alice, room_id) == await state_ids(bob, room_id)


async def test_capabilities_list_the_supported_versions(api):
    alice = await api.register()
    caps = (await alice.get("/capabilities")).json["capabilities"]["m.room_versions"]
    assert caps["default"] == "10"
    assert set(caps["available"]) == {"6", "7", "8", "9", "10", "11"}
    r = await alice.post("/createRoom", {"room_version": "5"})
    assert (r.status, r.json["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")
