"""Events pushed to application services: who gets what, retries with the same transaction ID,
nothing lost across a homeserver restart, and a dead service never slowing clients down."""

from __future__ import annotations

import asyncio
import time

from tests.client import Api
from tests.servers import free_port

AS_TOKEN = "as_token_for_delivery_tests"


def reg(fake, **kw):
    base = dict(id="bridge", url=fake.url, as_token=AS_TOKEN, hs_token=fake.hs_token,
                sender="bridgebot", users=[("@br_.*", True)], aliases=[("#bridged_.*", False)])
    base.update(kw)
    return base


async def as_user(api: Api, srv, local: str) -> str:
    r = await api.request("POST", "/register", {
        "type": "m.login.application_service", "username": local, "inhibit_login": True},
        token=AS_TOKEN)
    assert r.status == 200, r
    return f"@{local}:{srv.server_name}"


async def as_join(api: Api, room: str, user_id: str) -> None:
    r = await api.request("POST", f"/join/{room}", {}, token=AS_TOKEN,
                          params={"user_id": user_id})
    assert r.status == 200, r


def bodies(events: list[dict]) -> list[str]:
    return [e["content"].get("body") for e in events if e["type"] == "m.room.message"]


async def test_who_receives_what(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    async with Api(srv) as api:
        alice = await as_user(api, srv, "br_alice")
        human = await api.register()
        other = await api.register()
        # A room no service cares about.
        private = await human.create_room()
        await human.send_text(private, "nobody bridges this")
        # A room with one of the service's users joined: everything in it.
        bridged = await human.create_room(preset="public_chat")
        await as_join(api, bridged, alice)
        await human.send_text(bridged, "m1")
        await other.join(bridged)
        await other.send_text(bridged, "m2")
        # An invite to one of its users (target), in a room where none is joined.
        lonely = await human.create_room()
        r = await human.post(f"/rooms/{lonely}/invite", {"user_id": f"@br_bob:{srv.server_name}"})
        assert r.status == 404  # br_bob does not exist (and the service does not create it)
        await as_user(api, srv, "br_bob")
        r = await human.post(f"/rooms/{lonely}/invite", {"user_id": f"@br_bob:{srv.server_name}"})
        assert r.status == 200, r
        # A room with an alias in its (non-exclusive) alias namespace.
        aliased = await other.create_room(room_alias_name="bridged_lobby")
        await other.send_text(aliased, "via alias")
        await human.send_text(bridged, "m3")

        await fake_as.wait_for(lambda: "m3" in bodies(fake_as.events()))
        await fake_as.wait_for(lambda: "via alias" in bodies(fake_as.events()))
        events = fake_as.events()
        got = bodies(events)
        assert "nobody bridges this" not in got
        assert got.index("m1") < got.index("m2") < got.index("m3")
        invite = [e for e in events if e["type"] == "m.room.member"
                  and e["state_key"] == f"@br_bob:{srv.server_name}"]
        assert invite and invite[0]["content"]["membership"] == "invite"
        assert invite[0]["room_id"] == lonely
        assert not [e for e in events if e["room_id"] == private]
        # Client-Server format, with the room ID.
        m1 = next(e for e in events if e.get("content", {}).get("body") == "m1")
        assert set(m1) >= {"event_id", "room_id", "sender", "origin_server_ts", "type", "content"}
        assert m1["sender"] == human.user_id and m1["room_id"] == bridged
        # The service's own events come back too (bridges filter their echoes).
        r = await api.request("PUT", f"/rooms/{bridged}/send/m.room.message/echo1",
                              {"msgtype": "m.text", "body": "from alice"}, token=AS_TOKEN,
                              params={"user_id": alice})
        await fake_as.wait_for(lambda: "from alice" in bodies(fake_as.events()))
        # No transaction ID was ever used twice for different content.
        seen: dict[str, list] = {}
        for txn_id, evs in fake_as.attempts:
            assert seen.setdefault(txn_id, evs) == evs
        assert fake_as.bad_auth == 0


async def test_retried_with_the_same_txn_id_until_accepted(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    async with Api(srv) as api:
        alice = await as_user(api, srv, "br_alice")
        human = await api.register()
        room = await human.create_room(preset="public_chat")
        await as_join(api, room, alice)
        await fake_as.wait_for(lambda: fake_as.accepted)
        fake_as.fail_next = 3
        started = len(fake_as.attempts)
        await human.send_text(room, "persistent")
        await fake_as.wait_for(lambda: "persistent" in bodies(fake_as.events()))
        tries = fake_as.attempts[started:]
        assert len(tries) == 4, tries
        assert len({t for t, _ in tries}) == 1  # one transaction ID, four attempts
        assert all(evs == tries[0][1] for _, evs in tries)  # the same content each time
        txn_id = tries[0][0]
        assert txn_id not in {t for t, _ in fake_as.attempts[:started]}
        # The next event goes in a new transaction.
        await human.send_text(room, "next")
        await fake_as.wait_for(lambda: "next" in bodies(fake_as.events()))
        last = fake_as.attempts[-1][0]
        assert last != txn_id
        assert bodies(fake_as.events()).count("persistent") == 1
        assert srv.hs.appservices.sender.status("bridge")["backoff_ms"] == 0


async def test_nothing_lost_across_a_homeserver_restart(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    async with Api(srv) as api:
        alice = await as_user(api, srv, "br_alice")
        human = await api.register()
        room = await human.create_room(preset="public_chat")
        await as_join(api, room, alice)
        await fake_as.wait_for(lambda: fake_as.accepted)
        # The service fails everything: a transaction is formed, tried, and left unacknowledged.
        fake_as.fail_next = 10**6
        tried_before = len(fake_as.attempts)
        await human.send_text(room, "before-1")
        await fake_as.wait_for(lambda: len(fake_as.attempts) > tried_before)
        in_flight = fake_as.attempts[-1][0]
        await human.send_text(room, "before-2")
        await human.send_text(room, "before-3")
    await srv.stop()
    # While the homeserver is down, the service comes back.
    fake_as.fail_next = 0
    await srv.start()
    async with Api(srv) as api:
        await fake_as.wait_for(lambda: "before-3" in bodies(fake_as.events()))
        r = await api.request("PUT", f"/rooms/{room}/send/m.room.message/after",
                              {"msgtype": "m.text", "body": "after"}, token=human.token)
        assert r.status == 200
        await fake_as.wait_for(lambda: "after" in bodies(fake_as.events()))
    got = bodies(fake_as.events())
    assert [b for b in got if b.startswith(("before", "after"))] == \
        ["before-1", "before-2", "before-3", "after"]
    # The transaction in flight at the restart was resent under its ID, with its content.
    assert in_flight in fake_as.accepted
    assert bodies(fake_as.accepted[in_flight]) == ["before-1"]
    seen: dict[str, list] = {}
    for txn_id, evs in fake_as.attempts:
        assert seen.setdefault(txn_id, evs) == evs


async def test_events_queued_while_the_service_is_down_arrive_later(hs_with, fake_as):
    srv = await hs_with(reg(fake_as))
    async with Api(srv) as api:
        alice = await as_user(api, srv, "br_alice")
        human = await api.register()
        room = await human.create_room(preset="public_chat")
        await as_join(api, room, alice)
        await fake_as.wait_for(lambda: fake_as.accepted)
        # The restart comes after a failed attempt: a transaction is pending and backed off.
        failed = asyncio.Event()
        srv.hs.appservices.sender.listeners.append(
            lambda key, _txn, what: failed.set() if (key, what) == ("bridge", "retry") else None)
        await fake_as.stop()  # connection refused from now on
        for i in range(30):
            await human.send_text(room, f"q{i}")
        await asyncio.wait_for(failed.wait(), 10)
        assert srv.hs.appservices.sender.status("bridge")["backoff_ms"] > 0
        await srv.stop()
        await srv.start()
        await fake_as.start()
        await fake_as.wait_for(lambda: "q29" in bodies(fake_as.events()), timeout=20)
    got = [b for b in bodies(fake_as.events()) if b.startswith("q")]
    assert got == [f"q{i}" for i in range(30)]
    # Batched: fewer transactions than events.
    txns = [t for t, evs in fake_as.accepted.items() if any(
        e.get("content", {}).get("body", "").startswith("q") for e in evs)]
    assert len(txns) < 30


async def test_a_hanging_service_never_slows_clients(hs_with, tmp_path):
    # A service that accepts connections and never answers.
    port = free_port()
    hanging: list[asyncio.StreamWriter] = []

    async def swallow(reader, writer):
        hanging.append(writer)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(swallow, "127.0.0.1", port)
    try:
        srv = await hs_with(dict(id="bridge", url=f"http://127.0.0.1:{port}", as_token=AS_TOKEN,
                                 hs_token="hs_hanging", sender="bridgebot",
                                 users=[("@br_.*", True)]),
                            appservice_sender={"request_timeout_s": 60, "query_timeout_s": 1})
        async with Api(srv) as api:
            alice = await as_user(api, srv, "br_alice")
            human = await api.register()
            room = await human.create_room(preset="public_chat")
            await as_join(api, room, alice)
            started = time.monotonic()
            for i in range(20):
                await human.send_text(room, f"fast {i}")
            sync = await human.sync()
            elapsed = time.monotonic() - started
            assert elapsed < 5, elapsed
            assert room in sync["rooms"]["join"]
            # A lookup that needs the service waits at most query_timeout_s.
            started = time.monotonic()
            r = await api.request("GET", f"/profile/@br_unknown:{srv.server_name}")
            assert r.status == 404
            assert time.monotonic() - started < 3
            assert hanging  # the homeserver did try to deliver
    finally:
        server.close()
        for w in hanging:
            w.close()


async def test_a_service_rejecting_the_hs_token_gets_nothing_until_fixed(hs_with, fake_as):
    good = fake_as.hs_token
    srv = await hs_with(reg(fake_as))
    fake_as.hs_token = "the-service-expects-another-token"
    async with Api(srv) as api:
        alice = await as_user(api, srv, "br_alice")
        human = await api.register()
        room = await human.create_room(preset="public_chat")
        await as_join(api, room, alice)
        await human.send_text(room, "guarded")
        await fake_as.wait_for(lambda: fake_as.bad_auth >= 2)
        assert fake_as.accepted == {}
        fake_as.hs_token = good
        await fake_as.wait_for(lambda: "guarded" in bodies(fake_as.events()))


async def test_registration_errors_name_the_file(tmp_path, backend):
    import pytest

    from homeserver.config import ConfigError
    from tests.bridges.fake_as import write_registration
    from tests.servers import start_server

    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    write_registration(a, id="one", url=None, as_token="tok1", hs_token="tok2")
    write_registration(b, id="two", url=None, as_token="tok1", hs_token="tok3", sender="other")
    with pytest.raises(ConfigError, match=r"b\.yaml: as_token is already used by .*a\.yaml"):
        await start_server(tmp_path, backend, appservices=[str(a), str(b)])
    write_registration(b, id="two", url=None, as_token="tok4", hs_token="tok5", sender="other",
                       users=[("@broken_(", True)])
    with pytest.raises(ConfigError, match=r"b\.yaml is invalid:\n  namespaces\.users\.0\.regex"):
        await start_server(tmp_path, backend, appservices=[str(a), str(b)])
