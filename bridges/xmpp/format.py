"""Message bodies between Matrix and XMPP, as pure functions.

- Matrix HTML (`formatted_body`) -> XHTML-IM (XEP-0071), and XHTML-IM -> Matrix HTML, each
  through a whitelist: anything else keeps only its text. The plain `body` always goes along
  (XMPP clients without XHTML-IM show it; Matrix's `body` is already a plain rendering).
- `/me ` at the start of an XMPP body <-> `m.emote`.
- Replies: Matrix's reply fallbacks (`> ` lines, `<mx-reply>`) are dropped; XMPP's reply
  fallback (XEP-0461 with XEP-0428 ranges) is cut out of the body when the reply is understood.
- Attachments (m.image, m.file, ...) become a download link on the homeserver, sent as the body
  and as an XEP-0066 OOB URL (what XMPP clients show inline).
- Text that XML cannot carry (most control characters) is removed before it reaches a stanza.
"""

from __future__ import annotations

import html
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from typing import Any

from bridges.appservice.media import media_download_url

XHTML_IM_NS = "http://jabber.org/protocol/xhtml-im"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_X = "{%s}" % XHTML_NS

_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SAFE_URL = re.compile(r"^(https?|mailto|xmpp|matrix):", re.IGNORECASE)
_COLOR = re.compile(r"^#[0-9a-fA-F]{3,6}$|^[a-zA-Z]{1,20}$")
MEDIA_MSGTYPES = ("m.image", "m.file", "m.audio", "m.video")
MAX_BODY = 64 * 1024
MAX_MATRIX_BODY = 24 * 1024  # bytes


def xml_safe(s: str) -> str:
    return _INVALID_XML.sub("", s)


# --- Matrix -> XMPP ----------------------------------------------------------------------------

