"""Rooms over real HTTP: creation presets, membership, aliases, state, power levels."""

from __future__ import annotations

import secrets


async def test_create_room_with_options_and_read_state(api):
    alice = await api.register()
    bob = await api.register()
    alias_local = f"room{secrets.token_hex(3)}"
    r = await alice.post("/createRoom", {
        "name": "Tea", "topic": "All about tea", "preset": "public_chat",
        "room_alias_name": alias_local, "invite": [bob.user_id],
        "initial_state": [{"type": "m.room.avatar", "state_key": "",
                           "content": {"url": "mxc://x/y"}}],
    })
    assert r.status == 200, r
    room_id = r.json["room_id"]
    assert r.json["room_alias"] == f"#{alias_local}:{api.server.server_name}"
    assert (await alice.get(f"/rooms/{room_id}/state/m.room.name")).json == {"name": "Tea"}
    assert (await alice.get(f"/rooms/{room_id}/state/m.room.topic/")).json["topic"] == "All about tea"
    assert (await alice.get(f"/rooms/{room_id}/state/m.room.join_rules")).json == {"join_rule": "public"}
    assert (await alice.get(f"/rooms/{room_id}/state/m.room.avatar")).json == {"url": "mxc://x/y"}
    create = (await alice.get(f"/rooms/{room_id}/state/m.room.create")).json
    assert create["room_version"] in ("10", "11")
    state = (await alice.get(f"/rooms/{room_id}/state")).json
    types = {e["type"] for e in state}
    assert {"m.room.create", "m.room.member", "m.room.power_levels", "m.room.join_rules",
            "m.room.history_visibility", "m.room.canonical_alias"} <= types
    members = (await alice.get(f"/rooms/{room_id}/members")).json["chunk"]
    assert {(m["state_key"], m["content"]["membership"]) for m in members} == {
        (alice.user_id, "join"), (bob.user_id, "invite")}
    # The alias resolves, and bob can join by alias.
    alias = r.json["room_alias"]
    assert (await bob.get(f"/directory/room/{alias}")).json["room_id"] == room_id
    r = await bob.post(f"/join/{alias}")
    assert (r.status, r.json["room_id"]) == (200, room_id)
    joined = (await alice.get(f"/rooms/{room_id}/joined_members")).json["joined"]
    assert set(joined) == {alice.user_id, bob.user_id}
    assert room_id in (await bob.get("/joined_rooms")).json["joined_rooms"]


async def test_private_room_needs_invite(api):
    alice = await api.register()
    eve = await api.register()
    room_id = await alice.create_room(preset="private_chat")
    r = await eve.post(f"/join/{room_id}")
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
    for path in ("/state", "/members", "/messages"):
        r = await eve.get(f"/rooms/{room_id}{path}")
        assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN"), path
    assert (await alice.post(f"/rooms/{room_id}/invite", {"user_id": eve.user_id})).status == 200
    assert (await eve.post(f"/rooms/{room_id}/join")).status == 200


