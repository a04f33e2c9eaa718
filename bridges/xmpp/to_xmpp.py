"""Nexa -> XMPP.

`handle_event` turns each relevant event of a transaction into a row of `xmpp_outbox` (keyed by
event ID, so a redelivered transaction adds nothing) before the transaction is acknowledged:
once the homeserver has its 200, the message is on disk. One worker drains the outbox in order
while the component is connected: it makes sure the sender's occupant is in the MUC, sends,
and deletes the row only after a ping round trip proved the server processed the stanza (an
error it caused arrives before the answer; a lost connection keeps the row for the next one).
So nothing is lost when XMPP blips or the bridge restarts; a stanza may, rarely, go out twice
(when the connection drops between the server taking it and its answer to the ping).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

from bridges.appservice.intent import MatrixRequestError, q
from bridges.appservice.tasks import QueueWorker
from bridges.xmpp.connection import NotConnected
from bridges.xmpp.format import matrix_to_xmpp, reply_fallback
from bridges.xmpp.ids import jid_of_puppet, localpart_of, sanitize_nick
from bridges.xmpp.muc import JoinFailed
from bridges.xmpp.stanzas import message
from bridges.xmpp.store import Queue, XmppStore
from bridges.xmpp.to_matrix import dm_key

if TYPE_CHECKING:
    from bridges.xmpp.bridge import XmppBridge

log = logging.getLogger(__name__)

# Errors for a groupchat message meaning "you are not (or no longer) in the room".
NOT_OCCUPANT = {"not-acceptable", "item-not-found"}


def xmpp_id_for(event_id: str) -> str:
    """A stable stanza ID per event: a resent stanza carries the same one."""
    return "nx" + hashlib.sha256(event_id.encode()).hexdigest()[:24]


class Retry(Exception):
    pass


class Outbound(QueueWorker):
    label = "Matrix -> XMPP"

    def __init__(self, bridge: "XmppBridge") -> None:
        s = bridge.settings
        super().__init__(Queue(bridge.store, "xmpp_outbox", s.retry_base_ms, s.retry_max_ms))
        self.b = bridge
        self.sent = 0

    # --- events from the homeserver ----------------------------------------------------------

    async def handle_event(self, event: dict[str, Any]) -> None:
        room_id, sender, etype = event.get("room_id"), event.get("sender"), event.get("type")
        content = event.get("content")
        if not isinstance(room_id, str) or not isinstance(sender, str) or \
                not isinstance(content, dict) or not isinstance(etype, str):
            return
        if self.b.is_ours(sender):
            return
        muc = self.b.mucs.by_room.get(room_id)
        if muc is not None:
            await self._muc_event(event, muc, room_id, sender, etype, content)
            return
        dm = self.b.dm_by_room.get(room_id)
        if dm is not None:
            await self._dm_event(event, dm, room_id, sender, etype, content)
            return
        if etype == "m.room.member" and content.get("membership") == "invite":
            await self._puppet_invited(event, room_id, sender, content)

    async def _add(self, event: dict[str, Any], seq: int, op: str, payload: dict) -> None:
        dedupe = f"{event.get('event_id')}:{seq}"
        async with self.b.store.transaction() as db:
            # An event seen again (its transaction redelivered after a crash) is not resent.
            if await XmppStore.seen_in(db, "out:" + dedupe):
                return
            await Queue.add_in(db, "xmpp_outbox", dedupe, op, payload)
        self.wake.set()

    async def _nick(self, room_id: str, user_id: str, muc: str) -> str:
        nick = await self.b.xstore.occupant_nick(muc, user_id)
        if nick:
            return nick
        member = await self.b.bot.get_state(room_id, "m.room.member", user_id) or {}
        nick = sanitize_nick(member.get("displayname"), localpart_of(user_id))
        await self.b.xstore.set_occupant(muc, user_id, nick)
        return nick

    async def _muc_event(self, event: dict[str, Any], muc: str, room_id: str, sender: str,
                         etype: str, content: dict[str, Any]) -> None:
        if etype == "m.room.member":
            target = event.get("state_key")
            if not isinstance(target, str) or self.b.is_ours(target):
                return
            membership = content.get("membership")
            if membership == "join":
                nick = sanitize_nick(content.get("displayname"), localpart_of(target))
                if await self.b.xstore.set_occupant(muc, target, nick):
                    await self._add(event, 0, "join", {"muc": muc, "user_id": target,
                                                       "nick": nick})
            elif membership in ("leave", "ban"):
                nick = await self.b.xstore.occupant_nick(muc, target)
                if await self.b.xstore.remove_occupant(muc, target):
                    await self._add(event, 0, "leave", {"muc": muc, "user_id": target,
                                                        "nick": nick})
            return
        if etype == "m.room.topic" and event.get("state_key") == "":
            topic = content.get("topic")
            if isinstance(topic, str):
                await self._add(event, 0, "subject", {
                    "muc": muc, "room_id": room_id, "user_id": sender, "subject": topic,
                    "nick": await self._nick(room_id, sender, muc),
                    "event_id": event.get("event_id")})
            return
        if etype != "m.room.message" or "state_key" in event:
            return
        payload = await self._render(event, room_id, muc, sender, content)
        if payload is None:
            return
        payload.update({"muc": muc, "nick": await self._nick(room_id, sender, muc)})
        await self._add(event, 0, "groupchat", payload)

    async def _render(self, event: dict[str, Any], room_id: str, conv: str, sender: str,
                      content: dict[str, Any]) -> dict[str, Any] | None:
        """The stanza's parts for a message event (an edit, a reply or a plain message)."""
        event_id = str(event.get("event_id"))
        relates = content.get("m.relates_to") if isinstance(content.get("m.relates_to"),
                                                            dict) else {}
        replace_id = None
        if relates.get("rel_type") == "m.replace":
            new = content.get("m.new_content")
            orig = await self.b.xstore.message_by_event(room_id, str(relates.get("event_id")))
            if not isinstance(new, dict) or orig is None or orig["sender"] != sender or \
                    not orig["xmpp_id"]:
                return None
            content, replace_id = new, orig["xmpp_id"]
        out = matrix_to_xmpp(content, self.b.media_base)
        if out is None:
            return None
        reply = None
        in_reply = relates.get("m.in_reply_to") if replace_id is None else None
        if isinstance(in_reply, dict) and isinstance(in_reply.get("event_id"), str):
            reply = await self._reply(room_id, conv, in_reply["event_id"], sender)
        body, fallback_end = out["body"], 0
        if reply is not None:
            quote = reply.pop("quote")
            body, fallback_end = quote + body, len(quote)
        xhtml = out["xhtml"]
        return {"room_id": room_id, "event_id": event_id, "user_id": sender, "body": body,
                "xhtml": ET.tostring(xhtml, encoding="unicode") if xhtml is not None else None,
                "oob": out["oob"], "replace_id": replace_id, "reply": reply,
                "fallback_end": fallback_end, "xmpp_id": xmpp_id_for(event_id)}

    async def _reply(self, room_id: str, conv: str, event_id: str, sender: str
                     ) -> dict[str, Any] | None:
        orig = await self.b.xstore.message_by_event(room_id, event_id)
        who = orig["nick"] if orig and orig["nick"] else None
        text = ""
        try:
            reader = self.b.bot if not conv.startswith("dm:") else self.b.client.intent(sender)
            ev = await self.b.client.request("GET", f"/rooms/{q(room_id)}/event/{q(event_id)}",
                                             user_id=reader.user_id)
            body = (ev.get("content") or {}).get("body")
            text = body if isinstance(body, str) else ""
            if who is None:
                who = self.b.client.displaynames.get(ev.get("sender", "")) or \
                    localpart_of(str(ev.get("sender", "?")))
        except MatrixRequestError:
            pass
        if orig is None and not text:
            return None
        reply_id = None
        to = None
        if orig is not None:
            reply_id = orig["stanza_id"] or orig["xmpp_id"] if not conv.startswith("dm:") \
                else orig["xmpp_id"]
            if not conv.startswith("dm:") and orig["nick"]:
                to = f"{conv}/{orig['nick']}"
        return {"to": to, "id": reply_id, "quote": reply_fallback(who or "?", text)}

    async def _dm_event(self, event: dict[str, Any], dm: str, room_id: str, sender: str,
                        etype: str, content: dict[str, Any]) -> None:
        jid, _, user_id = dm.partition("|")
        if etype == "m.room.member":
            if content.get("membership") in ("leave", "ban") and \
                    event.get("state_key") == user_id:
                await self.b.drop_dm(dm, room_id)
            return
        if etype != "m.room.message" or "state_key" in event or sender != user_id:
            return
        payload = await self._render(event, room_id, "dm:" + dm, sender, content)
        if payload is None:
            return
        payload.update({"to": jid, "conv": "dm:" + dm})
        await self._add(event, 0, "chat", payload)

    async def _puppet_invited(self, event: dict[str, Any], room_id: str, sender: str,
                              content: dict[str, Any]) -> None:
        """A Nexa user invites an XMPP user's puppet: a direct chat with that JID."""
        target = event.get("state_key")
        jid = jid_of_puppet(self.b.settings.puppet_prefix, str(target),
                            self.b.client.server_name or "") if isinstance(target, str) else None
        if jid is None or not self.b.settings.direct_chats or \
                sender.split(":", 1)[-1] != self.b.client.server_name:
            return
        intent = await self.b.inbound.puppet(str(target), None, jid)
        try:
            if not content.get("is_direct"):
                # Only direct chats can be bridged to a JID: decline anything else.
                await intent.leave(room_id)
                return
            await intent.join(room_id)
        except MatrixRequestError as e:
            log.warning("%s cannot answer the invite to %s: %s", target, room_id, e)
            return
        await self.b.set_dm(dm_key(jid, sender), room_id)

    # --- the worker --------------------------------------------------------------------------

    async def before_row(self) -> None:
        await self.b.ready.wait()

    async def handle_row(self, row: dict[str, Any]) -> None:
        op, p = row["op"], row["payload"]
        try:
            await self.process(op, p)
        except NotConnected:
            # The stream went away: the row stays (holding up those behind it, in order) until
            # the next connection is ready.
            log.info("Matrix -> XMPP %s waits for the XMPP server", op)
            await asyncio.sleep(0.2)
            return
        except asyncio.TimeoutError:
            delay = await self.queue.retry_later(row)
            log.info("Matrix -> XMPP %s: the XMPP server did not answer; retry in %.1fs", op,
                     delay)
            return
        except (Retry, JoinFailed) as e:
            permanent = isinstance(e, _Undeliverable) or (isinstance(e, JoinFailed) and
                                                          e.permanent)
            if not permanent and row["attempts"] + 1 < self.b.settings.max_attempts:
                delay = await self.queue.retry_later(row)
                log.info("Matrix -> XMPP %s: %s; retry in %.1fs", op, e, delay)
                return
            await self._undeliverable(p, str(e))
        except Exception:
            if row["attempts"] + 1 < self.b.settings.max_attempts:
                log.exception("Matrix -> XMPP %s failed; will retry", op)
                await self.queue.retry_later(row)
                return
            log.exception("Matrix -> XMPP %s failed too often; dropped", op)
        await self.queue.done(row["id"])
        self.sent += 1

    async def process(self, op: str, p: dict[str, Any]) -> None:
        mucs = self.b.mucs
        if op == "join":
            if p["muc"] in mucs.rooms:
                await mucs.ensure_occupant(p["muc"], p["user_id"], p["nick"])
            return
        if op == "leave":
            mucs.leave_occupant(p["muc"], p["user_id"], p.get("nick"))
            return
        if op in ("groupchat", "subject"):
            if p["muc"] not in mucs.rooms:
                return
            nick = await mucs.ensure_occupant(p["muc"], p["user_id"], p["nick"])
            frm, to, typ = mucs.user_jid(p["user_id"]), p["muc"], "groupchat"
        elif op == "chat":
            frm, to, typ, nick = mucs.user_jid(p["user_id"]), p["to"], "chat", None
        else:
            log.warning("unknown outbox operation %r dropped", op)
            return
        if op == "subject":
            el = message(frm=frm, to=to, type=typ, id=xmpp_id_for(p["event_id"]),
                         subject=p["subject"])
        else:
            conv = p["muc"] if op == "groupchat" else p["conv"]
            await self.b.xstore.remember_message(
                p["room_id"], p["event_id"], conv, xmpp_id=p["xmpp_id"], stanza_id=None,
                sender=p["user_id"], nick=nick, outgoing=True)
            reply = p.get("reply")
            el = message(frm=frm, to=to, type=typ, id=p["xmpp_id"], body=p["body"],
                         xhtml=ET.fromstring(p["xhtml"]) if p.get("xhtml") else None,
                         replace_id=p.get("replace_id"),
                         reply=(reply.get("to") or "", reply["id"]) if reply and reply.get("id")
                         else None, fallback_end=p.get("fallback_end", 0), oob=p.get("oob"))
        self.b.inbound.errors.pop(el.get("id", ""), None)
        self.b.conn.send(el)
        await self.b.conn.barrier()
        err = self.b.inbound.errors.pop(el.get("id", ""), None)
        if err is None:
            return
        if op == "groupchat" and err.condition in NOT_OCCUPANT:
            room = mucs.rooms.get(p["muc"])
            if room is not None:  # the room forgot us (say, after a blip): join again
                room.joined.pop(p["user_id"], None)
            raise Retry(f"not in {p['muc']} ({err.condition})")
        if err.type == "wait" or err.condition in ("remote-server-timeout",
                                                   "resource-constraint"):
            raise Retry(err.condition)
        raise _Undeliverable(err.condition or "error")

    async def _undeliverable(self, p: dict[str, Any], why: str) -> None:
        log.warning("Matrix -> XMPP: %s not delivered: %s", p.get("event_id") or p, why)
        room_id, event_id = p.get("room_id"), p.get("event_id")
        if not room_id or not event_id:
            return
        try:
            await self.b.bot.send_text(
                room_id, f"Not delivered to XMPP ({why}).", notice=True, reply_to=event_id,
                txn_id="undelivered-" + hashlib.sha256(event_id.encode()).hexdigest()[:32])
        except MatrixRequestError:
            pass


class _Undeliverable(Retry):
    pass
