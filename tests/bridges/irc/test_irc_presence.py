"""Joins, parts, nick changes and topics in both directions; mentions."""

from __future__ import annotations

from tests.bridges.irc.conftest import CHANNEL, is_msg, privmsg


def member(user_id: str, membership: str):
    return lambda e: e.get("type") == "m.room.member" and e.get("state_key") == user_id and \
        e["content"].get("membership") == membership


async def test_joins_parts_nicks_and_topics(irc_env):
    env = irc_env
    alice, bob = await env.start_with_alice_and_bob()
    # alice was already in the channel: her puppet is in the room.
    await bob.wait_for(member(env.puppet_id("alice"), "join"))

    # IRC join and part -> puppet membership.
    carol = await env.irc("Carol")
    await bob.wait_for(member(env.puppet_id("carol"), "join"))
    await carol.send(f"PART {CHANNEL} :bye")
    await bob.wait_for(member(env.puppet_id("carol"), "leave"))

    # IRC nick change: same puppet, new display name; it keeps speaking as the same user.
    await alice.send("NICK alicia")
    await alice.wait_for(lambda m: m.command == "NICK" and m.text == "alicia")
    ev = await bob.wait_for(lambda e: e.get("type") == "m.room.member" and
                            e["state_key"] == env.puppet_id("alice") and
                            e["content"].get("displayname") == "alicia")
    assert ev["content"]["membership"] == "join"
    await alice.privmsg(CHANNEL, "renamed")
    ev = await bob.wait_for(is_msg("renamed"))
    assert ev["sender"] == env.puppet_id("alice")
    # A new user taking the old nick gets a puppet of their own.
    other = await env.irc("alice")
    ev = await bob.wait_for(lambda e: e.get("type") == "m.room.member" and
                            e["content"].get("membership") == "join" and
                            e["content"].get("displayname") == "alice")
    assert ev["state_key"] not in (env.puppet_id("alice"),)
    await other.close()

    # Nexa display name change -> IRC NICK.
    await bob.client.set_displayname("Bobby")
    await alice.wait_for(lambda m: m.command == "NICK" and m.nick == "Bob[m]" and
                         m.text == "Bobby[m]")
    # "nick: text" addressed to a Nexa user is a mention there.
    await alice.privmsg(CHANNEL, "Bobby[m]: ping")
    ev = await bob.wait_for(is_msg("Bobby[m]: ping"))
    assert ev["content"]["m.mentions"] == {"user_ids": [bob.user_id]}
    assert f"https://matrix.to/#/{bob.user_id}" in ev["content"]["formatted_body"]

    # Topics both ways.
    await alice.send(f"TOPIC {CHANNEL} :from irc")
    ev = await bob.wait_for(lambda e: e.get("type") == "m.room.topic" and
                            e["content"].get("topic") == "from irc")
    # Only room moderators may change a portal's topic on Nexa (as with channel operators).
    await env.promote(bob.user_id)
    resp = await bob.client.room_put_state(env.room_id, "m.room.topic", {"topic": "from nexa"})
    assert resp.event_id
    # (Bobby is no channel operator on a +t channel: the bridge's connection sets it.)
    await alice.wait_for(lambda m: m.command == "TOPIC" and m.text == "from nexa" and
                         m.nick in ("Bobby[m]", "NexaBridge"))

    # Leaving the room on Nexa takes Bob off IRC.
    await bob.client.room_leave(env.room_id)
    await alice.wait_for(lambda m: m.command in ("PART", "QUIT") and m.nick == "Bobby[m]")


async def test_relay_mode_is_clearly_marked(irc_env):
    env = irc_env
    await env.start(mode="relay", max_lines=2)
    alice = await env.irc("alice")
    bob = await env.matrix("bob", displayname="Bob")
    await bob.text(env.room_id, "via the relay")
    await alice.wait_for(privmsg("<Bob> via the relay", nick="NexaBridge"))
    await bob.send(env.room_id, {"msgtype": "m.emote", "body": "waves"})
    await alice.wait_for(privmsg("* Bob waves", nick="NexaBridge"))
    await alice.privmsg(CHANNEL, "hi relay")
    ev = await bob.wait_for(is_msg("hi relay"))
    assert ev["sender"] == env.puppet_id("alice")
    assert not any(m.command == "JOIN" and m.nick.endswith("[m]") for m in alice.received)

    # Longer than max_lines: the first lines, then a link to the whole text.
    import aiohttp

    long_text = " ".join(f"word{i}" for i in range(400))
    await bob.text(env.room_id, long_text)
    first = await alice.wait_for(privmsg(nick="NexaBridge"))
    assert first.text.startswith("<Bob> word0 word1")
    cut = await alice.wait_for(privmsg(nick="NexaBridge"))
    assert cut.text.startswith("<Bob> … (full message: http")
    url = cut.text.split("full message: ", 1)[1].rstrip(")")
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 200 and (await r.read()).decode() == long_text
