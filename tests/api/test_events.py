"""Sending and reading events: txn idempotency, limits, redaction, /event, /context, /messages."""

from __future__ import annotations


async def test_txn_idempotency_per_device(api):
    alice = await api.register()
    room_id = await alice.create_room()
    body = {"msgtype": "m.text", "body": "once"}
    a = await alice.put(f"/rooms/{room_id}/send/m.room.message/txn1", body)
    b = await alice.put(f"/rooms/{room_id}/send/m.room.message/txn1", body)
    assert a.status == b.status == 200
    assert a.json["event_id"] == b.json["event_id"]
    msgs = (await alice.get(f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "50"})).json
    bodies = [e["content"].get("body") for e in msgs["chunk"] if e["type"] == "m.room.message"]
    assert bodies == ["once"]
    assert msgs["chunk"][0]["unsigned"]["transaction_id"] == "txn1"


async def test_txn_idempotency_concurrent_and_after_restart(server, api):
    """The same txnId at once (one waits for the other), and again after a restart, when the
    server no longer remembers it and only the database's unique key catches it."""
    import asyncio

    alice = await api.register()
    room_id = await alice.create_room()
    body = {"msgtype": "m.text", "body": "once"}
    path = f"/rooms/{room_id}/send/m.room.message/txn-r"
    a, b = await asyncio.gather(alice.put(path, body), alice.put(path, body))
    assert a.status == b.status == 200
    assert a.json["event_id"] == b.json["event_id"]
    await server.stop()
    await server.start()
    c = await alice.put(path, {"msgtype": "m.text", "body": "different, but a retry"})
    assert c.status == 200 and c.json["event_id"] == a.json["event_id"]
    after = await alice.put(f"/rooms/{room_id}/send/m.room.message/txn-next", body)
    assert after.status == 200
    msgs = (await alice.get(f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "50"})).json
    ids = [e["event_id"] for e in msgs["chunk"] if e["type"] == "m.room.message"]
    assert ids == [after.json["event_id"], a.json["event_id"]]
    # The refused write left no fork: the next event follows the first one only.
    ev = (await alice.get(f"/rooms/{room_id}/event/{after.json['event_id']}")).json
    assert ev["event_id"] == after.json["event_id"]
    assert server.hs.events._extremities.get(room_id, [after.json["event_id"]]) == [
        after.json["event_id"]]


async def test_event_too_large_and_bad_content(api):
    alice = await api.register()
    room_id = await alice.create_room()
    r = await alice.put(f"/rooms/{room_id}/send/m.room.message/big",
                        {"msgtype": "m.text", "body": "x" * 70000})
    assert (r.status, r.json["errcode"]) == (413, "M_TOO_LARGE")
    r = await alice.put(f"/rooms/{room_id}/send/m.room.message/float", raw=b'{"n": 1.5}')
    assert (r.status, r.json["errcode"]) == (400, "M_BAD_JSON")
    r = await alice.put(f"/rooms/{room_id}/send/m.room.message/huge",
                        raw=b'{"n": 99999999999999999999}')
    assert r.status == 400
    msgs = (await alice.get(f"/rooms/{room_id}/messages", params={"limit": "50"})).json["chunk"]
    assert not [e for e in msgs if e["type"] == "m.room.message"]


async def test_non_member_cannot_send(api):
    alice = await api.register()
    eve = await api.register()
    room_id = await alice.create_room(preset="public_chat")
    r = await eve.put(f"/rooms/{room_id}/send/m.room.message/x", {"body": "hi"})
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")


async def test_get_event_context_and_redaction(api):
    alice, bob, room_id = await api.two_in_a_public_room()
    ids = [await alice.send_text(room_id, f"m{i}") for i in range(5)]
    r = await bob.get(f"/rooms/{room_id}/event/{ids[2]}")
    assert r.status == 200 and r.json["content"]["body"] == "m2"
    ctx = (await bob.get(f"/rooms/{room_id}/context/{ids[2]}", params={"limit": "4"})).json
    assert ctx["event"]["event_id"] == ids[2]
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[1], ids[0]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[3], ids[4]]
    # Bob may not redact alice's message; alice may.
    r = await bob.put(f"/rooms/{room_id}/redact/{ids[0]}/r1", {})
    assert (r.status, r.json["errcode"]) == (403, "M_FORBIDDEN")
    r = await alice.put(f"/rooms/{room_id}/redact/{ids[0]}/r1", {"reason": "oops"})
    assert r.status == 200
    ev = (await bob.get(f"/rooms/{room_id}/event/{ids[0]}")).json
    assert ev["content"] == {}
    assert ev["unsigned"]["redacted_because"]["event_id"] == r.json["event_id"]
    r = await bob.get(f"/rooms/{room_id}/event/$nope")
    assert (r.status, r.json["errcode"]) == (404, "M_NOT_FOUND")


async def test_messages_pagination_both_directions(api):
    alice = await api.register()
    room_id = await alice.create_room()
    sent = [await alice.send_text(room_id, f"n{i}") for i in range(25)]
    seen: list[str] = []
    token = None
    for _ in range(20):
        params = {"dir": "b", "limit": "7", "filter": '{"types": ["m.room.message"]}'}
        if token:
            params["from"] = token
        page = (await alice.get(f"/rooms/{room_id}/messages", params=params)).json
        seen += [e["event_id"] for e in page["chunk"]]
        token = page.get("end")
        if token is None:
            break
    assert seen == list(reversed(sent))
    fwd = (await alice.get(f"/rooms/{room_id}/messages", params={
        "dir": "f", "limit": "100", "filter": '{"types": ["m.room.message"]}'})).json
    assert [e["event_id"] for e in fwd["chunk"]] == sent
    r = await alice.get(f"/rooms/{room_id}/messages", params={"dir": "x"})
    assert r.status == 400
    r = await alice.get(f"/rooms/{room_id}/messages", params={"from": "garbage"})
    assert (r.status, r.json["errcode"]) == (400, "M_INVALID_PARAM")


