"""Heisenbridge, a third-party IRC bridge from PyPI, unmodified against Nexa and a real IRC
server (Debian's ngircd): the registration it generates is loaded as is, its owner talks to it
in a control room, it connects to IRC, bridges a channel both ways with one puppet per IRC
nick, and a restart of the bridge picks everything up again from what Nexa stored.

The first test drives the mautrix-python calls heisenbridge makes (mautrix is the library
heisenbridge is built on) directly, including the ones its happy path never reaches.
"""

from __future__ import annotations

import re
import secrets

import aiohttp
import pytest
from mautrix.api import Method, Path
from mautrix.appservice import AppService as MautrixAppService
from mautrix.errors import MForbidden, MNotFound, MUserInUse
from mautrix.types import EventType, JoinRule, Membership, PresenceState

from tests.bridges.conftest import FAST_RETRIES
from tests.bridges.fake_as import write_registration
from tests.bridges.heisenbridge_support import Heisenbridge, MatrixUser, until
from tests.bridges.ircd import IrcTestClient, NgIRCd, ngircd_available
from tests.servers import free_port, start_server

needs_ngircd = pytest.mark.skipif(not ngircd_available(), reason="ngircd is not installed")

NETWORK = "test"


class Stack:
    def __init__(self, srv, ircd: NgIRCd, bridge: Heisenbridge) -> None:
        self.srv = srv
        self.ircd = ircd
        self.bridge = bridge
        self.bot = f"@heisenbridge:{srv.server_name}"
        self.users: list[MatrixUser] = []

    def puppet(self, nick: str) -> str:
        return f"@irc_{NETWORK}_{nick}:{self.srv.server_name}"

    async def user(self, name: str) -> MatrixUser:
        u = MatrixUser(self.srv.base_url)
        self.users.append(u)
        return await u.register(name)


@pytest.fixture
async def stack(backend, tmp_path):
    """ngircd, a Nexa server started with heisenbridge's own registration, and heisenbridge."""
    ircd = NgIRCd(tmp_path)
    await ircd.start()
    bridge = Heisenbridge(tmp_path)
    srv = None
    try:
        await bridge.generate()
        srv = await start_server(tmp_path, backend, appservices=[str(bridge.registration_path)],
                                 appservice_sender=FAST_RETRIES)
        await bridge.start(srv.base_url)
        st = Stack(srv, ircd, bridge)
        yield st
        for u in st.users:
            await u.close()
    finally:
        # Shown only when the test fails: what the bridge saw.
        print("--- heisenbridge log (tail) ---\n" + bridge.log_tail(80))
        await bridge.stop()
        if srv is not None:
            await srv.destroy()
        await ircd.stop()


async def open_channel(st: Stack, owner: MatrixUser, channel: str) -> tuple[str, str, str]:
    """The owner's way in: DM the bot (control room), add the network and server, open and
    connect it, join a channel. Returns (control room, network room, channel room)."""
    control = await owner.create_dm(st.bot)
    await owner.wait_text(control, "Howdy", st.bot)  # it joined and made owner its owner
    await owner.wait_text(control, "ADDNETWORK", st.bot)  # the command help
    await owner.say(control, f"ADDNETWORK {NETWORK}")
    await owner.wait_text(control, "Network added.", st.bot)
    await owner.say(control, f"ADDSERVER {NETWORK} 127.0.0.1 {st.ircd.port}")
    await owner.wait_text(control, "Server added.", st.bot)
    await owner.say(control, f"OPEN {NETWORK}")
    network = await owner.wait_invite(what="the network room")
    await owner.join(network)
    await owner.say(network, "CONNECT")
    await owner.wait_text(network, "Welcome to the Internet Relay Network", st.bot)
    await owner.say(network, f"JOIN {channel}")
    room = await owner.wait_invite(lambda r: r not in (control, network), "the channel room")
    await owner.join(room)
    await owner.wait_text(room, f"Joined {channel}", st.bot)
    return control, network, room


