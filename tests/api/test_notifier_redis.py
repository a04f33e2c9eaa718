"""The Redis-backed notifier against the real Redis at 127.0.0.1:6379 (NEXA_TEST_REDIS).

Two RedisNotifier objects with their own connections stand for two worker processes. Every
wait is on a listener's event or a subscriber callback, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid

import pytest
import redis.asyncio as aioredis
import socketio

from homeserver import notifier_redis
from homeserver.config import ConfigError, build_config
from homeserver.notifier_redis import RedisNotifier
from homeserver.server import HomeServer
from tests.client import Api
from tests.servers import REQUIRE_SERVICES, start_server

REDIS_URL = os.environ.get("NEXA_TEST_REDIS", "redis://127.0.0.1:6379/0")
WAIT_S = 15


@pytest.fixture(scope="session")
async def redis_url():
    try:
        client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
        try:
            await client.ping()
        finally:
            await client.aclose()
    except Exception as e:
        reason = f"Redis at {REDIS_URL} not reachable: {e}"
        if REQUIRE_SERVICES:
            pytest.fail(reason)
        pytest.skip(reason)
    return REDIS_URL


@pytest.fixture
async def pair(redis_url):
    """Two "processes" on one fresh channel."""
    channel = f"nexa:test:{uuid.uuid4().hex}"
    a, b = RedisNotifier(redis_url, channel), RedisNotifier(redis_url, channel)
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


class Calls:
    """A subscriber that records its calls and lets a test wait for one."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self._changed = asyncio.Event()

    def __call__(self, stream, position, rooms, users) -> None:
        self.calls.append((stream, position, list(rooms), list(users)))
        self._changed.set()

    async def until(self, pred) -> None:
        async with asyncio.timeout(WAIT_S):
            while not any(pred(c) for c in self.calls):
                self._changed.clear()
                await self._changed.wait()


async def woken(listener) -> None:
    await asyncio.wait_for(listener.event.wait(), WAIT_S)


async def test_notify_on_one_process_wakes_listeners_on_the_other(pair):
    a, b = pair
    with b.listen("@u:x", ["!room:x"]) as by_room, b.listen("@v:x", []) as by_user:
        a.notify("events", 7, rooms=["!room:x"])
        await woken(by_room)
        assert not by_user.event.is_set()
        a.notify("account_data", 3, users=["@v:x"])
        await woken(by_user)
    # And the other way round.
    with a.listen("@w:x", []) as back:
        b.notify("receipts", 1, users=["@w:x"])
        await woken(back)


async def test_subscribers_everywhere_called_once(pair):
    a, b = pair
    calls_a, calls_b = Calls(), Calls()
    a.subscribe(calls_a)
    b.subscribe(calls_b)
    a.notify("events", 11, rooms=["!r:x"], users=["@u:x"])
    assert calls_a.calls == [("events", 11, ["!r:x"], ["@u:x"])]  # locally, at once
    await calls_b.until(lambda c: c[1] == 11)
    b.notify("typing", 12, rooms=["!r:x"])
    # Redis delivers one channel in order: once b's message reached a, a's own echo has been
    # seen (and ignored) already.
    await calls_a.until(lambda c: c[1] == 12)
    assert calls_a.calls == [("events", 11, ["!r:x"], ["@u:x"]), ("typing", 12, ["!r:x"], [])]
    assert calls_b.calls == [("events", 11, ["!r:x"], ["@u:x"]), ("typing", 12, ["!r:x"], [])]


async def test_malformed_messages_are_ignored(pair, redis_url):
    a, b = pair
    calls = Calls()
    b.subscribe(calls)
    raw = aioredis.Redis.from_url(redis_url)
    try:
        for junk in (b"not json", b"[1,2]", b'{"n": "x"}', b'{"n": [["s", "1", [], []]]}',
                     b'{"n": [["s", 1, [5], []]]}', b"\xff\xfe"):
            await raw.publish(a.channel, junk)
    finally:
        await raw.aclose()
    a.notify("events", 99, users=["@u:x"])
    await calls.until(lambda c: c[1] == 99)
    assert calls.calls == [("events", 99, [], ["@u:x"])]


async def test_lost_subscription_is_restored_and_wakes_everyone(pair, redis_url):
    a, b = pair
    raw = aioredis.Redis.from_url(redis_url)
    try:
        with b.listen("@sleeper:x", ["!quiet:x"]) as sleeper:
            ids = [c["id"] for c in await raw.client_list() if c.get("name") == b.client_name]
            assert ids, "b's subscribing connection not found"
            for cid in ids:
                await raw.client_kill_filter(_id=cid)
            # Messages may have been lost meanwhile: every listener is woken on resubscribe.
            await woken(sleeper)
    finally:
        await raw.aclose()
    calls = Calls()
    b.subscribe(calls)
    a.notify("events", 5, rooms=["!quiet:x"])
    await calls.until(lambda c: c[1] == 5)


async def test_unpublished_backlog_is_bounded(monkeypatch):
    monkeypatch.setattr(notifier_redis, "MAX_PENDING", 10)
    n = RedisNotifier("redis://127.0.0.1:1/0", "nexa:test:never-started")
    for i in range(25):
        n.notify("events", i, rooms=["!r:x"])
    batch, wake_all = n._take_batch()
    assert len(batch) <= 10 and wake_all
    assert batch[-1] == ["events", 24, ["!r:x"], []]


async def test_config_selects_the_backend(redis_url, tmp_path):
    cfg = build_config({"server_name": "example.test", "data_dir": str(tmp_path),
                        "notifier": {"backend": "redis", "redis_url": redis_url}})
    hs = HomeServer(cfg)
    assert isinstance(hs.notifier, RedisNotifier)
    assert hs.notifier.channel == "nexa:notify:example.test"
    assert not isinstance(HomeServer(build_config({"data_dir": str(tmp_path)})).notifier,
                          RedisNotifier)
    with pytest.raises(ConfigError, match="notifier"):
        build_config({"notifier": {"backend": "redis"}})
    with pytest.raises(ConfigError, match="notifier.redis_url"):
        build_config({"notifier": {"backend": "redis", "redis_url": "http://x"}})


async def test_server_runs_on_the_redis_notifier(backend, redis_url, tmp_path):
    srv = await start_server(tmp_path, backend,
                             notifier={"backend": "redis", "redis_url": redis_url})
    try:
        notifier = srv.hs.notifier
        assert isinstance(notifier, RedisNotifier) and notifier.subscribed
        async with Api(srv) as api:
            alice, bob = await api.register(), await api.register()
            room_id = await alice.create_room(preset="public_chat")
            await bob.join(room_id)
            client = socketio.AsyncClient(reconnection=False)
            pushed: asyncio.Queue[dict] = asyncio.Queue()
            client.on("sync", pushed.put_nowait)
            await client.connect(srv.base_url, socketio_path="/_nexa/socket.io",
                                 auth={"token": alice.token}, transports=["websocket"],
                                 wait_timeout=WAIT_S)
            try:
                await asyncio.wait_for(pushed.get(), WAIT_S)
                text = secrets.token_hex(4)
                await bob.send_text(room_id, text)
                async with asyncio.timeout(WAIT_S):
                    while True:
                        sync = await pushed.get()
                        events = sync["rooms"]["join"].get(room_id, {}).get("timeline", {})
                        if any(e["content"].get("body") == text
                               for e in events.get("events", [])):
                            break
            finally:
                await client.disconnect()
        await srv.stop()
        assert not notifier.subscribed and not notifier._tasks
    finally:
        await srv.destroy()
