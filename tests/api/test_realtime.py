"""Socket.IO at /_nexa/socket.io/: the /sync stream pushed to a real python-socketio client.

Every wait is on something the server pushes (queues fed by the client's handlers), bounded
by a timeout; nothing sleeps to let the server catch up.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Callable

import pytest
import socketio

from homeserver import realtime
from tests.client import Api, User
from tests.servers import start_server

PATH = "/_nexa/socket.io"
WAIT_S = 15


class RecordingClient(socketio.AsyncClient):
    """Tells a Socket.IO DISCONNECT from the server (final: browsers do not reconnect) from a
    closed transport (browsers reconnect and resume); the python client names both alike."""

    server_disconnected = False

    async def _handle_disconnect(self, namespace):
        self.server_disconnected = True
        return await super()._handle_disconnect(namespace)


class Stream:
    """One browser-like connection: queues everything the server sends."""

    def __init__(self, server, gate: asyncio.Event | None = None) -> None:
        self.server = server
        # With "ack": true, the python client acknowledges when the handler returns; a gate
        # holds the acknowledgement back.
        self.gate = gate
        self.client = RecordingClient(reconnection=False)
        self.syncs: asyncio.Queue[dict] = asyncio.Queue()
        self.errors: asyncio.Queue[dict] = asyncio.Queue()
        self.refusals: asyncio.Queue[Any] = asyncio.Queue()
        self.disconnected = asyncio.Event()
        self.next_batch: str | None = None
        self.client.on("sync", self._on_sync)
        self.client.on("sync_error", lambda data: self.errors.put_nowait(data))
        self.client.on("connect_error", lambda data=None: self.refusals.put_nowait(data))
        self.client.on("disconnect", self._on_disconnect)

    def _on_disconnect(self, reason: Any = None) -> None:
        self.disconnected.set()

    @property
    def reconnectable(self) -> bool:
        """Disconnected by a closed transport (a browser reconnects), not by the server."""
        return self.disconnected.is_set() and not self.client.server_disconnected

    async def _on_sync(self, data: dict) -> None:
        self.next_batch = data["next_batch"]
        self.syncs.put_nowait(data)
        if self.gate is not None:
            await self.gate.wait()

    async def connect(self, auth: Any, transports: list[str] | None = None) -> None:
        await self.client.connect(self.server.base_url, socketio_path=PATH, auth=auth,
                                  transports=transports, wait_timeout=WAIT_S)

    async def refused(self, auth: Any) -> dict:
        """Connect, expect a refusal, and return its Matrix error."""
        with pytest.raises(socketio.exceptions.ConnectionError):
            await self.connect(auth)
        data = await asyncio.wait_for(self.refusals.get(), WAIT_S)
        assert isinstance(data, dict) and isinstance(data.get("data"), dict), data
        return data["data"]

    async def next(self) -> dict:
        return await asyncio.wait_for(self.syncs.get(), WAIT_S)

    async def until(self, pred: Callable[[dict], bool]) -> dict:
        """The first pushed sync for which pred holds (earlier ones are skipped)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                data = await self.syncs.get()
                if pred(data):
                    return data

    async def call(self, event: str, data: Any = None) -> Any:
        return await self.client.call(event, data, timeout=WAIT_S)

    async def close(self) -> None:
        if not self.client.connected:
            return
        if self.client.transport() == "polling":
            # The python client would wait for its pending long-poll (up to the next server
            # ping); a browser aborts it.
            await self.client.eio.disconnect(abort=True)
        else:
            await self.client.disconnect()


@pytest.fixture
async def streams(server):
    opened: list[Stream] = []

    def make(gate: asyncio.Event | None = None) -> Stream:
        s = Stream(server, gate)
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()


def joined(sync: dict, room_id: str) -> dict:
    return sync["rooms"]["join"].get(room_id) or {}


def timeline(sync: dict, room_id: str) -> list[dict]:
    return joined(sync, room_id).get("timeline", {}).get("events", [])


def ephemeral(sync: dict, room_id: str, etype: str) -> list[dict]:
    return [e for e in joined(sync, room_id).get("ephemeral", {}).get("events", [])
            if e["type"] == etype]


def bodies(sync: dict, room_id: str) -> list[str]:
    return [e["content"].get("body") for e in timeline(sync, room_id)
            if e["type"] == "m.room.message"]


async def shared_room(alice: User, bob: User) -> str:
    room_id = await alice.create_room(preset="public_chat")
    await bob.join(room_id)
    return room_id


