"""Incremental /sync must deliver every event exactly once, even while events are being written:
a matrix-nio client syncing in a tight loop while two others send concurrently."""

from __future__ import annotations

import asyncio

import nio

from tests.e2e.nio_helpers import ok, send_text, shared_room, timeline

PER_SENDER = 25
# Large enough that no response here is legitimately `limited` (a gap would hide events).
BIG_TIMELINE = {"room": {"timeline": {"limit": 200}}}


async def test_no_event_lost_by_sync_during_concurrent_sends(nio_user):
    alice, bob, carol = await nio_user("alice"), await nio_user("bob"), await nio_user("carol")
    room_id = await shared_room(alice, bob, carol)
    ok(await bob.sync(timeout=0, sync_filter=BIG_TIMELINE), nio.SyncResponse)

    sending = True
    received: list = []

    def take(resp: nio.SyncResponse) -> None:
        room = resp.rooms.join.get(room_id)
        if room is not None:
            assert not room.timeline.limited, "timeline limited despite a 200-event limit"
            received.extend(e for e in timeline(resp, room_id)
                            if isinstance(e, nio.RoomMessageText))

    async def poll() -> None:
        # Each response's next_batch is the next request's since: an event whose position is
        # covered by a token but that was not in any response is lost for good.
        while sending:
            take(ok(await bob.sync(timeout=0, sync_filter=BIG_TIMELINE), nio.SyncResponse))

    async def send(client: nio.AsyncClient, tag: str) -> list[str]:
        return [await send_text(client, room_id, f"{tag} {i:02d}") for i in range(PER_SENDER)]

    async def senders() -> list[list[str]]:
        nonlocal sending
        try:
            return await asyncio.gather(send(alice, "a"), send(carol, "c"))
        finally:
            sending = False

    sent_ids, _ = await asyncio.gather(senders(), poll())
    # Every send has returned, so every event is stored: one more sync must complete the set.
    take(ok(await bob.sync(timeout=0, sync_filter=BIG_TIMELINE), nio.SyncResponse))

    got_ids = [e.event_id for e in received]
    labels = {eid: f"{tag} {i:02d}"
              for tag, ids in zip("ac", sent_ids) for i, eid in enumerate(ids)}
    missing = [label for eid, label in labels.items() if eid not in got_ids]
    assert not missing, f"sync never delivered {len(missing)} of {len(labels)}: {missing}"
    assert len(got_ids) == len(set(got_ids)), "an event was delivered twice"
    assert set(got_ids) == set(labels)
    for tag in ("a", "c"):
        bodies = [e.body for e in received if e.body.startswith(tag + " ")]
        assert bodies == [f"{tag} {i:02d}" for i in range(PER_SENDER)], bodies
