"""Nothing is lost when a side blips: the bridge restarting, the homeserver away, the IRC server
restarting. Messages arrive once each, in order."""

from __future__ import annotations

from tests.bridges.irc.conftest import CHANNEL, is_msg, privmsg
from tests.bridges.support import poll


async def test_bridge_restart_loses_nothing(irc_env):
    env = irc_env
    alice, bob = await env.start_with_alice_and_bob()
    await bob.text(env.room_id, "before")
    await alice.wait_for(privmsg("before", nick="Bob[m]"))
    await alice.privmsg(CHANNEL, "irc before")
    await bob.wait_for(is_msg("irc before"))

    # Nexa -> IRC while the bridge is down: the homeserver keeps the transactions.
    await env.stop_bridge()
    await alice.wait_for(lambda m: m.command == "QUIT" and m.nick == "Bob[m]")
    for i in range(3):
        await bob.text(env.room_id, f"while down {i}")
    await env.start_bridge()
    await alice.wait_for(lambda m: m.command == "JOIN" and m.nick == "Bob[m]")
    for i in range(3):  # wait_for consumes in order: these must come in this order
        await alice.wait_for(privmsg(f"while down {i}", nick="Bob[m]"))

    # IRC -> Nexa while the homeserver is away, across a bridge restart: queued on disk.
    await env.srv.stop()
    for i in range(3):
        await alice.privmsg(CHANNEL, f"queued {i}")
    await poll(lambda: len(env.db("SELECT 1 FROM irc_inbox WHERE op = 'message'")) == 3, 30,
               "the bridge to queue what it heard")
    await env.stop_bridge()
    await env.srv.start()
    await env.start_bridge()
    for i in range(3):
        ev = await bob.wait_for(is_msg(f"queued {i}"))
        assert ev["sender"] == env.puppet_id("alice")

    # Markers both ways, then: everything exactly once.
    await bob.text(env.room_id, "done")
    await alice.wait_for(privmsg("done", nick="Bob[m]"))
    await alice.privmsg(CHANNEL, "irc done")
    await bob.wait_for(is_msg("irc done"))
    from_bob = [m.text for m in alice.messages(CHANNEL) if m.nick == "Bob[m]"]
    assert from_bob == ["before", "while down 0", "while down 1", "while down 2", "done"]
    from_alice = [e["content"]["body"] for e in bob.messages(env.puppet_id("alice"))]
    assert from_alice == ["irc before", "queued 0", "queued 1", "queued 2", "irc done"]
    # The queues drain (a row goes once its delivery is confirmed, just after it arrived).
    await poll(lambda: env.db("SELECT (SELECT COUNT(*) FROM irc_outbox) + "
                              "(SELECT COUNT(*) FROM irc_inbox)")[0][0] == 0, 10, "empty queues")


async def test_irc_server_restart_reconnects_and_delivers_queued(irc_env):
    env = irc_env
    alice, bob = await env.start_with_alice_and_bob()
    await bob.text(env.room_id, "first")
    await alice.wait_for(privmsg("first", nick="Bob[m]"))
    carol = await env.irc("carol")
    await bob.wait_for(lambda e: e.get("type") == "m.room.member" and
                       e["state_key"] == env.puppet_id("carol"))

    # ngircd restarts; the gate keeps the bridge away until alice is back in the channel, so
    # she is there to see what the bridge queued meanwhile.
    env.gate.close()
    await env.ircd.restart()
    await bob.text(env.room_id, "queued while IRC restarts")
    await bob.send(env.room_id, {"msgtype": "m.emote", "body": "waits"})
    alice = await env.irc("alice")
    env.gate.open()
    # (The bridge's listening connection and Bob's reconnect independently.)
    await alice.wait_for(lambda m: m.command == "JOIN" and m.nick == "NexaBridge",
                         consume=False)
    await alice.wait_for(privmsg("queued while IRC restarts", nick="Bob[m]"))
    await alice.wait_for(privmsg("\x01ACTION waits\x01", nick="Bob[m]"))
    await alice.privmsg(CHANNEL, "after the restart")
    ev = await bob.wait_for(is_msg("after the restart"))
    assert ev["sender"] == env.puppet_id("alice")
    await bob.text(env.room_id, "last")
    await alice.wait_for(privmsg("last", nick="Bob[m]"))
    # carol did not come back: the channel's member list tells, and her puppet leaves.
    await bob.wait_for(lambda e: e.get("type") == "m.room.member" and
                       e["state_key"] == env.puppet_id("carol") and
                       e["content"]["membership"] == "leave", what="carol's puppet leaving",
                       anywhere=True)
    assert carol  # (her connection died with the server)
    texts = [m.text for m in alice.messages(CHANNEL) if m.nick == "Bob[m]"]
    assert texts == ["queued while IRC restarts", "\x01ACTION waits\x01", "last"]


async def test_nick_collision_gets_another_nick(irc_env):
    env = irc_env
    await env.start()
    squatter = await env.irc("Bob[m]")
    alice = await env.irc("alice")
    bob = await env.matrix("bob", displayname="Bob")
    join = await alice.wait_for(lambda m: m.command == "JOIN" and m.nick.startswith("Bob[m]")
                                and m.nick != "Bob[m]")
    await bob.text(env.room_id, "who am i")
    await alice.wait_for(privmsg("who am i", nick=join.nick))
    # The squatter's own messages are not mistaken for Bob's echoes.
    await squatter.privmsg(CHANNEL, "i am the real Bob[m]")
    ev = await bob.wait_for(is_msg("i am the real Bob[m]"))
    assert ev["sender"] != bob.user_id
