"""Username validation, sanitising and suggestion candidates (pure logic)."""

import random

import pytest

from homeserver.handlers.usernames import (
    max_localpart_length, pick_suggestions, sanitise, suggestion_candidates, validate_localpart,
)
from homeserver.types import LOCALPART_RE

SERVER = "example.org"


@pytest.mark.parametrize("name", ["alice", "a", "bob.smith", "x_y", "a=b", "a-b", "a/b", "a+b",
                                  "007", "_bridge_user"])
def test_valid_localparts(name):
    assert validate_localpart(name, SERVER) is None


@pytest.mark.parametrize("name", ["", "Alice", "al ice", "alice:x", "@alice", "héllo", "a#b",
                                  "a\x00b", None, 42])
def test_invalid_localparts(name):
    assert isinstance(validate_localpart(name, SERVER), str)


def test_uppercase_gets_specific_message():
    assert "lowercase" in validate_localpart("Alice", SERVER)


def test_length_counts_the_full_user_id():
    limit = max_localpart_length(SERVER)
    assert len(f"@{'a' * limit}:{SERVER}") == 255
    assert validate_localpart("a" * limit, SERVER) is None
    assert "too long" in validate_localpart("a" * (limit + 1), SERVER)
    # Without a server name only the absolute bound applies.
    assert validate_localpart("a" * 253) is None
    assert validate_localpart("a" * 254) is not None


@pytest.mark.parametrize("wanted,expected", [
    ("Alice", "alice"),
    ("  Alice Smith ", "alice_smith"),
    ("@Bob:example.org", "bob"),
    ("José Núñez", "jose_nunez"),
    ("john..smith", "john.smith"),
    ("__x__", "x"),
    ("a  b!!c", "a_bc"),
    ("ﬁsh", "fish"),
    ("!!!", ""),
    ("日本", ""),
])
def test_sanitise(wanted, expected):
    assert sanitise(wanted) == expected


def test_sanitise_truncates_without_trailing_separator():
    assert sanitise("ab_cd", max_len=3) == "ab"


def _all_valid(cands, server=SERVER):
    return all(validate_localpart(c, server) is None and LOCALPART_RE.match(c) for c in cands)


@pytest.mark.parametrize("wanted", ["alice", "Alice Smith", "@Bob:example.org", "!!!", "x",
                                    "a" * 400, "José", "john.smith", "bad:name"])
def test_candidates_are_valid_distinct_and_exclude_wanted(wanted):
    cands = suggestion_candidates(wanted, SERVER, year=2025, rng=random.Random(7))
    assert cands and _all_valid(cands)
    assert len(cands) == len(set(cands))
    assert wanted not in cands
    assert all(len(f"@{c}:{SERVER}") <= 255 for c in cands)


def test_candidates_start_with_the_sanitised_name():
    cands = suggestion_candidates("Alice Smith", SERVER, year=2025, rng=random.Random(1))
    assert cands[0] == "alice_smith"
    assert "alicesmith" in cands[:5] and "alice.smith" in cands[:5]
    assert "alice_smith2025" in cands


def test_taken_valid_name_gets_suffixed_alternatives():
    cands = suggestion_candidates("alice", SERVER, year=2025, rng=random.Random(1))
    assert cands[0] == "alice2025"
    assert all(c.startswith("alice") and c != "alice" for c in cands)


def test_unusable_name_falls_back_to_user():
    cands = suggestion_candidates("!!!", SERVER, rng=random.Random(1))
    assert cands[0] == "user"


def test_long_server_name_still_fits():
    server = "s" * 240 + ".example"
    cands = suggestion_candidates("someone_with_a_long_name", server, rng=random.Random(3))
    assert cands and _all_valid(cands, server)
    assert all(len(f"@{c}:{server}") <= 255 for c in cands)


def test_candidate_count_is_bounded():
    assert len(suggestion_candidates("bob", SERVER, count=10, rng=random.Random(0))) == 10


def test_pick_suggestions_skips_taken_and_keeps_order():
    cands = ["a1", "a2", "a3", "a4", "a5", "a6", "a7"]
    assert pick_suggestions(cands, {"a2", "a4"}) == ["a1", "a3", "a5", "a6", "a7"]
    assert pick_suggestions(cands, set(cands)) == []
