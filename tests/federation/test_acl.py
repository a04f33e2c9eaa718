"""m.room.server_acl: a denied server's events and EDUs are refused by the others."""

from __future__ import annotations

import asyncio

from tests.client import Api
from tests.federation.helpers import Timeline


async def test_server_acl_blocks_events_and_typing(servers):
    s1, s2 = await servers(2)
    (s3,) = (await servers(1, host="127.0.0.2"))[-1:]  # a server on another host name
    async with Api(s1) as a1, Api(s2) as a2, Api(s3) as a3:
        alice, bob, mallory = await a1.register(), await a2.register(), await a3.register()
        room_id = await alice.create_room(preset="public_chat")
        for user in (bob, mallory):
            r = await user.post(f"/join/{room_id}", params={"server_name": s1.server_name})
            assert r.status == 200, r
        t_bob = Timeline(bob)
        await mallory.send_text(room_id, "before the ACL")
        await t_bob.wait_for(lambda t: "before the ACL" in t.bodies(room_id), "first message")

        acl = {"allow": ["*"], "deny": ["127.0.0.2"], "allow_ip_literals": True}
        assert (await alice.put(f"/rooms/{room_id}/state/m.room.server_acl", acl)).status == 200
        await t_bob.wait_for(lambda t: any(e["type"] == "m.room.server_acl"
                                           for e in t.events.get(room_id, [])), "the ACL")
        # Watch server 3 hand its transactions to server 2 (answered, so processed there).
        delivered = asyncio.Event()
        s3.hs.federation_sender.listeners.append(
            lambda dest, _txn, what: dest == s2.server_name and what == "sent" and delivered.set())
        await mallory.send_text(room_id, "after the ACL")
        await asyncio.wait_for(delivered.wait(), 30)
        delivered.clear()
        r = await mallory.put(f"/rooms/{room_id}/typing/{mallory.user_id}",
                              {"typing": True, "timeout": 30000})
        assert r.status == 200
        await asyncio.wait_for(delivered.wait(), 30)
        await alice.send_text(room_id, "marker")
        await t_bob.wait_for(lambda t: "marker" in t.bodies(room_id), "the marker")
        assert "after the ACL" not in t_bob.bodies(room_id)
        for who in (alice, bob):
            page = (await who.get(f"/rooms/{room_id}/messages", params={"limit": "50"})).json
            assert "after the ACL" not in [e["content"].get("body") for e in page["chunk"]]
        typing = [e for e in t_bob.ephemeral.get(room_id, []) if e["type"] == "m.typing"]
        assert not any(mallory.user_id in e["content"]["user_ids"] for e in typing)