async def test_refused_without_or_with_bad_token(api, streams):
    alice = await api.register()
    for auth in (None, {}, {"token": ""}, {"token": 123}):
        err = await streams().refused(auth)
        assert err["errcode"] == "M_MISSING_TOKEN", (auth, err)
    err = await streams().refused({"token": "nx_" + secrets.token_urlsafe(32)})
    assert err["errcode"] == "M_UNKNOWN_TOKEN"
    err = await streams().refused({"token": alice.token, "since": "not a token"})
    assert err["errcode"] == "M_INVALID_PARAM"
    err = await streams().refused({"token": alice.token, "filter": "424242"})
    assert err["errcode"] == "M_INVALID_PARAM"
    err = await streams().refused({"token": alice.token, "filter": {"room": {"rooms": "x"}}})
    assert err["errcode"] == "M_INVALID_PARAM"
    # A logged-out token is refused too.
    r = await alice.post("/logout")
    assert r.status == 200
    err = await streams().refused({"token": alice.token})
    assert err["errcode"] == "M_UNKNOWN_TOKEN"


async def test_rest_api_still_served_next_to_socketio(api):
    """Quart keeps everything outside /_nexa/socket.io/; engine.io answers inside it."""
    r = await api.request("GET", "/versions", prefix="/_matrix/client")
    assert r.status == 200 and "versions" in r.json
    r = await api.request("GET", "/nope")
    assert (r.status, r.json["errcode"]) == (404, "M_UNRECOGNIZED")
    r = await api.request("GET", "/", prefix=PATH)  # no EIO version: engine.io's own 400
    assert r.status == 400


@pytest.mark.parametrize("transports", [None, ["websocket"], ["polling"]])
async def test_initial_sync_then_live_events(api, streams, transports):
    alice, bob = await api.register(), await api.register()
    room_id = await alice.create_room(preset="public_chat")
    other_room = await alice.create_room()
    s = streams()
    await s.connect({"token": alice.token}, transports)
    initial = await s.next()
    assert {room_id, other_room} <= set(initial["rooms"]["join"])
    assert any(e["type"] == "m.room.create" for e in timeline(initial, room_id)
               + joined(initial, room_id)["state"]["events"])

    await bob.join(room_id)
    sync = await s.until(lambda d: any(e["type"] == "m.room.member"
                                       and e["state_key"] == bob.user_id
                                       for e in timeline(d, room_id)))
    event_id = await bob.send_text(room_id, "hello from bob")
    sync = await s.until(lambda d: bool(timeline(d, room_id)))
    assert [e["event_id"] for e in timeline(sync, room_id)] == [event_id]
    assert timeline(sync, room_id)[0]["content"]["body"] == "hello from bob"
    assert other_room not in sync["rooms"]["join"]


async def test_typing_receipts_profile_invites_and_account_data(api, streams):
    alice, bob, carol = await api.register(), await api.register(), await api.register()
    room_id = await shared_room(alice, bob)
    s, b = streams(), streams()
    await s.connect({"token": alice.token})
    await b.connect({"token": bob.token})
    await s.next()
    await b.next()

    # Typing sent over bob's socket reaches alice's.
    ack = await b.call("typing", {"room_id": room_id, "typing": True, "timeout": 20000})
    assert ack == {}
    sync = await s.until(lambda d: bool(ephemeral(d, room_id, "m.typing")))
    assert ephemeral(sync, room_id, "m.typing")[-1]["content"]["user_ids"] == [bob.user_id]
    assert await b.call("typing", {"room_id": room_id, "typing": False}) == {}
    await s.until(lambda d: any(e["content"]["user_ids"] == []
                                for e in ephemeral(d, room_id, "m.typing")))

    # A read receipt through REST.
    event_id = await alice.send_text(room_id, "read me")
    r = await bob.post(f"/rooms/{room_id}/receipt/m.read/{event_id}", {})
    assert r.status == 200, r
    sync = await s.until(lambda d: bool(ephemeral(d, room_id, "m.receipt")))
    receipt = ephemeral(sync, room_id, "m.receipt")[0]["content"]
    assert bob.user_id in receipt[event_id]["m.read"]

    # Profile change: a new member event in the room.
    r = await bob.put(f"/profile/{bob.user_id}/displayname", {"displayname": "Bobby"})
    assert r.status == 200, r
    await s.until(lambda d: any(e["type"] == "m.room.member" and e["state_key"] == bob.user_id
                                and e["content"].get("displayname") == "Bobby"
                                for e in timeline(d, room_id)))

    # Global and room account data.
    r = await alice.put(f"/user/{alice.user_id}/account_data/org.nexa.test", {"n": 1})
    assert r.status == 200, r
    sync = await s.until(lambda d: bool(d["account_data"]["events"]))
    assert {"type": "org.nexa.test", "content": {"n": 1}} in sync["account_data"]["events"]
    r = await alice.put(f"/user/{alice.user_id}/rooms/{room_id}/account_data/org.nexa.room",
                        {"tag": "x"})
    assert r.status == 200, r
    sync = await s.until(lambda d: bool(joined(d, room_id).get("account_data", {}).get("events")))
    assert {"type": "org.nexa.room", "content": {"tag": "x"}} in \
        joined(sync, room_id)["account_data"]["events"]

    # An invitation.
    invite_room = await carol.create_room(invite=[alice.user_id])
    sync = await s.until(lambda d: invite_room in d["rooms"]["invite"])
    states = sync["rooms"]["invite"][invite_room]["invite_state"]["events"]
    assert any(e["type"] == "m.room.member" and e["state_key"] == alice.user_id for e in states)