def said(text: str, channel: str | None = None):
    return lambda m: m.command == "PRIVMSG" and m.text == text and (
        channel is None or m.params[0].lower() == channel.lower())


async def test_mautrix_calls_heisenbridge_makes(backend, tmp_path):
    """Each call of heisenbridge's (through mautrix's IntentAPI, as it makes them), with the
    answers it relies on: M_USER_IN_USE, 404 M_NOT_FOUND for unset account data, state with an
    empty key (a trailing slash), profile, members, receipts, presence, media with the
    as_token, invite/kick/leave/forget."""
    reg_path = tmp_path / "heisenbridge.yaml"
    reg = write_registration(reg_path, id="heisenbridge", url=None, sender="heisenbridge",
                             users=[("@irc_.*", True)])
    srv = await start_server(tmp_path, backend, appservices=[str(reg_path)])
    az = MautrixAppService(id="heisenbridge", domain=srv.server_name, server=srv.base_url,
                           as_token=reg["as_token"], hs_token=reg["hs_token"],
                           bot_localpart="heisenbridge")
    # Its listener gets nothing (the registration has no url): only the client side is used.
    await az.start(host="127.0.0.1", port=free_port())
    bot = az.intent
    puppet = az.intent.user(f"@irc_{NETWORK}_bob:{srv.server_name}")
    try:
        # Start-up: register the sender (already there), whoami, config in account data.
        with pytest.raises(MUserInUse):
            await bot.api.request(Method.POST, Path.v3.register, {
                "type": "m.login.application_service", "username": "heisenbridge",
                "inhibit_login": True})
        assert (await bot.whoami()).user_id == bot.mxid
        with pytest.raises(MNotFound):
            await bot.get_account_data("irc")
        await bot.set_account_data("irc", {"networks": {}, "owner": None})
        assert await bot.get_account_data("irc") == {"networks": {}, "owner": None}
        assert await bot.get_joined_rooms() == []

        # A room as heisenbridge creates one (extra vendor fields are ignored).
        room = (await bot.api.request(Method.POST, Path.v3.createRoom, {
            "visibility": "private", "name": "#chan (test)", "topic": "", "invite": [],
            "is_direct": False, "com.beeper.auto_join_invites": True,
            "power_level_content_override": {
                "users_default": 0, "invite": 100, "kick": 100, "redact": 100, "ban": 100,
                "events": {"m.room.name": 0, "m.room.avatar": 0}}}))["room_id"]
        with pytest.raises(MNotFound):
            await bot.get_account_data("irc", room)
        await bot.set_account_data("irc", {"type": "ChannelRoom", "user_id": "@o:x"}, room)
        assert (await bot.get_account_data("irc", room))["type"] == "ChannelRoom"
        # State with an empty key: GET and PUT .../state/<type>/ (trailing slash).
        join_rules = await bot.get_state_event(room, EventType.ROOM_JOIN_RULES)
        assert join_rules.join_rule == JoinRule.INVITE
        assert (await bot.get_state_event(room, EventType.ROOM_POWER_LEVELS)).kick == 100
        with pytest.raises(MNotFound):
            await bot.get_state_event(room, EventType.ROOM_AVATAR)
        await bot.send_state_event(room, EventType.ROOM_TOPIC, {"topic": "irc topic"},
                                   state_key="")
        assert (await bot.get_state_event(room, EventType.ROOM_TOPIC)).topic == "irc topic"

        # A puppet: registered on demand, named, invited by the bot, joined.
        await puppet.ensure_registered()
        await puppet.set_displayname("bob")
        assert await puppet.get_displayname(puppet.mxid) == "bob"
        await puppet.set_avatar_url("")  # heisenbridge clears ghost avatars this way
        assert await puppet.get_avatar_url(puppet.mxid) is None
        with pytest.raises(MForbidden):  # private room: ensure_joined then has the bot invite
            await puppet.join_room(room, max_retries=0)
        assert await puppet.ensure_joined(room, ignore_cache=True) is True
        joined = await bot.get_joined_members(room)
        assert joined[puppet.mxid].displayname == "bob"
        members = await bot.get_members(room, membership=Membership.JOIN)
        assert {e.state_key for e in members} == {bot.mxid, puppet.mxid}

        # Messages, receipts, fetching an event (for replies), presence.
        event_id = await puppet.send_text(room, "hi from irc")
        await bot.send_receipt(room, event_id)
        assert (await bot.get_event(room, event_id)).content.body == "hi from irc"
        await puppet.set_presence(PresenceState.ONLINE, status="on irc")
        presence = await bot.get_presence(puppet.mxid)
        assert (presence.presence, presence.status_msg) == (PresenceState.ONLINE, "on irc")

        # Media: the pastebin upload, and the download heisenbridge's media proxy makes with
        # the as_token and ?user_id= (authenticated media, a filename in the path).
        mxc = await bot.upload_media(b"line1\nline2", mime_type="text/plain; charset=UTF-8")
        assert await bot.download_media(mxc) == b"line1\nline2"
        server, media_id = mxc[len("mxc://"):].split("/")
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{srv.base_url}/_matrix/client/v1/media/download/{server}/"
                             f"{media_id}/paste.txt",
                             params={"allow_redirect": "true", "user_id": bot.mxid},
                             headers={"Authorization": f"Bearer {reg['as_token']}"}) as r:
                assert r.status == 200
                assert await r.read() == b"line1\nline2"
                assert r.content_type == "text/plain"

        # A puppet leaving with a reason is a kick of itself; leaving twice is harmless
        # (mautrix's leave_room counts on "not in room"), invite again, the bot leaves and
        # forgets.
        await puppet.kick_user(room, puppet.mxid, "Quit: bye")
        assert puppet.mxid not in await bot.get_joined_members(room)
        await puppet.leave_room(room)
        await bot.invite_user(room, puppet.mxid)
        await puppet.join_room(room)
        await puppet.leave_room(room)
        await puppet.leave_room(room)
        await bot.leave_room(room)
        await bot.forget_room(room)
        assert room not in await bot.get_joined_rooms()
    finally:
        await az.stop()
        await srv.destroy()


