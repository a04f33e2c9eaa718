"""The outbound federation queue against a real receiving HTTP server.

A small aiohttp server on a loopback port plays the remote homeserver: it records every
PUT /_matrix/federation/v1/send/{txnId} and can be told to fail (500, 429, 400) or be stopped.
The Nexa server under test talks to it with `federation.plain_http`. Waits are bounded and
event driven: the fake and the sender's listeners set asyncio Events; nothing sleeps to sync.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Callable

import orjson
import pytest
from aiohttp import web

import tests.servers as servers
from homeserver.config import FederationConfig
from homeserver.handlers import delivery_queue
from homeserver.handlers.federation.edus import FederationEduHandler
from homeserver.handlers.federation.sender import FederationSender
from homeserver.handlers.federation.transport import FederationClient
from homeserver.storage import events as event_store
from homeserver.storage import federation_queue as queue
from homeserver.storage import sql
from homeserver.storage import userdata
from homeserver.types import now_ms
from tests.client import Api
from tests.servers import in_db

FAST_RETRY = {"retry_base_ms": 20, "retry_max_ms": 100}
WAIT = 20.0  # seconds: upper bound of every wait in this module


# --- wiring (until the lead wires the sender into HomeServer) --------------------------------

def _wired(create_app):
    def wrapper(config, hs=None):
        app = create_app(config, hs)
        server = app.hs
        if not hasattr(server, "federation_client"):
            server.federation_client = FederationClient(server)

            @app.after_serving
            async def _close_client() -> None:
                await server.federation_client.close()
        if not hasattr(server, "federation_sender"):
            server.federation_sender = FederationSender(server)
            server.events.on_outbox = server.federation_sender.wake

            @app.before_serving
            async def _start_sender() -> None:  # runs after hs.start(): the database is open
                server.federation_sender.start()

            async def _stop_sender() -> None:  # before hs.stop() closes the database
                await server.federation_sender.stop()

            app.after_serving_funcs.insert(0, _stop_sender)
        if not hasattr(server, "federation_edus"):
            server.federation_edus = FederationEduHandler(server)
        # Small retry delays (the config fields may not exist yet).
        for k, v in FAST_RETRY.items():
            setattr(server.federation_sender, k, v)
        return app

    return wrapper


@pytest.fixture(scope="module")
async def srv(backend, tmp_path_factory):
    fed: dict[str, Any] = {"plain_http": True}
    fed.update({k: v for k, v in FAST_RETRY.items() if k in FederationConfig.model_fields})
    with pytest.MonkeyPatch.context() as mp:
        # Kept for the whole module: restarts build a new app through create_app too.
        mp.setattr(servers, "create_app", _wired(servers.create_app))
        s = await servers.start_server(tmp_path_factory.mktemp("fedsend"), backend,
                                       federation=fed)
        yield s
        await s.destroy()


@pytest.fixture
async def api(srv):
    async with Api(srv) as a:
        yield a


# --- the fake remote server ----------------------------------------------------------------

async def until(event: asyncio.Event, pred: Callable[[], bool], what: str) -> None:
    """Wait (bounded) until pred() holds; `event` is set whenever something may have changed."""
    try:
        async with asyncio.timeout(WAIT):
            while not pred():
                event.clear()
                await event.wait()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class FakeRemote(servers.LoopbackApp):
    def __init__(self) -> None:
        self.port = servers.free_port()
        self.name = f"127.0.0.1:{self.port}"
        self.received: list[dict[str, Any]] = []  # {"txn_id", "body", "status"}
        self.fail: list[int] = []  # statuses to answer with, one per request, before 200s
        self.pdu_errors: dict[str, str] = {}
        self.changed = asyncio.Event()

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.json()
        status = self.fail.pop(0) if self.fail else 200
        self.received.append({"txn_id": request.match_info["txn_id"], "body": body,
                              "status": status,
                              "auth": request.headers.get("Authorization", "")})
        self.changed.set()
        if status != 200:
            return web.json_response({"errcode": "M_UNKNOWN", "error": "told to fail"},
                                     status=status)
        return web.json_response({"pdus": {eid: {"error": err}
                                           for eid, err in self.pdu_errors.items()}})

    def routes(self, app: web.Application) -> None:
        app.router.add_put("/_matrix/federation/v1/send/{txn_id}", self._send)

    def accepted(self) -> list[dict[str, Any]]:
        return [r for r in self.received if r["status"] == 200]

    async def wait_received(self, n: int) -> None:
        await until(self.changed, lambda: len(self.received) >= n, f"{n} transaction(s)")


class Outcomes:
    """Listener for the sender: (destination, txn_id, outcome) per attempt."""

    def __init__(self, destination: str) -> None:
        self.destination = destination
        self.items: list[tuple[str, str]] = []
        self.changed = asyncio.Event()

    def __call__(self, destination: str, txn_id: str, outcome: str) -> None:
        if destination == self.destination:
            self.items.append((txn_id, outcome))
            self.changed.set()

    def count(self, outcome: str) -> int:
        return sum(1 for _, o in self.items if o == outcome)

    async def wait(self, outcome: str, n: int = 1) -> None:
        await until(self.changed, lambda: self.count(outcome) >= n, f"{n} {outcome!r}")


@pytest.fixture
async def fake():
    f = FakeRemote()
    await f.start()
    yield f
    await f.stop()


def listen(srv, destination: str) -> Outcomes:
    o = Outcomes(destination)
    srv.hs.federation_sender.listeners.append(o)
    return o


# --- helpers -------------------------------------------------------------------------------

async def queue_pdus(srv, destination: str, event_ids: list[str], wake: bool = True) -> None:
    """Outbox rows as the event pipeline writes them, for events that exist."""
    ts = now_ms()
    await in_db(srv, sql.execute_many,
                "INSERT INTO federation_outbox (destination, event_id, created_ts) "
                "VALUES (?,?,?)", [(destination, e, ts) for e in event_ids])
    if wake:
        srv.hs.federation_sender.wake([destination])


async def outbox_rows(srv, destination: str) -> list[dict[str, Any]]:
    return await in_db(srv, sql.fetch,
                       "SELECT id, event_id, edu_json, txn_id FROM federation_outbox "
                       "WHERE destination = ? ORDER BY id", [destination])


def bodies(txn: dict) -> list[str | None]:
    return [(p.get("content") or {}).get("body") for p in txn["body"]["pdus"]]


async def room_with_messages(api, n: int, prefix: str) -> tuple[Any, str, list[str]]:
    alice = await api.register()
    room_id = await alice.create_room(name="fed")
    ids = [await alice.send_text(room_id, f"{prefix} {i}") for i in range(n)]
    return alice, room_id, ids


# --- tests ---------------------------------------------------------------------------------

async def test_batches_of_50_in_commit_order_then_rows_deleted(srv, api, fake):
    outcomes = listen(srv, fake.name)
    alice, room_id, ids = await room_with_messages(api, 55, "batch")
    # A state event that replaces another carries local-only unsigned keys; they must not leave.
    r = await alice.put(f"/rooms/{room_id}/state/m.room.name", {"name": "renamed"})
    assert r.status == 200, r
    name_event = r.json["event_id"]
    await queue_pdus(srv, fake.name, [name_event, *ids], wake=False)
    # All rows first, then one wake-up: queue_edu wakes the sender each time, and it could then
    # send before the last EDU is queued (seen once in CI).
    await in_db(srv, queue.queue_edus, [
        (fake.name, orjson.dumps({"edu_type": "org.nexa.test", "content": {"n": i}}).decode())
        for i in range(3)])
    srv.hs.federation_sender.wake([fake.name])

    await outcomes.wait("sent", 2)
    assert len(fake.received) == 2
    first, second = fake.received
    assert first["txn_id"] != second["txn_id"]
    assert first["auth"].startswith("X-Matrix ")
    assert len(first["body"]["pdus"]) == 50 and len(second["body"]["pdus"]) == 6
    assert first["body"]["origin"] == srv.server_name
    assert isinstance(first["body"]["origin_server_ts"], int)
    # Commit (outbox id) order across both transactions.
    assert bodies(first) + bodies(second) == [None] + [f"batch {i}" for i in range(55)]
    assert first["body"]["pdus"][0]["type"] == "m.room.name"
    for txn in (first, second):
        for pdu in txn["body"]["pdus"]:
            assert "unsigned" not in pdu
            assert {"hashes", "signatures", "auth_events", "prev_events", "depth"} <= set(pdu)
    assert first["body"]["edus"] == [{"edu_type": "org.nexa.test", "content": {"n": i}}
                                     for i in range(3)]
    assert "edus" not in second["body"]
    assert await outbox_rows(srv, fake.name) == []
    dest = await in_db(srv, queue.get_destination, fake.name)
    assert dest["last_success_ts"] and dest["backoff_ms"] == 0 and dest["retry_at_ts"] == 0


async def test_failed_transaction_is_resent_with_same_id_and_never_twice(srv, api, fake):
    outcomes = listen(srv, fake.name)
    _alice, _room, ids = await room_with_messages(api, 4, "retry")
    fake.fail = [500, 429, 502]
    await queue_pdus(srv, fake.name, ids[:3])
    await outcomes.wait("sent")
    assert [r["status"] for r in fake.received] == [500, 429, 502, 200]
    assert len({r["txn_id"] for r in fake.received}) == 1
    assert all(r["body"] == fake.received[0]["body"] for r in fake.received)
    assert bodies(fake.received[0]) == ["retry 0", "retry 1", "retry 2"]
    assert [o for _, o in outcomes.items if o != "waiting"] == ["retry", "retry", "retry", "sent"]
    assert await outbox_rows(srv, fake.name) == []

    # After the 200 the next transaction carries only what is new, under a new ID.
    await queue_pdus(srv, fake.name, ids[3:])
    await fake.wait_received(5)
    assert len(fake.received) == 5
    assert fake.received[4]["txn_id"] != fake.received[0]["txn_id"]
    assert bodies(fake.received[4]) == ["retry 3"]


async def test_rejected_transaction_is_dropped_and_pdu_errors_not_retried(srv, api, fake):
    outcomes = listen(srv, fake.name)
    _alice, _room, ids = await room_with_messages(api, 3, "drop")
    fake.fail = [400]
    await queue_pdus(srv, fake.name, ids[:1])
    await outcomes.wait("dropped")
    assert await outbox_rows(srv, fake.name) == []

    # A 200 naming per-PDU errors is a success: logged, not retried.
    fake.pdu_errors = {"$whatever": "not allowed"}
    await queue_pdus(srv, fake.name, ids[1:2])
    await outcomes.wait("sent")
    fake.pdu_errors = {}
    await queue_pdus(srv, fake.name, ids[2:])
    await outcomes.wait("sent", 2)
    assert [bodies(r) for r in fake.received] == [["drop 0"], ["drop 1"], ["drop 2"]]
    assert len({r["txn_id"] for r in fake.received}) == 3


async def test_unreachable_destination_backs_off_then_delivers(srv, api):
    remote = FakeRemote()  # not listening yet: connection refused
    outcomes = listen(srv, remote.name)
    _alice, _room, ids = await room_with_messages(api, 3, "down")
    try:
        await queue_pdus(srv, remote.name, ids)
        await outcomes.wait("retry", 2)
        txn_ids = {t for t, o in outcomes.items if o == "retry"}
        assert len(txn_ids) == 1
        rows = await outbox_rows(srv, remote.name)
        assert [r["event_id"] for r in rows] == ids and {r["txn_id"] for r in rows} == txn_ids
        dest = await in_db(srv, queue.get_destination, remote.name)
        assert 0 < dest["backoff_ms"] <= FAST_RETRY["retry_max_ms"]
        await remote.start()
        await outcomes.wait("sent")
        assert [r["txn_id"] for r in remote.received] == list(txn_ids)
        assert bodies(remote.received[0]) == ["down 0", "down 1", "down 2"]
        assert await outbox_rows(srv, remote.name) == []
    finally:
        await remote.stop()


async def test_rows_survive_restart_and_are_sent_with_the_same_txn_id(srv, api):
    remote = FakeRemote()
    outcomes = listen(srv, remote.name)
    _alice, _room, ids = await room_with_messages(api, 3, "restart")
    try:
        await queue_pdus(srv, remote.name, ids[:2])
        await outcomes.wait("retry")
        txn_id = next(t for t, o in outcomes.items if o == "retry")
        await srv.stop()
        await remote.start()
        await srv.start()  # the new sender resumes the queued destination by itself
        await remote.wait_received(1)
        assert remote.received[0]["txn_id"] == txn_id
        assert bodies(remote.received[0]) == ["restart 0", "restart 1"]
        outcomes = listen(srv, remote.name)
        # Deleted after the 200 (the new sender may already have finished).
        if await outbox_rows(srv, remote.name):
            await outcomes.wait("sent")
        assert await outbox_rows(srv, remote.name) == []
        # Nothing is delivered twice: the next transaction has only the new event.
        await queue_pdus(srv, remote.name, ids[2:])
        await remote.wait_received(2)
        assert bodies(remote.received[1]) == ["restart 2"]
        assert remote.received[1]["txn_id"] != txn_id
        assert len(remote.received) == 2
    finally:
        await remote.stop()


async def test_persisted_backoff_is_honoured_after_restart_until_retry_now(
        srv, api, monkeypatch):
    remote = FakeRemote()
    outcomes = listen(srv, remote.name)
    _alice, _room, ids = await room_with_messages(api, 1, "later")
    sender = srv.hs.federation_sender
    hour = 3_600_000
    # No jitter and an hour's backoff after the first failure.
    # (the retry schedule is the shared delivery queue's)
    monkeypatch.setattr(delivery_queue, "backoff_delay_ms", lambda ceiling, rand=None: ceiling)
    monkeypatch.setattr(sender, "retry_base_ms", hour)
    monkeypatch.setattr(sender, "retry_max_ms", hour)
    try:
        await queue_pdus(srv, remote.name, ids)
        await outcomes.wait("retry")
        txn_id = next(t for t, o in outcomes.items if o == "retry")
        dest = await in_db(srv, queue.get_destination, remote.name)
        assert dest["retry_at_ts"] > now_ms() + hour - 60_000
        await srv.stop()
        await remote.start()
        await srv.start()
        sender = srv.hs.federation_sender
        waiting = Outcomes(remote.name)
        sender.listeners.append(waiting)
        if sender.destination_status(remote.name).get("phase") != "waiting":
            await waiting.wait("waiting")
        status = sender.destination_status(remote.name)
        assert status["retry_at_ts"] > now_ms() + hour - 60_000
        # New rows wake the destination but do not cut its backoff short.
        sender.wake([remote.name])
        r = await api.request("GET", "/versions", prefix="/_matrix/client")
        assert r.status == 200
        assert remote.received == []
        assert sender.destination_status(remote.name)["phase"] == "waiting"
        # It talked to us: it is back.
        sender.retry_now(remote.name)
        await remote.wait_received(1)
        assert remote.received[0]["txn_id"] == txn_id
        await waiting.wait("sent")
        assert await outbox_rows(srv, remote.name) == []
        dest = await in_db(srv, queue.get_destination, remote.name)
        assert dest["retry_at_ts"] == 0 and dest["backoff_ms"] == 0 and dest["last_success_ts"]
    finally:
        await remote.stop()


async def test_stop_cancels_cleanly_and_start_resumes(srv, api):
    remote = FakeRemote()
    outcomes = listen(srv, remote.name)
    _alice, _room, ids = await room_with_messages(api, 2, "cycle")
    sender = srv.hs.federation_sender
    try:
        await queue_pdus(srv, remote.name, ids)
        await outcomes.wait("retry")
        await sender.stop()
        assert not sender.destination_status(remote.name)["running"]
        # Rows are kept, wake() while stopped queues nothing in memory and starts no task.
        assert len(await outbox_rows(srv, remote.name)) == 2
        sender.wake([remote.name])
        assert not sender.destination_status(remote.name)["running"]
        await remote.start()
        sender.start()
        await outcomes.wait("sent")
        assert [bodies(r) for r in remote.received] == [["cycle 0", "cycle 1"]]
    finally:
        await remote.stop()


# --- EDUs ----------------------------------------------------------------------------------

async def add_remote_member(srv, room_id: str, user_id: str) -> str:
    """A remote user's join in the room's current state, as the federation join would leave it."""
    hs = srv.hs

    async def go() -> str:
        async with hs.events.room_lock(room_id):
            current = dict(await hs.state.current_state_ids(room_id))
            extremities = await hs.state.get_events(await event_store.get_extremities(room_id))
            pdu = {"room_id": room_id, "sender": user_id, "type": "m.room.member",
                   "state_key": user_id, "content": {"membership": "join"},
                   "origin_server_ts": now_ms(),
                   "depth": max((r.depth for r in extremities.values()), default=0) + 1,
                   "prev_events": sorted(extremities), "auth_events": []}
            event_id = "$" + secrets.token_urlsafe(32)
            after = {**current, ("m.room.member", user_id): event_id}
            await hs.events.persist_event(pdu, event_id, state_before=current, base_group=None,
                                          new_current=after)
            return event_id

    return await in_db(srv, go)


async def test_local_messages_and_edus_reach_remote_members(srv, api, fake):
    outcomes = listen(srv, fake.name)
    alice = await api.register()
    room_id = await alice.create_room()
    remote_user = f"@bob:{fake.name}"
    await add_remote_member(srv, room_id, remote_user)
    edus = srv.hs.federation_edus

    # A message sent over the client API is queued in its own transaction and delivered.
    event_id = await alice.send_text(room_id, "hello remote")
    await until(fake.changed, lambda: any("hello remote" in bodies(t) for t in fake.received),
                "the message")
    sent = await in_db(srv, srv.hs.state.get_event, event_id)
    assert sent is not None

    await in_db(srv, edus.on_local_typing, room_id, alice.user_id, True, 10_000)
    await until(fake.changed, lambda: _edus(fake, "m.typing"), "m.typing")
    assert _edus(fake, "m.typing")[-1]["content"] == {
        "room_id": room_id, "user_id": alice.user_id, "typing": True}

    await in_db(srv, edus.on_local_receipt, room_id, "m.read.private", alice.user_id, event_id)
    assert await outbox_rows(srv, fake.name) == []  # private receipts never leave
    await in_db(srv, edus.on_local_receipt, room_id, "m.read", alice.user_id, event_id)
    await until(fake.changed, lambda: _edus(fake, "m.receipt"), "m.receipt")
    receipt = _edus(fake, "m.receipt")[-1]["content"][room_id]["m.read"][alice.user_id]
    assert receipt["event_ids"] == [event_id] and isinstance(receipt["data"]["ts"], int)

    await in_db(srv, edus.on_local_presence, [(alice.user_id, "online", "busy", now_ms(), 1)])
    await until(fake.changed, lambda: _edus(fake, "m.presence"), "m.presence")
    push = _edus(fake, "m.presence")[-1]["content"]["push"]
    assert push[0]["user_id"] == alice.user_id and push[0]["presence"] == "online"
    assert push[0]["status_msg"] == "busy" and isinstance(push[0]["last_active_ago"], int)

    # Remote users' updates are never echoed back out.
    await outcomes.wait("sent", 4)  # message, typing, receipt, presence: all acknowledged
    n = len(fake.received)
    await in_db(srv, edus.on_local_typing, room_id, remote_user, True)
    await in_db(srv, edus.on_local_receipt, room_id, "m.read", remote_user, event_id)
    await in_db(srv, edus.on_local_presence, [(remote_user, "online", None, now_ms(), 1)])
    assert await outbox_rows(srv, fake.name) == []
    assert srv.hs.federation_sender.destination_status(fake.name)["typing_queued"] == 0
    assert len(fake.received) == n
    assert outcomes.count("retry") == 0


def _edus(fake: FakeRemote, edu_type: str) -> list[dict]:
    return [e for t in fake.accepted() for e in t["body"].get("edus", [])
            if e.get("edu_type") == edu_type]


async def test_inbound_edus_apply_only_for_the_origins_joined_users(srv, api, fake):
    origin = fake.name  # also receives what the room sends meanwhile
    alice = await api.register()
    room_id = await alice.create_room()
    bob = f"@bob:{origin}"
    await add_remote_member(srv, room_id, bob)
    event_id = await alice.send_text(room_id, "read me")
    edus = srv.hs.federation_edus
    hs = srv.hs

    async def edu(o: str, e: Any) -> None:
        await in_db(srv, edus.on_edu, o, e)

    # Typing: only the origin's own users, only in rooms they are joined to.
    await edu("evil.example", {"edu_type": "m.typing",
                               "content": {"room_id": room_id, "user_id": bob, "typing": True}})
    await edu(origin, {"edu_type": "m.typing", "content": {
        "room_id": room_id, "user_id": f"@carol:{origin}", "typing": True}})
    assert hs.typing.get_typing(room_id) == []
    await edu(origin, {"edu_type": "m.typing",
                       "content": {"room_id": room_id, "user_id": bob, "typing": True}})
    assert hs.typing.get_typing(room_id) == [bob]
    await edu(origin, {"edu_type": "m.typing",
                       "content": {"room_id": room_id, "user_id": bob, "typing": False}})
    assert hs.typing.get_typing(room_id) == []

    # Receipts land in local /sync.
    await edu("evil.example", {"edu_type": "m.receipt", "content": {room_id: {"m.read": {
        bob: {"event_ids": [event_id], "data": {"ts": 1}}}}}})
    sync = await alice.sync()
    assert not _receipt_users(sync, room_id, event_id)
    await edu(origin, {"edu_type": "m.receipt", "content": {room_id: {"m.read": {
        bob: {"event_ids": [event_id], "data": {"ts": 1}}}}}})
    sync = await alice.sync()
    assert bob in _receipt_users(sync, room_id, event_id)

    # Presence: only the origin's users who share a room here.
    await edu(origin, {"edu_type": "m.presence", "content": {"push": [
        {"user_id": bob, "presence": "unavailable", "status_msg": "away",
         "last_active_ago": 10},
        {"user_id": f"@stranger:{origin}", "presence": "online", "last_active_ago": 0},
        {"user_id": "@x:evil.example", "presence": "online", "last_active_ago": 0}]}})
    got = await in_db(srv, userdata.get_presence, bob)
    assert (got["state"], got["status_msg"]) == ("unavailable", "away")
    assert await in_db(srv, userdata.get_presence, f"@stranger:{origin}") is None
    assert await in_db(srv, userdata.get_presence, "@x:evil.example") is None

    # Malformed EDUs and the ones not handled yet are ignored, never raise.
    for junk in [None, 1, "x", [], {}, {"edu_type": "m.typing"},
                 {"edu_type": "m.typing", "content": []},
                 {"edu_type": "m.typing", "content": {"room_id": 5, "user_id": bob}},
                 {"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": bob,
                                                      "typing": "yes"}},
                 {"edu_type": "m.receipt", "content": {room_id: "x"}},
                 {"edu_type": "m.receipt", "content": {room_id: {"m.read": {bob: {
                     "event_ids": "nope"}}}}},
                 {"edu_type": "m.receipt", "content": {room_id: {"m.read": {bob: {
                     "event_ids": ["$unknown"], "data": {"ts": 1}}}}}},
                 {"edu_type": "m.receipt", "content": {"!nope:x": {"m.read": {bob: {
                     "event_ids": [event_id]}}}}},
                 {"edu_type": "m.presence", "content": {"push": "x"}},
                 {"edu_type": "m.presence", "content": {"push": [{"user_id": bob,
                                                                  "presence": "dancing"}]}},
                 {"edu_type": "m.direct_to_device", "content": {"messages": {}}},
                 {"edu_type": "m.device_list_update", "content": {}},
                 {"edu_type": "org.unknown", "content": {}}]:
        await edu(origin, junk)
    await in_db(srv, edus.on_edus, origin, "not a list")
    got = await in_db(srv, userdata.get_presence, bob)
    assert got["state"] == "unavailable"


def _receipt_users(sync: dict, room_id: str, event_id: str) -> set[str]:
    room = sync.get("rooms", {}).get("join", {}).get(room_id, {})
    users: set[str] = set()
    for e in room.get("ephemeral", {}).get("events", []):
        if e.get("type") == "m.receipt":
            users |= set(e["content"].get(event_id, {}).get("m.read", {}))
    return users
