"""Unread counts with matrix-nio: the server's unread_notifications land in nio's room
objects (room.unread_notifications / room.unread_highlights) and drop after a read receipt."""

from __future__ import annotations

import nio

from tests.e2e.nio_helpers import ok, send_text, shared_room, sync_until


def counts(client: nio.AsyncClient, room_id: str) -> tuple[int, int] | None:
    room = client.rooms.get(room_id)
    return (room.unread_notifications, room.unread_highlights) if room else None


async def test_unread_counts_and_read_receipt(nio_user):
    alice, bob, carol = await nio_user("alice"), await nio_user("bob"), await nio_user("carol")
    room_id = await shared_room(alice, bob, carol, name="Unread")
    await send_text(alice, room_id, "first")
    await send_text(alice, room_id, "second")
    ok(await alice.room_send(room_id, "m.room.message", {
        "msgtype": "m.text", "body": "bob, look",
        "m.mentions": {"user_ids": [bob.user_id]}}), nio.RoomSendResponse)
    last = await send_text(alice, room_id, "last")

    await sync_until(bob, lambda _r: counts(bob, room_id) == (4, 1),
                     what="4 unread, 1 highlight for bob")
    await sync_until(carol, lambda _r: counts(carol, room_id) == (4, 0),
                     what="4 unread, no highlight for carol")
    assert counts(alice, room_id) == (0, 0)  # her own messages

    # bob reads to the end: his counts drop in his next sync; carol's stay.
    ok(await bob.room_read_markers(room_id, fully_read_event=last, read_event=last),
       nio.RoomReadMarkersResponse)
    await sync_until(bob, lambda _r: counts(bob, room_id) == (0, 0), what="bob's counts at 0")
    # carol replies: her counter restarts, the others count her message.
    await send_text(carol, room_id, "read it")
    await sync_until(carol, lambda r: room_id in r.rooms.join, what="carol's own message")
    assert counts(carol, room_id) == (0, 0)
    await sync_until(bob, lambda _r: counts(bob, room_id) == (1, 0), what="bob sees 1 unread")