@needs_ngircd
async def test_heisenbridge_bridges_a_channel_with_puppets(stack):
    st = stack
    alice = await st.user("alice")
    control, network, room = await open_channel(st, alice, "#chan")
    assert st.bot in await alice.members(control)
    assert await alice.members(room) == {alice.user_id, st.bot}

    # An IRC user joins: a puppet named after the nick joins the room.
    bob = await IrcTestClient.connect(st.ircd.port, "bob")
    await bob.join("#chan")
    await until(lambda: _is_member(alice, room, st.puppet("bob")), "bob's puppet to join")
    joined = (await alice.client.joined_members(room)).members
    assert {m.user_id: m.display_name for m in joined}[st.puppet("bob")] == "bob"

    # IRC -> Matrix, sent by the puppet.
    await bob.privmsg("#chan", "hello from irc")
    ev = await alice.wait_text(room, "hello from irc")
    assert ev["sender"] == st.puppet("bob")
    assert ev["content"]["msgtype"] == "m.text"

    # Matrix -> IRC, from alice's IRC nick; the bridge marks it read.
    mine = await alice.say(room, "hello from matrix")
    msg = await bob.wait_for(said("hello from matrix", "#chan"))
    assert msg.nick == "alice"
    await alice.wait_receipt(room, mine, st.bot)

    # A file: uploaded to Nexa, linked on IRC through the bridge's media proxy, which
    # downloads it from Nexa with its as_token.
    mxc = await alice.upload(b"bridged file bytes", "text/plain", "notes.txt")
    await alice.send(room, {"msgtype": "m.file", "body": "notes.txt", "url": mxc})
    link = await bob.wait_for(lambda m: m.command == "PRIVMSG" and "notes.txt" in m.text)
    url = re.search(r"https?://\S+", link.text).group(0)
    assert url.startswith(st.bridge.url)
    async with aiohttp.ClientSession() as s:
        async with s.get(url) as r:
            assert r.status == 200
            assert await r.read() == b"bridged file bytes"

    # A private message from IRC opens a direct room with a puppet; answers go back.
    await bob.privmsg("alice", "psst")
    private = await alice.wait_invite(lambda r: r not in (control, network, room),
                                      "the private chat")
    await alice.join(private)
    assert (await alice.wait_text(private, "psst"))["sender"] == st.puppet("bob")
    await alice.say(private, "psst back")
    assert (await bob.wait_for(said("psst back", "bob"))).nick == "alice"

    # Leaving IRC: the puppet leaves the room (a part with a reason: a kick of itself).
    await bob.send("PART #chan :see you")
    await until(lambda: _not_member(alice, room, st.puppet("bob")), "bob's puppet to leave")
    leave = await alice.wait_event(room, lambda e: e["type"] == "m.room.member"
                                   and e["state_key"] == st.puppet("bob")
                                   and e["content"]["membership"] == "leave", "bob's leave")
    assert leave["sender"] == st.puppet("bob")
    assert leave["content"].get("reason") == "see you"

    # Kicked on IRC (alice's connection is the channel operator): the bot kicks the puppet.
    carol = await IrcTestClient.connect(st.ircd.port, "carol")
    await carol.join("#chan")
    await until(lambda: _is_member(alice, room, st.puppet("carol")), "carol's puppet to join")
    await alice.say(room, "heisenbridge: KICK carol enough")
    kick = await alice.wait_event(room, lambda e: e["type"] == "m.room.member"
                                  and e["state_key"] == st.puppet("carol")
                                  and e["content"]["membership"] == "leave", "carol's kick")
    assert kick["sender"] == st.bot
    assert "enough" in kick["content"].get("reason", "")
    assert st.puppet("carol") not in await alice.members(room)

    # Nothing went wrong on the bridge's side along the way.
    assert "Traceback" not in st.bridge.log(), st.bridge.log_tail()
    await bob.close()
    await carol.close()