async def test_history_visibility_joined_hides_earlier_events(api):
    alice = await api.register()
    carol = await api.register()
    room_id = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}])
    secret = await alice.send_text(room_id, "before carol")
    await carol.join(room_id)
    after = await alice.send_text(room_id, "after carol")
    page = (await carol.get(f"/rooms/{room_id}/messages", params={"limit": "50"})).json
    ids = [e["event_id"] for e in page["chunk"]]
    assert after in ids and secret not in ids
    assert (await carol.get(f"/rooms/{room_id}/event/{secret}")).status == 404
    assert (await carol.get(f"/rooms/{room_id}/context/{secret}")).status == 404


async def _chain_of(server, room_id: str, event_ids: list[str]):
    """The stored events, in stream order, after checking every prev event they name is
    stored too (no event follows one that was never written)."""
    from homeserver.storage import events as event_store
    from tests.servers import in_db

    rows = await in_db(server, event_store.get_events, event_ids)
    assert set(rows) == set(event_ids)
    prevs = {p for r in rows.values() for p in r.pdu["prev_events"]}
    assert set(await in_db(server, event_store.get_events, prevs)) == prevs
    extremities = await in_db(server, event_store.get_extremities, room_id)
    return sorted(rows.values(), key=lambda r: r.stream_ordering), extremities


async def test_concurrent_messages_form_one_chain(server, api):
    """Messages sent at once to one room are queued while earlier ones commit: each follows
    the one before it (no forks), and stream order is DAG order."""
    import asyncio

    alice, bob, room_id = await api.two_in_a_public_room()
    results = await asyncio.gather(*(
        (alice if i % 2 else bob).put(f"/rooms/{room_id}/send/m.room.message/c{i}",
                                      {"msgtype": "m.text", "body": f"c{i}"})
        for i in range(40)))
    assert [r.status for r in results] == [200] * 40
    chain, extremities = await _chain_of(server, room_id, [r.json["event_id"] for r in results])
    for before, event in zip(chain, chain[1:]):
        assert event.pdu["prev_events"] == [before.event_id]
        assert event.depth == before.depth + 1
    assert extremities == [chain[-1].event_id]


async def test_messages_queued_behind_a_refused_write_are_built_again(server, api):
    """A retried txnId the server no longer remembers is refused by the database's unique key
    while other messages are queued behind it, built on it: those are built again on what
    was stored, and every send succeeds."""
    import asyncio

    alice, bob, room_id = await api.two_in_a_public_room()
    first = await alice.put(f"/rooms/{room_id}/send/m.room.message/old",
                            {"msgtype": "m.text", "body": "first"})
    server.hs.events._recent_txns.clear()  # as after a restart: only the unique key knows
    epoch = server.hs.events._room_epochs[room_id]
    retry = alice.put(f"/rooms/{room_id}/send/m.room.message/old",
                      {"msgtype": "m.text", "body": "a retry"})
    others = [bob.put(f"/rooms/{room_id}/send/m.room.message/n{i}",
                      {"msgtype": "m.text", "body": f"n{i}"}) for i in range(20)]
    results = await asyncio.gather(retry, *others)
    assert [r.status for r in results] == [200] * 21
    assert results[0].json["event_id"] == first.json["event_id"]
    assert server.hs.events._room_epochs[room_id] == epoch + 1  # the refused write's room
    ids = [r.json["event_id"] for r in results[1:]]
    chain, extremities = await _chain_of(server, room_id, ids)
    assert len(extremities) == 1
    msgs = (await alice.get(f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "50"})).json
    bodies = [e["content"]["body"] for e in msgs["chunk"] if e["type"] == "m.room.message"]
    assert sorted(bodies) == sorted(["first"] + [f"n{i}" for i in range(20)])


async def test_extremities_read_while_a_write_is_queued_include_it(server, api, monkeypatch):
    """The cached forward extremities lost while a message is queued (not committed): reading
    them again waits for the room's queued writes, so what the next event follows includes
    the message instead of forking from the database's older view."""
    import asyncio

    from homeserver.handlers import events as events_module

    alice, _, room_id = await api.two_in_a_public_room()
    handler = server.hs.events
    queued_one = asyncio.Event()
    real_queue = handler.writer.queue

    def queue(write):
        real_queue(write)
        queued_one.set()
        return write

    monkeypatch.setattr(handler.writer, "queue", queue)
    # Whether the queued write was done at each read of the extremities from the database.
    read_after_commit: list[bool] = []
    real_read = events_module.event_store.get_extremities

    async def get_extremities(rid):
        read_after_commit.append(handler._last_write.get(rid) is None
                                 or handler._last_write[rid].done.done())
        return await real_read(rid)

    monkeypatch.setattr(events_module.event_store, "get_extremities", get_extremities)
    token = server.hs.db.activate()
    try:
        async with handler.persist_lock:  # the writer cannot commit meanwhile
            send = asyncio.create_task(alice.put(f"/rooms/{room_id}/send/m.room.message/q",
                                                 {"msgtype": "m.text", "body": "queued"}))
            async with asyncio.timeout(10):
                await queued_one.wait()
            assert not handler._last_write[room_id].done.done()
            handler._extremities.pop(room_id)
            read = asyncio.create_task(handler.extremities(room_id))
        sent = await send
        assert sent.status == 200
        assert await read == [sent.json["event_id"]]
        assert read_after_commit and all(read_after_commit), read_after_commit
    finally:
        server.hs.db.deactivate(token)
