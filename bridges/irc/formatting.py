"""Pure text conversions between IRC and Matrix (no I/O).

- mIRC formatting codes <-> Matrix `formatted_body` HTML: bold (\\x02), italic (\\x1d), underline
  (\\x1f), strikethrough (\\x1e), monospace (\\x11), colours (\\x03NN[,NN] and \\x04RRGGBB), reset
  (\\x0f); reverse (\\x16) and anything unknown is dropped.
- `split_message`: one Matrix message -> IRC lines that fit a byte budget, split on UTF-8
  boundaries (preferably at spaces), with the formatting active at a split re-opened on the next
  line (IRC clients reset formatting at each line end).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from typing import Callable

BOLD, ITALIC, UNDERLINE, STRIKE, MONO, COLOR, HEXCOLOR, REVERSE, RESET = (
    "\x02", "\x1d", "\x1f", "\x1e", "\x11", "\x03", "\x04", "\x16", "\x0f")
CTCP = "\x01"

# The 16 standard mIRC colours (99 = default).
MIRC_COLORS = ["#FFFFFF", "#000000", "#00007F", "#009300", "#FF0000", "#7F0000", "#9C009C",
               "#FC7F00", "#FFFF00", "#00FC00", "#009393", "#00FFFF", "#0000FC", "#FF00FF",
               "#7F7F7F", "#D2D2D2"]

# One formatting atom: a colour code with its (optional) numbers, or a single control character.
_ATOM_RE = re.compile(r"\x03(?:(\d{1,2})(?:,(\d{1,2}))?)?|\x04(?:([0-9a-fA-F]{6})"
                      r"(?:,([0-9a-fA-F]{6}))?)?|[\x02\x1d\x1f\x1e\x11\x16\x0f]")
# Other C0 controls that have no business in a message (CTCP delimiters are handled apart).
_JUNK_RE = re.compile(r"[\x00\x05-\x08\x0b\x0c\x0e\x10\x12-\x15\x17-\x1c]")


@dataclass(frozen=True)
class Style:
    bold: bool = False
    italic: bool = False
    underline: bool = False
    strike: bool = False
    mono: bool = False
    fg: str | None = None  # "#RRGGBB"
    bg: str | None = None
    fg_code: str | None = None  # the IRC code that set the colour, to re-open it after a split

    def codes(self) -> str:
        """The control codes that turn plain text into this style."""
        out = ""
        for flag, code in ((self.bold, BOLD), (self.italic, ITALIC),
                           (self.underline, UNDERLINE), (self.strike, STRIKE), (self.mono, MONO)):
            if flag:
                out += code
        return out + (self.fg_code or "")


PLAIN = Style()


def _color(num: str | None) -> str | None:
    if num is None:
        return None
    n = int(num)
    return MIRC_COLORS[n] if n < len(MIRC_COLORS) else None


def apply_atom(style: Style, atom: str, m: re.Match | None = None) -> Style:
    """The style after one formatting atom."""
    c = atom[0]
    if c == BOLD:
        return replace(style, bold=not style.bold)
    if c == ITALIC:
        return replace(style, italic=not style.italic)
    if c == UNDERLINE:
        return replace(style, underline=not style.underline)
    if c == STRIKE:
        return replace(style, strike=not style.strike)
    if c == MONO:
        return replace(style, mono=not style.mono)
    if c == RESET:
        return PLAIN
    if c in (COLOR, HEXCOLOR):
        m = m or _ATOM_RE.match(atom)
        assert m is not None
        if c == COLOR:
            fg, bg = m.group(1), m.group(2)
            if fg is None:
                return replace(style, fg=None, bg=None, fg_code=None)
            return replace(style, fg=_color(fg), bg=_color(bg) if bg else style.bg,
                           fg_code=atom)
        fg, bg = m.group(3), m.group(4)
        if fg is None:
            return replace(style, fg=None, bg=None, fg_code=None)
        return replace(style, fg="#" + fg.upper(), bg=("#" + bg.upper()) if bg else style.bg,
                       fg_code=atom)
    return style  # reverse: no Matrix equivalent


def _segments(text: str) -> list[tuple[str, Style]]:
    out: list[tuple[str, Style]] = []
    style, pos = PLAIN, 0
    for m in _ATOM_RE.finditer(text):
        if m.start() > pos:
            out.append((text[pos:m.start()], style))
        style = apply_atom(style, m.group(0), m)
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], style))
    return out


def strip_formatting(text: str) -> str:
    return _JUNK_RE.sub("", _ATOM_RE.sub("", text))


def irc_to_matrix(text: str) -> tuple[str, str | None]:
    """(plain body, formatted_body or None when the text has no formatting)."""
    text = _JUNK_RE.sub("", text)
    segs = _segments(text)
    body = "".join(s for s, _ in segs)
    if not any(st.bold or st.italic or st.underline or st.strike or st.mono or st.fg or st.bg
               for _, st in segs):
        return body, None
    parts = []
    for s, st in segs:
        h = html.escape(s, quote=False)
        if st.fg or st.bg:
            attrs = ""
            if st.fg:
                attrs += f' data-mx-color="{st.fg}"'
            if st.bg:
                attrs += f' data-mx-bg-color="{st.bg}"'
            h = f"<font{attrs}>{h}</font>"
        for flag, tag in ((st.mono, "code"), (st.strike, "del"), (st.underline, "u"),
                          (st.italic, "i"), (st.bold, "b")):
            if flag:
                h = f"<{tag}>{h}</{tag}>"
        parts.append(h)
    return body, "".join(parts)


# --- HTML -> IRC ---------------------------------------------------------------------------------

def _nearest_mirc(color: str) -> str | None:
    m = re.fullmatch(r"#?([0-9a-fA-F]{6})", color.strip())
    if not m:
        return None
    rgb = [int(m.group(1)[i:i + 2], 16) for i in (0, 2, 4)]
    best = min(range(len(MIRC_COLORS)), key=lambda i: sum(
        (a - int(MIRC_COLORS[i][1 + 2 * k:3 + 2 * k], 16)) ** 2 for k, a in enumerate(rgb)))
    return f"{best:02d}"


_TOGGLES = {"b": BOLD, "strong": BOLD, "i": ITALIC, "em": ITALIC, "u": UNDERLINE,
            "ins": UNDERLINE, "del": STRIKE, "s": STRIKE, "strike": STRIKE, "code": MONO}
_BLOCKS = {"p", "div", "pre", "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5",
           "h6", "table", "tr", "hr"}


class _HtmlToIrc(HTMLParser):
    def __init__(self, mention: Callable[[str], str | None] | None) -> None:
        super().__init__(convert_charrefs=True)
        self.mention = mention
        self.out: list[str] = []
        self.depth: dict[str, int] = {}
        self.colors: list[str | None] = []
        self.skip = 0  # inside <mx-reply>
        self.quote = 0
        self.pre = 0
        self.lists: list[list[int | None]] = []  # [counter or None for <ul>]
        self.links: list[tuple[str, int]] = []  # (href, index in out where its text starts)

    def text(self) -> str:
        return "".join(self.out)

    def _newline(self) -> None:
        cur = self.text()
        if cur and not cur.endswith("\n"):
            self.out.append("\n")
        if self.quote:
            self.out.append("> " * self.quote)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "mx-reply":
            self.skip += 1
            return
        if self.skip:
            return
        if tag in _TOGGLES:
            n = self.depth.get(_TOGGLES[tag], 0)
            self.depth[_TOGGLES[tag]] = n + 1
            if n == 0 and not (tag == "code" and self.pre):
                self.out.append(_TOGGLES[tag])
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self._newline()
            self.out.append(BOLD)
        elif tag == "blockquote":
            self.quote += 1
            self._newline()
        elif tag in ("ul", "ol"):
            self.lists.append([None if tag == "ul" else int(a.get("start") or 1)])
        elif tag == "li":
            self._newline()
            if self.lists and self.lists[-1][0] is not None:
                self.out.append(f"{self.lists[-1][0]}. ")
                self.lists[-1][0] += 1  # type: ignore[operator]
            else:
                self.out.append("• ")
        elif tag == "pre":
            self.pre += 1
            self._newline()
        elif tag in ("p", "div", "tr", "table"):
            self._newline()
        elif tag == "hr":
            self._newline()
            self.out.append("---")
            self._newline()
        elif tag == "br":
            self.out.append("\n" + "> " * self.quote)
        elif tag in ("font", "span"):
            color = a.get("data-mx-color") or a.get("color")
            code = _nearest_mirc(color) if color else None
            self.colors.append(code)
            if code:
                self.out.append(COLOR + code)
        elif tag == "a":
            self.links.append((a.get("href", ""), len(self.out)))
        elif tag == "img":
            alt = a.get("alt") or a.get("title") or "image"
            self.out.append(alt)

    def handle_endtag(self, tag: str) -> None:
        if tag == "mx-reply":
            self.skip = max(0, self.skip - 1)
            return
        if self.skip:
            return
        if tag in _TOGGLES:
            n = self.depth.get(_TOGGLES[tag], 0)
            if n > 0:
                self.depth[_TOGGLES[tag]] = n - 1
                if n == 1 and not (tag == "code" and self.pre):
                    self.out.append(_TOGGLES[tag])
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
            self.out.append(BOLD)
            self._newline()
        elif tag == "blockquote":
            self.quote = max(0, self.quote - 1)
            self._newline()
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self._newline()
        elif tag == "pre":
            self.pre = max(0, self.pre - 1)
            self._newline()
        elif tag in ("p", "div", "table"):
            self._newline()
        elif tag in ("font", "span"):
            if self.colors and self.colors.pop():
                outer = next((c for c in reversed(self.colors) if c), None)
                self.out.append(COLOR + outer if outer else COLOR)
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.out[start:])
            user = re.match(r"https://matrix\.to/#/((?:@|%40)[^/?]+)", href)
            if user and self.mention is not None:
                from urllib.parse import unquote

                nick = self.mention(unquote(user.group(1)))
                if nick:
                    self.out[start:] = [nick]
                    return
            plain = strip_formatting(label).strip()
            if href and plain != href and not href.startswith("https://matrix.to/") \
                    and href != "mailto:" + plain:
                self.out.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if not self.pre:
            data = re.sub(r"\s+", " ", data)
            if self.text().endswith(("\n", "> ")) or not self.out:
                data = data.lstrip()
        elif self.quote:
            data = data.replace("\n", "\n" + "> " * self.quote)
        self.out.append(data)


def html_to_irc(formatted: str, mention: Callable[[str], str | None] | None = None) -> str:
    """Matrix HTML -> IRC text with formatting codes; lines separated by \\n."""
    p = _HtmlToIrc(mention)
    try:
        p.feed(formatted)
        p.close()
    except Exception:  # HTMLParser is lenient; anything it still trips over means plain text
        return strip_formatting(re.sub(r"<[^>]*>", "", formatted))
    text = p.text()
    lines = [ln.rstrip() for ln in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n")
    return text


def strip_reply_fallback(body: str) -> str:
    """A reply's plain body starts with '> <@user> quoted' lines and a blank line: drop them."""
    lines = body.split("\n")
    i = 0
    while i < len(lines) and lines[i].startswith("> "):
        i += 1
    if i and i < len(lines) and lines[i] == "":
        return "\n".join(lines[i + 1:])
    return body


