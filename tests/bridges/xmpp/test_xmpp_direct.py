"""Direct chats: an XMPP user messaging <localpart>@<component> reaches the Nexa user in a
direct room with their puppet; the Nexa user's answers go back as chat messages. A Nexa user
can start one too, by inviting the puppet."""

from __future__ import annotations

import nio

from tests.bridges.xmpp.prosody import COMPONENT_DOMAIN


async def test_direct_chat_both_ways(xmpp_env):
    env = xmpp_env
    await env.start_bridge()
    alice = await env.new_matrix_user("alice")
    bob = await env.xmpp("bob")
    bob_puppet = env.puppet("bob@localhost")
    alice_jid = env.jid_of(alice)

    bob.c.send_message(mto=alice_jid, mbody="hi alice", mtype="chat")
    await alice.wait_for(lambda: alice.invites, what="the direct chat invite")
    room_id, info = next(iter(alice.invites.items()))
    member = [e for e in info.invite_state if getattr(e, "state_key", None) == alice.user_id]
    assert member and member[0].content.get("is_direct") is True
    assert member[0].sender == bob_puppet
    resp = await alice.c.join(room_id)
    assert isinstance(resp, nio.JoinResponse), resp
    ev = await alice.wait_for(lambda: alice.find(room_id, lambda e: e["content"].get("body") ==
                                                 "hi alice"), what="Bob's message")
    assert ev["sender"] == bob_puppet

    await alice.text(room_id, "hi bob")
    got = await bob.wait_for(lambda: bob.chats(alice_jid), what="Alice's answer")
    assert [m["body"] for m in got] == ["hi bob"]
    assert got[0]["type"] == "chat"
    # The same room for the rest of the conversation; nothing loops.
    bob.c.send_message(mto=alice_jid, mbody="how are you?", mtype="chat")
    await alice.wait_for(lambda: "how are you?" in alice.bodies(room_id))
    assert alice.bodies(room_id) == ["hi alice", "hi bob", "how are you?"]
    assert len(alice.invites) == 1
    assert [m["body"] for m in bob.chats(alice_jid)] == ["hi bob"]

    # XMPP users may put Nexa users in their rosters.
    await bob.c.get_roster()
    bob.c.send_presence(pto=alice_jid, ptype="subscribe")
    await bob.wait_for(lambda: bob.c.client_roster[alice_jid]["subscription"] in ("to", "both"),
                       what="the subscription")

    # A Nexa user starts one by inviting an XMPP user's puppet.
    dave = await env.new_matrix_user("dave")
    carol = await env.xmpp("carol")
    carol_puppet = env.puppet("carol@localhost")
    resp = await dave.c.room_create(invite=[carol_puppet], is_direct=True)
    assert isinstance(resp, nio.RoomCreateResponse), resp
    await dave.wait_for(lambda: dave.find(resp.room_id, lambda e: e["type"] == "m.room.member"
                                          and e.get("state_key") == carol_puppet and
                                          e["content"].get("membership") == "join"),
                        what="the puppet to accept")
    await dave.text(resp.room_id, "hello carol")
    got = await carol.wait_for(lambda: carol.chats(env.jid_of(dave)), what="Dave's message")
    assert got[0]["body"] == "hello carol"
    carol.c.send_message(mto=env.jid_of(dave), mbody="hello dave", mtype="chat")
    ev = await dave.wait_for(lambda: dave.find(resp.room_id, lambda e: e["content"].get("body")
                                               == "hello dave"), what="Carol's answer")
    assert ev["sender"] == carol_puppet

    # Nobody there: the XMPP sender gets an error, nothing is created.
    bob.c.send_message(mto=f"nobody-here@{COMPONENT_DOMAIN}", mbody="anyone?", mtype="chat")
    err = await bob.wait_for(lambda: [m for m in bob.messages if m["type"] == "error"],
                             what="an error for an unknown user")
    assert err[0]["error"]["condition"] == "item-not-found"
