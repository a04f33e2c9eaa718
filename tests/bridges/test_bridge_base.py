"""The shared bridge base: the transaction server (hs_token, txnId de-duplication that survives
a restart), the mapping store, and the intent API against a real homeserver."""

from __future__ import annotations

import asyncio

import aiohttp

from bridges.appservice import AppServiceServer, Bridge, Store
from tests.bridges.conftest import messages, wait_for_message
from tests.client import Api


async def test_transaction_server_checks_the_token_and_processes_each_txn_once(tmp_path):
    store = Store(tmp_path / "b.db")
    await store.open()
    seen: list[str] = []
    fail = {"n": 0}

    async def handler(ev):
        if fail["n"]:
            fail["n"] -= 1
            raise RuntimeError("bridge hiccup")
        seen.append(ev["event_id"])

    server = AppServiceServer("secret-hs-token", store)
    server.event_handlers.append(handler)
    await server.start()
    base = f"http://127.0.0.1:{server.port}/_matrix/app/v1"
    txn = {"events": [{"event_id": "$a", "type": "m.room.message", "room_id": "!r:hs"},
                      {"event_id": "$b", "type": "m.room.message", "room_id": "!r:hs"}]}
    good = {"Authorization": "Bearer secret-hs-token"}
    try:
        async with aiohttp.ClientSession() as s:
            async def put(txn_id, body=txn, headers=good, raw=None, params=None):
                kw = {"data": raw} if raw is not None else {"json": body}
                async with s.put(f"{base}/transactions/{txn_id}", headers=headers,
                                 params=params, **kw) as r:
                    return r.status, await r.json()

            assert await put("1", headers={}) == (401, {"errcode": "M_UNAUTHORIZED",
                                                        "error": "Missing hs_token"})
            status, body = await put("1", headers={"Authorization": "Bearer wrong"})
            assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
            assert seen == []
            assert (await put("1", raw=b"{not json"))[0] == 400
            assert (await put("1", body={"events": "nope"}))[0] == 400
            assert (await put("1", body=[1, 2]))[0] == 400
            assert seen == []
            assert await put("1") == (200, {})
            assert await put("1") == (200, {})  # a retry: acknowledged, not processed again
            assert seen == ["$a", "$b"]
            # The legacy query-parameter form of the token.
            assert (await put("2", headers={}, params={"access_token": "secret-hs-token"}))[0] \
                == 200
            assert seen == ["$a", "$b", "$a", "$b"]
            # A failing handler: 500, and the same transaction is processed on the retry.
            fail["n"] = 1
            assert (await put("3"))[0] == 500
            assert (await put("3"))[0] == 200
            assert seen[-2:] == ["$a", "$b"] and len(seen) == 6
            for path in ("/users/@x:hs", "/rooms/%23x:hs"):
                async with s.get(base + path) as r:
                    assert r.status == 401
                async with s.get(base + path, headers={"Authorization": "Bearer no"}) as r:
                    assert r.status == 403
                async with s.get(base + path, headers=good) as r:
                    assert r.status == 404
            async with s.post(base + "/ping", json={}, headers=good) as r:
                assert r.status == 200
            # An event that can never be handled does not block the queue forever.
            server.max_attempts = 3
            fail["n"] = 10**6
            statuses = [(await put("poison"))[0] for _ in range(4)]
            assert statuses == [500, 500, 200, 200]
            fail["n"] = 0
        # A restart (same database) still knows the transactions it processed.
        await server.stop()
        await store.close()
        store = Store(tmp_path / "b.db")
        await store.open()
        server = AppServiceServer("secret-hs-token", store, port=server.port)
        server.event_handlers.append(handler)
        await server.start()
        async with aiohttp.ClientSession() as s:
            async with s.put(f"{base}/transactions/1", json=txn, headers=good) as r:
                assert r.status == 200
        assert len(seen) == 6
    finally:
        await server.stop()
        await store.close()


