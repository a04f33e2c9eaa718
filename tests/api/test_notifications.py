"""Unread notification counts in /sync, computed by the server from push rules."""

from __future__ import annotations

import secrets


def unread(sync: dict, room_id: str) -> tuple[int, int] | None:
    room = sync["rooms"]["join"].get(room_id)
    if room is None:
        return None
    u = room["unread_notifications"]
    return u["notification_count"], u["highlight_count"]


async def group(api, members: int = 3, **create):
    users = [await api.register() for _ in range(members)]
    room = await users[0].create_room(preset="public_chat", **create)
    for u in users[1:]:
        await u.join(room)
    return users, room


async def send(user, room: str, content: dict, etype: str = "m.room.message") -> str:
    r = await user.put(f"/rooms/{room}/send/{etype}/{secrets.token_hex(6)}", content)
    assert r.status == 200, r
    return r.json["event_id"]


async def test_counts_rise_for_others_not_the_sender(api):
    (alice, bob, carol), room = await group(api)
    for i in range(3):
        await alice.send_text(room, f"hello {i}")
    assert unread(await bob.sync(), room) == (3, 0)
    assert unread(await carol.sync(), room) == (3, 0)
    assert unread(await alice.sync(), room) == (0, 0)
    # Events that do not notify: reactions, notices, edits, state.
    last = await alice.send_text(room, "one more")
    await send(alice, room, {"m.relates_to": {"rel_type": "m.annotation", "event_id": last,
                                              "key": "👍"}}, "m.reaction")
    await send(alice, room, {"msgtype": "m.notice", "body": "bot says"})
    await send(alice, room, {"msgtype": "m.text", "body": "* fixed", "m.new_content": {
        "msgtype": "m.text", "body": "fixed"}, "m.relates_to": {"rel_type": "m.replace",
                                                                "event_id": last}})
    assert (await alice.put(f"/rooms/{room}/state/m.room.topic", {"topic": "t"})).status == 200
    assert unread(await bob.sync(), room) == (4, 0)


async def test_mentions_highlight(api):
    (alice, bob, carol), room = await group(api)
    bob_local = bob.user_id[1:].split(":")[0]
    await send(alice, room, {"msgtype": "m.text", "body": "hi",
                             "m.mentions": {"user_ids": [bob.user_id]}})
    await alice.send_text(room, f"ping {bob_local}, are you there?")  # legacy: the localpart
    # A room mention from the creator (power 100) highlights everyone.
    await send(alice, room, {"msgtype": "m.text", "body": "all of you",
                             "m.mentions": {"room": True}})
    assert unread(await bob.sync(), room) == (3, 3)
    assert unread(await carol.sync(), room) == (3, 1)
    # carol (power 0) cannot notify the whole room.
    await send(carol, room, {"msgtype": "m.text", "body": "everyone!",
                             "m.mentions": {"room": True}})
    assert unread(await bob.sync(), room) == (4, 3)
    assert unread(await carol.sync(), room) == (0, 0)  # her own message: read


async def test_display_name_mention(api):
    (alice, bob), room = await group(api, 2)
    r = await bob.put(f"/rooms/{room}/state/m.room.member/{bob.user_id}",
                      {"membership": "join", "displayname": "Captain Nemo"})
    assert r.status == 200
    await alice.send_text(room, "captain nemo, the nautilus awaits")
    await alice.send_text(room, "the captain is away")
    assert unread(await bob.sync(), room) == (2, 1)