async def test_unknown_room_and_bad_ids(api):
    alice = await api.register()
    r = await alice.post("/join/!nope:" + api.server.server_name)
    assert (r.status, r.json["errcode"]) == (404, "M_NOT_FOUND")
    r = await alice.post("/join/not-an-id")
    assert (r.status, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    room_id = await alice.create_room()
    r = await alice.post(f"/rooms/{room_id}/invite", {"user_id": "not a user"})
    assert (r.status, r.json["errcode"]) == (400, "M_INVALID_PARAM")
    r = await alice.post(f"/rooms/{room_id}/invite", {"user_id": 42})
    assert (r.status, r.json["errcode"]) == (400, "M_BAD_JSON")
    r = await alice.post("/createRoom", {"room_version": "999"})
    assert (r.status, r.json["errcode"]) == (400, "M_UNSUPPORTED_ROOM_VERSION")
    r = await alice.post("/createRoom", {"preset": "nonsense"})
    assert r.status == 400


async def test_leave_forget_kick_ban_unban(api):
    alice, bob, room_id = await api.two_in_a_public_room()
    # Bob (power 0) cannot kick alice.
    r = await bob.post(f"/rooms/{room_id}/kick", {"user_id": alice.user_id})
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert (await alice.post(f"/rooms/{room_id}/kick", {"user_id": bob.user_id,
                                                         "reason": "bye"})).status == 200
    await bob.join(room_id)
    assert (await alice.post(f"/rooms/{room_id}/ban", {"user_id": bob.user_id})).status == 200
    r = await bob.post(f"/join/{room_id}")
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert (await alice.post(f"/rooms/{room_id}/unban", {"user_id": bob.user_id})).status == 200
    await bob.join(room_id)
    assert (await bob.post(f"/rooms/{room_id}/leave")).status == 200
    assert room_id not in (await bob.get("/joined_rooms")).json["joined_rooms"]
    assert (await bob.post(f"/rooms/{room_id}/forget")).status == 200
    r = await bob.get(f"/rooms/{room_id}/messages")
    assert r.status == 403


async def test_power_levels_enforced(api):
    alice, bob, room_id = await api.two_in_a_public_room()
    r = await bob.put(f"/rooms/{room_id}/state/m.room.name", {"name": "hijack"})
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
    pl = (await alice.get(f"/rooms/{room_id}/state/m.room.power_levels")).json
    pl["users"][bob.user_id] = 100
    r = await bob.put(f"/rooms/{room_id}/state/m.room.power_levels", pl)
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
    assert (await alice.get(f"/rooms/{room_id}/state/m.room.name")).status == 404
    pl["users"][bob.user_id] = 50
    assert (await alice.put(f"/rooms/{room_id}/state/m.room.power_levels", pl)).status == 200
    assert (await bob.put(f"/rooms/{room_id}/state/m.room.name", {"name": "ok"})).status == 200


async def test_alias_management(api):
    alice = await api.register()
    bob = await api.register()
    room_id = await alice.create_room()
    alias = f"#a{secrets.token_hex(3)}:{api.server.server_name}"
    assert (await alice.put(f"/directory/room/{alias}", {"room_id": room_id})).status == 200
    r = await alice.put(f"/directory/room/{alias}", {"room_id": room_id})
    assert r.status == 409
    r = await alice.put(f"/directory/room/#x:other.server", {"room_id": room_id})
    assert r.status == 400
    r = await bob.request("DELETE", f"/directory/room/{alias}")
    assert r.status == 403
    assert (await alice.request("DELETE", f"/directory/room/{alias}")).status == 200
    assert (await alice.get(f"/directory/room/{alias}")).status == 404


async def test_racing_for_one_alias_gives_exactly_one_winner(api):
    """Two createRoom calls (and two alias PUTs) racing for one alias: one succeeds, the others
    get the alias-taken error, never a 500, and the alias points at the winner's room."""
    import asyncio

    alice = await api.register()
    bob = await api.register()
    local = f"race{secrets.token_hex(3)}"
    results = await asyncio.gather(*[
        u.post("/createRoom", {"room_alias_name": local, "preset": "public_chat"})
        for u in (alice, bob, alice, bob)])
    assert sorted(r.status for r in results) == [200, 400, 400, 400], results
    assert {r.json["errcode"] for r in results if r.status == 400} == {"M_ROOM_IN_USE"}
    winner = next(r.json["room_id"] for r in results if r.status == 200)
    alias = f"#{local}:{api.server.server_name}"
    assert (await bob.get(f"/directory/room/{alias}")).json["room_id"] == winner

    room_a = await alice.create_room()
    other = f"#race{secrets.token_hex(3)}:{api.server.server_name}"
    puts = await asyncio.gather(*[alice.put(f"/directory/room/{other}", {"room_id": room_a})
                                  for _ in range(4)])
    assert sorted(r.status for r in puts) == [200, 409, 409, 409], puts
    assert (await alice.get(f"/directory/room/{other}")).json["room_id"] == room_a
