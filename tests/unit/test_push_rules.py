"""Default push rules and user changes (homeserver.handlers.push_rules): pure logic."""

import pytest

from homeserver.errors import MatrixError
from homeserver.handlers.push_rules import (
    KINDS, build_ruleset, default_rules, delete_rule, empty_doc, get_rule, put_rule,
    update_rule, validate_actions, validate_rule,
)

USER = "@alice:example.com"

OVERRIDE_IDS = [
    ".m.rule.master", ".m.rule.suppress_notices", ".m.rule.invite_for_me",
    ".m.rule.member_event", ".m.rule.is_user_mention", ".m.rule.contains_display_name",
    ".m.rule.is_room_mention", ".m.rule.roomnotif", ".m.rule.tombstone", ".m.rule.reaction",
    ".m.rule.room.server_acl", ".m.rule.suppress_edits",
]
UNDERRIDE_IDS = [
    ".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one",
    ".m.rule.message", ".m.rule.encrypted",
]


def ids(rules):
    return [r["rule_id"] for r in rules]


def test_default_ruleset_order_and_shape():
    rs = build_ruleset(USER, empty_doc())
    assert set(rs) == set(KINDS)
    assert ids(rs["override"]) == OVERRIDE_IDS
    assert ids(rs["underride"]) == UNDERRIDE_IDS
    assert ids(rs["content"]) == [".m.rule.contains_user_name"]
    assert rs["room"] == [] and rs["sender"] == []
    for kind, rules in rs.items():
        for r in rules:
            assert r["default"] is True
            assert isinstance(r["enabled"], bool) and isinstance(r["actions"], list)
            if kind in ("override", "underride"):
                assert isinstance(r["conditions"], list)
    master = rs["override"][0]
    assert master["enabled"] is False and master["conditions"] == [] and master["actions"] == []


def test_user_specific_patterns():
    rs = build_ruleset(USER, empty_doc())
    invite = get_rule(rs, "override", ".m.rule.invite_for_me")
    assert {"kind": "event_match", "key": "state_key", "pattern": USER} in invite["conditions"]
    mention = get_rule(rs, "override", ".m.rule.is_user_mention")
    assert mention["conditions"] == [{"kind": "event_property_contains",
                                      "key": "content.m\\.mentions.user_ids", "value": USER}]
    assert get_rule(rs, "content", ".m.rule.contains_user_name")["pattern"] == "alice"


def test_defaults_are_fresh_copies():
    a = default_rules(USER)
    a["override"][0]["actions"].append("notify")
    assert default_rules(USER)["override"][0]["actions"] == []


def test_custom_rules_sit_between_master_and_defaults():
    doc = empty_doc()
    put_rule(doc, "override", validate_rule("override", "mine", {"actions": ["notify"],
                                                                  "conditions": []}))
    put_rule(doc, "underride", validate_rule("underride", "low", {"actions": []}))
    rs = build_ruleset(USER, doc)
    assert ids(rs["override"])[:2] == [".m.rule.master", "mine"]
    assert ids(rs["underride"])[0] == "low"
    mine = rs["override"][1]
    assert mine == {"rule_id": "mine", "default": False, "enabled": True,
                    "actions": ["notify"], "conditions": []}


def test_room_sender_content_shapes():
    doc = empty_doc()
    put_rule(doc, "room", validate_rule("room", "!r:x", {"actions": ["dont_notify"]}))
    put_rule(doc, "sender", validate_rule("sender", "@bob:x", {"actions": ["dont_notify"]}))
    put_rule(doc, "content", validate_rule("content", "cake", {"actions": ["notify"],
                                                                "pattern": "cake*lie"}))
    rs = build_ruleset(USER, doc)
    assert rs["room"] == [{"rule_id": "!r:x", "default": False, "enabled": True,
                           "actions": ["dont_notify"]}]
    assert ids(rs["sender"]) == ["@bob:x"]
    assert rs["content"][0]["pattern"] == "cake*lie"
    assert ids(rs["content"]) == ["cake", ".m.rule.contains_user_name"]


