"""/rooms/{roomId}/hierarchy: a space's rooms, depth first in the spec's child order, only
those the reader may join or see; max_depth, suggested_only, pagination; bad requests get
Matrix errors. matrix-nio makes the rooms, aiohttp reads the v1 endpoint."""

from __future__ import annotations

import aiohttp
import nio

from tests.e2e.nio_helpers import ok, raw


async def _hierarchy(client: nio.AsyncClient, room_id: str, **params) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{client.homeserver}/_matrix/client/v1/rooms/{room_id}/hierarchy",
                         params={k: str(v).lower() if isinstance(v, bool) else str(v)
                                 for k, v in params.items()},
                         headers={"Authorization": f"Bearer {client.access_token}"}) as r:
            return r.status, await r.json(content_type=None)


async def _room(client: nio.AsyncClient, name: str, *, space: bool = False,
                preset: nio.RoomPreset = nio.RoomPreset.public_chat,
                initial_state: list | None = None) -> str:
    return ok(await client.room_create(name=name, space=space, preset=preset,
                                       initial_state=initial_state or []),
              nio.RoomCreateResponse).room_id


async def _child(client: nio.AsyncClient, parent: str, child: str, **content) -> None:
    host = client.user_id.split(":", 1)[1]
    status, body = await raw(client, "PUT", f"/rooms/{parent}/state/m.space.child/{child}",
                             {"via": [host], **content})
    assert status == 200, body


def _ids(body: dict) -> list[str]:
    return [r["room_id"] for r in body["rooms"]]


async def test_space_tree_for_members_and_outsiders(nio_user):
    alice, bob, eve = await nio_user("alice"), await nio_user("bob"), await nio_user("eve")
    space = await _room(alice, "Company", space=True)
    sub = await _room(alice, "Engineering", space=True)
    general = await _room(alice, "general")
    ops = await _room(alice, "ops")
    secret = await _room(alice, "board", preset=nio.RoomPreset.private_chat)
    staff = await _room(alice, "staff", preset=nio.RoomPreset.private_chat, initial_state=[{
        "type": "m.room.join_rules", "state_key": "",
        "content": {"join_rule": "restricted",
                    "allow": [{"type": "m.room_membership", "room_id": space}]}}])
    await _child(alice, space, general, order="b", suggested=True)
    await _child(alice, space, sub, order="a")
    await _child(alice, space, secret)
    await _child(alice, space, staff)
    await _child(alice, space, "!elsewhere:other.example")  # unknown here: left out
    status, body = await raw(alice, "PUT", f"/rooms/{space}/state/m.space.child/{ops}",
                             {})  # no via: not a child
    assert status == 200, body
    await _child(alice, sub, ops)
    ok(await bob.join(space), nio.JoinResponse)

    status, body = await _hierarchy(bob, space)
    assert status == 200, body
    # Depth first, children by `order` then time: the subspace ("a") and its room, then
    # general ("b"), then staff (restricted to the space's members); never the private room.
    assert _ids(body) == [space, sub, ops, general, staff]
    assert "next_batch" not in body
    top = body["rooms"][0]
    assert (top["room_type"], top["name"], top["num_joined_members"]) == ("m.space", "Company", 2)
    assert top["world_readable"] is False and top["guest_can_join"] is False
    assert [c["state_key"] for c in top["children_state"]] == [
        sub, general, secret, staff, "!elsewhere:other.example"]
    assert all(c["type"] == "m.space.child" and c["origin_server_ts"] > 0
               for c in top["children_state"])
    assert body["rooms"][3]["name"] == "general" and body["rooms"][3]["children_state"] == []

    # Someone outside the space: the public rooms only.
    assert _ids((await _hierarchy(eve, space))[1]) == [space, sub, ops, general]
    assert _ids((await _hierarchy(bob, space, max_depth=1))[1]) == [space, sub, general, staff]
    assert _ids((await _hierarchy(bob, space, max_depth=0))[1]) == [space]
    assert _ids((await _hierarchy(bob, space, suggested_only=True))[1]) == [space, general]

    # Two at a time.
    pages, token = [], None
    for _ in range(5):
        status, page = await _hierarchy(bob, space, limit=2, **({"from": token} if token else {}))
        assert status == 200, page
        pages.append(_ids(page))
        token = page.get("next_batch")
        if not token:
            break
    assert pages == [[space, sub], [ops, general], [staff]]


async def test_hierarchy_bad_requests(nio_user):
    alice, eve = await nio_user("alice"), await nio_user("eve")
    private_space = await _room(alice, "Private", space=True,
                                preset=nio.RoomPreset.private_chat)
    public_space = await _room(alice, "Public", space=True)
    status, first = await _hierarchy(alice, public_space, limit=1)
    assert status == 200
    for client, room, params, code, errcode in [
        (eve, private_space, {}, 403, "M_FORBIDDEN"),
        (alice, "!nowhere:localhost", {}, 403, "M_FORBIDDEN"),
        (alice, public_space, {"limit": 0}, 400, "M_INVALID_PARAM"),
        (alice, public_space, {"max_depth": -1}, 400, "M_INVALID_PARAM"),
        (alice, public_space, {"suggested_only": "maybe"}, 400, "M_INVALID_PARAM"),
        (alice, public_space, {"from": "garbage"}, 400, "M_INVALID_PARAM"),
        (alice, public_space, {"from": "9" * 5000 + "_50_0"}, 400, "M_INVALID_PARAM"),
        (alice, public_space, {"from": "1_3_0"}, 400, "M_INVALID_PARAM"),  # other max_depth
    ]:
        got, body = await _hierarchy(client, room, **params)
        assert (got, body.get("errcode")) == (code, errcode), (params, body)
