"""The words the search index is built from (events/search_tokens.py, pure functions), and the
key they are hashed under (handlers/search.py)."""

from __future__ import annotations

import base64
import stat

import pytest

from homeserver.config import ConfigError
from homeserver.events.search_tokens import (MAX_TOKEN_LEN, MAX_TOKENS, event_tokens,
                                             searchable_text, token_hash, tokenize)
from homeserver.handlers.search import load_key

KEY = bytes(range(32))


def test_case_is_folded_and_words_are_distinct_in_order():
    assert tokenize("Hello hello HELLO World") == ["hello", "world"]
    # Full case folding, not lower(): the German sharp s is "ss", as typed either way.
    assert tokenize("Straße") == tokenize("STRASSE") == ["strasse"]


def test_unicode_forms_compare_equal_but_accents_stay():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert tokenize(composed) == tokenize(decomposed) == ["caf\u00e9"]
    assert tokenize("cafe") == ["cafe"]  # an accent makes another word: no folding of it
    # NFKC: fullwidth letters and ligatures are the plain ones.
    assert tokenize("\uff26\uff35\uff2c\uff2c \ufb01sh") == ["full", "fish"]


def test_punctuation_and_underscores_separate_words():
    assert tokenize("don't stop, (really)! snake_case a-b-c e-mail") == [
        "don", "stop", "really", "snake", "case", "mail"]
    assert tokenize("https://example.org/path?q=1") == ["https", "example", "org", "path"]


def test_cyrillic():
    assert tokenize("Привет, МИР! Ёлка и я") == ["привет", "мир", "ёлка"]
    assert tokenize("ПРИВЕТ") == tokenize("привет")


def test_combining_marks_stay_inside_a_word():
    # Devanagari vowel signs and the virama are marks, not separators.
    assert tokenize("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]


def test_emoji_and_symbols_are_ignored():
    assert tokenize("🙂🎉 ❤️ ★ → ©") == []
    assert tokenize("hi❤️there 👍🏽ok") == ["hi", "there", "ok"]


def test_short_words_dropped_long_words_cut():
    assert tokenize("a b c I я x1 42") == ["x1", "42"]
    long = "x" * (MAX_TOKEN_LEN + 40)
    assert tokenize(long) == ["x" * MAX_TOKEN_LEN]
    # Cut the same way on both sides, a query for the long word still meets it.
    assert tokenize(long + "y") == tokenize(long)


def test_at_most_max_tokens_distinct_words():
    text = " ".join(f"w{i}" for i in range(MAX_TOKENS + 50))
    words = tokenize(text)
    assert len(words) == MAX_TOKENS and words[-1] == f"w{MAX_TOKENS - 1}"
    assert tokenize("aa bb aa cc", limit=2) == ["aa", "bb"]


def test_hash_is_keyed_short_and_stable():
    h = token_hash(KEY, "hello")
    assert len(h) == 32 and int(h, 16) >= 0
    assert h == token_hash(KEY, "hello") != token_hash(KEY, "hellp")
    assert token_hash(bytes(32), "hello") != h
    assert "hello" not in h


@pytest.mark.parametrize("pdu, expected", [
    ({"type": "m.room.message", "content": {"body": "Hi there"}}, (1, "Hi there")),
    ({"type": "m.room.name", "state_key": "", "content": {"name": "Lobby"}}, (2, "Lobby")),
    ({"type": "m.room.topic", "state_key": "", "content": {"topic": "Cats"}}, (3, "Cats")),
    ({"type": "m.room.topic", "state_key": "x", "content": {"topic": "Cats"}}, None),
    ({"type": "m.room.message", "content": {"body": 5}}, None),
    ({"type": "m.room.message", "content": "nope"}, None),
    ({"type": "m.room.encrypted", "content": {"ciphertext": "abc", "body": "x"}}, None),
    ({"type": "m.reaction", "content": {"body": "hello"}}, None),
])
def test_searchable_fields(pdu, expected):
    assert searchable_text(pdu) == expected


def test_event_tokens_hash_every_word():
    field, hashes = event_tokens(KEY, {"type": "m.room.message",
                                       "content": {"body": "Zebra zebra lion"}})
    assert field == 1 and hashes == [token_hash(KEY, "zebra"), token_hash(KEY, "lion")]
    assert event_tokens(KEY, {"type": "m.room.message", "content": {"body": "🙂 a"}}) is None


def test_key_file(tmp_path):
    key = load_key(tmp_path)
    path = tmp_path / "search_index.key"
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(tmp_path) == key  # read back, not made again
    assert base64.b64decode(path.read_text()) == key
    for bad in ("not a key\n", base64.b64encode(bytes(31)).decode(), "\u00e9" * 44, ""):
        path.write_text(bad)
        with pytest.raises(ConfigError, match="search_index.key"):
            load_key(tmp_path)
    path.write_bytes(b"\xff" * 44)
    with pytest.raises(ConfigError, match="search_index.key"):
        load_key(tmp_path)
