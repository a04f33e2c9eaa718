"""Helpers for scenarios driven by matrix-nio, a third-party Matrix client library.

Nothing here imports the server: every interaction goes over HTTP, either through nio or, for
endpoints nio has no method for, through plain aiohttp with the nio client's access token.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Awaitable, Callable, TypeVar

import aiohttp
import nio

T = TypeVar("T")

# Upper bound on one scenario's wait for something to show up in /sync: a failing server must
# fail the test, not hang it. Long-polls return as soon as something arrives.
SYNC_DEADLINE_S = 30.0


def config() -> nio.AsyncClientConfig:
    # No retries: a timeout or rate limit is a failure to see, not to paper over.
    return nio.AsyncClientConfig(max_timeouts=0, max_limit_exceeded=0, request_timeout=40,
                                 store_sync_tokens=False, encryption_enabled=False)


def new_client(base_url: str) -> nio.AsyncClient:
    return nio.AsyncClient(base_url, config=config())


def ok(resp: Any, cls: type[T]) -> T:
    """Assert a nio response is the success type (nio returns error objects, it doesn't raise)."""
    assert isinstance(resp, cls), f"expected {cls.__name__}, got {type(resp).__name__}: {resp}"
    return resp


def status_of(resp: Any) -> int | None:
    tr = getattr(resp, "transport_response", None)
    return getattr(tr, "status", None)


def random_name(prefix: str = "nio") -> str:
    return f"{prefix}{secrets.token_hex(4)}"


async def sync_until(client: nio.AsyncClient, pred: Callable[[nio.SyncResponse], Any], *,
                     timeout_ms: int = 10_000, deadline_s: float = SYNC_DEADLINE_S,
                     what: str = "condition") -> Any:
    """Long-poll /sync from the client's last next_batch until pred(response) is truthy.

    Returns pred's value. Fails with every response seen if the deadline passes."""
    seen: list[nio.SyncResponse] = []

    async def loop() -> Any:
        while True:
            resp = ok(await client.sync(timeout=timeout_ms), nio.SyncResponse)
            seen.append(resp)
            value = pred(resp)
            if value:
                return value

    try:
        return await asyncio.wait_for(loop(), deadline_s)
    except TimeoutError:
        raise AssertionError(f"sync never showed {what}; responses: {seen!r}") from None


def timeline(resp: nio.SyncResponse, room_id: str) -> list:
    room = resp.rooms.join.get(room_id)
    return list(room.timeline.events) if room else []


def ephemeral(resp: nio.SyncResponse, room_id: str) -> list:
    room = resp.rooms.join.get(room_id)
    return list(room.ephemeral) if room else []


def texts(events: list, sender: str | None = None) -> list[str]:
    return [e.body for e in events
            if isinstance(e, nio.RoomMessageText) and (sender is None or e.sender == sender)]


async def raw(client: nio.AsyncClient, method: str, path: str, body: Any = None,
              params: dict | None = None) -> tuple[int, Any]:
    """A client-server request nio has no method for, with the nio client's token."""
    url = f"{client.homeserver}/_matrix/client/v3{path}"
    headers = {"Authorization": f"Bearer {client.access_token}"}
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, json=body, params=params, headers=headers) as r:
            return r.status, await r.json(content_type=None)


async def gather(*aws: Awaitable[Any]) -> list[Any]:
    return list(await asyncio.gather(*aws))


async def shared_room(owner: nio.AsyncClient, *others: nio.AsyncClient, **create: Any) -> str:
    """owner creates a room inviting the others, who join; everyone then has a sync baseline
    (client.next_batch) taken after all the joins."""
    resp = ok(await owner.room_create(invite=[o.user_id for o in others], **create),
              nio.RoomCreateResponse)
    for o in others:
        ok(await o.join(resp.room_id), nio.JoinResponse)
    for c in (owner, *others):
        ok(await c.sync(timeout=0), nio.SyncResponse)
    return resp.room_id


async def send_text(client: nio.AsyncClient, room_id: str, body: str,
                    tx_id: str | None = None) -> str:
    resp = ok(await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body},
                                     tx_id=tx_id), nio.RoomSendResponse)
    return resp.event_id


class ListenerProbe:
    """Signals when the server starts a /sync long-poll wait for a user.

    Hooks the in-process server's notifier so a test can send *while* a long-poll is parked,
    instead of sleeping and hoping; if the notifier has no `listen`, `wait()` returns at once
    (the test still checks the long-poll's result, just not that it was parked)."""

    def __init__(self, server: Any, user_id: str) -> None:
        self.notifier = getattr(server.hs, "notifier", None)
        self.user_id = user_id
        self.started = asyncio.Event()
        self._orig = None

    def __enter__(self) -> ListenerProbe:
        orig = getattr(self.notifier, "listen", None)
        if orig is None:
            self.started.set()
            return self
        self._orig = orig
        probe = self

        def listen(user_id: str, rooms: Any):
            cm = orig(user_id, rooms)
            if user_id == probe.user_id:
                probe.started.set()
            return cm

        self.notifier.listen = listen  # instance attribute shadows the method
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._orig is not None:
            del self.notifier.listen

    async def wait(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self.started.wait(), timeout)


async def initial_sync(client: nio.AsyncClient, **kw: Any) -> nio.SyncResponse:
    """An initial (since-less) /sync with the client's credentials, leaving its token alone."""
    fresh = new_client(client.homeserver)
    try:
        fresh.restore_login(client.user_id, client.device_id, client.access_token)
        return ok(await fresh.sync(timeout=0, **kw), nio.SyncResponse)
    finally:
        await fresh.close()


async def parked_sync(server: Any, client: nio.AsyncClient, action: Callable[[], Awaitable[Any]],
                      timeout_ms: int = 30_000, **sync_kw: Any) -> nio.SyncResponse:
    """Park a long-poll /sync for `client`, run `action` while it waits, and return what the
    long-poll answered. Fails if the long-poll answered before `action` ran."""
    with ListenerProbe(server, client.user_id) as probe:
        poll = asyncio.create_task(client.sync(timeout=timeout_ms, **sync_kw))
        try:
            await probe.wait()
            assert not poll.done(), f"long-poll returned before anything happened: {poll.result()}"
            await action()
            return ok(await asyncio.wait_for(poll, timeout_ms / 1000 + 5), nio.SyncResponse)
        finally:
            if not poll.done():
                poll.cancel()
