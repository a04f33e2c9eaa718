"""Push rule evaluation (homeserver.events.push_eval) against the default and user rules."""

import pytest

from homeserver.events.push_eval import (
    RoomFacts, actions_outcome, compile_rules, evaluate, glob_matches, lookup, split_key,
)
from homeserver.handlers.push_rules import (
    build_ruleset, empty_doc, put_rule, update_rule, validate_rule,
)

ME = "@alice:example.com"
BOB = "@bob:example.com"
ROOM = "!room:example.com"
GROUP = RoomFacts(member_count=5, sender_power=0)
DM = RoomFacts(member_count=2, sender_power=0)


def msg(body="hello", sender=BOB, **content):
    return {"type": "m.room.message", "room_id": ROOM, "sender": sender,
            "content": {"msgtype": "m.text", "body": body, **content}}


def run(event, facts=GROUP, doc=None, name="Alice Liddell"):
    rules = compile_rules(build_ruleset(ME, doc or empty_doc()))
    return evaluate(rules, event, name, facts)


def test_keys_and_lookup():
    assert split_key("content.m\\.mentions.user_ids") == ("content", "m.mentions", "user_ids")
    assert split_key("a\\\\.b") == ("a\\", "b")
    ev = {"content": {"m.mentions": {"room": True}}}
    assert lookup(ev, "content.m\\.mentions.room") is True
    assert lookup(ev, "content.missing") is not True


@pytest.mark.parametrize("pattern,value,words,expected", [
    ("cake*lie", "CAKE is a lie", False, True),
    ("cake?", "cakes", False, True),
    ("cake?", "cake", False, False),
    ("alice", "hi alice!", True, True),
    ("alice", "hi malice", True, False),
    ("al*", "hey Alfred", True, True),
    ("m.room.*", "m.room.message", False, True),
])
def test_glob(pattern, value, words, expected):
    assert glob_matches(pattern, value, words=words) is expected


def test_plain_message_notifies_without_highlight():
    out = run(msg())
    assert out.notify and not out.highlight and out.rule_id == ".m.rule.message"


def test_one_to_one_room_rule():
    assert run(msg(), DM).rule_id == ".m.rule.room_one_to_one"
    enc = {"type": "m.room.encrypted", "room_id": ROOM, "sender": BOB, "content": {}}
    assert run(enc, DM).rule_id == ".m.rule.encrypted_room_one_to_one"
    out = run(enc)
    assert out.notify and not out.highlight and out.rule_id == ".m.rule.encrypted"


def test_mentions_highlight():
    out = run(msg("hey", **{"m.mentions": {"user_ids": [ME]}}))
    assert out.notify and out.highlight and out.rule_id == ".m.rule.is_user_mention"
    out = run(msg("is alice liddell there?"))  # display name, case-insensitive, whole words
    assert out.highlight and out.rule_id == ".m.rule.contains_display_name"
    assert run(msg("Queen Bee: hi"), name="Queen Bee").highlight
    assert not run(msg("the queen bees"), name="Queen Bee").highlight  # not at a word boundary
    out = run(msg("ping alice"))  # the localpart (content rule)
    assert out.highlight and out.rule_id == ".m.rule.contains_user_name"
    assert not run(msg("hi"), name=None).highlight


def test_room_mention_needs_permission():
    ev = msg("everyone!", **{"m.mentions": {"room": True}})
    assert not run(ev).highlight  # power 0 < notifications.room 50
    out = run(ev, RoomFacts(member_count=5, sender_power=50))
    assert out.highlight and out.rule_id == ".m.rule.is_room_mention"
    low = RoomFacts(member_count=5, sender_power=10, notification_levels={"room": 10})
    assert run(msg("@room look"), low).rule_id == ".m.rule.roomnotif"


