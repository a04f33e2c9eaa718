"""Reading and writing the stanzas the bridge deals with, on plain ElementTree elements.

Incoming stanzas are read into small dataclasses (what a message says, what a MUC presence
means); outgoing ones are built as elements in the component namespace and serialised by the
connection. Nothing here does I/O.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone

from bridges.xmpp.format import XHTML_IM_NS, XHTML_NS, xml_safe

NS_COMPONENT = "jabber:component:accept"
NS_CLIENT = "jabber:client"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_DATA = "jabber:x:data"
NS_SID = "urn:xmpp:sid:0"
NS_DELAY = "urn:xmpp:delay"
NS_CORRECT = "urn:xmpp:message-correct:0"
NS_REPLY = "urn:xmpp:reply:0"
NS_FALLBACK = "urn:xmpp:fallback:0"
NS_OOB = "jabber:x:oob"
NS_NICK = "http://jabber.org/protocol/nick"
NS_OCCUPANT_ID = "urn:xmpp:occupant-id:0"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_PING = "urn:xmpp:ping"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_CHATSTATES = "http://jabber.org/protocol/chatstates"

_STANZA_NS = (NS_COMPONENT, NS_CLIENT)


def _q(ns: str, name: str) -> str:
    return "{%s}%s" % (ns, name)


def _child(el: ET.Element, name: str) -> ET.Element | None:
    """A child in the stanza's own namespace (component or client)."""
    for ns in _STANZA_NS:
        c = el.find(_q(ns, name))
        if c is not None:
            return c
    return None


