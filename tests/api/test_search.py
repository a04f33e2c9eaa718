"""POST /search over the blind index: whole-word AND matching, ordering, filters, pagination,
context, visibility, redaction, bad input, no plaintext in the index, `nexa reindex-search`,
and events arriving over federation."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import sys
from pathlib import Path

import yaml

from homeserver.storage import sql
from tests.client import Api, User
from tests.federation.conftest import FED
from tests.federation.helpers import Timeline
from tests.servers import start_server


def word() -> str:
    """A word no other test sends (the module shares one server)."""
    return f"w{secrets.token_hex(5)}"


async def search(user: User, term: str, next_batch: str | None = None, **criteria):
    params = {"next_batch": next_batch} if next_batch else None
    return await user.post("/search", {"search_categories": {"room_events": {
        "search_term": term, **criteria}}}, params=params)


async def found(user: User, term: str, **criteria) -> list[str]:
    r = await search(user, term, **criteria)
    assert r.status == 200, r
    return [x["result"]["event_id"] for x in r.json["search_categories"]["room_events"]["results"]]


async def send(user: User, room_id: str, body: str) -> str:
    return await user.send_text(room_id, body)


async def raw_rows(srv, query: str, values=()) -> list[dict]:
    token = srv.hs.db.activate()
    try:
        return await sql.fetch(query, values)
    finally:
        srv.hs.db.deactivate(token)


async def test_whole_words_all_of_them_any_case(api):
    alice = await api.register()
    room_id = await alice.create_room()
    a, b = word(), word()
    one = await send(alice, room_id, f"The quick brown {a}.")
    both = await send(alice, room_id, f"{b.upper()} met {a} yesterday")
    await send(alice, room_id, f"{a}s and {a}x are other words, as is pre{a}")
    await send(alice, room_id, f"only {b}")
    assert await found(alice, a, order_by="recent") == [both, one]
    assert await found(alice, f"{b} {a.upper()}!") == [both]
    assert await found(alice, f"{a} nosuchword") == []
    assert await found(alice, a[:-2]) == []  # a part of a word is not a word
    r = await search(alice, f"{a}, {b}")
    res = r.json["search_categories"]["room_events"]
    assert res["highlights"] == [a, b] and res["count"] == 1 and "next_batch" not in res
    ev = res["results"][0]["result"]
    assert (ev["room_id"], ev["sender"], ev["type"]) == (room_id, alice.user_id, "m.room.message")
    assert ev["content"]["body"] == f"{b.upper()} met {a} yesterday"
    assert res["results"][0]["rank"] > 0
    # A term without any word (emoji, one letter) finds nothing rather than everything.
    r = await search(alice, "🙂 a")
    assert r.status == 200 and r.json["search_categories"]["room_events"]["results"] == []


async def test_recent_and_rank_order(api):
    alice = await api.register()
    room_id = await alice.create_room()
    w = word()
    long = await send(alice, room_id, f"{w} one two three four five")
    short = await send(alice, room_id, f"{w} alpha")
    mid = await send(alice, room_id, f"{w} beta gamma delta")
    assert await found(alice, w, order_by="recent") == [mid, short, long]
    assert await found(alice, w, order_by="rank") == [short, mid, long]
    assert await found(alice, w) == [short, mid, long]  # the spec's default is rank
    r = await search(alice, w, order_by="rank")
    ranks = [x["rank"] for x in r.json["search_categories"]["room_events"]["results"]]
    assert ranks == sorted(ranks, reverse=True) and ranks[0] > ranks[-1]


async def test_filters_keys_names_and_topics(api):
    alice, bob, room_a = await api.two_in_a_public_room()
    room_b = await alice.create_room()
    w = word()
    by_alice = await send(alice, room_a, f"{w} from alice")
    by_bob = await send(bob, room_a, f"{w} from bob")
    in_b = await send(alice, room_b, f"{w} in b")
    r = await alice.put(f"/rooms/{room_b}/state/m.room.name", {"name": f"Room {w}"})
    name_ev = r.json["event_id"]
    r = await alice.put(f"/rooms/{room_b}/state/m.room.topic", {"topic": f"About {w} things"})
    topic_ev = r.json["event_id"]
    every = {by_alice, by_bob, in_b, name_ev, topic_ev}
    assert set(await found(alice, w)) == every
    assert set(await found(alice, w, filter={"rooms": [room_a]})) == {by_alice, by_bob}
    assert set(await found(alice, w, filter={"not_rooms": [room_a]})) == {in_b, name_ev, topic_ev}
    assert await found(alice, w, filter={"senders": [bob.user_id]}) == [by_bob]
    # Lists longer than the databases take parameters still work.
    many = [f"@u{i}:example.org" for i in range(5000)]
    assert await found(alice, w, filter={"senders": [*many, bob.user_id],
                                         "not_senders": many, "rooms": [room_a],
                                         "not_rooms": [f"!r{i}:x" for i in range(9000)]}
                       ) == [by_bob]
    assert set(await found(alice, w, filter={"not_senders": [bob.user_id]})) == every - {by_bob}
    assert await found(alice, w, filter={"types": ["m.room.name"]}) == [name_ev]
    assert set(await found(alice, w, filter={"not_types": ["m.room.message"]})) == {
        name_ev, topic_ev}
    assert await found(alice, w, keys=["content.name"]) == [name_ev]
    assert await found(alice, w, keys=["content.topic"]) == [topic_ev]
    assert set(await found(alice, w, keys=["content.body"])) == {by_alice, by_bob, in_b}
    assert await found(alice, w, keys=[]) == []
    assert await found(alice, w, keys=["content.name"], filter={"types": ["m.room.topic"]}) == []
    # Bob is not in room B.
    assert set(await found(bob, w)) == {by_alice, by_bob}
    r = await search(alice, w, groupings={"group_by": [{"key": "room_id"}]}, include_state=True)
    res = r.json["search_categories"]["room_events"]
    assert set(res["groups"]["room_id"]) == {room_a, room_b}
    assert set(res["groups"]["room_id"][room_a]["results"]) == {by_alice, by_bob}
    names = [e["content"].get("name") for e in res["state"][room_b] if e["type"] == "m.room.name"]
    assert names == [f"Room {w}"]


async def test_next_batch_returns_every_result_once(api):
    alice = await api.register()
    room_id = await alice.create_room()
    w = word()
    sent = [await send(alice, room_id, f"{w} " + " ".join(["pad"] * (i % 3) + [f"n{i}"]))
            for i in range(7)]
    for order in ("recent", "rank"):
        seen, batch, pages = [], None, []
        while True:
            r = await search(alice, w, batch, order_by=order, filter={"limit": 3})
            assert r.status == 200, r
            res = r.json["search_categories"]["room_events"]
            assert res["count"] == 7
            pages.append(len(res["results"]))
            seen += [x["result"]["event_id"] for x in res["results"]]
            batch = res.get("next_batch")
            if batch is None:
                break
        assert pages == [3, 3, 1], order
        assert sorted(seen) == sorted(sent) and len(seen) == len(set(seen)), order
        if order == "recent":
            assert seen == sent[::-1]
    # A token of one order is refused by the other.
    r = await search(alice, w, order_by="recent", filter={"limit": 3})
    token = r.json["search_categories"]["room_events"]["next_batch"]
    r = await search(alice, w, token, order_by="rank")
    assert (r.status, r.json["errcode"]) == (400, "M_INVALID_PARAM")


async def test_event_context_with_historic_profile(api):
    alice = await api.register()
    room_id = await alice.create_room()
    r = await alice.put(f"/profile/{alice.user_id}/displayname", {"displayname": "Alice Then"})
    assert r.status == 200, r
    w = word()
    ids = [await send(alice, room_id, f"m{i}" + (f" {w}" if i == 2 else "")) for i in range(5)]
    r = await alice.put(f"/profile/{alice.user_id}/displayname", {"displayname": "Alice Now"})
    assert r.status == 200, r
    r = await search(alice, w, event_context={"before_limit": 2, "after_limit": 1,
                                              "include_profile": True})
    [result] = r.json["search_categories"]["room_events"]["results"]
    assert result["result"]["event_id"] == ids[2]
    ctx = result["context"]
    assert [e["event_id"] for e in ctx["events_before"]] == [ids[1], ids[0]]
    assert [e["event_id"] for e in ctx["events_after"]] == [ids[3]]
    assert isinstance(ctx["start"], str) and isinstance(ctx["end"], str)
    assert ctx["profile_info"][alice.user_id]["displayname"] == "Alice Then"
    # The tokens page on from the context with /messages.
    r = await alice.get(f"/rooms/{room_id}/messages", params={"from": ctx["end"], "dir": "f"})
    assert r.status == 200 and r.json["chunk"][0]["event_id"] == ids[4]
    r = await search(alice, w)  # no event_context: no context
    assert "context" not in r.json["search_categories"]["room_events"]["results"][0]


async def test_only_rooms_the_user_may_read(api):
    alice, bob, room_id = await api.two_in_a_public_room()
    eve = await api.register()
    w = word()
    while_joined = await send(alice, room_id, f"{w} while bob is here")
    assert await found(bob, w) == [while_joined]
    assert await found(eve, w) == []  # never joined this (public) room
    assert (await bob.post(f"/rooms/{room_id}/leave")).status == 200
    await send(alice, room_id, f"{w} after bob left")
    assert await found(bob, w) == [while_joined]
    # With world-readable history, what came after leaving is readable too.
    r = await alice.put(f"/rooms/{room_id}/state/m.room.history_visibility",
                        {"history_visibility": "world_readable"})
    assert r.status == 200
    later = await send(alice, room_id, f"{w} world readable now")
    assert later in await found(bob, w)
    # A forgotten room is not searched at all.
    assert (await bob.post(f"/rooms/{room_id}/forget")).status == 200
    assert await found(bob, w) == []


async def test_history_from_before_joining_stays_hidden_where_the_room_says_so(api):
    alice, bob = await api.register(), await api.register()
    room_id = await alice.create_room(preset="public_chat", initial_state=[
        {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}])
    w = word()
    await send(alice, room_id, f"{w} before bob")
    await bob.join(room_id)
    after = await send(alice, room_id, f"{w} with bob")
    assert len(await found(alice, w)) == 2
    assert await found(bob, w) == [after]
    # Nor does the count tell bob that something matched before he joined, or carol, only
    # invited, that something matched at all.
    r = await search(bob, w)
    assert r.json["search_categories"]["room_events"]["count"] == 1
    carol = await api.register()
    assert (await alice.post(f"/rooms/{room_id}/invite", {"user_id": carol.user_id})).status == 200
    await send(alice, room_id, f"{w} carol is invited")
    r = await search(carol, w)
    assert r.json["search_categories"]["room_events"] == {
        "count": 0, "highlights": [w], "results": []}


async def test_redacted_messages_vanish(api, server):
    alice = await api.register()
    room_id = await alice.create_room()
    w = word()
    keep = await send(alice, room_id, f"{w} keep")
    gone = await send(alice, room_id, f"{w} remove me")
    assert set(await found(alice, w)) == {keep, gone}
    assert (await alice.put(f"/rooms/{room_id}/redact/{gone}/r1", {})).status == 200
    assert await found(alice, w) == [keep]
    assert await raw_rows(server, "SELECT id FROM search_index WHERE event_id = ?", [gone]) == []


async def test_bad_requests(api):
    alice = await api.register()
    room_id = await alice.create_room()
    await send(alice, room_id, "something to find")

    async def post(body, params=None):
        return await alice.post("/search", body, params=params)

    def cat(**fields):
        return {"search_categories": {"room_events": {"search_term": "find", **fields}}}

    cases = [
        ({}, "M_MISSING_PARAM"),
        ({"search_categories": []}, "M_BAD_JSON"),
        ({"search_categories": {"room_events": {}}}, "M_MISSING_PARAM"),
        ({"search_categories": {"room_events": "x"}}, "M_BAD_JSON"),
        ({"search_categories": {"room_events": {"search_term": 5}}}, "M_BAD_JSON"),
        (cat(keys="content.body"), "M_BAD_JSON"),
        (cat(keys=["content.foo"]), "M_BAD_JSON"),
        (cat(keys=[{"a": 1}]), "M_BAD_JSON"),
        (cat(order_by=["rank"]), "M_BAD_JSON"),
        (cat(groupings={"group_by": [{"key": {"a": 1}}]}), "M_BAD_JSON"),
        (cat(groupings=[]), "M_BAD_JSON"),
        (cat(order_by="newest"), "M_BAD_JSON"),
        (cat(filter={"limit": -1}), "M_BAD_JSON"),
        (cat(filter={"rooms": "!a:b"}), "M_BAD_JSON"),
        (cat(filter={"senders": ["not a user"]}), "M_BAD_JSON"),
        (cat(filter=[]), "M_BAD_JSON"),
        (cat(filter={"rooms": ["!a\x00b:hs"]}), "M_BAD_JSON"),
        (cat(filter={"not_rooms": ["!a\x00b:hs"]}), "M_BAD_JSON"),
        (cat(event_context={"before_limit": "5"}), "M_BAD_JSON"),
        (cat(event_context={"after_limit": -1}), "M_BAD_JSON"),
        (cat(event_context={"include_profile": "yes"}), "M_BAD_JSON"),
        (cat(event_context=3), "M_BAD_JSON"),
        (cat(include_state="true"), "M_BAD_JSON"),
        (cat(groupings={"group_by": [{"key": "type"}]}), "M_BAD_JSON"),
    ]
    for body, errcode in cases:
        r = await post(body)
        assert (r.status, r.json.get("errcode")) == (400, errcode), (body, r)
    for token in ("garbage", "r", "k5", "r12x", "k1.2.3", "r" + "9" * 30, "r" + "9" * 19,
                  "r-" + "9" * 19, "k1.5"):
        r = await post(cat(order_by="recent"), {"next_batch": token})
        assert (r.status, r.json["errcode"]) == (400, "M_INVALID_PARAM"), (token, r)
    for token in ("k99999.5", "k1." + "9" * 19, "r5", "k1"):
        r = await post(cat(order_by="rank"), {"next_batch": token})
        assert (r.status, r.json["errcode"]) == (400, "M_INVALID_PARAM"), (token, r)
    for order, token in (("recent", "r-5"), ("rank", "k32767.-9223372036854775807")):
        r = await post(cat(order_by=order), {"next_batch": token})
        assert r.status == 200, (token, r)
    r = await alice.api.request("POST", "/search", raw=b"not json", token=alice.token)
    assert (r.status, r.json["errcode"]) == (400, "M_NOT_JSON")
    r = await alice.api.request("POST", "/search", cat())
    assert (r.status, r.json["errcode"]) == (401, "M_MISSING_TOKEN")
    r = await post({"search_categories": {}})
    assert r.status == 200 and r.json == {"search_categories": {}}
    r = await post(cat(filter={"limit": 0}, event_context={"before_limit": 10**6}))
    assert r.status == 200 and len(r.json["search_categories"]["room_events"]["results"]) == 1


async def test_index_holds_no_plaintext_and_key_is_private(api, server):
    alice = await api.register()
    room_id = await alice.create_room()
    w, other = word(), word()
    ev = await send(alice, room_id, f"{w} {other} {w}")
    rows = await raw_rows(server, "SELECT * FROM search_index WHERE event_id = ?", [ev])
    assert len(rows) == 2 and {r["tokens"] for r in rows} == {2}
    dump = repr(await raw_rows(server, "SELECT * FROM search_index"))
    assert w not in dump and other not in dump and w.upper() not in dump
    key_file = server.data_dir / "search_index.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes() not in dump.encode()


async def nexa(*args: str) -> tuple[int, str]:
    """The `nexa` command in its own process, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEXA_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "homeserver", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    return proc.returncode, out.decode()


