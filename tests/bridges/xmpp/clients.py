"""Real clients for the XMPP bridge tests: slixmpp on the XMPP side (with its MUC, correction,
reply, OOB and XHTML-IM plugins, as an XMPP client would use them), matrix-nio on the Nexa
side. Both record everything they receive and wait for conditions with deadlines."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from typing import Any, Callable

import nio
import slixmpp

from tests.bridges.support import poll

NS_MUC_USER = "http://jabber.org/protocol/muc#user"


class XmppTestClient:
    def __init__(self, jid: str, password: str, port: int) -> None:
        self.jid = jid
        self.port = port
        self.c = slixmpp.ClientXMPP(jid, password, plugin_config={
            "feature_mechanisms": {"unencrypted_plain": True}})
        self.c.enable_starttls = False
        self.c.enable_direct_tls = False
        self.c.enable_plaintext = True
        for plugin in ("xep_0030", "xep_0045", "xep_0066", "xep_0071", "xep_0308", "xep_0359",
                       "xep_0461", "xep_0199"):
            self.c.register_plugin(plugin)
        self.messages: list[slixmpp.Message] = []
        self.presences: list[slixmpp.Presence] = []
        self.changed = asyncio.Event()
        self.c.add_event_handler("message", self._on_message)
        self.c.add_event_handler("groupchat_message", self._on_message)
        self.c.add_event_handler("groupchat_subject", self._on_message)
        self.c.add_event_handler("message_error", self._on_message)
        self.c.add_event_handler("presence", self._on_presence)

    def _on_message(self, msg: slixmpp.Message) -> None:
        if msg not in self.messages:
            self.messages.append(msg)
        self.changed.set()

    def _on_presence(self, pres: slixmpp.Presence) -> None:
        self.presences.append(pres)
        self.changed.set()

    async def connect(self) -> None:
        started = asyncio.Event()
        self.c.add_event_handler("session_start", lambda _e: started.set())
        self.c.connect("127.0.0.1", self.port)
        await asyncio.wait_for(started.wait(), 20)
        self.c.send_presence()

    async def disconnect(self) -> None:
        try:
            await asyncio.wait_for(self.c.disconnect(wait=1), 5)
        except Exception:
            self.c.abort()
        filters = getattr(self.c, "_run_out_filters", None)  # slixmpp's send-queue task
        if filters is not None and not filters.done():
            filters.cancel()
            await asyncio.gather(filters, return_exceptions=True)

    async def wait_for(self, pred: Callable[[], Any], timeout: float = 20,
                       what: str = "condition") -> Any:
        async def loop() -> Any:
            while True:
                value = pred()
                if value:
                    return value
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), 0.25)
                except asyncio.TimeoutError:
                    pass
        try:
            return await asyncio.wait_for(loop(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.jid}: timed out waiting for {what}; messages: "
                                 f"{[str(m) for m in self.messages[-8:]]}") from None

    async def join(self, muc: str, nick: str, maxstanzas: int = 0) -> None:
        pres = self.c.plugin["xep_0045"].make_join_stanza(muc, nick, maxstanzas=maxstanzas)
        start = len(self.presences)
        pres.send()

        def joined():
            for p in self.presences[start:]:
                if p["from"].bare == muc and p["from"].resource == nick and \
                        "110" in self.status_codes(p):
                    return p
            return None
        p = await self.wait_for(joined, what=f"joining {muc}")
        if "201" in self.status_codes(p):  # created it: accept the default configuration
            iq = self.c.make_iq_set(ito=muc)
            query = ET.SubElement(iq.xml, "{http://jabber.org/protocol/muc#owner}query")
            ET.SubElement(query, "{jabber:x:data}x", {"type": "submit"})
            await iq.send()

    async def leave(self, muc: str, nick: str) -> None:
        self.c.send_presence(pto=f"{muc}/{nick}", ptype="unavailable")

    def change_nick(self, muc: str, nick: str) -> None:
        self.c.send_presence(pto=f"{muc}/{nick}")

    @staticmethod
    def status_codes(p: slixmpp.Presence) -> set[str]:
        x = p.xml.find(f"{{{NS_MUC_USER}}}x")
        if x is None:
            return set()
        return {s.get("code", "") for s in x.findall(f"{{{NS_MUC_USER}}}status")}

    def groupchat(self, muc: str, body: str, **kw: Any) -> slixmpp.Message:
        msg = self.c.make_message(mto=muc, mbody=body, mtype="groupchat", **kw)
        msg["origin_id"]["id"] = msg["id"]
        return msg

    def muc_messages(self, muc: str, nick: str | None = None) -> list[slixmpp.Message]:
        return [m for m in self.messages if m["type"] == "groupchat" and m["from"].bare == muc
                and m["body"] and (nick is None or m["from"].resource == nick)]

    def muc_bodies(self, muc: str, nick: str | None = None) -> list[str]:
        return [m["body"] for m in self.muc_messages(muc, nick)]

    def chats(self, frm: str | None = None) -> list[slixmpp.Message]:
        return [m for m in self.messages if m["type"] in ("chat", "normal") and m["body"] and
                (frm is None or m["from"].bare == frm)]


class MatrixTestUser:
    """A nio client that keeps every timeline event (raw JSON) it has synced, per room."""

    def __init__(self, client: nio.AsyncClient) -> None:
        self.c = client
        self.events: list[dict] = []
        self.invites: dict[str, nio.InviteInfo] = {}

    @property
    def user_id(self) -> str:
        return self.c.user_id

    async def sync(self, timeout_ms: int = 1000) -> None:
        # A big timeline limit: a burst between two syncs must not come back "limited".
        resp = await self.c.sync(timeout=timeout_ms,
                                 sync_filter={"room": {"timeline": {"limit": 500}}})
        if not isinstance(resp, nio.SyncResponse):
            raise AssertionError(f"sync failed: {resp}")
        for room_id, room in resp.rooms.join.items():
            assert not room.timeline.limited or not any(
                e["room_id"] == room_id for e in self.events), "a gap in the timeline"
            for ev in room.timeline.events:
                self.events.append({**ev.source, "room_id": room_id})
        for room_id, info in resp.rooms.invite.items():
            self.invites[room_id] = info

    async def wait_for(self, pred: Callable[[], Any], timeout: float = 25,
                       what: str = "condition") -> Any:
        return await poll(pred, timeout, f"{what} ({self.user_id})",
                          step=lambda: self.sync(500),
                          detail=lambda: "last events: " + repr(
                              [(e["type"], e.get("content")) for e in self.events[-8:]]))

    def messages(self, room_id: str, sender: str | None = None) -> list[dict]:
        return [e for e in self.events if e["room_id"] == room_id and
                e["type"] == "m.room.message" and (sender is None or e["sender"] == sender)]

    def bodies(self, room_id: str, sender: str | None = None) -> list[str]:
        return [e["content"].get("body") for e in self.messages(room_id, sender)]

    def find(self, room_id: str, pred: Callable[[dict], bool]) -> dict | None:
        for e in self.events:
            if e["room_id"] == room_id and pred(e):
                return e
        return None

    async def send(self, room_id: str, content: dict, event_type: str = "m.room.message") -> str:
        resp = await self.c.room_send(room_id, event_type, content)
        if not isinstance(resp, nio.RoomSendResponse):
            raise AssertionError(f"send failed: {resp}")
        return resp.event_id

    async def text(self, room_id: str, body: str, **extra: Any) -> str:
        return await self.send(room_id, {"msgtype": "m.text", "body": body, **extra})

    async def member_name(self, room_id: str, user_id: str) -> str | None:
        resp = await self.c.room_get_state_event(room_id, "m.room.member", user_id)
        content = getattr(resp, "content", None) or {}
        return content.get("displayname") if content.get("membership") == "join" else None

    async def joined(self, room_id: str) -> set[str]:
        resp = await self.c.joined_members(room_id)
        return {m.user_id for m in getattr(resp, "members", [])}
