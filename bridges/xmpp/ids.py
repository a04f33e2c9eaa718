"""Names on both sides, as pure functions.

XMPP users become puppets `@<prefix><escaped bare JID>:<server>`, escaped as the Matrix spec's
"mapping from other character sets" suggests (A-Z -> _a, _ -> __, anything outside a-z 0-9 . -
-> =xx per UTF-8 byte), so the JID can be read back from the user ID. An occupant of a MUC
whose real JID is hidden becomes `@<prefix><escaped MUC>/<hash of its occupant-id or nick>`
(`/` never comes out of the escaping, so the two kinds cannot collide).

Nexa users appear on XMPP as `<localpart>@<component domain>`; users of other Matrix servers
as `<localpart>\\40<server>@<component domain>` (XEP-0106 JID escaping).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from slixmpp.jid import JID, InvalidJID

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789.-")
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)"
                        r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


# --- JIDs --------------------------------------------------------------------------------------

def valid_domain(s: str) -> bool:
    return bool(_DOMAIN_RE.match(s))


def parse_jid(s: str) -> JID | None:
    """A JID (normalised: node and domain lower-cased), or None when s is not one."""
    if not isinstance(s, str) or not s or len(s) > 3071:
        return None
    try:
        return JID(s)
    except (InvalidJID, ValueError):
        return None


def bare_jid(s: str) -> str | None:
    """The normalised bare JID `node@domain` of s (a resource is dropped), or None."""
    j = parse_jid(s)
    if j is None or not j.user or not j.domain:
        return None
    return j.bare


def valid_bare_jid(s: str) -> bool:
    j = parse_jid(s)
    return j is not None and bool(j.user) and bool(j.domain) and not j.resource


# --- Matrix localpart escaping -----------------------------------------------------------------

def matrix_escape(s: str) -> str:
    out = []
    for ch in s:
        if "A" <= ch <= "Z":
            out.append("_" + ch.lower())
        elif ch == "_":
            out.append("__")
        else:
            for b in ch.encode("utf-8"):
                out.append(chr(b) if b in _SAFE else f"={b:02x}")
    return "".join(out)


def matrix_unescape(s: str) -> str:
    """The inverse of matrix_escape; ValueError for anything it could not have produced."""
    raw = bytearray()
    i = 0
    while i < len(s):
        c = s[i]
        if c == "_":
            if i + 1 >= len(s):
                raise ValueError("dangling _")
            n = s[i + 1]
            if n == "_":
                raw += b"_"
            elif "a" <= n <= "z":
                raw += n.upper().encode()
            else:
                raise ValueError(f"bad escape _{n}")
            i += 2
        elif c == "=":
            h = s[i + 1:i + 3]
            if not re.fullmatch(r"[0-9a-f]{2}", h):
                raise ValueError(f"bad escape ={h}")
            b = int(h, 16)
            if b in _SAFE:
                raise ValueError("needless escape")
            raw.append(b)
            i += 3
        elif ord(c) < 128 and ord(c) in _SAFE:
            raw += c.encode()
            i += 1
        else:
            raise ValueError(f"unexpected {c!r}")
    return raw.decode("utf-8")


def _short_hash(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def puppet_localpart(prefix: str, jid: str) -> str:
    return prefix + matrix_escape(jid)


def occupant_puppet_localpart(prefix: str, muc: str, key: str) -> str:
    """An anonymous occupant: stable per MUC and occupant-id (or nick, when there is none)."""
    return f"{prefix}{matrix_escape(muc)}/{_short_hash(key)}"


def jid_of_puppet(prefix: str, user_id: str, server_name: str) -> str | None:
    """The bare JID a JID puppet stands for (None for anything else, occupant puppets too)."""
    if not user_id.startswith("@") or not user_id.endswith(":" + server_name):
        return None
    localpart = user_id[1:-len(server_name) - 1]
    if not localpart.startswith(prefix) or "/" in localpart:
        return None
    try:
        jid = matrix_unescape(localpart[len(prefix):])
    except (ValueError, UnicodeDecodeError):
        return None
    return jid if valid_bare_jid(jid) and bare_jid(jid) == jid else None


def portal_alias(prefix: str, muc: str, server_name: str) -> str:
    return f"#{prefix}{matrix_escape(muc)}:{server_name}"


def muc_of_portal_alias(prefix: str, alias: str, server_name: str) -> str | None:
    if not alias.startswith("#" + prefix) or not alias.endswith(":" + server_name):
        return None
    try:
        muc = matrix_unescape(alias[1 + len(prefix):-len(server_name) - 1])
    except (ValueError, UnicodeDecodeError):
        return None
    return muc if valid_bare_jid(muc) and bare_jid(muc) == muc else None


# --- XEP-0106 and Nexa users on XMPP -----------------------------------------------------------

_XEP0106 = {" ": "\\20", '"': "\\22", "&": "\\26", "'": "\\27", "/": "\\2f", ":": "\\3a",
            "<": "\\3c", ">": "\\3e", "@": "\\40"}
_XEP0106_BACK = {v: k for k, v in _XEP0106.items()} | {"\\5c": "\\"}
_ESC_SEQ = re.compile(r"\\(20|22|26|27|2f|3a|3c|3e|40|5c)", re.IGNORECASE)


def xep0106_escape(node: str) -> str:
    out = []
    for i, ch in enumerate(node):
        if ch in _XEP0106:
            out.append(_XEP0106[ch])
        elif ch == "\\" and _ESC_SEQ.match(node, i):
            out.append("\\5c")  # only a backslash that would read as an escape is escaped
        else:
            out.append(ch)
    return "".join(out)


def xep0106_unescape(node: str) -> str:
    return _ESC_SEQ.sub(lambda m: _XEP0106_BACK["\\" + m.group(1).lower()], node)


def matrix_user_jid(user_id: str, server_name: str, component: str) -> str:
    """`@alice:hs` -> `alice@component`; `@bob:other.org` -> `bob\\40other.org@component`."""
    localpart, _, server = user_id[1:].partition(":")
    node = localpart if server == server_name else f"{localpart}@{server}"
    return f"{xep0106_escape(node)}@{component}"


def jid_matrix_user(jid: str, server_name: str, component: str) -> str | None:
    """The Matrix user a `<node>@<component>` JID stands for, or None."""
    node, sep, rest = jid.partition("@")
    if not sep or rest.split("/", 1)[0].lower() != component or not node:
        return None
    name = xep0106_unescape(node)
    localpart, at, server = name.partition("@")
    if not localpart or (at and not server):
        return None
    user_id = f"@{localpart}:{server if at else server_name}"
    if not re.fullmatch(r"@[a-z0-9._=/+\-]+:[A-Za-z0-9.\-:\[\]]+", user_id):
        return None
    return user_id


# --- nicks -------------------------------------------------------------------------------------

def sanitize_nick(name: str | None, fallback: str, max_len: int = 48) -> str:
    """A MUC nick from a display name: printable, single line, trimmed; fallback when empty."""
    cleaned = "".join(ch for ch in (name or "") if unicodedata.category(ch)[0] not in ("C",))
    cleaned = " ".join(cleaned.split())[:max_len].strip()
    if not cleaned:
        cleaned = fallback[:max_len]
    return cleaned


def localpart_of(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0]
