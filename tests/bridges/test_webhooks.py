"""The webhooks bridge: incoming Slack-style posts (per-room secret URLs, optional signatures,
bad input refused with nothing posted) and outgoing signed deliveries with durable retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re

import aiohttp
from aiohttp import web

from bridges.webhooks.bridge import WebhooksBridge, sign
from tests.bridges.conftest import messages, wait_for_message
from tests.client import Api
from tests.servers import free_port

SECRET = "incoming-secret-0123456789"
SIGNED_SECRET = "signed-incoming-secret-0123"
SIGNING_KEY = "signing-key-abcdef"


async def setup_room(api: Api, st, public: bool = False):
    human = await api.register()
    room = await human.create_room(preset="public_chat" if public else "private_chat")
    bot = st.bridge.client.bot_user_id
    r = await human.post(f"/rooms/{room}/invite", {"user_id": bot})
    assert r.status == 200, r
    for _ in range(100):  # the bot accepts the pushed invite
        members = await human.get(f"/rooms/{room}/joined_members")
        if bot in members.json["joined"]:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the bridge bot did not join")
    return human, room


def webhooks_section(**kw):
    return {"webhooks": {"retry_base_ms": 50, "retry_max_ms": 300, "request_timeout_s": 3, **kw}}


async def test_incoming_posts_as_puppet_or_bot(bridge_stack):
    st = await bridge_stack(WebhooksBridge, start=False)
    async with Api(st.srv) as api:
        await st.bridge.start()
        human, room = await setup_room(api, st)
        await st.bridge.stop()
        st.config = st.config.model_copy(update={"webhooks": webhooks_section(hooks=[
            {"room": room, "secret": SECRET},
            {"room": room, "secret": SIGNED_SECRET, "signing_secret": SIGNING_KEY}])["webhooks"]})
        st.bridge = WebhooksBridge(st.config)
        await st.bridge.start()
        url = f"http://127.0.0.1:{st.port}/webhooks/{SECRET}"
        async with aiohttp.ClientSession() as s:
            async def post(body=None, raw=None, target=url, headers=None):
                kw = {"data": raw} if raw is not None else {"json": body}
                async with s.post(target, headers=headers, **kw) as r:
                    return r.status, await r.text()

            assert await post({"text": "Build #42 passed", "username": "CI Bot"}) == (200, "ok")
            ev = await wait_for_message(human, room, lambda e: e["content"]["body"] ==
                                        "Build #42 passed")
            assert ev["sender"] == st.bridge.client.user_id("webhook_ci_bot")
            prof = await human.get(f"/profile/{ev['sender']}/displayname")
            assert prof.json["displayname"] == "CI Bot"
            assert (await post({"text": "no name given"}))[0] == 200
            ev = await wait_for_message(human, room, lambda e: e["content"]["body"] ==
                                        "no name given")
            assert ev["sender"] == st.bridge.client.bot_user_id
            # Slack's form encoding: payload=<json>.
            status, _ = await post(raw=aiohttp.FormData({"payload": json.dumps(
                {"text": "from a form", "username": "CI Bot"})}))
            assert status == 200
            await wait_for_message(human, room, lambda e: e["content"]["body"] == "from a form")

            before = len(await messages(human, room))
            bad = [
                ({"text": "x"}, None, url.replace(SECRET, "wrong-secret-0123456789"), 404),
                (None, b"not json", url, 400),
                (None, b"[1, 2]", url, 400),
                ({"username": "no text"}, None, url, 400),
                ({"text": ""}, None, url, 400),
                ({"text": 42}, None, url, 400),
                ({"text": "x", "username": 7}, None, url, 400),
                ({"text": "x", "username": ""}, None, url, 400),
                ({"text": "x" * 40_000}, None, url, 413),
                (None, b"\xff\xfe", url, 400),
                (None, b'{"text": "nul \\u0000"}', url, 400),
                (None, aiohttp.FormData({"nopayload": "1"}), url, 400),
            ]
            for body, raw, target, want in bad:
                status, _ = await post(body, raw, target)
                assert status == want, (body, raw, status)
            # A hook that wants signatures refuses unsigned and badly signed bodies.
            signed_url = f"http://127.0.0.1:{st.port}/webhooks/{SIGNED_SECRET}"
            payload = json.dumps({"text": "signed hello"}).encode()
            assert (await post(raw=payload, target=signed_url))[0] == 401
            assert (await post(raw=payload, target=signed_url,
                               headers={"X-Nexa-Signature": "sha256=00"}))[0] == 401
            wrong = sign("not-the-key", payload)
            assert (await post(raw=payload, target=signed_url,
                               headers={"X-Nexa-Signature": wrong}))[0] == 401
            assert len(await messages(human, room)) == before  # nothing was posted
            good = sign(SIGNING_KEY, payload)
            assert (await post(raw=payload, target=signed_url,
                               headers={"X-Nexa-Signature": good,
                                        "Content-Type": "application/json"}))[0] == 200
            await wait_for_message(human, room, lambda e: e["content"]["body"] == "signed hello")


async def test_room_commands_manage_hooks(bridge_stack):
    st = await bridge_stack(WebhooksBridge, section=webhooks_section())
    async with Api(st.srv) as api:
        human, room = await setup_room(api, st, public=True)
        await human.send_text(room, "!webhook new")
        reply = await wait_for_message(human, room, lambda e: "New incoming webhook" in
                                       e["content"]["body"])
        assert reply["sender"] == st.bridge.client.bot_user_id
        assert reply["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
        hook_url = re.search(r"http://\S+", reply["content"]["body"]).group(0)
        async with aiohttp.ClientSession() as s:
            async with s.post(hook_url, json={"text": "via a made hook", "username": "Cron"}) as r:
                assert r.status == 200
        await wait_for_message(human, room, lambda e: e["content"]["body"] == "via a made hook")
        # Someone without power in the room cannot make hooks.
        guest = await api.register()
        await guest.join(room)
        await guest.send_text(room, "!webhook new")
        await wait_for_message(human, room, lambda e: "Only room moderators" in
                               e["content"]["body"])
        await human.send_text(room, "!webhook list")
        await wait_for_message(human, room, lambda e: "1 incoming webhook(s)" in
                               e["content"]["body"])
        await human.send_text(room, "!webhook revoke")
        await wait_for_message(human, room, lambda e: "revoked" in e["content"]["body"])
        async with aiohttp.ClientSession() as s:
            async with s.post(hook_url, json={"text": "too late"}) as r:
                assert r.status == 404


class Receiver:
    """An outgoing-webhook endpoint that checks signatures; fails the first `fail` posts."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.received: list[dict] = []
        self.attempts = 0
        self.bad_signatures = 0
        self.fail = 0
        self.status_on_fail = 500
        self.changed = asyncio.Event()
        self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.attempts += 1
        self.changed.set()
        want = "sha256=" + hmac.new(self.key.encode(), raw, hashlib.sha256).hexdigest()
        if request.headers.get("X-Nexa-Signature") != want:
            self.bad_signatures += 1
            return web.Response(status=401)
        if self.fail:
            self.fail -= 1
            return web.Response(status=self.status_on_fail)
        self.received.append(json.loads(raw))
        return web.Response(text="thanks")

    async def start(self):
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self):
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, pred, timeout=10.0):
        async def loop():
            while not pred():
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 0.2)
                except asyncio.TimeoutError:
                    pass
        await asyncio.wait_for(loop(), timeout)