def parse_stamp(stamp: str | None) -> int | None:
    """XEP-0082 date-time -> milliseconds since the epoch."""
    if not stamp:
        return None
    try:
        dt = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def format_stamp(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Error:
    type: str = ""
    condition: str = ""
    text: str = ""


def _error(el: ET.Element) -> Error | None:
    err = _child(el, "error")
    if err is None:
        return None
    cond = ""
    text = ""
    for c in err:
        if c.tag.startswith("{%s}" % NS_STANZAS):
            name = c.tag.rsplit("}", 1)[1]
            if name == "text":
                text = c.text or ""
            elif not cond:
                cond = name
    return Error(err.get("type", ""), cond, text)


@dataclass
class Message:
    frm: str
    to: str
    type: str
    id: str | None = None
    body: str | None = None
    subject: str | None = None
    xhtml: ET.Element | None = None
    origin_id: str | None = None
    stanza_ids: dict[str, str] = field(default_factory=dict)  # by -> id
    replace_id: str | None = None
    reply_to: str | None = None
    reply_id: str | None = None
    reply_fallback: list[tuple[int, int]] = field(default_factory=list)
    oob_url: str | None = None
    oob_desc: str | None = None
    delay_ms: int | None = None
    occupant_id: str | None = None
    real_jid: str | None = None
    nick: str | None = None
    error: Error | None = None


def parse_message(el: ET.Element) -> Message:
    m = Message(frm=el.get("from", ""), to=el.get("to", ""), type=el.get("type") or "normal",
                id=el.get("id"))
    body = _child(el, "body")
    if body is not None:
        m.body = body.text or ""
    subject = _child(el, "subject")
    if subject is not None:
        m.subject = subject.text or ""
    html_el = el.find(_q(XHTML_IM_NS, "html"))
    if html_el is not None:
        m.xhtml = html_el.find(_q(XHTML_NS, "body"))
    oid = el.find(_q(NS_SID, "origin-id"))
    if oid is not None and oid.get("id"):
        m.origin_id = oid.get("id")
    for sid in el.findall(_q(NS_SID, "stanza-id")):
        if sid.get("by") and sid.get("id"):
            m.stanza_ids[sid.get("by", "").lower()] = sid.get("id", "")
    rep = el.find(_q(NS_CORRECT, "replace"))
    if rep is not None and rep.get("id"):
        m.replace_id = rep.get("id")
    reply = el.find(_q(NS_REPLY, "reply"))
    if reply is not None and reply.get("id"):
        m.reply_id = reply.get("id")
        m.reply_to = reply.get("to")
    for fb in el.findall(_q(NS_FALLBACK, "fallback")):
        if fb.get("for") != NS_REPLY:
            continue
        for b in fb.findall(_q(NS_FALLBACK, "body")):
            try:
                m.reply_fallback.append((int(b.get("start", "")), int(b.get("end", ""))))
            except ValueError:
                pass
    oob = el.find(_q(NS_OOB, "x"))
    if oob is not None:
        url = oob.find(_q(NS_OOB, "url"))
        desc = oob.find(_q(NS_OOB, "desc"))
        m.oob_url = (url.text or "").strip() if url is not None else None
        m.oob_desc = (desc.text or "").strip() or None if desc is not None else None
    for d in el.findall(_q(NS_DELAY, "delay")):
        m.delay_ms = parse_stamp(d.get("stamp"))
    occ = el.find(_q(NS_OCCUPANT_ID, "occupant-id"))
    if occ is not None and occ.get("id"):
        m.occupant_id = occ.get("id")
    x = el.find(_q(NS_MUC_USER, "x"))
    if x is not None:
        item = x.find(_q(NS_MUC_USER, "item"))
        if item is not None and item.get("jid"):
            m.real_jid = item.get("jid")
    nick = el.find(_q(NS_NICK, "nick"))
    if nick is not None and (nick.text or "").strip():
        m.nick = nick.text.strip()
    if m.type == "error":
        m.error = _error(el)
    return m


@dataclass
class Presence:
    frm: str
    to: str
    type: str  # "available", "unavailable", "error", or a subscription type
    id: str | None = None
    muc_user: bool = False  # carries MUC occupant information
    status_codes: set[str] = field(default_factory=set)
    real_jid: str | None = None
    new_nick: str | None = None  # with status 303
    role: str | None = None
    affiliation: str | None = None
    occupant_id: str | None = None
    nick: str | None = None  # XEP-0172
    error: Error | None = None


def parse_presence(el: ET.Element) -> Presence:
    p = Presence(frm=el.get("from", ""), to=el.get("to", ""),
                 type=el.get("type") or "available", id=el.get("id"))
    x = el.find(_q(NS_MUC_USER, "x"))
    if x is not None:
        p.muc_user = True
        for st in x.findall(_q(NS_MUC_USER, "status")):
            if st.get("code"):
                p.status_codes.add(st.get("code", ""))
        item = x.find(_q(NS_MUC_USER, "item"))
        if item is not None:
            p.real_jid = item.get("jid")
            p.new_nick = item.get("nick")
            p.role = item.get("role")
            p.affiliation = item.get("affiliation")
    occ = el.find(_q(NS_OCCUPANT_ID, "occupant-id"))
    if occ is not None and occ.get("id"):
        p.occupant_id = occ.get("id")
    nick = el.find(_q(NS_NICK, "nick"))
    if nick is not None and (nick.text or "").strip():
        p.nick = nick.text.strip()
    if p.type == "error":
        p.error = _error(el)
    return p


# --- building ----------------------------------------------------------------------------------

def message(*, frm: str, to: str, type: str, id: str, body: str | None = None,
            xhtml: ET.Element | None = None, subject: str | None = None,
            replace_id: str | None = None, reply: tuple[str, str] | None = None,
            fallback_end: int = 0, oob: str | None = None) -> ET.Element:
    el = ET.Element(_q(NS_COMPONENT, "message"), {"from": frm, "to": to, "type": type, "id": id})
    if subject is not None:
        ET.SubElement(el, _q(NS_COMPONENT, "subject")).text = xml_safe(subject)
    if body is not None:
        ET.SubElement(el, _q(NS_COMPONENT, "body")).text = xml_safe(body)
    if xhtml is not None:
        wrapper = ET.SubElement(el, _q(XHTML_IM_NS, "html"))
        wrapper.append(xhtml)
    if replace_id:
        ET.SubElement(el, _q(NS_CORRECT, "replace"), {"id": replace_id})
    if reply is not None:
        to_jid, reply_id = reply
        attrs = {"id": reply_id}
        if to_jid:
            attrs["to"] = to_jid
        ET.SubElement(el, _q(NS_REPLY, "reply"), attrs)
        if fallback_end:
            fb = ET.SubElement(el, _q(NS_FALLBACK, "fallback"), {"for": NS_REPLY})
            ET.SubElement(fb, _q(NS_FALLBACK, "body"), {"start": "0", "end": str(fallback_end)})
    if oob:
        x = ET.SubElement(el, _q(NS_OOB, "x"))
        ET.SubElement(x, _q(NS_OOB, "url")).text = oob
    if body is not None:
        ET.SubElement(el, _q(NS_SID, "origin-id"), {"id": id})
    return el


def join_presence(*, frm: str, to: str, id: str, maxstanzas: int | None = None,
                  since_ms: int | None = None, nick: str | None = None) -> ET.Element:
    el = ET.Element(_q(NS_COMPONENT, "presence"), {"from": frm, "to": to, "id": id})
    x = ET.SubElement(el, _q(NS_MUC, "x"))
    if maxstanzas is not None or since_ms is not None:
        attrs = {}
        if maxstanzas is not None:
            attrs["maxstanzas"] = str(maxstanzas)
        if since_ms is not None:
            attrs["since"] = format_stamp(since_ms)
        ET.SubElement(x, _q(NS_MUC, "history"), attrs)
    if nick:
        ET.SubElement(el, _q(NS_NICK, "nick")).text = xml_safe(nick)
    return el


def leave_presence(*, frm: str, to: str, id: str) -> ET.Element:
    return ET.Element(_q(NS_COMPONENT, "presence"),
                      {"from": frm, "to": to, "id": id, "type": "unavailable"})


def instant_room_config(*, frm: str, to: str, id: str) -> ET.Element:
    """Accept a newly created (locked) room, persistent so it outlives a bridge restart."""
    iq = ET.Element(_q(NS_COMPONENT, "iq"), {"from": frm, "to": to, "id": id, "type": "set"})
    query = ET.SubElement(iq, _q(NS_MUC_OWNER, "query"))
    x = ET.SubElement(query, _q(NS_DATA, "x"), {"type": "submit"})
    for var, value in (("FORM_TYPE", "http://jabber.org/protocol/muc#roomconfig"),
                       ("muc#roomconfig_persistentroom", "1")):
        f = ET.SubElement(x, _q(NS_DATA, "field"), {"var": var})
        ET.SubElement(f, _q(NS_DATA, "value")).text = value
    return iq


def error_reply(el: ET.Element, frm: str, condition: str, text: str = "",
                type: str = "cancel") -> ET.Element:
    """An error answer to a message or presence (to whoever sent it)."""
    name = el.tag.rsplit("}", 1)[-1]
    attrs = {"from": frm, "to": el.get("from", ""), "type": "error"}
    if el.get("id"):
        attrs["id"] = el.get("id", "")
    reply = ET.Element(_q(NS_COMPONENT, name), attrs)
    err = ET.SubElement(reply, _q(NS_COMPONENT, "error"), {"type": type})
    ET.SubElement(err, _q(NS_STANZAS, condition))
    if text:
        ET.SubElement(err, _q(NS_STANZAS, "text")).text = xml_safe(text)
    return reply