async def test_typing_and_other_events_are_checked(api, streams):
    alice, bob = await api.register(), await api.register()
    room_id = await bob.create_room()
    s = streams()
    await s.connect({"token": alice.token})
    await s.next()
    assert (await s.call("typing", {"room_id": room_id, "typing": True}))["errcode"] == \
        "M_FORBIDDEN"
    for bad in (None, "x", {"room_id": room_id}, {"room_id": 5, "typing": True},
                {"room_id": room_id, "typing": True, "timeout": "10"}):
        assert (await s.call("typing", bad))["errcode"] == "M_BAD_JSON", bad
    assert (await s.call("send", {"room_id": room_id}))["errcode"] == "M_UNRECOGNIZED"
    pong = await s.call("ping")
    assert isinstance(pong["ts"], int)
    assert s.client.connected


async def test_reconnect_resumes_without_gaps_or_duplicates(api, streams):
    alice, bob = await api.register(), await api.register()
    room_id = await shared_room(alice, bob)
    first = streams()
    await first.connect({"token": alice.token})
    await first.next()
    await bob.send_text(room_id, "live")
    await first.until(lambda d: "live" in bodies(d, room_id))
    since = first.next_batch
    assert since

    hs = first.server.hs
    task = hs.realtime._conns[first.client.get_sid()].task
    await first.close()
    done, _ = await asyncio.wait([task], timeout=WAIT_S)
    assert task in done, "the stream task was not cancelled on disconnect"

    missed = [await bob.send_text(room_id, f"missed {i}") for i in range(5)]

    second = streams()
    await second.connect({"token": alice.token, "since": since})
    resumed = await second.next()
    assert [e["event_id"] for e in timeline(resumed, room_id)] == missed
    assert joined(resumed, room_id)["timeline"]["limited"] is False

    # Anything sent twice would arrive before a marker sent now.
    marker = await bob.send_text(room_id, "marker")
    seen = [e["event_id"] for e in timeline(resumed, room_id)]
    while marker not in seen:
        seen += [e["event_id"] for e in timeline(await second.next(), room_id)]
    assert seen == missed + [marker]