async def test_outgoing_signed_retried_and_durable(bridge_stack, tmp_path):
    receiver = Receiver(SIGNING_KEY)
    await receiver.start()
    st = await bridge_stack(WebhooksBridge, start=False)
    try:
        async with Api(st.srv) as api:
            await st.bridge.start()
            human, room = await setup_room(api, st, public=True)
            await st.bridge.stop()
            st.config = st.config.model_copy(update=webhooks_section(
                outgoing=[{"room": room, "url": receiver.url, "secret": SIGNING_KEY}],
                hooks=[{"room": room, "secret": SECRET}]))
            st.bridge = WebhooksBridge(st.config)
            await st.bridge.start()
            # Retried with backoff until the receiver takes it, exactly once.
            receiver.fail = 2
            event_id = await human.send_text(room, "deploy finished")
            await receiver.wait_for(lambda: receiver.received)
            assert receiver.attempts == 3 and receiver.bad_signatures == 0
            got = receiver.received[0]
            assert got["event_id"] == event_id and got["text"] == "deploy finished"
            assert got["sender"] == human.user_id and got["room_id"] == room
            # Messages posted through the bridge itself are not sent back out.
            async with aiohttp.ClientSession() as s:
                async with s.post(f"http://127.0.0.1:{st.port}/webhooks/{SECRET}",
                                  json={"text": "from outside", "username": "Ext"}) as r:
                    assert r.status == 200
            # In order, and durable: the receiver is down while the bridge restarts.
            await receiver.stop()
            queued = [await human.send_text(room, f"queued {i}") for i in range(5)]

            async def in_queue() -> set[str]:
                rows = await st.bridge.store.fetch("SELECT event_id FROM webhook_queue")
                return {r["event_id"] for r in rows}

            # All five are in the bridge's durable queue before it restarts (otherwise the
            # homeserver's redelivery, not the queue, would be what brings them across).
            async with asyncio.timeout(10):
                while not set(queued) <= await in_queue():
                    await asyncio.sleep(0.05)
            await st.restart_bridge()
            await receiver.start()
            await receiver.wait_for(lambda: len(receiver.received) >= 6, timeout=20)
            texts = [m["text"] for m in receiver.received]
            assert texts == ["deploy finished"] + [f"queued {i}" for i in range(5)]
            # A receiver that refuses with a 4xx gets it dropped, not retried forever.
            receiver.fail, receiver.status_on_fail = 1, 422
            attempts = receiver.attempts
            await human.send_text(room, "unwanted")
            await human.send_text(room, "wanted")
            await receiver.wait_for(lambda: receiver.received[-1]["text"] == "wanted")
            assert receiver.attempts == attempts + 2
            assert "unwanted" not in [m["text"] for m in receiver.received]
    finally:
        await receiver.stop()
