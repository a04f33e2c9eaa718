"""Messages, puppets, formatting, actions, splitting, replies, edits and media across the bridge."""

from __future__ import annotations

from tests.bridges.irc.conftest import CHANNEL, is_msg, privmsg


async def test_messages_both_ways_with_puppet_names(irc_env):
    env = irc_env
    # Bob's own IRC connection joins under his name, with the suffix.
    alice, bob = await env.start_with_alice_and_bob()
    await bob.text(env.room_id, "hello irc")
    await alice.wait_for(privmsg("hello irc", nick="Bob[m]"))
    await alice.privmsg(CHANNEL, "hello nexa")
    ev = await bob.wait_for(is_msg("hello nexa"))
    assert ev["sender"] == env.puppet_id("alice")
    prof = await bob.client.get_displayname(ev["sender"])
    assert prof.displayname == "alice"



async def test_formatting_actions_notices_both_ways(irc_env):
    env = irc_env
    alice, bob = await env.start_with_alice_and_bob()

    # IRC -> Nexa: mIRC codes become HTML; /me becomes m.emote; NOTICE m.notice.
    await alice.privmsg(CHANNEL, "\x02bold\x02 plain \x1ditalic\x1d \x0304red\x03 \x1fu\x1f")
    ev = await bob.wait_for(is_msg("bold plain italic red u"))
    assert ev["content"]["format"] == "org.matrix.custom.html"
    html = ev["content"]["formatted_body"]
    assert "<b>bold</b>" in html and "<i>italic</i>" in html and "<u>u</u>" in html
    assert 'data-mx-color="#FF0000"' in html
    await alice.action(CHANNEL, "waves")
    ev = await bob.wait_for(lambda e: e.get("type") == "m.room.message" and
                            e["content"].get("msgtype") == "m.emote")
    assert ev["content"]["body"] == "waves" and ev["sender"] == env.puppet_id("alice")
    await alice.send(f"NOTICE {CHANNEL} :a notice")
    ev = await bob.wait_for(is_msg("a notice"))
    assert ev["content"]["msgtype"] == "m.notice"

    # Nexa -> IRC: HTML becomes mIRC codes; m.emote a CTCP ACTION; m.notice a NOTICE.
    await bob.send(env.room_id, {
        "msgtype": "m.text", "body": "strong it struck red",
        "format": "org.matrix.custom.html",
        "formatted_body": '<strong>strong</strong> <em>it</em> <del>struck</del> '
                          '<font data-mx-color="#ff0000">red</font>'})
    m = await alice.wait_for(privmsg(nick="Bob[m]"))
    assert m.text == "\x02strong\x02 \x1dit\x1d \x1estruck\x1e \x0304red\x03"
    await bob.send(env.room_id, {"msgtype": "m.emote", "body": "dances"})
    await alice.wait_for(privmsg("\x01ACTION dances\x01", nick="Bob[m]"))
    await bob.send(env.room_id, {"msgtype": "m.notice", "body": "fyi"})
    await alice.wait_for(privmsg("fyi", nick="Bob[m]", command="NOTICE"))
    # Multi-line messages are several IRC lines; nothing came back to Nexa as an echo.
    await bob.text(env.room_id, "line one\nline two")
    await alice.wait_for(privmsg("line one", nick="Bob[m]"))
    await alice.wait_for(privmsg("line two", nick="Bob[m]"))
    await alice.privmsg(CHANNEL, "marker")
    await bob.wait_for(is_msg("marker"))
    senders = {e["sender"] for e in bob.messages()}
    assert senders == {bob.user_id, env.puppet_id("alice")}
    assert [e["content"]["body"] for e in bob.messages(bob.user_id)] == [
        "strong it struck red", "dances", "fyi", "line one\nline two"]


async def test_long_messages_replies_edits_and_media(irc_env):
    import aiohttp

    env = irc_env
    alice, bob = await env.start_with_alice_and_bob()

    # A long message is split at the line limit on word/UTF-8 boundaries, nothing lost.
    words = [f"wörd{i}" for i in range(260)]
    await bob.text(env.room_id, " ".join(words))
    got = []
    while len(" ".join(got).split()) < len(words):
        got.append((await alice.wait_for(privmsg(nick="Bob[m]"))).text)
    assert len(got) >= 3 and " ".join(got).split() == words
    for line in alice.received:
        assert len(line.raw.encode("utf-8")) + 2 <= 512

    # A reply quotes what it answers; an edit is marked.
    await alice.privmsg(CHANNEL, "what time is it?")
    original = await bob.wait_for(is_msg("what time is it?"))
    await bob.send(env.room_id, {
        "msgtype": "m.text", "body": "> <@irc_alice> what time is it?\n\nnoon",
        "m.relates_to": {"m.in_reply_to": {"event_id": original["event_id"]}}})
    assert (await alice.wait_for(privmsg(nick="Bob[m]"))).text == \
        "> <alice> what time is it?"
    await alice.wait_for(privmsg("noon", nick="Bob[m]"))
    sent = await bob.text(env.room_id, "teh typo")
    await alice.wait_for(privmsg("teh typo", nick="Bob[m]"))
    await bob.send(env.room_id, {
        "msgtype": "m.text", "body": "* the typo",
        "m.new_content": {"msgtype": "m.text", "body": "the typo"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": sent}})
    await alice.wait_for(privmsg("* the typo", nick="Bob[m]"))

    # An attachment is a download link IRC users can open.
    data = b"%PDF-1.4 not really a pdf\n" * 10
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{env.srv.base_url}/_matrix/media/v3/upload",
                          params={"filename": "report.pdf"}, data=data,
                          headers={"Authorization": f"Bearer {bob.client.access_token}",
                                   "Content-Type": "application/pdf"}) as r:
            assert r.status == 200
            mxc = (await r.json())["content_uri"]
        await bob.send(env.room_id, {"msgtype": "m.file", "body": "report.pdf", "url": mxc,
                                     "info": {"size": len(data), "mimetype": "application/pdf"}})
        m = await alice.wait_for(privmsg(nick="Bob[m]"))
        assert m.text.startswith("report.pdf (260 B): http://")
        url = m.text.split(": ", 1)[1]
    async with aiohttp.ClientSession() as s:  # as anyone on IRC would: no token
        async with s.get(url) as r:
            assert r.status == 200, url
            assert await r.read() == data