async def test_filter_applies(api, streams):
    alice = await api.register()
    room_id = await alice.create_room()
    for i in range(3):
        await alice.send_text(room_id, f"m{i}")
    s = streams()
    await s.connect({"token": alice.token,
                     "filter": {"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}}})
    initial = await s.next()
    assert bodies(initial, room_id) == ["m1", "m2"]
    r = await alice.post(f"/user/{alice.user_id}/filter",
                         {"room": {"timeline": {"limit": 1, "types": ["m.room.message"]}}})
    assert r.status == 200, r
    s2 = streams()
    await s2.connect({"token": alice.token, "filter": r.json["filter_id"]})
    assert bodies(await s2.next(), room_id) == ["m2"]


async def test_logout_ends_the_stream_before_anything_more_is_pushed(api, streams):
    alice, bob = await api.register(), await api.register()
    room_id = await shared_room(alice, bob)
    s = streams()
    await s.connect({"token": alice.token})
    await s.next()
    assert (await alice.post("/logout")).status == 200
    await bob.send_text(room_id, "after logout")  # wakes the stream
    err = await asyncio.wait_for(s.errors.get(), WAIT_S)
    assert err["errcode"] == "M_UNKNOWN_TOKEN"
    await asyncio.wait_for(s.disconnected.wait(), WAIT_S)
    assert not s.reconnectable  # final: a browser does not reconnect by itself
    assert s.syncs.empty()


async def test_connections_per_user_are_bounded(api, streams, monkeypatch):
    monkeypatch.setattr(realtime, "MAX_CONNECTIONS_PER_USER", 2)
    alice = await api.register()
    a, b = streams(), streams()
    await a.connect({"token": alice.token})
    await b.connect({"token": alice.token})
    err = await streams().refused({"token": alice.token})
    assert err["errcode"] == "M_LIMIT_EXCEEDED"
    task = a.server.hs.realtime._conns[a.client.get_sid()].task
    await a.close()
    await asyncio.wait([task], timeout=WAIT_S)
    c = streams()
    await c.connect({"token": alice.token})
    assert (await c.next())["next_batch"]


async def test_server_stop_ends_every_stream(backend, tmp_path):
    srv = await start_server(tmp_path, backend)
    try:
        async with Api(srv) as api:
            alice = await api.register()
            a, b = Stream(srv), Stream(srv)
            await a.connect({"token": alice.token})
            await b.connect({"token": alice.token}, ["polling"])
            await a.next()
            await b.next()
            rt = srv.hs.realtime
            tasks = [c.task for c in rt._conns.values()]
            assert len(tasks) == 2
            await srv.stop()
            assert all(t.done() for t in tasks)
            assert rt.connection_count() == 0
            # A transport close, not a Socket.IO disconnect: clients reconnect and resume.
            for s in (a, b):
                await asyncio.wait_for(s.disconnected.wait(), WAIT_S)
                assert s.reconnectable
    finally:
        await srv.destroy()


async def test_ack_mode_pushes_only_after_each_acknowledgement(api, streams):
    alice, bob = await api.register(), await api.register()
    room_id = await shared_room(alice, bob)
    gate = asyncio.Event()
    s = streams(gate)
    await s.connect({"token": alice.token, "ack": True})
    await s.next()  # the initial sync; its acknowledgement is held back
    sent = [await bob.send_text(room_id, f"while unacknowledged {i}") for i in range(3)]
    gate.set()
    # The next push is computed from the acknowledged token: all three in one batch.
    sync = await s.until(lambda d: bool(timeline(d, room_id)))
    assert [e["event_id"] for e in timeline(sync, room_id)] == sent
    err = await streams().refused({"token": alice.token, "ack": "yes"})
    assert err["errcode"] == "M_INVALID_PARAM"


async def test_client_that_stops_reading_is_dropped_to_reconnect(api, streams, monkeypatch):
    alice = await api.register()
    # Acknowledgements: one held back longer than allowed.
    monkeypatch.setattr(realtime, "ACK_TIMEOUT_S", 0.3)
    s = streams(asyncio.Event())  # the gate never opens
    await s.connect({"token": alice.token, "ack": True})
    await s.next()
    await asyncio.wait_for(s.disconnected.wait(), WAIT_S)
    assert s.reconnectable
    # Fire-and-forget: a send queue that never drains (here: any queue at all).
    monkeypatch.setattr(realtime, "MAX_PENDING_PACKETS", 0)
    monkeypatch.setattr(realtime, "BACKLOG_WAIT_S", 0.3)
    monkeypatch.setattr(realtime, "BACKLOG_POLL_S", 0.05)
    s2 = streams()
    await s2.connect({"token": alice.token}, ["websocket"])
    await asyncio.wait_for(s2.disconnected.wait(), WAIT_S)
    assert s2.reconnectable
    assert s2.syncs.empty()
    assert alice.user_id not in s.server.hs.realtime._per_user


async def test_to_device_is_consumed_only_by_acknowledged_pushes(api, streams):
    alice, bob = await api.register(), await api.register()
    room_id = await shared_room(alice, bob)
    s = streams()
    await s.connect({"token": alice.token})
    await s.next()
    r = await bob.put(f"/sendToDevice/org.nexa.test/{secrets.token_hex(6)}",
                      {"messages": {alice.user_id: {alice.device_id: {"secret": 1}}}})
    if r.status == 404:
        pytest.skip("this tree has no send-to-device yet")
    assert r.status == 200, r
    await bob.send_text(room_id, "after the to-device message")
    sync = await s.until(lambda d: bool(timeline(d, room_id)))
    # Not pushed without acknowledgements, and not consumed either.
    assert not (sync.get("to_device") or {}).get("events")

    def secrets_in(d: dict) -> list:
        return [e["content"] for e in (d.get("to_device") or {}).get("events", [])
                if e["type"] == "org.nexa.test"]

    assert secrets_in(await alice.sync(since=s.next_batch)) == [{"secret": 1}]
    acking = streams()
    await acking.connect({"token": alice.token, "since": s.next_batch, "ack": True})
    pushed = await acking.until(lambda d: bool(secrets_in(d)))
    assert secrets_in(pushed) == [{"secret": 1}]
    # Acknowledged, then consumed (the stream's next sync starts from the acknowledged
    # token): even a sync from the old token no longer gets it.
    await bob.send_text(room_id, "one more")
    await acking.until(lambda d: bool(timeline(d, room_id)))
    assert secrets_in(await alice.sync(since=s.next_batch)) == []