def strip_matrix_reply_fallback(body: str) -> str:
    """Drop the `> <@user> quoted` lines (and the blank line after them) some clients add."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith(">"):
        return body
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    if i < len(lines) and lines[i] == "":
        return "\n".join(lines[i + 1:])
    return body


_HTML_TO_XHTML = {"b": "strong", "strong": "strong", "i": "em", "em": "em", "code": "code",
                  "pre": "pre", "blockquote": "blockquote", "p": "p", "ul": "ul", "ol": "ol",
                  "li": "li", "h1": "h1", "h2": "h2", "h3": "h3", "h4": "h4", "h5": "h5",
                  "h6": "h6", "sup": "span", "sub": "span", "q": "q", "cite": "cite"}
_VOID = {"br", "hr", "img", "wbr"}
_DROP = {"mx-reply", "script", "style", "head", "title"}


class _HtmlToXhtml(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = ET.Element(_X + "body")
        self.stack: list[tuple[str, ET.Element | None]] = [("", self.root)]
        self.dropping = 0
        self.tags = 0

    @property
    def _parent(self) -> ET.Element:
        for _, el in reversed(self.stack):
            if el is not None:
                return el
        return self.root

    def _text(self, data: str) -> None:
        parent = self._parent
        if len(parent):
            last = parent[-1]
            last.tail = (last.tail or "") + data
        else:
            parent.text = (parent.text or "") + data

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if self.dropping or tag in _DROP:
            if tag not in _VOID:
                self.dropping += 1
            return
        if tag == "br":
            ET.SubElement(self._parent, _X + "br")
            self.tags += 1
            return
        if tag in _VOID:
            if tag == "img" and a.get("alt"):
                self._text(a["alt"])
            return
        el: ET.Element | None = None
        name = _HTML_TO_XHTML.get(tag)
        if tag == "a" and _SAFE_URL.match(a.get("href", "")):
            el = ET.SubElement(self._parent, _X + "a", {"href": a["href"]})
        elif name is not None:
            el = ET.SubElement(self._parent, _X + name)
        elif tag in ("u", "ins"):
            el = ET.SubElement(self._parent, _X + "span",
                               {"style": "text-decoration: underline"})
        elif tag in ("s", "del", "strike"):
            el = ET.SubElement(self._parent, _X + "span",
                               {"style": "text-decoration: line-through"})
        elif tag in ("font", "span"):
            color = a.get("data-mx-color") or a.get("color") or ""
            if _COLOR.match(color):
                el = ET.SubElement(self._parent, _X + "span", {"style": f"color: {color}"})
        if el is not None:
            self.tags += 1
        self.stack.append((tag, el))

    def handle_endtag(self, tag: str) -> None:
        if self.dropping:
            if tag in _DROP or tag not in _VOID:
                self.dropping -= 1
            return
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        if not self.dropping:
            self._text(data)


def html_to_xhtml(formatted: str) -> ET.Element | None:
    """The XHTML-IM `<body>` for Matrix HTML, or None when it carries no formatting."""
    p = _HtmlToXhtml()
    try:
        p.feed(xml_safe(formatted))
        p.close()
    except Exception:  # html.parser is lenient; anything odd just means "no formatting"
        return None
    if not p.tags:
        return None
    for el in p.root.iter():
        if el.text:
            el.text = xml_safe(el.text)
        if el.tail:
            el.tail = xml_safe(el.tail)
    return p.root


def xhtml_wrap(body: ET.Element) -> ET.Element:
    html_el = ET.Element("{%s}html" % XHTML_IM_NS)
    html_el.append(body)
    return html_el


def media_url(mxc: str, base_url: str, filename: str | None = None) -> str | None:
    return media_download_url(base_url, mxc, filename)


def matrix_to_xmpp(content: dict[str, Any], media_base: str) -> dict[str, Any] | None:
    """{"body", "xhtml" (Element|None), "oob" (URL|None)} for a message's content, or None
    when there is nothing to say. Edits pass their m.new_content here."""
    msgtype = content.get("msgtype")
    body = content.get("body")
    if not isinstance(body, str):
        body = ""
    reply = isinstance(content.get("m.relates_to"), dict) and \
        "m.in_reply_to" in content["m.relates_to"]
    if reply:
        body = strip_matrix_reply_fallback(body)
    xhtml = None
    if content.get("format") == "org.matrix.custom.html" and \
            isinstance(content.get("formatted_body"), str) and msgtype in (
                "m.text", "m.notice", "m.emote", None):
        xhtml = html_to_xhtml(content["formatted_body"])
    oob = None
    if msgtype in MEDIA_MSGTYPES:
        filename = content.get("filename") if isinstance(content.get("filename"), str) else None
        url = media_url(str(content.get("url") or ""), media_base, filename or body or None)
        if url is None:
            return None
        caption = body if filename and body and body != filename else ""
        body = f"{caption}\n{url}" if caption else url
        oob = url
        xhtml = None
    elif msgtype == "m.emote":
        body = "/me " + body
        if xhtml is not None:
            xhtml.text = "/me " + (xhtml.text or "")
    elif msgtype == "m.location" and isinstance(content.get("geo_uri"), str):
        body = f"{body}\n{content['geo_uri']}" if body else content["geo_uri"]
    body = xml_safe(body)[:MAX_BODY]
    if not body.strip():
        return None
    return {"body": body, "xhtml": xhtml, "oob": oob}


def reply_fallback(nick: str, quoted: str, max_lines: int = 3) -> str:
    """XEP-0461's quote, as XMPP clients write it: `> Nick:\n> first line\n> second\n`."""
    lines = strip_matrix_reply_fallback(quoted).split("\n")[:max_lines]
    out = [f"> {nick}:"] + [f"> {ln}" for ln in lines]
    return xml_safe("\n".join(out)[:500]) + "\n"


# --- XMPP -> Matrix ----------------------------------------------------------------------------

def cut_ranges(text: str, ranges: list[tuple[int, int]]) -> str:
    """Remove [start, end) code point ranges (XEP-0428 fallback bodies)."""
    keep = []
    pos = 0
    for start, end in sorted(ranges):
        start, end = max(start, pos), min(end, len(text))
        if start >= end:
            continue
        keep.append(text[pos:start])
        pos = end
    keep.append(text[pos:])
    return "".join(keep)


def _style(style: str) -> dict[str, str]:
    out = {}
    for part in style.split(";"):
        k, _, v = part.partition(":")
        if k.strip():
            out[k.strip().lower()] = v.strip().lower()
    return out


_XHTML_TO_HTML = {"strong": "strong", "b": "strong", "em": "em", "i": "em", "code": "code",
                  "pre": "pre", "blockquote": "blockquote", "p": "p", "ul": "ul", "ol": "ol",
                  "li": "li", "h1": "h1", "h2": "h2", "h3": "h3", "h4": "h4", "h5": "h5",
                  "h6": "h6", "q": "q", "cite": "em", "u": "u", "del": "del", "s": "del"}


