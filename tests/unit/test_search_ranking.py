"""The user directory's "smart search" ranking (pure function)."""

from homeserver.handlers.directory import EXACT, PREFIX, SUBSTRING, match_tier, rank_users


def u(user_id, name=None):
    return {"user_id": user_id, "display_name": name, "avatar_url": None}


def ids(results):
    return [r["user_id"] for r in results]


def test_match_tiers_on_localpart_and_display_name():
    assert match_tier("bob", "@bob:hs", None) == EXACT
    assert match_tier("bob", "@bobby:hs", None) == PREFIX
    assert match_tier("bob", "@jimbob:hs", None) == SUBSTRING
    assert match_tier("bob", "@x:hs", "Bob") == EXACT
    assert match_tier("bob", "@x:hs", "Bobby Tables") == PREFIX
    assert match_tier("bob", "@x:hs", "Big Bob") == SUBSTRING
    assert match_tier("bob", "@x:hs", None) is None


def test_best_field_wins():
    assert match_tier("bob", "@jimbob:hs", "Bob") == EXACT
    assert match_tier("bob", "@bobcat:hs", "Jimbob") == PREFIX


def test_server_name_is_not_matched():
    assert match_tier("example", "@alice:example.org", "Alice") is None


def test_full_user_id_term_matches_whole_id():
    assert match_tier("bob:hs", "@bob:hs", None) == EXACT
    assert match_tier("bob:h", "@bob:hs", None) == PREFIX


def test_shared_rooms_come_first_then_match_quality():
    cands = [u("@bob:hs"), u("@bobby:hs"), u("@jimbob:hs"), u("@zed:hs", "Bobcat")]
    # Only jimbob (substring) shares a room: it beats the exact match.
    ranked = rank_users("bob", cands, {"@jimbob:hs": 1})
    assert ids(ranked) == ["@jimbob:hs", "@bob:hs", "@bobby:hs", "@zed:hs"]


def test_among_sharers_match_quality_then_shared_count():
    cands = [u("@abob:hs"), u("@bobx:hs"), u("@boby:hs"), u("@bob:hs")]
    shared = {"@abob:hs": 9, "@bobx:hs": 1, "@boby:hs": 5, "@bob:hs": 1}
    assert ids(rank_users("bob", cands, shared)) == ["@bob:hs", "@boby:hs", "@bobx:hs",
                                                     "@abob:hs"]


def test_ties_broken_by_user_id():
    cands = [u("@bobc:hs"), u("@boba:hs"), u("@bobb:hs")]
    assert ids(rank_users("bob", cands, {})) == ["@boba:hs", "@bobb:hs", "@bobc:hs"]


def test_case_insensitive_and_at_sign_tolerated():
    cands = [u("@alice:hs", "ALICE Liddell"), u("@malice:hs")]
    assert ids(rank_users("  @Ali ", cands, {})) == ["@alice:hs", "@malice:hs"]


def test_non_matching_candidates_are_dropped():
    assert rank_users("zzz", [u("@bob:hs", "Bob")], {"@bob:hs": 3}) == []
    assert rank_users("", [u("@bob:hs")], {}) == []


def test_candidates_are_returned_unchanged():
    c = u("@bob:hs", "Bob")
    c["avatar_url"] = "mxc://hs/abc"
    assert rank_users("bob", [c], {}) == [c]
