"""The redaction algorithm: v10 vs v11 top-level keys and per-type content."""

import copy

import pytest

from homeserver.events.redaction import get_redaction_target, redact_event
from homeserver.events.room_versions import get_room_version

V10, V11 = get_room_version("10"), get_room_version("11")

COMMON_TOP_LEVEL = {
    "event_id": "$e", "type": "m.room.message", "room_id": "!r:x", "sender": "@a:x",
    "hashes": {"sha256": "abc"}, "signatures": {"x": {"ed25519:1": "sig"}}, "depth": 5,
    "prev_events": ["$p"], "auth_events": ["$a"], "origin_server_ts": 1234,
}
LEGACY_TOP_LEVEL = {"origin": "x", "membership": "join", "prev_state": []}


def event_of(event_type, content, **extra):
    return {**COMMON_TOP_LEVEL, "type": event_type, "content": content, **extra}


def test_top_level_keys_v10_keeps_legacy_keys():
    event = event_of("m.room.message", {"body": "hi"}, state_key="", unsigned={"age": 1},
                     redacts="$x", custom="y", **LEGACY_TOP_LEVEL)
    redacted = redact_event(event, V10)
    assert redacted == {**COMMON_TOP_LEVEL, **LEGACY_TOP_LEVEL, "state_key": "",
                        "content": {}}


def test_top_level_keys_v11_drops_origin_membership_prev_state():
    event = event_of("m.room.message", {"body": "hi"}, state_key="", unsigned={"age": 1},
                     redacts="$x", custom="y", **LEGACY_TOP_LEVEL)
    redacted = redact_event(event, V11)
    assert redacted == {**COMMON_TOP_LEVEL, "state_key": "", "content": {}}
    assert "unsigned" not in redacted


MEMBER_CONTENT = {
    "membership": "invite",
    "displayname": "Bob",
    "avatar_url": "mxc://x/y",
    "join_authorised_via_users_server": "@mod:x",
    "third_party_invite": {"display_name": "b***@example.org",
                           "signed": {"mxid": "@b:x", "token": "t", "signatures": {}}},
}
CREATE_CONTENT = {"creator": "@a:x", "room_version": "11", "m.federate": False,
                  "predecessor": {"room_id": "!old:x", "event_id": "$old"}, "type": "m.space"}
PL_CONTENT = {
    "ban": 50, "events": {"m.room.name": 50}, "events_default": 0, "invite": 10,
    "kick": 50, "redact": 50, "state_default": 50, "users": {"@a:x": 100},
    "users_default": 0, "notifications": {"room": 50}, "historical": 100,
}

# (type, content, expected v10 content, expected v11 content)
PER_TYPE = [
    (
        "m.room.member", MEMBER_CONTENT,
        {"membership": "invite", "join_authorised_via_users_server": "@mod:x"},
        {"membership": "invite", "join_authorised_via_users_server": "@mod:x",
         "third_party_invite": {"signed": MEMBER_CONTENT["third_party_invite"]["signed"]}},
    ),
    ("m.room.create", CREATE_CONTENT, {"creator": "@a:x"}, CREATE_CONTENT),
    (
        "m.room.join_rules",
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}], "x": 1},
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
        {"join_rule": "restricted", "allow": [{"type": "m.room_membership"}]},
    ),
    (
        "m.room.power_levels", PL_CONTENT,
        {k: v for k, v in PL_CONTENT.items()
         if k not in ("invite", "notifications", "historical")},
        {k: v for k, v in PL_CONTENT.items() if k not in ("notifications", "historical")},
    ),
    (
        "m.room.history_visibility", {"history_visibility": "shared", "extra": True},
        {"history_visibility": "shared"}, {"history_visibility": "shared"},
    ),
    ("m.room.redaction", {"redacts": "$target", "reason": "spam"}, {}, {"redacts": "$target"}),
    ("m.room.name", {"name": "Secret"}, {}, {}),
    ("m.room.topic", {"topic": "t"}, {}, {}),
    ("m.room.message", {"body": "hello", "msgtype": "m.text"}, {}, {}),
    ("m.room.encrypted", {"ciphertext": "..."}, {}, {}),
]


@pytest.mark.parametrize("event_type,content,v10_expected,v11_expected", PER_TYPE,
                         ids=[row[0] for row in PER_TYPE])
def test_content_per_type(event_type, content, v10_expected, v11_expected):
    event = event_of(event_type, copy.deepcopy(content), state_key="")
    assert redact_event(event, V10)["content"] == v10_expected
    assert redact_event(event, V11)["content"] == v11_expected


def test_v11_member_third_party_invite_without_signed_is_dropped():
    event = event_of("m.room.member", {"membership": "invite",
                                       "third_party_invite": {"display_name": "x"}},
                     state_key="@b:x")
    assert redact_event(event, V11)["content"] == {"membership": "invite"}


def test_missing_or_invalid_content_becomes_empty_object():
    event = {k: v for k, v in event_of("m.room.member", {}).items() if k != "content"}
    assert redact_event(event, V10)["content"] == {}
    assert redact_event({**event, "content": "nope"}, V11)["content"] == {}


def test_redaction_does_not_mutate_or_alias_input():
    event = event_of("m.room.power_levels", copy.deepcopy(PL_CONTENT), state_key="")
    original = copy.deepcopy(event)
    redacted = redact_event(event, V11)
    redacted["content"]["users"]["@evil:x"] = 100
    redacted["signatures"]["y"] = {}
    redacted["prev_events"].append("$z")
    assert event == original


def test_redaction_is_idempotent():
    for rv in (V10, V11):
        event = event_of("m.room.member", copy.deepcopy(MEMBER_CONTENT), state_key="@b:x",
                         **LEGACY_TOP_LEVEL)
        once = redact_event(event, rv)
        assert redact_event(once, rv) == once


def test_get_redaction_target_by_version():
    v10_event = {"type": "m.room.redaction", "redacts": "$top", "content": {"redacts": "$c"}}
    assert get_redaction_target(v10_event, V10) == "$top"
    assert get_redaction_target(v10_event, V11) == "$c"
    assert get_redaction_target({"type": "m.room.redaction", "content": {}}, V11) is None
    assert get_redaction_target({"type": "m.room.redaction", "redacts": "$t"}, V11) is None
    assert get_redaction_target({"type": "m.room.message", "redacts": "$t"}, V10) is None


@pytest.mark.parametrize("version,keeps_allow,keeps_authoriser", [
    ("6", False, False), ("7", False, False), ("8", True, False), ("9", True, True),
])
def test_versions_before_10_keep_less(version, keeps_allow, keeps_authoriser):
    rv = get_room_version(version)
    rules = event_of("m.room.join_rules", {"join_rule": "restricted",
                                           "allow": [{"type": "m.room_membership"}]}, state_key="")
    member = event_of("m.room.member", {"membership": "join", "displayname": "A",
                                        "join_authorised_via_users_server": "@mod:x"},
                      state_key="@a:x")
    assert ("allow" in redact_event(rules, rv)["content"]) is keeps_allow
    assert ("join_authorised_via_users_server" in redact_event(member, rv)["content"]) \
        is keeps_authoriser
    # Everything else is as in v10: the legacy top-level keys stay, other content goes.
    assert redact_event(member, rv)["content"]["membership"] == "join"
    assert "displayname" not in redact_event(member, rv)["content"]
    assert redact_event(event_of("m.room.power_levels", PL_CONTENT, state_key=""), rv)[
        "content"] == redact_event(event_of("m.room.power_levels", PL_CONTENT, state_key=""),
                                   V10)["content"]
