"""Scenarios 10 and 11 with matrix-nio: history visibility "joined" hides what came before a
join (in /sync, /messages, /context and /event), outsiders get 403 on every read endpoint of a
private room, and redactions reach the other member with content stripped."""

from __future__ import annotations

import nio

from tests.e2e.nio_helpers import (initial_sync, ok, send_text, shared_room, status_of,
                                   sync_until, texts, timeline)


def hv_state(visibility: str) -> list[dict]:
    return [{"type": "m.room.history_visibility", "state_key": "",
             "content": {"history_visibility": visibility}}]


async def read_all_back(client: nio.AsyncClient, room_id: str, start: str | None = None) -> list:
    events, token = [], start
    for _ in range(20):
        page = ok(await client.room_messages(room_id, start=token, limit=20),
                  nio.RoomMessagesResponse)
        events.extend(page.chunk)
        if not page.chunk or not page.end:
            return events
        token = page.end
    raise AssertionError("pagination never ended")


async def test_joined_visibility_hides_history_before_join(nio_user):
    alice, carol = await nio_user("alice"), await nio_user("carol")
    room_id = ok(await alice.room_create(initial_state=hv_state("joined")),
                 nio.RoomCreateResponse).room_id
    before = [await send_text(alice, room_id, f"secret {i}") for i in range(3)]
    ok(await alice.room_invite(room_id, carol.user_id), nio.RoomInviteResponse)
    ok(await carol.join(room_id), nio.JoinResponse)
    after = await send_text(alice, room_id, "welcome carol")

    # Sync: the timeline holds Carol's join and what followed, nothing from before.
    resp = await initial_sync(carol)
    tl = timeline(resp, room_id)
    assert texts(tl) == ["welcome carol"], [e.source for e in tl]
    assert any(isinstance(e, nio.RoomMemberEvent) and e.state_key == carol.user_id
               and e.membership == "join" for e in tl)

    # /messages back from the sync's prev_batch and from the newest position: same story.
    start = resp.rooms.join[room_id].timeline.prev_batch
    for events in (await read_all_back(carol, room_id, start), await read_all_back(carol, room_id)):
        ids = {e.event_id for e in events}
        assert not ids & set(before), "pre-join messages leaked through /messages"
    assert texts(await read_all_back(carol, room_id)) == ["welcome carol"]

    # /context around the welcome message has no pre-join events either way.
    ctx = ok(await carol.room_context(room_id, after, limit=20), nio.RoomContextResponse)
    around = {e.event_id for e in [*ctx.events_before, *ctx.events_after]}
    assert not around & set(before)

    # /event on a pre-join message is not found for Carol, but fine for Alice.
    err = ok(await carol.room_get_event(room_id, before[0]), nio.RoomGetEventError)
    assert status_of(err) == 404, err
    ok(await alice.room_get_event(room_id, before[0]), nio.RoomGetEventResponse)

    # Alice, there all along, pages back through everything.
    assert texts(await read_all_back(alice, room_id)) == [
        "welcome carol", "secret 2", "secret 1", "secret 0"]


async def test_shared_visibility_shows_history_after_join(nio_user):
    """The contrast case: with "shared", the same pre-join messages are readable once joined."""
    alice, carol = await nio_user("alice"), await nio_user("carol")
    room_id = ok(await alice.room_create(initial_state=hv_state("shared")),
                 nio.RoomCreateResponse).room_id
    await send_text(alice, room_id, "old news")
    ok(await alice.room_invite(room_id, carol.user_id), nio.RoomInviteResponse)
    ok(await carol.join(room_id), nio.JoinResponse)
    assert "old news" in texts(await read_all_back(carol, room_id))


async def test_outsider_gets_403_on_private_room(nio_user):
    alice, mallory = await nio_user("alice"), await nio_user("mallory")
    room_id = ok(await alice.room_create(initial_state=hv_state("shared")),
                 nio.RoomCreateResponse).room_id
    secret = await send_text(alice, room_id, "members only")

    checks = {
        "/messages": (await mallory.room_messages(room_id, limit=10), nio.RoomMessagesError),
        "/state": (await mallory.room_get_state(room_id), nio.RoomGetStateError),
        "/event": (await mallory.room_get_event(room_id, secret), nio.RoomGetEventError),
        "/context": (await mallory.room_context(room_id, secret), nio.RoomContextError),
        "/joined_members": (await mallory.joined_members(room_id), nio.JoinedMembersError),
    }
    for what, (resp, err_cls) in checks.items():
        assert isinstance(resp, err_cls), (what, resp)
        assert (status_of(resp), resp.status_code) == (403, "M_FORBIDDEN"), (what, resp)
    # nio parses any JSON body of /state/{type}/{key} as content, error or not.
    resp = await mallory.room_get_state_event(room_id, "m.room.create")
    assert status_of(resp) == 403, resp
    assert resp.content.get("errcode") == "M_FORBIDDEN", resp
    # Nor does the room show up in the outsider's sync.
    resp = await initial_sync(mallory)
    assert room_id not in resp.rooms.join and room_id not in resp.rooms.invite


async def test_redaction_reaches_other_member(nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    target = await send_text(alice, room_id, "oops, wrong room")
    await sync_until(bob, lambda r: target in {e.event_id for e in timeline(r, room_id)},
                     what="the message")

    # Bob (power 0) may not redact Alice's message.
    err = ok(await bob.room_redact(room_id, target, reason="nope"), nio.RoomRedactError)
    assert (status_of(err), err.status_code) == (403, "M_FORBIDDEN")

    red = ok(await alice.room_redact(room_id, target, reason="misfire"), nio.RoomRedactResponse)

    redactions = await sync_until(bob, lambda r: [e for e in timeline(r, room_id)
                                                  if isinstance(e, nio.RedactionEvent)],
                                  what="the redaction")
    assert redactions[0].event_id == red.event_id
    assert redactions[0].redacts == target
    assert redactions[0].reason == "misfire"
    assert redactions[0].sender == alice.user_id

    # Bob's view of the original: no content left, and unsigned.redacted_because is the redaction.
    ev = ok(await bob.room_get_event(room_id, target), nio.RoomGetEventResponse).event
    assert isinstance(ev, nio.RedactedEvent), ev
    assert ev.source["content"] == {}
    because = ev.source["unsigned"]["redacted_because"]
    assert because["event_id"] == red.event_id
    assert because["type"] == "m.room.redaction"
    assert because["sender"] == alice.user_id
    assert because["content"].get("reason") == "misfire"
    assert ev.redacter == alice.user_id and ev.reason == "misfire"

    # Same through /messages and in a fresh sync.
    page = ok(await bob.room_messages(room_id, limit=10), nio.RoomMessagesResponse)
    original = next(e for e in page.chunk if e.event_id == target)
    assert isinstance(original, nio.RedactedEvent)
    assert original.source["content"] == {}
    fresh = await initial_sync(bob)
    in_sync = next(e for e in timeline(fresh, room_id) if e.event_id == target)
    assert isinstance(in_sync, nio.RedactedEvent)
    assert in_sync.source["unsigned"]["redacted_because"]["event_id"] == red.event_id