def test_events_that_do_not_notify():
    assert not run(msg("ok", msgtype="m.notice")).notify
    member = {"type": "m.room.member", "room_id": ROOM, "sender": BOB, "state_key": BOB,
              "content": {"membership": "join"}}
    assert not run(member).notify
    reaction = {"type": "m.reaction", "room_id": ROOM, "sender": BOB,
                "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x",
                                             "key": "👍"}}}
    assert not run(reaction).notify
    edit = msg("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert not run(edit).notify
    assert not run({"type": "m.room.topic", "room_id": ROOM, "sender": BOB, "state_key": "",
                    "content": {"topic": "t"}}).notify


def test_invite_for_me_and_tombstone():
    invite = {"type": "m.room.member", "room_id": ROOM, "sender": BOB, "state_key": ME,
              "content": {"membership": "invite"}}
    assert run(invite).notify
    tomb = {"type": "m.room.tombstone", "room_id": ROOM, "sender": BOB, "state_key": "",
            "content": {"body": "moved", "replacement_room": "!new:x"}}
    assert run(tomb).highlight


def test_muted_room_and_sender_and_master():
    doc = empty_doc()
    put_rule(doc, "room", validate_rule("room", ROOM, {"actions": []}))
    assert not run(msg(), doc=doc).notify
    # A room rule sits below override rules: a mention still highlights, as in the spec.
    assert run(msg("alice?"), doc=doc).highlight
    doc = empty_doc()
    put_rule(doc, "sender", validate_rule("sender", BOB, {"actions": ["dont_notify"]}))
    assert not run(msg(), doc=doc).notify
    doc = empty_doc()
    update_rule(doc, ME, "override", ".m.rule.master", enabled=True)
    assert not run(msg("alice!", **{"m.mentions": {"user_ids": [ME]}}), doc=doc).notify
    doc = empty_doc()
    put_rule(doc, "override", validate_rule("override", "mute-here", {
        "actions": [], "conditions": [{"kind": "event_match", "key": "room_id",
                                       "pattern": ROOM}]}))
    assert not run(msg("alice!"), doc=doc).notify


def test_disabled_default_rule_falls_through():
    doc = empty_doc()
    update_rule(doc, ME, "underride", ".m.rule.message", enabled=False)
    assert run(msg()).notify
    out = run(msg(), doc=doc)
    assert not out.notify and out.rule_id is None


def test_custom_conditions():
    doc = empty_doc()
    put_rule(doc, "override", validate_rule("override", "big", {
        "actions": ["notify", {"set_tweak": "highlight"}],
        "conditions": [{"kind": "room_member_count", "is": ">=5"},
                       {"kind": "event_property_is", "key": "content.urgent", "value": True}]}))
    assert run(msg("x", urgent=True), doc=doc).highlight
    assert not run(msg("x", urgent=1), doc=doc).highlight  # 1 is not true
    assert not run(msg("x", urgent=True), RoomFacts(member_count=4), doc=doc).highlight
    # Unknown condition kinds never match.
    doc = empty_doc()
    put_rule(doc, "override", validate_rule("override", "odd", {
        "actions": ["notify", {"set_tweak": "highlight"}],
        "conditions": [{"kind": "org.example.unknown"}]}))
    assert not run(msg(), doc=doc).highlight


@pytest.mark.parametrize("spec,count,expected", [
    ("2", 2, True), ("==2", 3, False), ("<3", 2, True), (">2", 2, False), (">=2", 2, True),
    ("<=1", 2, False), ("two", 2, False),
])
def test_member_count(spec, count, expected):
    doc = empty_doc()
    put_rule(doc, "override", validate_rule("override", "count", {
        "actions": ["notify", {"set_tweak": "highlight"}],
        "conditions": [{"kind": "room_member_count", "is": spec}]}))
    assert run(msg(), RoomFacts(member_count=count), doc=doc).highlight is expected


def test_actions():
    assert actions_outcome(["notify"]).notify
    assert not actions_outcome([]).notify
    assert not actions_outcome(["dont_notify"]).notify
    assert actions_outcome(["notify", {"set_tweak": "highlight"}]).highlight
    assert not actions_outcome(["notify", {"set_tweak": "highlight", "value": False}]).highlight
    assert not actions_outcome("notify").notify


def test_one_memo_for_every_member_keeps_results_per_member():
    """The per-event memo shares conditions that do not depend on the member, never ones
    that do (mentions, display names, the localpart)."""
    users = [f"@u{i}:example.com" for i in range(4)]
    rules = {u: compile_rules(build_ruleset(u, empty_doc())) for u in users}
    ev = msg("hello Second", **{"m.mentions": {"user_ids": [users[0]]}})
    memo: dict = {}
    names = {users[0]: "First", users[1]: "Second", users[2]: None, users[3]: "Fourth"}
    got = {u: evaluate(rules[u], ev, names[u], GROUP, memo) for u in users}
    assert got[users[0]].rule_id == ".m.rule.is_user_mention"
    assert got[users[1]].rule_id == ".m.rule.contains_display_name"
    assert [got[u].rule_id for u in users[2:]] == [".m.rule.message"] * 2
    assert memo  # shared conditions were remembered


def test_malformed_rules_never_match():
    ruleset = {"override": [
        {"rule_id": "a", "enabled": True, "actions": ["notify"], "conditions": ["nope"]},
        {"rule_id": "b", "enabled": True, "actions": ["notify"], "conditions": [
            {"kind": "event_property_is", "key": "type", "value": ["m.room.message"]}]},
        {"rule_id": "c", "enabled": True, "actions": ["notify"], "conditions": "x"},
        {"rule_id": "d", "enabled": True, "actions": ["notify"], "conditions": [
            {"kind": "room_member_count", "is": "lots"}]},
    ], "content": [{"rule_id": "e", "enabled": True, "actions": ["notify"]}]}
    assert compile_rules(ruleset) == ()
    assert not evaluate(compile_rules(ruleset), msg(), None, GROUP).notify
