"""/rooms/{roomId}/threads: a room's threads, most recently active first, each root with its
thread summary bundled; `include=participated`; pagination; bad requests get Matrix errors.
matrix-nio sends and replies, aiohttp reads the v1 endpoint nio has no method for."""

from __future__ import annotations

import aiohttp
import nio

from tests.e2e.nio_helpers import ok, send_text, shared_room


async def _reply(client: nio.AsyncClient, room_id: str, root: str, body: str) -> str:
    return ok(await client.room_send(room_id, "m.room.message", {
        "msgtype": "m.text", "body": body,
        "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
        nio.RoomSendResponse).event_id


async def _threads(client: nio.AsyncClient, room_id: str, **params) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{client.homeserver}/_matrix/client/v1/rooms/{room_id}/threads",
                         params={k: str(v) for k, v in params.items()},
                         headers={"Authorization": f"Bearer {client.access_token}"}) as r:
            return r.status, await r.json(content_type=None)


async def test_threads_newest_activity_first_with_summaries(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    root1 = await send_text(alice, room_id, "lunch?")
    await _reply(bob, room_id, root1, "yes")
    r1_last = await _reply(bob, room_id, root1, "noon")
    root2 = await send_text(alice, room_id, "release notes")
    r2_last = await _reply(alice, room_id, root2, "draft attached")
    await send_text(bob, room_id, "not a thread")

    status, body = await _threads(bob, room_id)
    assert status == 200, body
    assert [e["event_id"] for e in body["chunk"]] == [root2, root1]
    assert "next_batch" not in body
    s2, s1 = (e["unsigned"]["m.relations"]["m.thread"] for e in body["chunk"])
    assert (s2["count"], s2["current_user_participated"]) == (1, False)
    assert s2["latest_event"]["event_id"] == r2_last
    assert s2["latest_event"]["content"]["body"] == "draft attached"
    assert (s1["count"], s1["current_user_participated"]) == (2, True)
    assert s1["latest_event"]["event_id"] == r1_last
    assert body["chunk"][1]["content"]["body"] == "lunch?"

    # Only the threads the reader started or replied to.
    status, body = await _threads(bob, room_id, include="participated")
    assert [e["event_id"] for e in body["chunk"]] == [root1]
    status, body = await _threads(alice, room_id, include="participated")
    assert [e["event_id"] for e in body["chunk"]] == [root2, root1]

    # One at a time, then a new reply moves its thread to the front.
    status, page = await _threads(bob, room_id, limit=1)
    assert [e["event_id"] for e in page["chunk"]] == [root2] and page["next_batch"]
    status, rest = await _threads(bob, room_id, limit=1, **{"from": page["next_batch"]})
    assert [e["event_id"] for e in rest["chunk"]] == [root1] and "next_batch" not in rest
    await _reply(alice, room_id, root1, "see you")
    status, body = await _threads(bob, room_id)
    assert [e["event_id"] for e in body["chunk"]] == [root1, root2]
    assert body["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"] == 3


async def test_thread_list_bad_requests(nio_user):
    alice, eve = await nio_user("alice"), await nio_user("eve")
    room_id = await shared_room(alice)
    root = await send_text(alice, room_id, "root")
    await _reply(alice, room_id, root, "reply")
    for client, params, status, errcode in [
        (alice, {"include": "some"}, 400, "M_INVALID_PARAM"),
        (alice, {"from": "yesterday"}, 400, "M_INVALID_PARAM"),
        (alice, {"from": str(2**63)}, 400, "M_INVALID_PARAM"),  # found by the spec fuzzer
        (alice, {"limit": 0}, 400, "M_INVALID_PARAM"),
        (eve, {}, 403, "M_FORBIDDEN"),  # not in the room
    ]:
        got, body = await _threads(client, room_id, **params)
        assert (got, body.get("errcode")) == (status, errcode), (params, body)


async def test_thread_summary_on_roots_in_messages_context_and_event(nio_user):
    from tests.e2e.nio_helpers import raw

    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    root = await send_text(alice, room_id, "plans for friday")
    plain = await send_text(alice, room_id, "unrelated")
    await _reply(bob, room_id, root, "cinema?")
    last = await _reply(alice, room_id, root, "yes, 8pm")

    def summary_of(event: dict) -> dict | None:
        return (event.get("unsigned") or {}).get("m.relations", {}).get("m.thread")

    page = ok(await bob.room_messages(room_id, start="", limit=50,
                                      direction=nio.MessageDirection.front),
              nio.RoomMessagesResponse)
    by_id = {e.event_id: e.source for e in page.chunk}
    s = summary_of(by_id[root])
    assert (s["count"], s["current_user_participated"], s["latest_event"]["event_id"]) == (
        2, True, last)
    assert summary_of(by_id[plain]) is None
    assert summary_of(by_id[last]) is None  # a reply is not a root

    status, event = await raw(bob, "GET", f"/rooms/{room_id}/event/{root}")
    assert status == 200 and summary_of(event)["count"] == 2
    status, ctx = await raw(bob, "GET", f"/rooms/{room_id}/context/{plain}",
                            params={"limit": "4"})
    assert status == 200
    assert [summary_of(e) is not None for e in ctx["events_before"]][0] is True  # the root
    assert summary_of(ctx["event"]) is None
