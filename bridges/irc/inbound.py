"""IRC -> Nexa: what the bridge's IRC connection hears, queued and applied to the homeserver.

Every relevant line becomes a row of `irc_inbox` at once (so a homeserver outage or a bridge
restart loses nothing already heard); one worker applies the rows in order as the puppets of
the IRC users (`@<puppet_prefix><nick>`, display name = nick): messages (with formatting,
CTCP ACTION as m.emote, NOTICE as m.notice, `nick: ` addressing a Nexa user as a mention),
joins, parts/quits/kicks, nick changes (the puppet keeps its ID, its display name follows) and
topics. Sends use transaction IDs derived from the row, so a retry after a timeout never
posts twice. Rows the homeserver refuses for good (4xx) are logged and dropped; connection
errors and 5xx are retried with backoff for as long as it takes.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import time
from typing import Any

from bridges.appservice.intent import Intent, MatrixRequestError, q
from bridges.appservice.tasks import drain_table
from bridges.irc.formatting import CTCP, irc_to_matrix
from bridges.irc.protocol import IrcConnection, IrcMessage, irc_lower

log = logging.getLogger(__name__)


def puppet_localpart(prefix: str, nick: str) -> str:
    """A nick as a Matrix localpart: lowercase; characters Matrix does not allow as =xx."""
    out = []
    for ch in irc_lower(nick):
        out.append(ch if re.match(r"[a-z0-9._\-]", ch) else f"={ord(ch):02x}")
    return prefix + "".join(out)


class InboundMixin:
    """Mixed into IrcBridge (uses its store, client, settings and channel maps)."""

    _names_buffer: dict[str, list[str]]

    # --- lines from IRC ----------------------------------------------------------------------

    async def on_bot_line(self, conn: IrcConnection, msg: IrcMessage) -> None:
        cmd = msg.command
        own = self.own_nicks()
        if cmd in ("PRIVMSG", "NOTICE"):
            target = irc_lower(msg.param(0))
            if target not in self.channel_rooms or irc_lower(msg.nick) in own or not msg.nick \
                    or "." in msg.nick and "!" not in msg.prefix:  # server notices
                return
            text = msg.text
            action = False
            if text.startswith(CTCP):
                inner = text.strip(CTCP)
                if inner.upper().startswith("ACTION"):
                    text, action = inner[7:], True
                else:
                    return  # other CTCP (VERSION, PING…) is not chat
            await self._inbox("message", target, msg.nick, {
                "text": text, "action": action, "notice": cmd == "NOTICE"})
        elif cmd == "JOIN":
            channel = irc_lower(msg.param(0))
            if channel in self.channel_rooms and irc_lower(msg.nick) not in own:
                await self._member(channel, msg.nick, True)
                await self._inbox("join", channel, msg.nick, {})
        elif cmd == "PART":
            channel = irc_lower(msg.param(0))
            if channel in self.channel_rooms and irc_lower(msg.nick) not in own:
                await self._member(channel, msg.nick, False)
                await self._inbox("part", channel, msg.nick, {"reason": msg.param(1)})
        elif cmd == "KICK":
            channel, kicked = irc_lower(msg.param(0)), msg.param(1)
            if channel in self.channel_rooms and irc_lower(kicked) == irc_lower(conn.nick):
                # The bridge must hear the channel: try to get back in.
                conn.wanted_channels[channel] = channel
                await conn.send(f"JOIN {channel}")
                return
            if channel in self.channel_rooms and irc_lower(kicked) not in own:
                await self._member(channel, kicked, False)
                await self._inbox("part", channel, kicked,
                                  {"reason": f"kicked by {msg.nick}: {msg.param(2)}"})
        elif cmd == "QUIT":
            if irc_lower(msg.nick) in own:
                return
            rows = await self.store.fetch("SELECT channel FROM irc_members WHERE nick = ?",
                                          [irc_lower(msg.nick)])
            await self.store.execute("DELETE FROM irc_members WHERE nick = ?",
                                     [irc_lower(msg.nick)])
            for r in rows:
                await self._inbox("part", r["channel"], msg.nick, {"reason": msg.text})
        elif cmd == "NICK":
            old, new = msg.nick, msg.text
            if irc_lower(new) in own or irc_lower(old) in own:
                return
            await self.store.execute("UPDATE OR REPLACE irc_members SET nick = ? WHERE nick = ?",
                                     [irc_lower(new), irc_lower(old)])
            await self._inbox("nick", "", old, {"new": new})
        elif cmd == "TOPIC":
            channel = irc_lower(msg.param(0))
            if channel in self.channel_rooms and irc_lower(msg.nick) not in own:
                await self._inbox("topic", channel, msg.nick, {"topic": msg.text})
        elif cmd == "332":  # the topic, on joining
            channel = irc_lower(msg.param(1))
            if channel in self.channel_rooms:
                await self._inbox("topic", channel, "", {"topic": msg.text, "initial": True})
        elif cmd == "353":  # NAMES
            channel = irc_lower(msg.param(2))
            if channel in self.channel_rooms:
                buf = self.__dict__.setdefault("_names_buffer", {}).setdefault(channel, [])
                buf.extend(n.lstrip("~&@%+") for n in msg.text.split())
        elif cmd == "366":  # end of NAMES
            channel = irc_lower(msg.param(1))
            nicks = self.__dict__.setdefault("_names_buffer", {}).pop(channel, [])
            if channel in self.channel_rooms:
                nicks = [n for n in nicks if n and irc_lower(n) not in own]
                async with self.store.transaction() as db:
                    await db.execute("DELETE FROM irc_members WHERE channel = ?", [channel])
                    await db.executemany(
                        "INSERT OR IGNORE INTO irc_members (channel, nick) VALUES (?, ?)",
                        [(channel, irc_lower(n)) for n in nicks])
                await self._inbox("names", channel, "", {"nicks": nicks})

    async def on_user_line(self, conn: IrcConnection, msg: IrcMessage) -> None:
        """Lines to a Nexa user's own connection: private messages are not bridged (yet); the
        sender is told so with a NOTICE (never answered, so two bots cannot loop)."""
        if msg.command == "PRIVMSG" and irc_lower(msg.param(0)) == irc_lower(conn.nick) and \
                not msg.text.startswith(CTCP) and irc_lower(msg.nick) not in self.own_nicks():
            try:
                await conn.send(f"NOTICE {msg.nick} :{conn.nick} is on Nexa; private messages "
                                "are not bridged. Talk in a shared channel.")
            except ConnectionError:
                pass

    async def _member(self, channel: str, nick: str, present: bool) -> None:
        if present:
            await self.store.execute("INSERT OR IGNORE INTO irc_members (channel, nick) "
                                     "VALUES (?, ?)", [channel, irc_lower(nick)])
        else:
            await self.store.execute("DELETE FROM irc_members WHERE channel = ? AND nick = ?",
                                     [channel, irc_lower(nick)])

    async def _inbox(self, op: str, channel: str, nick: str, payload: dict[str, Any]) -> None:
        await self.store.execute(
            "INSERT INTO irc_inbox (op, channel, nick, payload, ts) VALUES (?,?,?,?,?)",
            [op, channel, nick, json.dumps(payload), int(time.time() * 1000)])
        self._inbox_event().set()

    def _inbox_event(self) -> asyncio.Event:
        ev = self.__dict__.get("_inbox_wake")
        if ev is None:
            ev = self.__dict__["_inbox_wake"] = asyncio.Event()
        return ev

    # --- applying rows to the homeserver -----------------------------------------------------

    async def inbox_loop(self) -> None:
        # The homeserver unavailable: the same row again later; refused: dropped.
        await drain_table(
            self.store, "irc_inbox", self._inbox_event(), self._apply,
            retry_on=lambda e: isinstance(e, MatrixRequestError) and (
                e.status >= 500 or e.status == 429),
            describe=lambda row: f"{row['op']} from {row['nick']}",
            base_s=self.settings.retry_base_ms / 1000,
            max_s=self.settings.retry_max_ms / 1000, label="inbox",
            quiet=(MatrixRequestError,))

    async def puppet(self, nick: str) -> Intent:
        """The puppet of an IRC nick: registered, named after the nick."""
        key = irc_lower(nick)
        user_id = await self.store.matrix_id("nick", key)
        if user_id is None:
            base = puppet_localpart(self.settings.puppet_prefix, nick)
            user_id, n = self.client.user_id(base), 1
            # The localpart may belong to a puppet that changed nick since: keep them apart.
            while await self.store.remote_id("nick", user_id) is not None:
                n += 1
                user_id = self.client.user_id(f"{base}_{n}")
            await self.store.set_mapping("nick", key, user_id)
        await self.store.set_mapping("nick_display", nick, user_id)
        intent = self.client.intent(user_id)
        await intent.ensure_registered()
        await intent.set_displayname(nick)
        return intent

    async def _apply(self, row: dict[str, Any]) -> None:
        op, channel, nick = row["op"], row["channel"], row["nick"]
        payload = json.loads(row["payload"])
        room_id = self.channel_rooms.get(channel)
        txn = f"irc-{self.epoch}-{row['id']}"
        if op == "message" and room_id:
            intent = await self.puppet(nick)
            content = await self._content(payload)
            await intent.send_message(room_id, content, txn_id=txn, ts=row["ts"])
        elif op == "join" and room_id:
            await (await self.puppet(nick)).ensure_joined(room_id)
        elif op == "part" and room_id:
            user_id = await self.store.matrix_id("nick", irc_lower(nick))
            if user_id is not None:
                try:
                    await self.client.intent(user_id).leave(room_id)
                except MatrixRequestError as e:
                    if e.status not in (403, 404):
                        raise
        elif op == "nick":
            old_key, new = irc_lower(nick), payload["new"]
            user_id = await self.store.matrix_id("nick", old_key)
            if user_id is None:
                return
            if irc_lower(new) != old_key:
                await self.store.delete_mapping("nick", irc_lower(new))
                await self.store.set_mapping("nick", irc_lower(new), user_id)
            await self.store.set_mapping("nick_display", new, user_id)
            await self.client.intent(user_id).set_displayname(new)
        elif op == "topic" and room_id:
            topic = payload.get("topic", "")
            if payload.get("initial"):
                current = await self.bot.get_state(room_id, "m.room.topic") or {}
                if current.get("topic") == topic or not topic:
                    return
            await self.bot.send_state(room_id, "m.room.topic", {"topic": topic})
        elif op == "names" and room_id:
            present = set()
            for n in payload.get("nicks", []):
                intent = await self.puppet(n)
                present.add(intent.user_id)
                await intent.ensure_joined(room_id)
            # Puppets of people who left while the bridge was not listening leave too.
            res = await self.bot._req("GET", f"/rooms/{q(room_id)}/joined_members")
            prefix = f"@{self.settings.puppet_prefix}"
            for user_id in (res.get("joined") or {}):
                if user_id.startswith(prefix) and user_id not in present and \
                        user_id != self.client.bot_user_id and self.is_ours(user_id):
                    try:
                        await self.client.intent(user_id).leave(room_id)
                    except MatrixRequestError as e:
                        if e.status not in (403, 404):
                            raise

    async def _content(self, payload: dict[str, Any]) -> dict[str, Any]:
        body, formatted = irc_to_matrix(payload.get("text", ""))
        msgtype = "m.emote" if payload.get("action") else (
            "m.notice" if payload.get("notice") else "m.text")
        content: dict[str, Any] = {"msgtype": msgtype, "body": body}
        # "nick: hello" addressed to a Nexa user: a real mention (a pill, and a highlight).
        m = re.match(r"^([^\s:,]+)[:,] ", body)
        target = None
        if m and not payload.get("action"):
            target = next((uid for uid, c in self.user_conns.items()
                           if irc_lower(c.nick) == irc_lower(m.group(1))), None)
        if target is not None:
            name = html.escape(self._names.get(target) or target)
            rest = formatted[len(html.escape(m.group(0), quote=False)):] if formatted and \
                formatted.startswith(html.escape(m.group(0), quote=False)) else \
                html.escape(body[m.end():], quote=False)
            formatted = (f'<a href="https://matrix.to/#/{html.escape(target)}">{name}</a>: '
                         f'{rest}')
            content["m.mentions"] = {"user_ids": [target]}
        if formatted is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = formatted
        return content