async def test_muted_room_and_push_rule_changes(api):
    (alice, bob, _), room = await group(api, 3)  # not one-to-one: .m.rule.message applies
    other = await alice.create_room(preset="public_chat")
    await bob.join(other)
    r = await bob.put(f"/pushrules/global/room/{room}", {"actions": []})
    assert r.status == 200
    await alice.send_text(room, "muted")
    await alice.send_text(other, "loud")
    s = await bob.sync()
    assert unread(s, room) == (0, 0)
    assert unread(s, other) == (1, 0)
    # Mentions still highlight in a muted room (override rules come first).
    await send(alice, room, {"msgtype": "m.text", "body": "you",
                             "m.mentions": {"user_ids": [bob.user_id]}})
    assert unread(await bob.sync(), room) == (1, 1)
    # Unmuted: counting resumes; a disabled .m.rule.message stops plain messages.
    assert (await bob.request("DELETE", f"/pushrules/global/room/{room}")).status == 200
    await alice.send_text(room, "heard")
    assert unread(await bob.sync(), room) == (2, 1)
    r = await bob.put("/pushrules/global/underride/.m.rule.message/enabled", {"enabled": False})
    assert r.status == 200
    await alice.send_text(room, "not heard")
    assert unread(await bob.sync(), room) == (2, 1)


async def test_receipts_reset_and_incremental_sync_shows_the_drop(api):
    (alice, bob), room = await group(api, 2)
    ids = [await alice.send_text(room, f"m{i}") for i in range(4)]
    s1 = await bob.sync()
    assert unread(s1, room) == (4, 0)
    # A receipt on an earlier event: what is after it stays unread.
    assert (await bob.post(f"/rooms/{room}/receipt/m.read/{ids[1]}")).status == 200
    s2 = await bob.sync(s1["next_batch"])
    assert unread(s2, room) == (2, 0)
    # An older receipt changes nothing.
    assert (await bob.post(f"/rooms/{room}/receipt/m.read/{ids[0]}")).status == 200
    assert unread(await bob.sync(), room) == (2, 0)
    # A private receipt on the newest event: zero, and the incremental sync says so.
    assert (await bob.post(f"/rooms/{room}/receipt/m.read.private/{ids[3]}")).status == 200
    s3 = await bob.sync(s2["next_batch"])
    assert unread(s3, room) == (0, 0)
    # The fully-read marker alone is not a receipt; /read_markers with m.read is.
    await alice.send_text(room, "again")
    s4 = await bob.sync(s3["next_batch"])
    assert unread(s4, room) == (1, 0)
    last = s4["rooms"]["join"][room]["timeline"]["events"][-1]["event_id"]
    r = await bob.post(f"/rooms/{room}/read_markers", {"m.fully_read": last})
    assert r.status == 200
    assert unread(await bob.sync(), room) == (1, 0)
    r = await bob.post(f"/rooms/{room}/read_markers", {"m.fully_read": last, "m.read": last})
    assert r.status == 200
    assert unread(await bob.sync(s4["next_batch"]), room) == (0, 0)
    # A receipt for one thread leaves the room's counts alone.
    await alice.send_text(room, "after")
    root = await alice.send_text(room, "root")
    r = await bob.post(f"/rooms/{room}/receipt/m.read/{root}", {"thread_id": root})
    assert r.status == 200
    assert unread(await bob.sync(), room) == (2, 0)


async def test_sending_resets_and_counts_survive_restart(api, server):
    (alice, bob), room = await group(api, 2)
    for i in range(2):
        await alice.send_text(room, f"before {i}")
    await bob.send_text(room, "I am here")
    assert unread(await bob.sync(), room) == (0, 0)
    await alice.send_text(room, "after")
    await send(alice, room, {"msgtype": "m.text", "body": "you",
                             "m.mentions": {"user_ids": [bob.user_id]}})
    assert unread(await bob.sync(), room) == (2, 1)
    await server.stop()
    await server.start()
    assert unread(await bob.sync(), room) == (2, 1)
    await alice.send_text(room, "and more")
    assert unread(await bob.sync(), room) == (3, 1)


async def test_direct_and_encrypted_rooms(api):
    alice, bob = await api.register(), await api.register()
    room = await alice.create_room(preset="trusted_private_chat", invite=[bob.user_id],
                                   is_direct=True)
    await bob.join(room)
    await send(alice, room, {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "x",
                             "sender_key": "k", "session_id": "s", "device_id": "D"},
               "m.room.encrypted")
    await alice.send_text(room, "plain")
    assert unread(await bob.sync(), room) == (2, 0)
