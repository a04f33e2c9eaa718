"""Membership answers that bridges built on mautrix-python (heisenbridge and others) depend on.

mautrix's leave_room() treats a 403 whose message says "not in room" as "already gone" (the
wording Synapse uses), and Synapse answers a repeated identical leave with 200 — a bridge that
retries a leave after a timeout must not see an error for a leave that already happened."""

from __future__ import annotations


async def _state_events(user, room_id: str) -> list[str]:
    """The room's membership event IDs, newest first."""
    r = await user.get(f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "100"})
    assert r.status == 200, r
    return [e["event_id"] for e in r.json["chunk"] if e["type"] == "m.room.member"]


async def test_repeated_leave_is_answered_like_the_first(api):
    alice, bob, room_id = await api.two_in_a_public_room()
    r = await bob.post(f"/rooms/{room_id}/leave", {"reason": "bye"})
    assert r.status == 200, r
    before = await _state_events(alice, room_id)
    # The same leave again (a retry): 200, and no second event in the room.
    r = await bob.post(f"/rooms/{room_id}/leave", {"reason": "bye"})
    assert (r.status, r.json) == (200, {}), r
    assert await _state_events(alice, room_id) == before
    # A different leave (another reason) is not a retry: bob is not in the room.
    r = await bob.post(f"/rooms/{room_id}/leave", {"reason": "changed my mind"})
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN"), r
    assert "not in room" in r.json["error"]
    assert await _state_events(alice, room_id) == before


async def test_leave_without_membership_says_not_in_room(api):
    alice = await api.register()
    carol = await api.register()
    room_id = await alice.create_room(preset="public_chat")
    r = await carol.post(f"/rooms/{room_id}/leave")
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN"), r
    assert "not in room" in r.json["error"]


async def test_leave_after_a_kick_is_not_a_retry(api):
    alice, bob, room_id = await api.two_in_a_public_room()
    r = await alice.post(f"/rooms/{room_id}/kick", {"user_id": bob.user_id})
    assert r.status == 200, r
    before = await _state_events(alice, room_id)
    # The current leave was sent by alice, not bob: bob's own leave is refused.
    r = await bob.post(f"/rooms/{room_id}/leave")
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN"), r
    assert "not in room" in r.json["error"]
    assert await _state_events(alice, room_id) == before
    # Invited again, bob can decline (leave) — and declining twice is still fine.
    assert (await alice.post(f"/rooms/{room_id}/invite", {"user_id": bob.user_id})).status == 200
    assert (await bob.post(f"/rooms/{room_id}/leave")).status == 200
    assert (await bob.post(f"/rooms/{room_id}/leave")).status == 200
