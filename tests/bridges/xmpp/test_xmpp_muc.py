"""A MUC bridged to a room: messages both ways under the right names, membership, nicks,
subjects, emotes, corrections, replies, formatting and attachment links."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import aiohttp
import nio

from tests.bridges.xmpp.conftest import MUC


def is_member_event(user_id: str, membership: str):
    return lambda e: e["type"] == "m.room.member" and e.get("state_key") == user_id and \
        e["content"].get("membership") == membership


def message_with(body: str):
    return lambda e: e["type"] == "m.room.message" and e["content"].get("body") == body


async def test_messages_both_ways_with_named_puppets(xmpp_env):
    env = xmpp_env
    await env.start_bridge()
    alice, bob, bob_puppet = await env.alice_and_bob("Alice Liddell")

    # XMPP -> Nexa: Bob's puppet joins under his nick and says what he said.
    await alice.wait_for(lambda: alice.find(env.room_id, is_member_event(bob_puppet, "join")),
                         what="Bob's puppet to join")
    bob.groupchat(MUC, "hello from xmpp").send()
    ev = await alice.wait_for(lambda: alice.find(env.room_id, message_with("hello from xmpp")),
                              what="Bob's message")
    assert ev["sender"] == bob_puppet
    assert await alice.member_name(env.room_id, bob_puppet) == "Bob"

    # Nexa -> XMPP: Alice is an occupant named after her display name.
    await bob.wait_for(lambda: any(p["from"] == f"{MUC}/Alice Liddell" for p in bob.presences),
                       what="Alice's occupant")
    await alice.text(env.room_id, "hello from matrix")
    await bob.wait_for(lambda: bob.muc_messages(MUC, "Alice Liddell"), what="Alice's text")
    # Nothing echoes: Alice's message does not come back as a puppet, Bob's is there once.
    await alice.text(env.room_id, "marker")
    await bob.wait_for(lambda: "marker" in bob.muc_bodies(MUC, "Alice Liddell"))
    bob.groupchat(MUC, "marker 2").send()
    await alice.wait_for(lambda: "marker 2" in alice.bodies(env.room_id))
    assert alice.bodies(env.room_id) == ["hello from xmpp", "hello from matrix", "marker",
                                         "marker 2"]
    assert [e["sender"] for e in alice.messages(env.room_id)] == \
        [bob_puppet, alice.user_id, alice.user_id, bob_puppet]
    assert bob.muc_bodies(MUC) == ["hello from xmpp", "hello from matrix", "marker", "marker 2"]

    # A message cannot claim to be someone else (the room's presences say who is who).
    forged = bob.groupchat(MUC, "I am carol")
    x = ET.SubElement(forged.xml, "{http://jabber.org/protocol/muc#user}x")
    ET.SubElement(x, "{http://jabber.org/protocol/muc#user}item", {"jid": "carol@localhost"})
    forged.send()
    ev = await alice.wait_for(lambda: alice.find(env.room_id, message_with("I am carol")))
    assert ev["sender"] == bob_puppet


async def test_membership_nicks_and_subject(xmpp_env):
    env = xmpp_env
    await env.start_bridge()
    owner = env.matrix_users[0]
    alice = await env.matrix("alice", "Alice")
    # Alice may change the topic; so may the bridge bot, for XMPP users.
    pl = await owner.c.room_get_state_event(env.room_id, "m.room.power_levels")
    content = dict(pl.content)
    content["users"] = {**content.get("users", {}), "@xmppbot:" + env.server_name: 50,
                        alice.user_id: 50}
    await owner.c.room_put_state(env.room_id, "m.room.power_levels", content)
    bob = await env.xmpp("bob", "Bob")
    bob_puppet = env.puppet("bob@localhost")
    await alice.wait_for(lambda: alice.find(env.room_id, is_member_event(bob_puppet, "join")))

    # An XMPP user joins and leaves: their puppet too.
    carol = await env.xmpp("carol", "Carol")
    carol_puppet = env.puppet("carol@localhost")
    await alice.wait_for(lambda: alice.find(env.room_id, is_member_event(carol_puppet, "join")),
                         what="Carol's puppet to join")
    assert await alice.member_name(env.room_id, carol_puppet) == "Carol"
    await carol.leave(MUC, "Carol")
    await alice.wait_for(lambda: alice.find(env.room_id, is_member_event(carol_puppet, "leave")),
                         what="Carol's puppet to leave")

    # A Nexa user whose name is taken on XMPP gets a marked nick.
    await env.matrix("twin", "Bob")
    await bob.wait_for(lambda: any(p["from"] == f"{MUC}/Bob [m]" and p["type"] == "available"
                                   for p in bob.presences), what="the second Bob's occupant")

    # A nick change renames the puppet in this room.
    bob.change_nick(MUC, "Bobby")
    await alice.wait_for(lambda: alice.find(env.room_id, lambda e: e["type"] == "m.room.member"
                                            and e.get("state_key") == bob_puppet and
                                            e["content"].get("displayname") == "Bobby"),
                         what="Bob's new name")
    bob.groupchat(MUC, "renamed").send()
    ev = await alice.wait_for(lambda: alice.find(env.room_id, message_with("renamed")))
    assert ev["sender"] == bob_puppet  # the same puppet, not a new one

    # Nexa users join, rename themselves and leave: presences on XMPP.
    dave = await env.matrix("davem", "Dave M")
    await bob.wait_for(lambda: any(p["from"] == f"{MUC}/Dave M" and p["type"] == "available"
                                   for p in bob.presences), what="Dave's occupant")
    await dave.c.set_displayname("David")
    await bob.wait_for(lambda: any(p["from"] == f"{MUC}/David" and p["type"] == "available"
                                   for p in bob.presences), what="Dave's new nick")
    await dave.c.room_leave(env.room_id)
    await bob.wait_for(lambda: any(p["from"] == f"{MUC}/David" and p["type"] == "unavailable"
                                   for p in bob.presences), what="Dave leaving")

    # Subject <-> topic.
    bob.c.plugin["xep_0045"].set_subject(MUC, "Talk about tea")
    ev = await alice.wait_for(lambda: alice.find(env.room_id, lambda e: e["type"] ==
                                                 "m.room.topic" and e["content"].get("topic")
                                                 == "Talk about tea"), what="the topic")
    resp = await alice.c.room_put_state(env.room_id, "m.room.topic",
                                        {"topic": "Talk about coffee"})
    assert isinstance(resp, nio.RoomPutStateResponse), resp
    await bob.wait_for(lambda: any(m["subject"] == "Talk about coffee" and
                                   m["from"] == f"{MUC}/Alice" for m in bob.messages),
                       what="the subject from Matrix")
    # The topic does not come back from XMPP as a second change.
    bob.groupchat(MUC, "after topics").send()
    await alice.wait_for(lambda: "after topics" in alice.bodies(env.room_id))
    topics = [e["content"]["topic"] for e in alice.events
              if e["room_id"] == env.room_id and e["type"] == "m.room.topic"]
    assert topics[-2:] == ["Talk about tea", "Talk about coffee"]


async def test_emotes_corrections_replies_formatting_and_files(xmpp_env):
    env = xmpp_env
    await env.start_bridge()
    alice, bob, bob_puppet = await env.alice_and_bob()
    await alice.wait_for(lambda: alice.find(env.room_id, is_member_event(bob_puppet, "join")))
    await bob.wait_for(lambda: any(p["from"] == f"{MUC}/Alice" for p in bob.presences))

    # /me <-> m.emote
    bob.groupchat(MUC, "/me waves").send()
    ev = await alice.wait_for(lambda: alice.find(env.room_id, message_with("waves")))
    assert ev["content"]["msgtype"] == "m.emote"
    await alice.send(env.room_id, {"msgtype": "m.emote", "body": "bows"})
    await bob.wait_for(lambda: "/me bows" in bob.muc_bodies(MUC, "Alice"))

    # Corrections (XEP-0308) <-> edits.
    original = bob.groupchat(MUC, "teh typo")
    original.send()
    typo = await alice.wait_for(lambda: alice.find(env.room_id, message_with("teh typo")))
    fix = bob.c.plugin["xep_0308"].build_correction(original["id"], MUC, mtype="groupchat",
                                                     mbody="the typo")
    fix.send()
    edit = await alice.wait_for(lambda: alice.find(env.room_id, lambda e: e["content"].get(
        "m.relates_to", {}).get("rel_type") == "m.replace"), what="the edit")
    assert edit["content"]["m.relates_to"]["event_id"] == typo["event_id"]
    assert edit["content"]["m.new_content"]["body"] == "the typo"
    assert edit["sender"] == bob_puppet
    first = await alice.text(env.room_id, "helo")
    sent = await bob.wait_for(lambda: [m for m in bob.muc_messages(MUC, "Alice")
                                       if m["body"] == "helo"])
    await alice.send(env.room_id, {"msgtype": "m.text", "body": "* hello",
                                   "m.new_content": {"msgtype": "m.text", "body": "hello"},
                                   "m.relates_to": {"rel_type": "m.replace", "event_id": first}})
    fixed = await bob.wait_for(lambda: [m for m in bob.muc_messages(MUC, "Alice")
                                        if m["body"] == "hello"], what="the correction")
    assert fixed[0]["replace"]["id"] == sent[0]["id"]

    # Replies (XEP-0461) <-> m.in_reply_to, with the quote as a fallback for other clients.
    target = sent[0]
    reply = bob.c.plugin["xep_0461"].make_reply(
        f"{MUC}/Alice", target["stanza_id"]["id"], fallback="helo", quoted_nick="Alice",
        mto=MUC, mbody="yes, hello", mtype="groupchat")
    reply.send()
    ev = await alice.wait_for(lambda: alice.find(env.room_id, lambda e: e["content"].get(
        "m.relates_to", {}).get("m.in_reply_to")), what="Bob's reply")
    assert ev["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == first
    assert ev["content"]["body"] == "yes, hello"  # the quote is cut out
    bob_msg = [m for m in bob.muc_messages(MUC, "Bob") if m["body"] == "teh typo"][0]
    await alice.send(env.room_id, {"msgtype": "m.text", "body": "indeed",
                                   "m.relates_to": {"m.in_reply_to": {
                                       "event_id": typo["event_id"]}}})
    got = await bob.wait_for(lambda: [m for m in bob.muc_messages(MUC, "Alice")
                                      if m["body"].endswith("indeed")], what="Alice's reply")
    assert got[0]["reply"]["id"] == bob_msg["stanza_id"]["id"]
    assert got[0]["reply"]["to"] == f"{MUC}/Bob"
    assert got[0]["reply"].strip_fallback_content() == "indeed"
    assert got[0]["body"].startswith("> Bob:\n> teh typo\n")

    # Formatting: Matrix HTML <-> XHTML-IM, with the plain body alongside.
    await alice.send(env.room_id, {"msgtype": "m.text", "body": "bold and link",
                                   "format": "org.matrix.custom.html",
                                   "formatted_body": '<strong>bold</strong> and <a href='
                                                     '"https://example.org/">link</a>'
                                                     '<script>x</script>'})
    rich = await bob.wait_for(lambda: [m for m in bob.muc_messages(MUC, "Alice")
                                       if m["body"] == "bold and link"])
    html_body = rich[0]["html"].get_body()
    assert "<strong>bold</strong>" in html_body and 'href="https://example.org/"' in html_body
    assert "script" not in html_body
    styled = bob.groupchat(MUC, "very important")
    styled["html"]["body"] = "<em>very</em> important"
    styled.send()
    ev = await alice.wait_for(lambda: alice.find(env.room_id, message_with("very important")))
    assert ev["content"]["formatted_body"] == "<em>very</em> important"

    # Attachments: a link to the homeserver's download (and an OOB URL XMPP clients show).
    up, _ = await alice.c.upload(lambda *_: b"file contents", content_type="text/plain",
                                 filename="notes.txt", filesize=13)
    assert isinstance(up, nio.UploadResponse), up
    await alice.send(env.room_id, {"msgtype": "m.file", "body": "notes.txt",
                                   "url": up.content_uri, "info": {"size": 13}})
    shared = await bob.wait_for(lambda: [m for m in bob.muc_messages(MUC, "Alice")
                                         if m["oob"]["url"]], what="the file link")
    url = shared[0]["oob"]["url"]
    assert shared[0]["body"] == url and url.endswith("/notes.txt")
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 200 and await r.read() == b"file contents"
    link = bob.groupchat(MUC, "https://xmpp.example/f/cat.png")
    link["oob"]["url"] = "https://xmpp.example/f/cat.png"
    link.send()
    ev = await alice.wait_for(lambda: alice.find(env.room_id, lambda e: "cat.png" in
                                                 e["content"].get("body", "")))
    assert ev["content"]["body"] == "https://xmpp.example/f/cat.png"
    assert 'href="https://xmpp.example/f/cat.png"' in ev["content"]["formatted_body"]
