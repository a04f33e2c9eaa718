"""Matrix message content -> what an IRC user sees (pure; the bridge resolves names and URLs).

- m.text / m.notice / m.emote: formatted_body (when HTML) converted to mIRC codes, else body;
  emotes become CTCP ACTION, notices NOTICE.
- replies: a first line `> <nick> quoted snippet`, then the reply (the Matrix fallback is
  dropped);
- edits (m.replace): `* corrected text`;
- media: `name (size): https://…/_matrix/media/v3/download/…` — a link IRC users can open;
  encrypted attachments cannot be linked and say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bridges.appservice.media import media_download_url as media_link
from bridges.irc.formatting import html_to_irc, strip_formatting, strip_reply_fallback

MEDIA_TYPES = {"m.image": "image", "m.file": "file", "m.video": "video", "m.audio": "audio"}
SNIPPET_CHARS = 80


@dataclass
class Rendered:
    kind: str  # "privmsg" | "action" | "notice"
    text: str  # may hold newlines and formatting codes


def human_size(n: Any) -> str | None:
    if not isinstance(n, int) or n < 0:
        return None
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}".replace(".0 ", " ")
        n /= 1024  # type: ignore[assignment]
    return None


def snippet(text: str, limit: int = SNIPPET_CHARS) -> str:
    text = " ".join(strip_formatting(strip_reply_fallback(text)).split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def body_text(content: dict[str, Any], mention: Callable[[str], str | None] | None) -> str:
    body = content.get("body")
    body = body if isinstance(body, str) else ""
    fmt = content.get("formatted_body")
    if content.get("format") == "org.matrix.custom.html" and isinstance(fmt, str) and fmt:
        text = html_to_irc(fmt, mention)
        if text.strip():
            return text
    return strip_reply_fallback(body)


def render(content: dict[str, Any], *, media_base: str,
           mention: Callable[[str], str | None] | None = None,
           reply_to: tuple[str, str] | None = None) -> Rendered | None:
    """reply_to: (nick of the replied-to sender, their message's text) when this is a reply.
    None when there is nothing to send (an empty or unknown message)."""
    relates = content.get("m.relates_to") if isinstance(content.get("m.relates_to"), dict) else {}
    edit = relates.get("rel_type") == "m.replace"
    if edit and isinstance(content.get("m.new_content"), dict):
        content = content["m.new_content"]
    msgtype = content.get("msgtype")
    kind = {"m.emote": "action", "m.notice": "notice"}.get(msgtype, "privmsg")
    if msgtype in MEDIA_TYPES:
        name = content.get("filename") or content.get("body") or MEDIA_TYPES[msgtype]
        name = name if isinstance(name, str) else MEDIA_TYPES[msgtype]
        info = content.get("info") if isinstance(content.get("info"), dict) else {}
        size = human_size(info.get("size"))
        label = f"{name} ({size})" if size else name
        if isinstance(content.get("file"), dict) and not content.get("url"):
            text = f"sent an encrypted {MEDIA_TYPES[msgtype]} ({label}) that cannot be shown on IRC"
        else:
            url = media_link(media_base, str(content.get("url") or ""), name)
            if url is None:
                return None
            text = f"{label}: {url}"
            caption = content.get("body") if content.get("filename") else None
            if isinstance(caption, str) and caption and caption != name:
                text = f"{caption}\n{text}"
    elif msgtype == "m.location":
        geo = content.get("geo_uri")
        text = f"{content.get('body') or 'location'}: {geo}" if isinstance(geo, str) else ""
    elif isinstance(content.get("body"), str):
        text = body_text(content, mention)
    else:
        return None
    if not text.strip():
        return None
    if edit:
        text = "* " + text
    elif reply_to is not None:
        nick, quoted = reply_to
        text = f"> <{nick}> {snippet(quoted)}\n{text}"
    return Rendered(kind, text)
