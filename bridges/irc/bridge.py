"""The IRC bridge: channels <-> rooms, IRC users as puppets, Nexa users on IRC.

Nexa -> IRC: each relevant event of a transaction becomes a row of `irc_outbox` (keyed by event
ID, so a redelivered transaction adds nothing) before the transaction is acknowledged; one
worker drains the outbox in order through the sender's own IRC connection (puppets mode) or
the bridge's connection (relay mode, or when the user's connection cannot be had), and deletes
a row only after a PING/PONG round trip proved the server processed its lines. A row whose
connection is down waits for the reconnect: nothing is lost when IRC blips or the bridge
restarts (a line may, rarely, go out twice: at-least-once).

IRC -> Nexa: the bridge's own connection sits in every bridged channel; what it hears becomes a
row of `irc_inbox` (inbound.py), applied to the homeserver in order with transaction IDs derived
from the row, retried while the homeserver is unreachable. Lines from the bridge's own
connections are recognised by nick and never loop back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from typing import Any

from bridges.appservice.bridge import Bridge
from bridges.appservice.config import BridgeConfig
from bridges.appservice.intent import MatrixRequestError, q
from bridges.appservice.tasks import cancel_tasks, drain_table
from bridges.irc.config import IrcSection, valid_channel
from bridges.irc.formatting import split_message, utf8_truncate
from bridges.irc.inbound import InboundMixin
from bridges.irc.protocol import (IrcConnection, IrcError, NotConnected, irc_lower,
                                  sanitize_nick)
from bridges.irc.render import media_link, render
from bridges.irc.thirdparty import ThirdPartyMixin

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS irc_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dedupe TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    op TEXT NOT NULL,
    channel TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS irc_inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL,
    channel TEXT NOT NULL,
    nick TEXT NOT NULL,
    payload TEXT NOT NULL,
    ts INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS irc_users (
    user_id TEXT PRIMARY KEY,
    displayname TEXT
);
CREATE TABLE IF NOT EXISTS irc_user_channels (
    user_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    PRIMARY KEY (user_id, channel)
);
CREATE TABLE IF NOT EXISTS irc_members (
    channel TEXT NOT NULL,
    nick TEXT NOT NULL,
    PRIMARY KEY (channel, nick)
);
"""

# How long a message waits for its sender's own IRC connection before the bridge's connection
# relays it instead (the user may be banned, or the nick refused).
USER_CONNECT_TIMEOUT_S = 30.0