async def test_mapping_store_persists(tmp_path):
    store = Store(tmp_path / "m.db")
    await store.open()
    await store.set_mapping("user", "irc:alice", "@irc_alice:hs")
    await store.set_mapping("room", "#chan", "!abc:hs")
    await store.set_mapping("room", "#chan", "!def:hs")  # re-pointed
    await store.put_json("settings", "x", {"a": [1, 2]})
    await store.close()
    store = Store(tmp_path / "m.db")
    await store.open()
    assert await store.matrix_id("user", "irc:alice") == "@irc_alice:hs"
    assert await store.remote_id("user", "@irc_alice:hs") == "irc:alice"
    assert await store.matrix_id("room", "#chan") == "!def:hs"
    assert await store.remote_id("room", "!abc:hs") is None
    assert await store.mappings("room") == [("#chan", "!def:hs")]
    assert await store.get_json("settings", "x") == {"a": [1, 2]}
    await store.delete_mapping("room", "#chan")
    assert await store.matrix_id("room", "#chan") is None
    await store.close()


class RecordingBridge(Bridge):
    name = "recording"

    def __init__(self, config) -> None:
        super().__init__(config)
        self.events: list[dict] = []
        self.fail_next = 0
        self.arrived = asyncio.Event()

    async def handle_event(self, event):
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("transient")
        self.events.append(event)
        self.arrived.set()

    async def wait_for(self, pred, timeout=10.0):
        async def loop():
            while not any(pred(e) for e in self.events):
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(loop(), timeout)
        return [e for e in self.events if pred(e)]


async def test_intent_api_and_pushed_events(bridge_stack):
    st = await bridge_stack(RecordingBridge, users=[("@rec_.*", True)])
    bridge: RecordingBridge = st.bridge
    client = bridge.client
    async with Api(st.srv) as api:
        human = await api.register()
        # A public room: a puppet joins by itself.
        public = await human.create_room(preset="public_chat")
        alice = client.intent(client.user_id("rec_alice"))
        await alice.ensure_registered()
        await alice.ensure_registered()  # idempotent
        await alice.set_displayname("Alice (remote)")
        event_id = await alice.send_text(public, "hello from the other side")
        ev = await wait_for_message(human, public, lambda e: e["event_id"] == event_id)
        assert ev["sender"] == alice.user_id
        prof = await human.get(f"/profile/{alice.user_id}/displayname")
        assert prof.json["displayname"] == "Alice (remote)"
        # A private room: the human invites the bridge bot, which accepts (pushed invite), and
        # the bot then invites its puppets as needed.
        private = await human.create_room()
        r = await human.post(f"/rooms/{private}/invite", {"user_id": client.bot_user_id})
        assert r.status == 200
        await bridge.wait_for(lambda e: e["type"] == "m.room.member"
                              and e["state_key"] == client.bot_user_id
                              and e["content"]["membership"] == "join")
        bob = client.intent(client.user_id("rec_bob"))
        await bob.send_text(private, "bob made it in", txn_id="same-txn")
        await bob.send_text(private, "bob made it in", txn_id="same-txn")  # not twice
        got = [m for m in await messages(human, private) if m["sender"] == bob.user_id]
        assert [m["content"]["body"] for m in got] == ["bob made it in"]
        # The human's messages reach the bridge as transactions.
        await human.send_text(private, "to the bridge")
        pushed = await bridge.wait_for(lambda e: e.get("content", {}).get("body") == "to the bridge")
        assert pushed[0]["sender"] == human.user_id and pushed[0]["room_id"] == private
        # A bridge failure makes the homeserver retry the same transaction: processed again
        # (at least once), acknowledged once.
        bridge.fail_next = 1
        processed = bridge.server.transactions_processed
        await human.send_text(private, "retried")
        await bridge.wait_for(lambda e: e.get("content", {}).get("body") == "retried")
        assert bridge.server.transactions_processed == processed + 1
        assert bridge.is_ours(bob.user_id) and bridge.is_ours(client.bot_user_id)
        assert not bridge.is_ours(human.user_id)
