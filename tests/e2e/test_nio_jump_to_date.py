"""/timestamp_to_event (jumping to a date): the closest event in either direction among those
the reader may see, with matrix-nio clients for everything nio has a method for and aiohttp
for the v1 endpoint; bad requests get Matrix errors."""

from __future__ import annotations

import aiohttp
import nio

from tests.e2e.nio_helpers import ok, raw, send_text, shared_room


async def _jump(client: nio.AsyncClient, room_id: str, params: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{client.homeserver}/_matrix/client/v1/rooms/{room_id}"
                         "/timestamp_to_event", params=params,
                         headers={"Authorization": f"Bearer {client.access_token}"}) as r:
            return r.status, await r.json(content_type=None)


async def _timeline(client: nio.AsyncClient, room_id: str) -> list[tuple[int, str]]:
    """(origin_server_ts, event_id) of every event the client sees, oldest first."""
    resp = ok(await client.room_messages(room_id, start="", limit=100,
                                         direction=nio.MessageDirection.front),
              nio.RoomMessagesResponse)
    return [(e.server_timestamp, e.event_id) for e in resp.chunk]


async def test_closest_event_in_each_direction(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    for i in range(3):
        await send_text(alice, room_id, f"m{i}")
    events = await _timeline(bob, room_id)
    assert len(events) >= 6  # creation events, the join, the messages
    for ts, _ in events:
        # Forwards: the first event at or after ts; backwards: the last at or before it.
        # (Events can share a millisecond: the order among them is the stream order.)
        expect_f = next(e for e in events if e[0] >= ts)
        expect_b = [e for e in events if e[0] <= ts][-1]
        assert await _jump(bob, room_id, {"ts": str(ts), "dir": "f"}) == (
            200, {"event_id": expect_f[1], "origin_server_ts": expect_f[0]})
        assert await _jump(bob, room_id, {"ts": str(ts), "dir": "b"}) == (
            200, {"event_id": expect_b[1], "origin_server_ts": expect_b[0]})
    last_ts = events[-1][0]
    status, body = await _jump(bob, room_id, {"ts": str(last_ts + 1), "dir": "f"})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await _jump(bob, room_id, {"ts": "0", "dir": "b"})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    # After the last event, backwards: the newest event.
    assert (await _jump(bob, room_id, {"ts": str(last_ts + 60_000), "dir": "b"}))[1][
        "event_id"] == events[-1][1]


async def test_events_the_reader_may_not_see_are_skipped(nio_user):
    alice, eve = await nio_user("alice"), await nio_user("eve")
    room_id = ok(await alice.room_create(preset=nio.RoomPreset.public_chat),
                 nio.RoomCreateResponse).room_id
    status, _ = await raw(alice, "PUT", f"/rooms/{room_id}/state/m.room.history_visibility",
                          {"history_visibility": "joined"})
    assert status == 200
    hidden = {await send_text(alice, room_id, f"before eve {i}") for i in range(3)}
    hidden_ts = max(ts for ts, eid in await _timeline(alice, room_id) if eid in hidden)
    ok(await eve.join(room_id), nio.JoinResponse)
    status, body = await _jump(eve, room_id, {"ts": str(hidden_ts), "dir": "b"})
    assert status == 404 or body["event_id"] not in hidden, body
    status, body = await _jump(eve, room_id, {"ts": "0", "dir": "f"})
    assert status == 200 and body["event_id"] not in hidden  # her join or later, not before


async def test_bad_requests_get_matrix_errors(nio_user):
    alice, eve = await nio_user("alice"), await nio_user("eve")
    room_id = await shared_room(alice)
    cases = [
        (alice, {"ts": "1"}, 400, "M_INVALID_PARAM"),  # no dir
        (alice, {"ts": "1", "dir": "x"}, 400, "M_INVALID_PARAM"),
        (alice, {"dir": "f"}, 400, "M_MISSING_PARAM"),
        (alice, {"ts": "yesterday", "dir": "f"}, 400, "M_INVALID_PARAM"),
        (alice, {"ts": "-5", "dir": "f"}, 400, "M_INVALID_PARAM"),
        (eve, {"ts": "1", "dir": "f"}, 403, "M_FORBIDDEN"),  # not in the room
    ]
    for client, params, status, errcode in cases:
        got_status, body = await _jump(client, room_id, params)
        assert (got_status, body.get("errcode")) == (status, errcode), (params, body)
    got_status, body = await _jump(alice, "!nowhere:localhost", {"ts": "1", "dir": "f"})
    assert got_status in (403, 404) and body["errcode"] in ("M_FORBIDDEN", "M_NOT_FOUND")