class IrcBridge(InboundMixin, ThirdPartyMixin, Bridge):
    name = "irc"
    SCHEMA = SCHEMA

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__(config)
        self.settings: IrcSection = config.section("irc", IrcSection)
        s = self.settings
        self.media_base = s.media_url or config.homeserver.url.rstrip("/")
        self.channel_rooms: dict[str, str] = {}  # irc_lower(channel) -> room_id
        self.room_channels: dict[str, str] = {}  # room_id -> channel
        self.user_conns: dict[str, IrcConnection] = {}  # Matrix user -> their connection
        self._names: dict[str, str] = {}  # Matrix user -> displayname
        self._outbox_wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.epoch = ""
        self.bot_conn = self._connection(s.bot_nick, "nexabridge",
                                         f"Nexa bridge ({s.mode} mode)", self.on_bot_line,
                                         label="bot")
        self.server.alias_query = self.query_alias
        self.server.user_query = self.query_user
        self.add_thirdparty_routes()

    def _connection(self, nick: str, username: str, realname: str, handler, *,
                    label: str) -> IrcConnection:
        s = self.settings
        return IrcConnection(
            host=s.server.host, port=s.server.port, nick=nick, username=username,
            realname=realname, password=s.server.password, tls=s.server.tls,
            tls_verify=s.server.tls_verify, handler=handler, rate=s.rate.lines_per_second,
            burst=s.rate.burst, backoff_base_s=s.reconnect.base_ms / 1000,
            backoff_max_s=s.reconnect.max_ms / 1000, ping_interval_s=s.ping_interval_s,
            max_nick_len=s.max_nick_length, label=label)

    # --- lifecycle ---------------------------------------------------------------------------

    async def on_start(self) -> None:
        self.require_puppet_prefix("irc.puppet_prefix", self.settings.puppet_prefix)
        self.epoch = await self.store.get_json("irc", "epoch")
        if not self.epoch:
            self.epoch = secrets.token_hex(4)
            await self.store.put_json("irc", "epoch", self.epoch)
        for channel, room_id in await self.store.mappings("channel"):
            self._map(channel, room_id)

    async def on_listening(self) -> None:
        # Portals only now: creating them sends events the homeserver pushes at once.
        s = self.settings
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._outbox_loop(), name="irc-outbox"),
                       loop.create_task(self.inbox_loop(), name="irc-inbox")]
        for c in s.channels:
            try:
                await self.ensure_portal(c.channel, c.room)
            except MatrixRequestError as e:
                log.warning("cannot set up the room for %s yet (%s); retrying", c.channel, e)
                self._tasks.append(loop.create_task(self._retry_portal(c.channel, c.room)))
        self.bot_conn.start()
        if s.mode == "puppets":
            rows = await self.store.fetch("SELECT user_id, channel FROM irc_user_channels")
            for r in rows:
                if irc_lower(r["channel"]) in self.channel_rooms:
                    conn = await self.user_conn(r["user_id"])
                    conn.wanted_channels[irc_lower(r["channel"])] = r["channel"]

    async def _retry_portal(self, channel: str, room_id: str | None) -> None:
        delay = self.settings.retry_base_ms / 1000
        while True:
            await asyncio.sleep(delay)
            try:
                await self.ensure_portal(channel, room_id)
                return
            except MatrixRequestError as e:
                log.warning("still cannot set up the room for %s: %s", channel, e)
                delay = min(delay * 2, self.settings.retry_max_ms / 1000)

    async def on_stop(self) -> None:
        await cancel_tasks(self._tasks)
        self._tasks = []
        await asyncio.gather(*(c.stop("Bridge restarting") for c in self.user_conns.values()),
                             self.bot_conn.stop("Bridge restarting"), return_exceptions=True)

    # --- channels <-> rooms ------------------------------------------------------------------

    def _map(self, channel: str, room_id: str) -> None:
        key = irc_lower(channel)
        self.channel_rooms[key] = room_id
        self.room_channels[room_id] = key
        self.bot_conn.wanted_channels[key] = key

    def alias_for(self, channel: str) -> str:
        return f"#{self.settings.alias_prefix}{irc_lower(channel)[1:]}:{self.client.server_name}"

    def channel_for_alias(self, alias: str) -> str | None:
        local, _, server = alias[1:].partition(":")
        prefix = self.settings.alias_prefix
        if not alias.startswith("#") or server != self.client.server_name or \
                not local.startswith(prefix):
            return None
        channel = "#" + local[len(prefix):]
        return irc_lower(channel) if valid_channel(channel) else None

    async def ensure_portal(self, channel: str, room_id: str | None = None) -> str:
        """The room bridged to channel: the given room (the bot joins it), the one mapped
        already, or a new public room with the channel's alias."""
        key = irc_lower(channel)
        existing = self.channel_rooms.get(key)
        if existing and (room_id is None or existing == room_id):
            return existing
        if room_id is not None:
            await self.bot.ensure_joined(room_id)
        else:
            alias_local = self.alias_for(key)[1:].split(":", 1)[0]
            try:
                room_id = await self.bot.create_room(
                    preset="public_chat", visibility="public", room_alias_name=alias_local,
                    name=key, topic=f"Bridged to {key} on {self.network_name}",
                    power_level_content_override={"users_default": 0, "users": {
                        self.client.bot_user_id: 100}})
            except MatrixRequestError as e:
                if e.errcode != "M_ROOM_IN_USE":
                    raise
                res = await self.client.request(
                    "GET", f"/directory/room/{q(self.alias_for(key))}")
                room_id = res["room_id"]
                await self.bot.ensure_joined(room_id)
        await self.store.set_mapping("channel", key, room_id)
        self._map(key, room_id)
        if self.bot_conn.ready.is_set():
            try:
                await self.bot_conn.send(f"JOIN {key}")
            except NotConnected:
                pass  # joined with the others after the reconnect
        if self.settings.mode == "puppets":
            await self._enqueue_present_members(room_id, key)
        log.info("bridging %s <-> %s", key, room_id)
        return room_id

    async def _enqueue_present_members(self, room_id: str, channel: str) -> None:
        try:
            res = await self.bot._req("GET", f"/rooms/{q(room_id)}/joined_members")
        except MatrixRequestError as e:
            log.warning("cannot list the members of %s: %s", room_id, e)
            return
        for user_id, info in (res.get("joined") or {}).items():
            if self.is_ours(user_id):
                continue
            name = (info or {}).get("display_name")
            if isinstance(name, str):
                self._names[user_id] = name
            await self.enqueue(f"present:{room_id}:{user_id}", user_id, "join", channel,
                               {"displayname": name})

    @property
    def network_name(self) -> str:
        return self.settings.network_name or self.settings.network

    # --- who is who --------------------------------------------------------------------------

    def own_nicks(self) -> set[str]:
        nicks = {irc_lower(self.bot_conn.nick)}
        nicks.update(irc_lower(c.nick) for c in self.user_conns.values())
        return nicks

    def nick_for(self, user_id: str, displayname: str | None) -> str:
        base = displayname or user_id[1:].split(":", 1)[0]
        return sanitize_nick(base, self.settings.max_nick_length, self.settings.nick_suffix)

    async def display_name(self, user_id: str) -> str:
        name = self._names.get(user_id)
        if name:
            return name
        try:
            res = await self.client.request("GET", f"/profile/{q(user_id)}/displayname")
            name = res.get("displayname") if isinstance(res, dict) else None
        except MatrixRequestError:
            name = None
        name = name if isinstance(name, str) and name else user_id[1:].split(":", 1)[0]
        self._names[user_id] = name
        return name

    async def user_conn(self, user_id: str) -> IrcConnection:
        conn = self.user_conns.get(user_id)
        if conn is None:
            rows = await self.store.fetch("SELECT displayname FROM irc_users WHERE user_id = ?",
                                          [user_id])
            name = rows[0]["displayname"] if rows else None
            if name is None:
                name = await self.display_name(user_id)
                await self.store.execute(
                    "INSERT OR IGNORE INTO irc_users (user_id, displayname) VALUES (?, ?)",
                    [user_id, name])
            conn = self._connection(self.nick_for(user_id, name),
                                    user_id[1:].split(":", 1)[0], f"{user_id} (via Nexa)",
                                    self.on_user_line, label=user_id)
            self.user_conns[user_id] = conn
            conn.start()
        return conn

    def irc_nick_of(self, user_id: str) -> str | None:
        """The nick IRC users know a Matrix user by (for mentions and reply quotes)."""
        conn = self.user_conns.get(user_id)
        if conn is not None:
            return conn.nick
        return None

    # --- Nexa -> IRC: events into the outbox ---------------------------------------------------

    async def enqueue(self, dedupe: str, user_id: str, op: str, channel: str,
                      payload: dict[str, Any]) -> None:
        await self.store.execute(
            "INSERT OR IGNORE INTO irc_outbox (dedupe, user_id, op, channel, payload) "
            "VALUES (?,?,?,?,?)", [dedupe, user_id, op, channel, json.dumps(payload)])
        self._outbox_wake.set()

    async def handle_event(self, event: dict[str, Any]) -> None:
        room_id, sender = event.get("room_id"), event.get("sender")
        etype, content = event.get("type"), event.get("content")
        if not isinstance(room_id, str) or not isinstance(sender, str) or \
                not isinstance(content, dict) or not isinstance(etype, str):
            return
        channel = self.room_channels.get(room_id)
        if channel is None:
            return
        event_id = str(event.get("event_id"))
        if etype == "m.room.member":
            await self._member_event(event, channel, content)
            return
        if self.is_ours(sender):
            return
        puppets = self.settings.mode == "puppets"
        if etype == "m.room.message":
            await self._message_event(event, room_id, channel, sender, content)
        elif etype == "m.room.topic" and event.get("state_key") == "" and \
                isinstance(content.get("topic"), str):
            await self.enqueue(event_id, sender if puppets else self.client.bot_user_id,
                               "topic", channel, {"topic": content["topic"]})

    async def _member_event(self, event: dict[str, Any], channel: str,
                            content: dict[str, Any]) -> None:
        user_id = event.get("state_key")
        if not isinstance(user_id, str) or self.is_ours(user_id):
            return
        membership = content.get("membership")
        prev = (event.get("unsigned") or {}).get("prev_content") or {}
        name = content.get("displayname")
        if isinstance(name, str) and name:
            self._names[user_id] = name
        if self.settings.mode != "puppets":
            return
        event_id = str(event.get("event_id"))
        if membership == "join" and prev.get("membership") == "join":
            if name != prev.get("displayname"):
                await self.enqueue(event_id, user_id, "nick", channel, {"displayname": name})
        elif membership == "join":
            await self.enqueue(event_id, user_id, "join", channel, {"displayname": name})
        elif membership in ("leave", "ban") and prev.get("membership") == "join":
            reason = content.get("reason") if isinstance(content.get("reason"), str) else ""
            await self.enqueue(event_id, user_id, "part", channel, {"reason": reason})

    async def _message_event(self, event: dict[str, Any], room_id: str, channel: str,
                             sender: str, content: dict[str, Any]) -> None:
        mentions = await self._mention_names(content)
        reply_to = None
        relates = content.get("m.relates_to")
        in_reply = relates.get("m.in_reply_to") if isinstance(relates, dict) else None
        if isinstance(in_reply, dict) and isinstance(in_reply.get("event_id"), str) and \
                relates.get("rel_type") != "m.replace":
            reply_to = await self._reply_info(room_id, in_reply["event_id"])
        out = render(content, media_base=self.media_base, mention=mentions.get,
                     reply_to=reply_to)
        if out is None:
            return
        await self.enqueue(str(event.get("event_id")), sender, "msg", channel,
                           {"kind": out.kind, "text": out.text,
                            "name": await self.display_name(sender)})

    async def _mention_names(self, content: dict[str, Any]) -> dict[str, str]:
        fmt = content.get("formatted_body")
        new = content.get("m.new_content")
        if isinstance(new, dict) and isinstance(new.get("formatted_body"), str):
            fmt = new["formatted_body"]
        if not isinstance(fmt, str):
            return {}
        from urllib.parse import unquote

        out: dict[str, str] = {}
        for raw in set(re.findall(r"https://matrix\.to/#/((?:@|%40)[^\"'/?]+)", fmt)):
            user_id = unquote(raw)
            nick = await self.nick_of_any(user_id)
            if nick:
                out[user_id] = nick
        return out

    async def nick_of_any(self, user_id: str) -> str | None:
        if user_id.startswith(f"@{self.settings.puppet_prefix}"):
            nick = await self.store.remote_id("nick_display", user_id)
            if nick:
                return nick
        return self.irc_nick_of(user_id)

    async def _reply_info(self, room_id: str, event_id: str) -> tuple[str, str] | None:
        try:
            orig = await self.bot._req("GET", f"/rooms/{q(room_id)}/event/{q(event_id)}")
        except MatrixRequestError:
            return None
        sender = orig.get("sender", "")
        body = (orig.get("content") or {}).get("body")
        nick = await self.nick_of_any(sender) or await self.display_name(sender)
        return nick, body if isinstance(body, str) else ""

    # --- the outbox worker -------------------------------------------------------------------

    async def _outbox_loop(self) -> None:
        # IRC down or blipped: the same row again after the reconnect.
        await drain_table(
            self.store, "irc_outbox", self._outbox_wake, self._perform,
            retry_on=lambda e: isinstance(e, (NotConnected, ConnectionError, OSError,
                                              asyncio.TimeoutError)),
            describe=lambda row: f"{row['op']} {row['dedupe']}", base_s=0.2,
            max_s=self.settings.reconnect.max_ms / 1000, label="outbox")

    async def _ready_bot(self) -> IrcConnection:
        if not self.bot_conn.ready.is_set():
            raise NotConnected("the bridge's IRC connection is down")
        return self.bot_conn

    async def _perform(self, row: dict[str, Any]) -> None:
        op, channel, user_id = row["op"], row["channel"], row["user_id"]
        payload = json.loads(row["payload"])
        if channel not in self.channel_rooms:
            return
        puppets = self.settings.mode == "puppets" and user_id != self.client.bot_user_id
        if op == "join":
            if not puppets:
                return
            if payload.get("displayname"):
                await self._set_displayname(user_id, payload["displayname"])
            conn = await self.user_conn(user_id)
            await self.store.execute("INSERT OR IGNORE INTO irc_user_channels (user_id, channel)"
                                     " VALUES (?, ?)", [user_id, channel])
            try:
                await conn.wait_ready(USER_CONNECT_TIMEOUT_S)
            except asyncio.TimeoutError:
                if not self.bot_conn.ready.is_set():
                    raise NotConnected("IRC is unreachable") from None
                # IRC is up but will not have this user: their messages go through the relay.
                log.warning("%s could not connect to IRC; not joining %s", user_id, channel)
                return
            await conn.join(channel)
        elif op == "part":
            await self.store.execute("DELETE FROM irc_user_channels WHERE user_id = ? AND "
                                     "channel = ?", [user_id, channel])
            conn = self.user_conns.get(user_id)
            if conn is None:
                return
            left = await self.store.fetch("SELECT 1 FROM irc_user_channels WHERE user_id = ?",
                                          [user_id])
            if not left:
                self.user_conns.pop(user_id, None)
                await conn.stop(payload.get("reason") or "Left Nexa")
            elif conn.ready.is_set():
                await conn.part(channel, payload.get("reason") or "")
                await conn.sync()
        elif op == "nick":
            name = payload.get("displayname") or None
            await self._set_displayname(user_id, name)
            self._names.pop(user_id, None)
            conn = self.user_conns.get(user_id)
            if conn is not None:
                nick = self.nick_for(user_id, name)
                if conn.ready.is_set():
                    await conn.change_nick(nick)
                else:
                    conn.wanted_nick = nick
        elif op == "topic":
            conn = await self._speaker(user_id, channel, puppets)
            line = f"TOPIC {channel} :{payload.get('topic', '')}"
            refused = conn.expect(lambda m: m.command == "482" and
                                  irc_lower(m.param(1)) == channel)
            await conn.send(line)
            await conn.sync()
            if refused.done() and conn is not self.bot_conn:
                # Not a channel operator (+t): the bridge's connection may be one.
                bot = await self._ready_bot()
                await bot.send(line)
                await bot.sync()
            conn.discard(refused)
        elif op == "msg":
            await self._send_message(row, user_id, channel, payload, puppets)

    async def _set_displayname(self, user_id: str, name: str | None) -> None:
        await self.store.execute(
            "INSERT INTO irc_users (user_id, displayname) VALUES (?, ?) ON CONFLICT (user_id) "
            "DO UPDATE SET displayname = excluded.displayname", [user_id, name])
        if name:
            self._names[user_id] = name

    async def _speaker(self, user_id: str, channel: str, puppets: bool) -> IrcConnection:
        """The connection that speaks for user_id in channel: their own, joined, or (relay mode,
        or when theirs cannot be had while the bridge's is up) the bridge's."""
        if puppets:
            conn = await self.user_conn(user_id)
            try:
                await conn.wait_ready(USER_CONNECT_TIMEOUT_S)
                await conn.join(channel)
                await self.store.execute("INSERT OR IGNORE INTO irc_user_channels (user_id, "
                                         "channel) VALUES (?, ?)", [user_id, channel])
                return conn
            except (asyncio.TimeoutError, IrcError) as e:
                if not self.bot_conn.ready.is_set():
                    raise NotConnected("IRC is unreachable") from e
                log.warning("%s cannot speak in %s (%s); relaying", user_id, channel, e)
        return await self._ready_bot()

    async def _send_message(self, row: dict[str, Any], user_id: str, channel: str,
                            payload: dict[str, Any], puppets: bool) -> None:
        conn = await self._speaker(user_id, channel, puppets)
        relayed = conn is self.bot_conn
        kind, text = payload.get("kind", "privmsg"), payload.get("text", "")
        name = payload.get("name") or user_id
        marker = ""
        if relayed:
            # Clearly marked: IRC users must see who really spoke.
            marker = f"* {name} " if kind == "action" else f"<{name}> "
            kind = "notice" if kind == "notice" else "privmsg"
        command = "NOTICE" if kind == "notice" else "PRIVMSG"
        budget = conn.max_text_bytes(channel, command) - (9 if kind == "action" else 0) - \
            len(marker.encode("utf-8"))
        lines = split_message(text, budget)
        limit = self.settings.max_lines
        if len(lines) > limit:
            url = await self._upload_full_text(text, row["dedupe"])
            if url:
                lines = lines[:limit - 1] + [utf8_truncate(
                    f"… (full message: {url})", budget)]
        for line in lines:
            line = marker + line
            if kind == "action":
                line = f"\x01ACTION {line}\x01"
            await conn.send(f"{command} {channel} :{line}")
        await conn.sync()

    async def _upload_full_text(self, text: str, dedupe: str) -> str | None:
        """A long message as a text file in the media repository, linked instead of flooding."""
        from bridges.irc.formatting import strip_formatting

        try:
            session = self.client.session
            async with session.post(
                    f"{self.client.base_url}/_matrix/media/v3/upload",
                    params={"filename": "message.txt"},
                    data=strip_formatting(text).encode("utf-8"),
                    headers={"Authorization": f"Bearer {self.client.as_token}",
                             "Content-Type": "text/plain; charset=utf-8"}) as r:
                if r.status != 200:
                    return None
                mxc = (await r.json()).get("content_uri", "")
        except Exception as e:  # the cut message is still better than none
            log.warning("cannot upload the full text of %s: %s", dedupe, e)
            return None
        return media_link(self.media_base, mxc, "message.txt")