# --- splitting -----------------------------------------------------------------------------------

def _atoms(line: str) -> list[tuple[str, re.Match | None]]:
    out: list[tuple[str, re.Match | None]] = []
    pos = 0
    for m in _ATOM_RE.finditer(line):
        out.extend((ch, None) for ch in line[pos:m.start()])
        out.append((m.group(0), m))
        pos = m.end()
    out.extend((ch, None) for ch in line[pos:])
    return out


def split_message(text: str, max_bytes: int) -> list[str]:
    """IRC lines of at most max_bytes UTF-8 bytes each, from text that may hold newlines and
    formatting codes. Breaks at the last space when there is one in the second half of a line,
    never inside a character or a colour code; the formatting active at a break is re-opened
    on the next line; empty lines are dropped (IRC cannot send them)."""
    if max_bytes < 8:
        raise ValueError("max_bytes too small")
    text = _JUNK_RE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines: list[str] = []
    style = carry = PLAIN
    for logical in text.split("\n"):
        atoms = _atoms(logical)
        sizes = [len(a.encode("utf-8")) for a, _ in atoms]
        after: list[Style] = []
        for a, m in atoms:
            style = apply_atom(style, a, m) if m is not None else style
            after.append(style)
        i, n = 0, len(atoms)
        start_style = carry
        while i < n:
            prefix = start_style.codes()
            budget = max_bytes - len(prefix.encode("utf-8"))
            j, used, last_space = i, 0, -1
            while j < n and used + sizes[j] <= budget:
                if atoms[j][0] == " ":
                    last_space = j
                used += sizes[j]
                j += 1
            if j == i:
                j = i + 1  # one atom larger than the budget: send it alone
            if j < n and last_space > i + (j - i) // 2:
                end, nxt = last_space, last_space + 1
            else:
                end, nxt = j, j
            chunk = "".join(a for a, _ in atoms[i:end]).rstrip(" ")
            if strip_formatting(chunk).strip():
                lines.append(prefix + chunk)
            start_style = after[nxt - 1]
            i = nxt
        carry = after[-1] if after else carry
    return lines


def utf8_truncate(text: str, max_bytes: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", errors="ignore")