def _render(el: ET.Element, out: list[str], depth: int = 0) -> int:
    """Matrix HTML for el's content; returns how many tags were written."""
    tags = 0
    if el.text:
        out.append(html.escape(el.text, quote=False))
    for child in el:
        name = child.tag.rsplit("}", 1)[-1].lower()
        opened: list[str] = []
        if depth > 50:
            pass
        elif name == "br":
            out.append("<br>")
            tags += 1
        elif name == "a" and _SAFE_URL.match(child.get("href", "")):
            out.append(f'<a href="{html.escape(child.get("href", ""))}">')
            opened.append("a")
        elif name in _XHTML_TO_HTML:
            opened.append(_XHTML_TO_HTML[name])
            out.append(f"<{opened[-1]}>")
        elif name == "span":
            st = _style(child.get("style", ""))
            if st.get("font-weight") in ("bold", "700", "800", "900"):
                opened.append("strong")
            if st.get("font-style") == "italic":
                opened.append("em")
            if "underline" in st.get("text-decoration", ""):
                opened.append("u")
            if "line-through" in st.get("text-decoration", ""):
                opened.append("del")
            for t in opened:
                out.append(f"<{t}>")
            if _COLOR.match(st.get("color", "")):
                out.append(f'<span data-mx-color="{html.escape(st["color"])}">')
                opened.append("span")
        elif name == "img" and child.get("alt"):
            out.append(html.escape(child.get("alt", ""), quote=False))
        tags += len(opened)
        if name != "br":
            tags += _render(child, out, depth + 1)
        for t in reversed(opened):
            out.append(f"</{t}>")
        if child.tail:
            out.append(html.escape(child.tail, quote=False))
    return tags


def xhtml_to_html(body: ET.Element, *, drop_leading_quote: bool = False,
                  strip_me: bool = False) -> str | None:
    """Matrix HTML for an XHTML-IM `<body>`, or None when it has no formatting to speak of."""
    if drop_leading_quote and len(body) and \
            body[0].tag.rsplit("}", 1)[-1] == "blockquote" and not (body.text or "").strip():
        body = _copy_without_first(body)
    if strip_me and (body.text or "").startswith("/me "):
        body = _copy_with_text(body, body.text[4:])
    out: list[str] = []
    if not _render(body, out):
        return None
    return "".join(out).strip()


def _copy_without_first(el: ET.Element) -> ET.Element:
    new = ET.Element(el.tag, el.attrib)
    new.text = (el.text or "") + (el[0].tail or "").lstrip("\n")
    for child in list(el)[1:]:
        new.append(child)
    return new


def _copy_with_text(el: ET.Element, text: str) -> ET.Element:
    new = ET.Element(el.tag, el.attrib)
    new.text = text
    for child in el:
        new.append(child)
    return new


def xmpp_to_matrix(body: str, *, xhtml: ET.Element | None = None,
                   fallback: list[tuple[int, int]] | None = None,
                   oob_url: str | None = None, oob_desc: str | None = None) -> dict[str, Any]:
    """m.room.message content for an XMPP message (a reply's fallback already understood)."""
    text = cut_ranges(body, fallback) if fallback else body
    if len(text.encode()) > MAX_MATRIX_BODY:  # a Matrix event is at most 64 KiB, all of it
        text = text.encode()[:MAX_MATRIX_BODY].decode("utf-8", "ignore") + "…"
        xhtml = None
    emote = text.startswith("/me ")
    if emote:
        text = text[4:]
    content: dict[str, Any] = {"msgtype": "m.emote" if emote else "m.text", "body": text}
    if xhtml is not None:
        formatted = xhtml_to_html(xhtml, drop_leading_quote=bool(fallback), strip_me=emote)
        if formatted and len(formatted.encode()) <= MAX_MATRIX_BODY:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = formatted
    if oob_url and re.match(r"^https?://\S+$", oob_url):
        # XMPP clients put the URL alone in the body of a file share: show it as a link.
        label = oob_desc or oob_url
        if text.strip() in ("", oob_url):
            content["body"] = oob_url if not oob_desc else f"{oob_desc}: {oob_url}"
        elif oob_url not in text:
            content["body"] = f"{text}\n{oob_url}"
        content["format"] = "org.matrix.custom.html"
        caption = "" if text.strip() in ("", oob_url) else html.escape(text) + "<br>"
        content["formatted_body"] = (f'{caption}<a href="{html.escape(oob_url)}">'
                                     f'{html.escape(label)}</a>')
    return content


def edit_content(new: dict[str, Any], original_event_id: str) -> dict[str, Any]:
    """A Matrix edit (m.replace) carrying new as its m.new_content."""
    content = dict(new)
    content["body"] = "* " + new.get("body", "")
    if "formatted_body" in new:
        content["formatted_body"] = "* " + new["formatted_body"]
    content["m.new_content"] = new
    content["m.relates_to"] = {"rel_type": "m.replace", "event_id": original_event_id}
    return content
