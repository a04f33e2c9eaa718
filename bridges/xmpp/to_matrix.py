"""XMPP -> Nexa.

Every stanza the component receives comes here in order. What the listener hears in a MUC and
what XMPP users send to `<localpart>@<component>` becomes a row of `xmpp_inbox` (together with
its `xmpp_seen` key, in one database transaction, so a message the room replays from its
history after a rejoin is dropped). A worker applies the rows to the homeserver in order, with
transaction IDs derived from the row, retrying while the homeserver is unreachable: nothing
received is lost when the homeserver blips or the bridge restarts with rows still queued.

Errors for stanzas the bridge sent are kept by ID for the outbound worker (they arrive before
the answer to its barrier ping).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from bridges.appservice.intent import Intent, MatrixRequestError, q
from bridges.appservice.tasks import QueueWorker
from bridges.xmpp.connection import NotConnected
from bridges.xmpp.format import edit_content, xmpp_to_matrix
from bridges.xmpp.ids import bare_jid, jid_matrix_user, puppet_localpart
from bridges.xmpp.stanzas import (NS_COMPONENT, Error, Message, error_reply, parse_message,
                                  parse_presence, _q)
from bridges.xmpp.store import Queue, XmppStore

if TYPE_CHECKING:
    from bridges.xmpp.bridge import XmppBridge
    from bridges.xmpp.muc import MucRoom

log = logging.getLogger(__name__)


def _txn(dedupe: str) -> str:
    return "xmpp-" + hashlib.sha256(dedupe.encode()).hexdigest()[:32]


def dm_key(jid: str, user_id: str) -> str:
    return f"{jid}|{user_id}"


class Inbound(QueueWorker):
    label = "XMPP -> Matrix"

    def __init__(self, bridge: "XmppBridge") -> None:
        s = bridge.settings
        super().__init__(Queue(bridge.store, "xmpp_inbox", s.retry_base_ms, s.retry_max_ms))
        self.b = bridge
        self.errors: dict[str, Error] = {}
        self.applied = 0

    @property
    def xstore(self) -> XmppStore:
        return self.b.xstore

    # --- receiving ---------------------------------------------------------------------------

    async def on_stanza(self, el: ET.Element) -> None:
        if el.tag == _q(NS_COMPONENT, "presence"):
            p = parse_presence(el)
            if p.type == "error" and p.id:
                self._keep_error(p.id, p.error)
            room_jid = p.frm.split("/", 1)[0].lower()
            if room_jid in self.b.mucs.rooms:
                await self.b.mucs.on_presence(p)
            elif p.type in ("subscribe", "probe", "unsubscribe"):
                self._answer_subscription(p.type, p.frm, p.to)
            return
        if el.tag != _q(NS_COMPONENT, "message"):
            return
        m = parse_message(el)
        if m.type == "error":
            if m.id:
                self._keep_error(m.id, m.error)
            return
        room_jid, _, nick = m.frm.partition("/")
        room = self.b.mucs.rooms.get(room_jid.lower())
        if room is not None:
            if m.type == "groupchat" and m.to == self.b.mucs.listener_jid:
                await self._muc_message(room, nick, m)
            elif m.type in ("chat", "normal") and m.body is not None and \
                    m.to != self.b.mucs.listener_jid:
                self._refuse(el, "not-acceptable", "Private messages to Matrix users in a "
                                                   "room are not bridged; message them directly.")
            return
        if m.type in ("chat", "normal") and m.to.split("/", 1)[0].lower() != \
                self.b.mucs.listener_jid.split("/", 1)[0]:
            await self._direct_message(el, m)

    def _keep_error(self, stanza_id: str, err: Error | None) -> None:
        self.errors[stanza_id] = err or Error(condition="undefined-condition")
        if len(self.errors) > 1000:  # errors nobody waits for must not pile up
            for k in list(self.errors)[:500]:
                del self.errors[k]

    def _refuse(self, el: ET.Element, condition: str, text: str = "") -> None:
        try:
            self.b.conn.send(error_reply(el, el.get("to", self.b.component), condition, text))
        except NotConnected:
            pass

    def _answer_subscription(self, typ: str, frm: str, to: str) -> None:
        """XMPP users may add Nexa users to their rosters: always agree, always 'online'."""
        user_id = jid_matrix_user(to.split("/", 1)[0], self.b.client.server_name or "",
                                  self.b.component)
        if user_id is None or not self.b.settings.direct_chats:
            return
        me = to.split("/", 1)[0]
        out = []
        if typ == "subscribe":
            out.append(ET.Element(_q(NS_COMPONENT, "presence"),
                                  {"from": me, "to": frm, "type": "subscribed"}))
        elif typ == "unsubscribe":
            out.append(ET.Element(_q(NS_COMPONENT, "presence"),
                                  {"from": me, "to": frm, "type": "unsubscribed"}))
        if typ in ("subscribe", "probe"):
            out.append(ET.Element(_q(NS_COMPONENT, "presence"), {"from": me, "to": frm}))
        for el in out:
            try:
                self.b.conn.send(el)
            except NotConnected:
                return

    def _contents(self, m: Message) -> tuple[dict[str, Any], dict[str, Any] | None]:
        body = m.body or ""
        plain = xmpp_to_matrix(body, xhtml=m.xhtml, oob_url=m.oob_url, oob_desc=m.oob_desc)
        reply = None
        if m.reply_id and m.reply_fallback:
            reply = xmpp_to_matrix(body, xhtml=m.xhtml, fallback=m.reply_fallback,
                                   oob_url=m.oob_url, oob_desc=m.oob_desc)
        return plain, reply

    async def _muc_message(self, room: "MucRoom", nick: str, m: Message) -> None:
        muc = room.muc
        stanza_id = m.stanza_ids.get(muc)
        own_id = m.origin_id or m.id
        # Who sent it comes from the room's own presences (a message's <x/> could be forged).
        if (nick and self.b.mucs.is_ours(room, nick, None)) or \
                await self.xstore.is_own_message(muc, own_id):
            # Our own message (or subject) reflected: learn the room's ID for it, bridge nothing.
            if stanza_id and own_id:
                await self.xstore.set_stanza_id(muc, own_id, stanza_id)
            if m.subject is not None and m.body is None:
                await self.xstore.set_subject(muc, m.subject)
            async with self.b.store.transaction() as db:
                if stanza_id:
                    await self.xstore.seen_in(db, f"muc:{muc}:sid:{stanza_id}")
                await self.xstore.touch_muc_in(db, muc, m.delay_ms or int(time.time() * 1000))
            return
        if m.subject is not None and m.body is None:
            await self._subject(room, nick, m)
            return
        if m.body is None or (not m.body.strip() and not m.oob_url):
            return  # chat states, receipts, ...
        if not nick:
            return  # the room itself speaking (status messages)
        if stanza_id:
            key = f"muc:{muc}:sid:{stanza_id}"
        elif m.id:
            key = f"muc:{muc}:id:{nick}:{m.id}"
        else:
            key = "muc:{}:h:{}".format(muc, hashlib.sha256(
                f"{nick}\0{m.body}\0{m.delay_ms}".encode()).hexdigest())
        known = room.remote.get(nick) or await self.b.mucs.known_occupant(muc, m.occupant_id)
        puppet, bare = known if known else self.b.mucs.puppet_for(muc, nick, None,
                                                                  m.occupant_id)
        plain, reply = self._contents(m)
        payload = {"muc": muc, "room_id": room.room_id, "puppet": puppet, "jid": bare,
                   "nick": nick, "content": plain, "content_reply": reply,
                   "reply_id": m.reply_id, "replace_id": m.replace_id, "xmpp_id": own_id,
                   "stanza_id": stanza_id, "ts": m.delay_ms, "live": m.delay_ms is None}
        async with self.b.store.transaction() as db:
            if await self.xstore.seen_in(db, key):
                return
            await self.xstore.touch_muc_in(db, muc, m.delay_ms or int(time.time() * 1000))
            await Queue.add_in(db, "xmpp_inbox", key, "msg", payload)
        self.wake.set()

    async def _subject(self, room: "MucRoom", nick: str, m: Message) -> None:
        state = await self.xstore.muc_state(room.muc)
        subject = m.subject or ""
        if state["subject"] == subject or (state["subject"] is None and not subject):
            if state["subject"] is None:
                await self.xstore.set_subject(room.muc, subject)
            return
        await self.xstore.set_subject(room.muc, subject)
        known = room.remote.get(nick) if nick else None
        await self.queue.add("subject:" + secrets.token_hex(12), "subject", {
            "room_id": room.room_id, "puppet": known[0] if known else None,
            "nick": nick, "subject": subject})
        self.wake.set()

    async def _direct_message(self, el: ET.Element, m: Message) -> None:
        to_bare = m.to.split("/", 1)[0].lower()
        user_id = jid_matrix_user(to_bare, self.b.client.server_name or "", self.b.component)
        if m.body is None or (not m.body.strip() and not m.oob_url):
            return
        if user_id is None or self.b.is_ours(user_id):  # puppets are XMPP users already
            self._refuse(el, "item-not-found", "No such Matrix user")
            return
        if not self.b.settings.direct_chats:
            self._refuse(el, "service-unavailable", "Direct chats are not bridged")
            return
        sender = bare_jid(m.frm)
        if sender is None:
            return
        own_id = m.origin_id or m.id
        key = f"dm:{sender}:{user_id}:{own_id}" if own_id else "dm:" + secrets.token_hex(12)
        plain, reply = self._contents(m)
        payload = {"jid": sender, "user_id": user_id, "nick": m.nick, "content": plain,
                   "content_reply": reply, "reply_id": m.reply_id, "replace_id": m.replace_id,
                   "xmpp_id": own_id, "full_jid": m.frm}
        async with self.b.store.transaction() as db:
            if await self.xstore.seen_in(db, key):
                return
            await Queue.add_in(db, "xmpp_inbox", key, "dm", payload)
        self.wake.set()

    async def queue_membership(self, room: "MucRoom", op: str, puppet: str, nick: str,
                               bare: str | None) -> None:
        await self.queue.add(f"{op}:" + secrets.token_hex(12), op, {
            "room_id": room.room_id, "muc": room.muc, "puppet": puppet, "nick": nick,
            "jid": bare})
        self.wake.set()

    async def queue_reconcile(self, room: "MucRoom", present: list[str]) -> None:
        await self.queue.add("reconcile:" + secrets.token_hex(12), "reconcile", {
            "room_id": room.room_id, "muc": room.muc, "present": present})
        self.wake.set()

    # --- applying ----------------------------------------------------------------------------

    async def handle_row(self, row: dict[str, Any]) -> None:
        try:
            await self.apply(row["op"], row["payload"], row["dedupe"])
        except MatrixRequestError as e:
            transient = e.status >= 500 or e.status == 429
            if transient or row["attempts"] + 1 < min(3, self.b.settings.max_attempts):
                delay = await self.queue.retry_later(row)
                log.info("XMPP -> Matrix %s failed (%s); retry in %.1fs", row["op"], e, delay)
                return
            log.warning("XMPP -> Matrix %s dropped: %s", row["op"], e)
        except Exception:
            if row["attempts"] + 1 < self.b.settings.max_attempts:
                log.exception("XMPP -> Matrix %s failed; will retry", row["op"])
                await self.queue.retry_later(row)
                return
            log.exception("XMPP -> Matrix %s failed too often; dropped", row["op"])
        await self.queue.done(row["id"])
        self.applied += 1

    async def apply(self, op: str, p: dict[str, Any], dedupe: str) -> None:
        if op == "msg":
            await self._apply_msg(p, dedupe)
        elif op in ("join", "nick"):
            intent = await self.puppet(p["puppet"], p["nick"], p.get("jid"))
            await intent.ensure_joined(p["room_id"])
            await self.room_name(intent, p["room_id"], p["nick"])
        elif op == "leave":
            await self._leave(p["puppet"], p["room_id"])
        elif op == "subject":
            await self._apply_subject(p)
        elif op == "reconcile":
            await self._apply_reconcile(p)
        elif op == "dm":
            await self._apply_dm(p, dedupe)

    async def puppet(self, user_id: str, name: str | None, jid: str | None) -> Intent:
        intent = self.b.client.intent(user_id)
        if user_id in self.b.client.registered:
            return intent
        await intent.ensure_registered()
        known = await self.b.store.get_json("xmpp_puppets", user_id)
        if known is None:
            display = name or (jid.split("@", 1)[0] if jid else user_id)
            await intent.set_displayname(display)
            await self.b.store.put_json("xmpp_puppets", user_id, {"name": display, "jid": jid})
            if jid:
                await self.b.store.set_mapping("puppet", jid, user_id)
        else:
            self.b.client.displaynames[user_id] = known.get("name")
        return intent

    async def room_name(self, intent: Intent, room_id: str, nick: str) -> None:
        """The puppet's name in this room is its nick there (the profile keeps the first)."""
        key = f"{room_id}|{intent.user_id}"
        current = await self.b.store.get_json("xmpp_names", key)
        if current == nick:
            return
        profile_name = self.b.client.displaynames.get(intent.user_id)
        if current is not None or nick != profile_name:
            await intent.send_state(room_id, "m.room.member",
                                    {"membership": "join", "displayname": nick}, intent.user_id)
        await self.b.store.put_json("xmpp_names", key, nick)

    async def _leave(self, user_id: str, room_id: str) -> None:
        try:
            await self.b.client.intent(user_id).leave(room_id)
        except MatrixRequestError as e:
            if e.status != 403:
                raise
        await self.b.store.delete_json("xmpp_names", f"{room_id}|{user_id}")

    async def _resolve(self, p: dict[str, Any], conv: str, sender: str
                       ) -> tuple[dict[str, Any], str | None]:
        """The content to send (a reply, an edit or a plain message), and the event it edits."""
        content = p["content"]
        if p.get("replace_id"):
            orig = await self.xstore.message_by_xmpp_id(conv, p["replace_id"])
            if orig is not None and orig["sender"] == sender:
                return edit_content(content, orig["event_id"]), orig["event_id"]
        if p.get("reply_id"):
            orig = await self.xstore.message_by_xmpp_id(conv, p["reply_id"])
            if orig is not None:
                content = dict(p.get("content_reply") or content)
                content["m.relates_to"] = {"m.in_reply_to": {"event_id": orig["event_id"]}}
        return content, None

    async def _apply_msg(self, p: dict[str, Any], dedupe: str) -> None:
        room_id, muc = p["room_id"], p["muc"]
        intent = await self.puppet(p["puppet"], p["nick"], p.get("jid"))
        room = self.b.mucs.rooms.get(muc)
        present = room is not None and any(v[0] == p["puppet"] for v in room.remote.values())
        await intent.ensure_joined(room_id)
        await self.room_name(intent, room_id, p["nick"])
        content, edits = await self._resolve(p, muc, p["puppet"])
        event_id = await intent.send_message(room_id, content, txn_id=_txn(dedupe), ts=p["ts"])
        if edits is None:
            await self.xstore.remember_message(room_id, event_id, muc, xmpp_id=p["xmpp_id"],
                                               stanza_id=p["stanza_id"], sender=p["puppet"],
                                               nick=p["nick"], outgoing=False)
        if not p.get("live") and not present and room is not None and room.listener_joined:
            # From the room's history, by someone no longer there.
            await self._leave(p["puppet"], room_id)

    async def _apply_subject(self, p: dict[str, Any]) -> None:
        content = {"topic": p["subject"]}
        if p.get("puppet"):
            intent = await self.puppet(p["puppet"], p.get("nick"), None)
            try:
                await intent.ensure_joined(p["room_id"])
                await intent.send_state(p["room_id"], "m.room.topic", content)
                return
            except MatrixRequestError as e:
                if e.status != 403:
                    raise
        await self.b.bot.send_state(p["room_id"], "m.room.topic", content)

    async def _apply_reconcile(self, p: dict[str, Any]) -> None:
        res = await self.b.client.request("GET", f"/rooms/{q(p['room_id'])}/joined_members")
        present = set(p["present"])
        prefix = "@" + self.b.settings.puppet_prefix
        for user_id in (res.get("joined") or {}):
            if user_id.startswith(prefix) and self.b.is_ours(user_id) and \
                    user_id != self.b.client.bot_user_id and user_id not in present:
                await self._leave(user_id, p["room_id"])

    async def _apply_dm(self, p: dict[str, Any], dedupe: str) -> None:
        jid, user_id = p["jid"], p["user_id"]
        key = dm_key(jid, user_id)
        puppet_id = self.b.client.user_id(puppet_localpart(self.b.settings.puppet_prefix, jid))
        intent = await self.puppet(puppet_id, p.get("nick"), jid)
        room_id = await self.b.store.matrix_id("dm", key)
        if room_id is None:
            try:
                await self.b.client.request("GET", f"/profile/{q(user_id)}")
            except MatrixRequestError as e:
                if e.status == 404:
                    log.info("direct message from %s to unknown user %s dropped", jid, user_id)
                    self._bounce(p, "item-not-found", "No such Matrix user")
                    return
                raise
            room_id = await intent.create_room(invite=[user_id], is_direct=True,
                                               preset="trusted_private_chat")
            await self.b.set_dm(key, room_id)
        content, edits = await self._resolve(p, "dm:" + key, puppet_id)
        try:
            event_id = await intent.send_message(room_id, content, txn_id=_txn(dedupe))
        except MatrixRequestError as e:
            if e.status != 403:
                raise
            # The puppet cannot post there any more: the next attempt opens a new room.
            await self.b.drop_dm(key, room_id)
            raise
        if edits is None:
            await self.xstore.remember_message(room_id, event_id, "dm:" + key,
                                               xmpp_id=p["xmpp_id"], stanza_id=None,
                                               sender=puppet_id, nick=None, outgoing=False)

    def _bounce(self, p: dict[str, Any], condition: str, text: str) -> None:
        el = ET.Element(_q(NS_COMPONENT, "message"), {"from": p.get("full_jid", ""),
                                                      "to": self.b.user_jid(p["user_id"])})
        if p.get("xmpp_id"):
            el.set("id", p["xmpp_id"])
        self._refuse(el, condition, text)