def test_before_after_and_update():
    doc = empty_doc()
    for rid in ("a", "b"):
        put_rule(doc, "override", validate_rule("override", rid, {"actions": []}))
    assert ids(doc["custom"]["override"]) == ["b", "a"]  # newest first
    put_rule(doc, "override", validate_rule("override", "c", {"actions": []}), after="a")
    assert ids(doc["custom"]["override"]) == ["b", "a", "c"]
    put_rule(doc, "override", validate_rule("override", "d", {"actions": []}), before="a")
    assert ids(doc["custom"]["override"]) == ["b", "d", "a", "c"]
    # Updating in place keeps position and enabled state.
    update_rule(doc, USER, "override", "a", enabled=False)
    put_rule(doc, "override", validate_rule("override", "a", {"actions": ["notify"]}))
    assert ids(doc["custom"]["override"]) == ["b", "d", "a", "c"]
    rule_a = doc["custom"]["override"][2]
    assert rule_a["actions"] == ["notify"] and rule_a["enabled"] is False
    # Moving an existing rule.
    put_rule(doc, "override", validate_rule("override", "c", {"actions": []}), before="b")
    assert ids(doc["custom"]["override"]) == ["c", "b", "d", "a"]


@pytest.mark.parametrize("anchor", ["missing", ".m.rule.master"])
def test_bad_anchor(anchor):
    doc = empty_doc()
    with pytest.raises(MatrixError) as e:
        put_rule(doc, "override", validate_rule("override", "x", {"actions": []}), before=anchor)
    assert e.value.status == 400
    assert doc["custom"]["override"] == []


@pytest.mark.parametrize("kind,rule_id,body,errcode", [
    ("override", ".m.rule.master", {"actions": []}, "M_INVALID_PARAM"),
    ("override", "a/b", {"actions": []}, "M_INVALID_PARAM"),
    ("override", "a\\b", {"actions": []}, "M_INVALID_PARAM"),
    ("override", "", {"actions": []}, "M_INVALID_PARAM"),
    ("bogus", "x", {"actions": []}, "M_INVALID_PARAM"),
    ("override", "x", {}, "M_MISSING_PARAM"),
    ("override", "x", {"actions": "notify"}, "M_INVALID_PARAM"),
    ("override", "x", {"actions": ["explode"]}, "M_INVALID_PARAM"),
    ("override", "x", {"actions": [{"value": 1}]}, "M_INVALID_PARAM"),
    ("override", "x", {"actions": [1]}, "M_INVALID_PARAM"),
    ("override", "x", {"actions": [], "conditions": "x"}, "M_INVALID_PARAM"),
    ("override", "x", {"actions": [], "conditions": [{"key": "type"}]}, "M_INVALID_PARAM"),
    ("content", "x", {"actions": []}, "M_MISSING_PARAM"),
    ("content", "x", {"actions": [], "pattern": 5}, "M_INVALID_PARAM"),
])
def test_invalid_rules(kind, rule_id, body, errcode):
    with pytest.raises(MatrixError) as e:
        validate_rule(kind, rule_id, body)
    assert e.value.status == 400 and e.value.errcode == errcode


def test_valid_actions():
    acts = ["notify", "dont_notify", "coalesce", {"set_tweak": "sound", "value": "default"},
            {"set_tweak": "highlight"}]
    assert validate_actions(acts) == acts


def test_change_default_rules():
    doc = empty_doc()
    update_rule(doc, USER, "override", ".m.rule.master", enabled=True)
    update_rule(doc, USER, "underride", ".m.rule.message", actions=["dont_notify"])
    rs = build_ruleset(USER, doc)
    assert rs["override"][0]["enabled"] is True
    assert get_rule(rs, "underride", ".m.rule.message")["actions"] == ["dont_notify"]
    assert get_rule(rs, "underride", ".m.rule.message")["default"] is True
    with pytest.raises(MatrixError) as e:
        update_rule(doc, USER, "override", ".m.rule.nope", enabled=True)
    assert e.value.status == 404
    with pytest.raises(MatrixError) as e:  # right ID, wrong kind
        update_rule(doc, USER, "underride", ".m.rule.master", enabled=True)
    assert e.value.status == 404


def test_delete():
    doc = empty_doc()
    put_rule(doc, "sender", validate_rule("sender", "@bob:x", {"actions": []}))
    delete_rule(doc, "sender", "@bob:x")
    assert doc["custom"]["sender"] == []
    with pytest.raises(MatrixError) as e:
        delete_rule(doc, "sender", "@bob:x")
    assert e.value.status == 404
    with pytest.raises(MatrixError) as e:
        delete_rule(doc, "override", ".m.rule.master")
    assert e.value.status == 400


def test_get_rule_missing():
    with pytest.raises(MatrixError) as e:
        get_rule(build_ruleset(USER, empty_doc()), "override", "nope")
    assert e.value.status == 404 and e.value.errcode == "M_NOT_FOUND"