async def test_reindex_rebuilds_a_wiped_index_and_after_a_lost_key(backend, tmp_path, caplog):
    srv = await start_server(tmp_path, backend)
    try:
        async with Api(srv) as api:
            alice = await api.register()
            room_id = await alice.create_room()
            w = word()
            ids = [await send(alice, room_id, f"{w} number{i}") for i in range(5)]
            redacted = await send(alice, room_id, f"{w} redacted")
            assert (await alice.put(f"/rooms/{room_id}/redact/{redacted}/r", {})).status == 200
            r = await alice.put(f"/rooms/{room_id}/state/m.room.topic", {"topic": f"{w} topic"})
            topic = r.json["event_id"]
            expected = sorted([*ids, topic])
            assert sorted(await found(alice, w)) == expected
            config = tmp_path / "nexa.yaml"
            config.write_text(yaml.safe_dump(srv.config_data))

            await raw_rows(srv, "DELETE FROM search_index")
            assert await found(alice, w) == []
            # Start-up does not rebuild it (that could take long), it says what to run.
            await srv.stop()
            with caplog.at_level(logging.WARNING, logger="homeserver.handlers.search"):
                await srv.start()
            assert "run `nexa reindex-search`" in caplog.text
            assert await found(alice, w) == []
            code, out = await nexa("reindex-search", "-c", str(config), "--batch-size", "2")
            assert code == 0, out
            assert "search index rebuilt: 6 events" in out, out
            assert sorted(await found(alice, w)) == expected  # the server kept running
            assert sorted(await found(alice, f"{w} number3")) == [ids[3]]

            # The key is lost: a restart makes a new one, and the old rows no longer match.
            await srv.stop()
            (srv.data_dir / "search_index.key").unlink()
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="homeserver.handlers.search"):
                await srv.start()
            assert "built under a key that is gone" in caplog.text
            assert await found(alice, w) == []
            fresh = await send(alice, room_id, f"{w} after the new key")
            assert await found(alice, w) == [fresh]
            code, out = await nexa("reindex-search", "-c", str(config))
            assert code == 0, out
            assert sorted(await found(alice, w)) == sorted([*expected, fresh])
            assert stat.S_IMODE((srv.data_dir / "search_index.key").stat().st_mode) == 0o600
            code, out = await nexa("check-config", "-c", str(config))
            assert code == 0 and "search index key file" in out, out
            assert "readable by other users" not in out
            key_file = srv.data_dir / "search_index.key"
            key_file.chmod(0o644)
            code, out = await nexa("check-config", "-c", str(config))
            assert code == 0 and f"warning: {key_file} (the search index key) is readable" in out
            code, out = await nexa("reindex-search", "-c", str(config), "--batch-size", "0")
            assert code == 2 and "--batch-size" in out, out
    finally:
        await srv.destroy()


async def test_events_from_another_server_are_indexed(backend, tmp_path):
    s1 = await start_server(tmp_path, backend, federation=FED)
    s2 = await start_server(tmp_path, backend, federation=FED)
    try:
        async with Api(s1) as api1, Api(s2) as api2:
            alice, bob = await api1.register(), await api2.register()
            room_id = await alice.create_room(preset="public_chat")
            r = await bob.post(f"/join/{room_id}", params={"server_name": s1.server_name})
            assert r.status == 200, r
            w = word()
            ev = await send(alice, room_id, f"hello {w} from afar")
            timeline = Timeline(bob)
            await timeline.wait_for(lambda t: f"hello {w} from afar" in t.bodies(room_id),
                                    "alice's message")
            assert await found(bob, w) == [ev]
    finally:
        await s1.destroy()
        await s2.destroy()

