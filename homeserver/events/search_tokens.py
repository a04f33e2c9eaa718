"""Words of searchable event fields, and their keyed hashes for the blind search index.

Pure functions: the event pipeline (handlers/search.py), the query side and
`nexa reindex-search` must cut text into the same words, or stored hashes and query hashes
would not meet. Matching is by whole word after Unicode normalisation (NFKC) and case folding:
"Cafe" finds "CAFE" and "ｃａｆｅ" but not "café", and "cat" does not find "category" — the index
holds no text, so there is nothing to match a part of a word against.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import unicodedata
from typing import Any

MIN_TOKEN_LEN = 2  # single letters ("a", "я") match too much to be worth a row
MAX_TOKEN_LEN = 64  # longer words are cut (both when indexing and querying, so they still match)
MAX_TOKENS = 200  # distinct words indexed per event field; the rest of a long text is not
MAX_QUERY_TOKENS = 32
HASH_BYTES = 16

# Spec key -> (code stored in search_index.field, event type, content key).
FIELDS: dict[str, tuple[int, str, str]] = {
    "content.body": (1, "m.room.message", "body"),
    "content.name": (2, "m.room.name", "name"),
    "content.topic": (3, "m.room.topic", "topic"),
}
_BY_TYPE = {etype: (code, key) for code, etype, key in FIELDS.values()}
SEARCHABLE_TYPES = tuple(_BY_TYPE)


@functools.cache
def _word_re() -> re.Pattern[str]:
    """A word: a letter or digit, then letters, digits and combining marks (Devanagari vowel
    signs, a virama, accents left uncomposed). Underscores, punctuation, symbols and emoji
    separate words. Variation selectors are not marks here: "hi❤️" is the word "hi"."""
    ranges: list[tuple[int, int]] = []
    for cp in range(0x300, 0x20000):
        if unicodedata.category(chr(cp)) in ("Mn", "Mc") and not 0xFE00 <= cp <= 0xFE0F:
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1] = (ranges[-1][0], cp)
            else:
                ranges.append((cp, cp))
    marks = "".join(f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)
    return re.compile(f"[^\\W_](?:[^\\W_]|[{marks}])*")


def normalize(text: str) -> str:
    # NFKC before folding (fullwidth letters, ligatures) and after (folding can leave
    # sequences that compose).
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def tokenize(text: str, limit: int = MAX_TOKENS) -> list[str]:
    """The distinct words of `text`, in order of first appearance, at most `limit`."""
    seen: dict[str, None] = {}
    for m in _word_re().finditer(normalize(text)):
        word = m.group()
        if len(word) < MIN_TOKEN_LEN:
            continue
        seen[word[:MAX_TOKEN_LEN]] = None
        if len(seen) >= limit:
            break
    return list(seen)


def token_hash(key: bytes, token: str) -> str:
    """HMAC-SHA256 of the word under the index key, cut to 16 bytes, as hex: equal words give
    equal hashes (that is what makes the index searchable), and without the key a hash does
    not lead back to its word."""
    digest = hmac.new(key, token.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return digest[:HASH_BYTES].hex()


def searchable_text(pdu: dict[str, Any]) -> tuple[int, str] | None:
    """(field code, text) of an event the index covers: a message's body, a room's name or
    topic; None for every other event (encrypted ones included)."""
    found = _BY_TYPE.get(pdu.get("type"))  # type: ignore[arg-type]
    content = pdu.get("content")
    if found is None or not isinstance(content, dict):
        return None
    code, key = found
    if code != 1 and pdu.get("state_key") != "":
        return None
    text = content.get(key)
    return (code, text) if isinstance(text, str) and text else None


def event_tokens(key: bytes, pdu: dict[str, Any]) -> tuple[int, list[str]] | None:
    """(field code, hashes of its distinct words) for an event to index, or None."""
    found = searchable_text(pdu)
    if found is None:
        return None
    words = tokenize(found[1])
    return (found[0], [token_hash(key, w) for w in words]) if words else None
