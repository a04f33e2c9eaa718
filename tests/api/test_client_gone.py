"""What a request does when its client disconnects: a write whose body has arrived runs to its
end (Quart alone would cancel it between the commit and the caches that follow); a read, such as
a /sync long-poll, and an upload still streaming its body stop at once."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from contextlib import contextmanager

import aiohttp


class Watch:
    """Sees, for requests whose path contains `marker`, the client's disconnect and the end of
    the server's work on the request."""

    def __init__(self, server, marker: str) -> None:
        self.server, self.marker = server, marker
        self.disconnected, self.finished = asyncio.Event(), asyncio.Event()
        self._inner = server.app.asgi_app

    async def _asgi(self, scope, receive, send):
        if self.marker not in scope.get("path", ""):
            return await self._inner(scope, receive, send)

        async def watched_receive():
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
            return message
        try:
            await self._inner(scope, watched_receive, send)
        finally:
            self.finished.set()

    def __enter__(self) -> Watch:
        self.server.app.asgi_app = self._asgi
        return self

    def __exit__(self, *exc) -> None:
        self.server.app.asgi_app = self._inner


async def _abandon(task: asyncio.Task) -> None:
    task.cancel()  # aiohttp closes a connection whose response was not read
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_send_whose_client_went_away_is_finished_and_consistent(api, server):
    alice = await api.register()
    room_id = await alice.create_room()
    since = (await alice.sync())["next_batch"]
    txn = f"gone{secrets.token_hex(4)}"
    entered = asyncio.Event()
    watch = Watch(server, txn)

    async def hold_until_client_left(pdu, event_id):
        if pdu.get("content", {}).get("body") == "left behind":
            entered.set()
            await watch.disconnected.wait()
        return [], None

    path = f"/rooms/{room_id}/send/m.room.message/{txn}"
    body = {"msgtype": "m.text", "body": "left behind"}
    server.hs.events.outbox_hooks.append(hold_until_client_left)
    try:
        with watch:
            async with aiohttp.ClientSession() as session:
                put = asyncio.create_task(session.put(
                    server.client_url + path, json=body,
                    headers={"Authorization": f"Bearer {alice.token}"}))
                async with asyncio.timeout(30):
                    await entered.wait()
                await _abandon(put)  # the client gives up while the event is being written
            async with asyncio.timeout(30):
                await watch.finished.wait()
    finally:
        server.hs.events.outbox_hooks.remove(hold_until_client_left)
    # The event was stored and the caches followed: sync delivers it, a retry of the same
    # transaction gets the same event, and the next message goes after it.
    seen = [e["content"].get("body") for e in
            (await alice.sync(since=since))["rooms"]["join"][room_id]["timeline"]["events"]]
    assert seen == ["left behind"]
    retry = await alice.put(path, body)
    assert retry.status == 200
    after = await alice.send_text(room_id, "and on")
    msgs = (await alice.get(f"/rooms/{room_id}/messages", params={"dir": "b", "limit": "10"})).json
    texts = [(e["event_id"], e["content"].get("body")) for e in msgs["chunk"]
             if e["type"] == "m.room.message"]
    assert texts == [(after, "and on"), (retry.json["event_id"], "left behind")]


async def test_a_long_poll_whose_client_went_away_stops(api, server, monkeypatch):
    alice = await api.register()
    since = (await alice.sync())["next_batch"]
    notifier = server.hs.notifier
    listening, stopped = asyncio.Event(), asyncio.Event()
    listen = notifier.listen

    @contextmanager
    def watched_listen(user_id, rooms):
        with listen(user_id, rooms) as listener:
            if user_id == alice.user_id:
                listening.set()
            try:
                yield listener
            finally:
                if user_id == alice.user_id:
                    stopped.set()

    monkeypatch.setattr(notifier, "listen", watched_listen)
    with Watch(server, "/sync") as watch:
        async with aiohttp.ClientSession() as session:
            poll = asyncio.create_task(session.get(
                server.client_url + "/sync", params={"since": since, "timeout": "120000"},
                headers={"Authorization": f"Bearer {alice.token}"}))
            async with asyncio.timeout(30):
                await listening.wait()  # the long-poll waits for events
            await _abandon(poll)
        async with asyncio.timeout(30):  # long before the 120 s poll would have ended
            await watch.finished.wait()
    assert stopped.is_set()


async def test_an_upload_abandoned_mid_body_stops_and_keeps_nothing(api, server):
    alice = await api.register()
    tmp_dir = server.hs.media.store.tmp
    host, port = "127.0.0.1", server.port
    with Watch(server, "/upload") as watch:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write((f"POST /_matrix/media/v3/upload?filename=a.bin HTTP/1.1\r\n"
                      f"Host: {host}:{port}\r\nAuthorization: Bearer {alice.token}\r\n"
                      f"Content-Type: application/octet-stream\r\nContent-Length: 1000000\r\n"
                      f"\r\n").encode() + b"x" * 300_000)
        await writer.drain()
        writer.close()  # gone with most of the body unsent
        await writer.wait_closed()
        async with asyncio.timeout(30):
            await watch.finished.wait()
    assert not list(tmp_dir.iterdir())
    r = await alice.get("/user/" + alice.user_id + "/account_data/none")  # server still answers
    assert r.status == 404

