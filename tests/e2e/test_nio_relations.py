"""/relations through matrix-nio: reactions, edits and thread replies of one event, filtered by
relation and event type, in both directions and across pages; redacted children and events
the reader may not see are left out; bad requests get Matrix errors."""

from __future__ import annotations

import aiohttp
import nio
from nio.api import MessageDirection, RelationshipType

from tests.e2e.nio_helpers import ok, send_text, shared_room


async def _relate(client: nio.AsyncClient, room_id: str, etype: str, content: dict) -> str:
    return ok(await client.room_send(room_id, etype, content), nio.RoomSendResponse).event_id


async def _v1(client: nio.AsyncClient, path: str, params: dict | None = None):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{client.homeserver}/_matrix/client/v1{path}", params=params,
                         headers={"Authorization": f"Bearer {client.access_token}"}) as r:
            return r.status, await r.json(content_type=None)


async def _all(client, room_id, event_id, **kw) -> list[str]:
    return [e.event_id async for e in client.room_get_event_relations(room_id, event_id, **kw)]


async def test_relations_of_an_event(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    parent = await send_text(alice, room_id, "lunch?")
    thumbs = await _relate(bob, room_id, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": parent, "key": "👍"}})
    edit = await _relate(alice, room_id, "m.room.message", {
        "msgtype": "m.text", "body": "* lunch at noon?",
        "m.new_content": {"msgtype": "m.text", "body": "lunch at noon?"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": parent}})
    reply = await _relate(bob, room_id, "m.room.message", {
        "msgtype": "m.text", "body": "yes", "m.relates_to": {"rel_type": "m.thread",
                                                             "event_id": parent}})
    withdrawn = await _relate(alice, room_id, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": parent, "key": "🎉"}})
    ok(await alice.room_redact(room_id, withdrawn), nio.RoomRedactResponse)
    await send_text(alice, room_id, "unrelated")

    # Newest first by default; the redacted reaction is gone; one per page still finds all.
    assert await _all(bob, room_id, parent) == [reply, edit, thumbs]
    assert await _all(bob, room_id, parent, limit=1) == [reply, edit, thumbs]
    assert await _all(bob, room_id, parent, direction=MessageDirection.front) == [thumbs, edit, reply]
    assert await _all(bob, room_id, parent, rel_type=RelationshipType.annotation) == [thumbs]
    assert await _all(bob, room_id, parent, rel_type=RelationshipType.thread,
                      event_type="m.room.message") == [reply]
    assert await _all(bob, room_id, parent, rel_type=RelationshipType.annotation,
                      event_type="m.room.message") == []
    # The reaction comes back whole, as clients show it.
    page = await _v1(bob, f"/rooms/{room_id}/relations/{parent}/m.annotation")
    assert page[0] == 200
    [event] = page[1]["chunk"]
    assert event["content"]["m.relates_to"]["key"] == "👍" and event["sender"] == bob.user_id
    assert "next_batch" not in page[1]


async def test_relations_errors_and_visibility(nio_user):
    alice, bob, eve = await nio_user("alice"), await nio_user("bob"), await nio_user("eve")
    room_id = await shared_room(alice, bob)
    parent = await send_text(alice, room_id, "private")
    await _relate(bob, room_id, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": parent, "key": "👀"}})
    other_room = await shared_room(alice)
    cases = [
        (eve, f"/rooms/{room_id}/relations/{parent}", None, 403, "M_FORBIDDEN"),  # not a member
        (bob, f"/rooms/{room_id}/relations/$nope", None, 404, "M_NOT_FOUND"),
        (alice, f"/rooms/{other_room}/relations/{parent}", None, 404, "M_NOT_FOUND"),
        (bob, f"/rooms/{room_id}/relations/{parent}", {"dir": "x"}, 400, "M_INVALID_PARAM"),
        (bob, f"/rooms/{room_id}/relations/{parent}", {"limit": "-1"}, 400, "M_INVALID_PARAM"),
        (bob, f"/rooms/{room_id}/relations/{parent}", {"from": "garbage"}, 400, "M_INVALID_PARAM"),
    ]
    for client, path, params, status, errcode in cases:
        got = await _v1(client, path, params)
        assert (got[0], got[1].get("errcode")) == (status, errcode), (path, params, got)
    # Someone who left sees relations only up to their leaving.
    ok(await bob.room_leave(room_id), nio.RoomLeaveResponse)
    late = await _relate(alice, room_id, "m.reaction", {"m.relates_to": {
        "rel_type": "m.annotation", "event_id": parent, "key": "🔒"}})
    mine = [e["event_id"] for e in (await _v1(alice, f"/rooms/{room_id}/relations/{parent}"))[1]["chunk"]]
    theirs = [e["event_id"] for e in (await _v1(bob, f"/rooms/{room_id}/relations/{parent}"))[1]["chunk"]]
    assert late in mine and late not in theirs and len(theirs) == 1

