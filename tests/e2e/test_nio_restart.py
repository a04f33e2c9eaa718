"""A matrix-nio client across a homeserver restart: access tokens, sync tokens, pagination
tokens and transaction IDs all survive; nothing sent before the restart is lost or repeated.
(Its own module, so the restart does not disturb other scenarios' server.)"""

from __future__ import annotations

import nio

from tests.e2e.nio_helpers import (new_client, ok, send_text, shared_room, sync_until, texts,
                                   timeline)


def reconnect(old: nio.AsyncClient) -> nio.AsyncClient:
    """What a client app does on start-up: the stored token and sync position, a new session."""
    c = new_client(old.homeserver)
    c.restore_login(old.user_id, old.device_id, old.access_token)
    c.next_batch = old.next_batch
    return c


async def test_tokens_and_txns_survive_restart(server, nio_user):
    alice, bob = await nio_user("alice"), await nio_user("bob")
    room_id = await shared_room(alice, bob)
    before = await send_text(alice, room_id, "sent before the restart", tx_id="restart-txn")
    page = ok(await bob.room_messages(room_id, limit=1), nio.RoomMessagesResponse)
    assert [e.event_id for e in page.chunk] == [before]
    bob_token = bob.next_batch  # taken before `before` was sent: it must still come through

    await server.stop()
    await server.start()

    alice2, bob2 = reconnect(alice), reconnect(bob)
    try:
        me = ok(await bob2.whoami(), nio.WhoamiResponse)
        assert me.user_id == bob.user_id

        # The same transaction ID after the restart is still the same event.
        again = await send_text(alice2, room_id, "sent before the restart", tx_id="restart-txn")
        assert again == before

        assert bob2.next_batch == bob_token
        got = await sync_until(bob2, lambda r: texts(timeline(r, room_id)),
                               what="the pre-restart message")
        assert got == ["sent before the restart"]

        after = await send_text(alice2, room_id, "sent after the restart")
        got = await sync_until(bob2, lambda r: [e.event_id for e in timeline(r, room_id)
                                                if isinstance(e, nio.RoomMessageText)],
                               what="the post-restart message")
        assert got == [after]

        # A pagination token from before the restart still pages back from where it was.
        older = ok(await bob2.room_messages(room_id, start=page.end, limit=50),
                   nio.RoomMessagesResponse)
        ids = [e.event_id for e in older.chunk]
        assert before not in ids and after not in ids
        assert isinstance(older.chunk[-1], nio.RoomCreateEvent)

        # Positions keep increasing: a token from before the restart sees only new things.
        ok(await bob2.room_typing(room_id, True), nio.RoomTypingResponse)
        alice2.next_batch = alice.next_batch
        typing = await sync_until(alice2, lambda r: [e for e in r.rooms.join[room_id].ephemeral
                                                     if isinstance(e, nio.TypingNoticeEvent)
                                                     and e.users]
                                  if room_id in r.rooms.join else None, what="bob typing")
        assert typing[-1].users == [bob.user_id]
    finally:
        await alice2.close()
        await bob2.close()