@needs_ngircd
async def test_heisenbridge_restart_reloads_its_rooms_from_nexa(stack):
    """Heisenbridge keeps no database: its configuration and every room's role live in Nexa's
    account data. After a restart it finds its rooms, reconnects and bridges again."""
    st = stack
    alice = await st.user("alice")
    control, network, room = await open_channel(st, alice, "#restart")
    dave = await IrcTestClient.connect(st.ircd.port, "dave")
    await dave.join("#restart")
    await until(lambda: _is_member(alice, room, st.puppet("dave")), "dave's puppet to join")

    await st.bridge.stop()
    await dave.wait_for(lambda m: m.command == "QUIT" and m.nick == "alice")
    await st.bridge.start(st.srv.base_url)
    # It reconnects the network and rejoins the channel by itself.
    await dave.wait_for(lambda m: m.command == "JOIN" and m.nick == "alice", timeout=30)

    token = secrets.token_hex(4)
    await dave.privmsg("#restart", f"back again {token}")
    ev = await alice.wait_text(room, f"back again {token}")
    assert ev["sender"] == st.puppet("dave")
    await alice.say(room, f"welcome back {token}")
    await dave.wait_for(said(f"welcome back {token}", "#restart"))
    # The control room still answers its owner.
    await alice.say(control, "NETWORKS")
    await alice.wait_text(control, f"{NETWORK} (1 servers)", st.bot)
    assert "Traceback" not in st.bridge.log(), st.bridge.log_tail()
    await dave.close()


async def _is_member(user: MatrixUser, room: str, user_id: str) -> bool:
    return user_id in await user.members(room)


async def _not_member(user: MatrixUser, room: str, user_id: str) -> bool:
    return user_id not in await user.members(room)
