"""Authorisation rules for m.room.power_levels changes and redactions."""

import pytest

from homeserver.events.auth import check_auth, check_redaction_allowed
from homeserver.events.room_versions import get_room_version

from .event_builders import ALICE, BOB, CAROL, DAVE, Room, public_room, rejected

PL = "m.room.power_levels"
VERSIONS = ["6", "7", "8", "9", "10", "11"]


@pytest.fixture(params=VERSIONS)
def room(request):
    """Alice 100, Bob 50 (moderator), Carol 50, Dave 0; all joined."""
    room = public_room(request.param, users={BOB: 50, CAROL: 50})
    for user in (BOB, CAROL, DAVE):
        room.member(user, "join")
    return room


def current_pl(room):
    return dict(room.events[room.state[(PL, "")]]["content"])


def change(room, sender, **updates):
    return room.check(PL, sender, {**current_pl(room), **updates}, "")


def set_users(room, sender, **levels):
    users = {**current_pl(room)["users"]}
    for name, level in levels.items():
        user = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}[name]
        if level is None:
            users.pop(user, None)
        else:
            users[user] = level
    return change(room, sender, users=users)


def test_user_cannot_raise_own_power(room):
    room.power_levels(ALICE, {**current_pl(room), "state_default": 50})
    reason = rejected(set_users, room, BOB, bob=60)
    assert "above sender's 50" in reason


def test_user_may_lower_own_power_and_remove_self(room):
    set_users(room, BOB, bob=10)
    set_users(room, BOB, bob=None)


def test_cannot_change_peer_at_same_level(room):
    assert "not below" in rejected(set_users, room, BOB, carol=0)
    assert "not below" in rejected(set_users, room, BOB, carol=None)


def test_can_promote_lower_user_up_to_own_level_only(room):
    set_users(room, BOB, dave=50)
    assert "above sender's" in rejected(set_users, room, BOB, dave=51)
    set_users(room, ALICE, bob=0)  # the top may demote the moderator


def test_needs_state_level_to_send_power_levels_at_all(room):
    assert "requires 50" in rejected(set_users, room, DAVE, dave=0)


def test_named_levels_cannot_be_moved_across_own_level(room):
    change(room, BOB, kick=40)
    assert "'ban'" in rejected(change, room, BOB, ban=60)
    room.power_levels(ALICE, {**current_pl(room), "redact": 80})
    assert "'redact'" in rejected(change, room, BOB, redact=10)
    # Removing a value above own level is also a change of it.
    pl = current_pl(room)
    del pl["redact"]
    assert "'redact'" in rejected(room.check, PL, BOB, pl, "")


def test_events_map_entries_guarded_both_ways(room):
    change(room, BOB, events={"m.room.name": 50})
    assert "events['m.room.name']" in rejected(change, room, BOB, events={"m.room.name": 75})
    room.power_levels(ALICE, {**current_pl(room), "events": {"m.room.name": 75}})
    rejected(change, room, BOB, events={})
    rejected(change, room, BOB, events={"m.room.name": 0})
    change(room, BOB, events={"m.room.name": 75, "m.room.topic": 10})


def test_notifications_map_guarded(room):
    room.power_levels(ALICE, {**current_pl(room), "notifications": {"room": 90}})
    assert "notifications" in rejected(change, room, BOB, notifications={"room": 0})


@pytest.mark.parametrize(
    "bad,before_v10",
    [
        # Before v10 only `users` is checked, and its levels may be strings holding integers.
        ({"ban": "50"}, "allowed"),
        ({"kick": True}, "allowed"),
        ({"users_default": None}, "allowed"),
        ({"invite": [0]}, "allowed"),
        ({"events": {"m.room.name": "50"}}, "allowed"),
        ({"events": []}, "allowed"),
        ({"notifications": {"room": None}}, "allowed"),
        ({"users": {"not-a-user": 10}}, "rejected"),
        ({"users": {ALICE: "100"}}, "allowed"),
        ({"users": {ALICE: "a hundred"}}, "rejected"),
        ({"users": []}, "rejected"),
    ],
)
def test_malformed_power_levels_rejected(room, bad, before_v10):
    if room.rv.enforce_int_power_levels or before_v10 == "rejected":
        rejected(change, room, ALICE, **bad)
    else:
        change(room, ALICE, **bad)


def test_first_power_levels_event_skips_change_checks():
    room = Room("10")
    room.join_rules(ALICE, "public")
    room.member(BOB, "join")
    # Creator (100 by default) may hand out any level in the first event.
    room.check(PL, ALICE, {"users": {ALICE: 100, BOB: 100}, "ban": 100}, "")
    rejected(room.check, PL, BOB, {"users": {BOB: 100}}, "")  # Bob only has 0


def test_users_default_applies_to_unlisted_users(room):
    room.power_levels(ALICE, {**current_pl(room), "users_default": 50})
    room.check("m.room.topic", DAVE, {"topic": "t"}, "")


# --- redactions ----------------------------------------------------------------

def redaction(room, sender, target_id):
    content = {"reason": "spam"}
    extra = {}
    if room.rv.redacts_in_content:
        content["redacts"] = target_id
    else:
        extra["redacts"] = target_id
    event = room.make("m.room.redaction", sender, content)
    event.update(extra)
    return event


def auth_for(room, event):
    return room.auth_events_for(event)


def test_auth_rules_ignore_redact_level(room):
    message = room.send("m.room.message", BOB, {"body": "x"})
    event = redaction(room, DAVE, message["event_id"])
    check_auth(event, auth_for(room, event), room.rv)  # allowed by auth rules...
    # ...but not applicable: Dave is on another server than Bob and has power 0.
    reason = rejected(check_redaction_allowed, event, message, auth_for(room, event), room.rv)
    assert "redact level 50" in reason


def test_redaction_send_level_still_enforced(room):
    room.power_levels(ALICE, {**current_pl(room), "events": {"m.room.redaction": 10}})
    message = room.send("m.room.message", DAVE, {"body": "x"})
    event = redaction(room, DAVE, message["event_id"])
    assert "requires 10" in rejected(check_auth, event, auth_for(room, event), room.rv)


def test_redaction_allowed_by_power_or_same_server(room):
    dave_msg = room.send("m.room.message", DAVE, {"body": "x"})
    alice_msg = room.send("m.room.message", ALICE, {"body": "x"})
    # Bob (50) meets the default redact level of 50.
    event = redaction(room, BOB, alice_msg["event_id"])
    check_redaction_allowed(event, alice_msg, auth_for(room, event), room.rv)
    # Dave (power 0) shares a server with Alice, so may redact her event.
    event = redaction(room, DAVE, alice_msg["event_id"])
    check_redaction_allowed(event, alice_msg, auth_for(room, event), room.rv)
    # Carol is on another server; with a raised redact level her 50 is not enough.
    room.power_levels(ALICE, {**current_pl(room), "redact": 60})
    event = redaction(room, CAROL, dave_msg["event_id"])
    rejected(check_redaction_allowed, event, dave_msg, auth_for(room, event), room.rv)
    event = redaction(room, CAROL, "$someone-else")
    assert "targets" in rejected(
        check_redaction_allowed, event, dave_msg, auth_for(room, event), room.rv)


def test_redacts_location_depends_on_room_version():
    for version, in_content in (("10", False), ("11", True)):
        room = public_room(version)
        message = room.send("m.room.message", ALICE, {"body": "x"})
        # Put `redacts` in the wrong place for this version: no valid target.
        content = {} if in_content else {"redacts": message["event_id"]}
        event = room.make("m.room.redaction", ALICE, content)
        if in_content:
            event["redacts"] = message["event_id"]
        assert "no redacts" in rejected(
            check_redaction_allowed, event, message, room.auth_events_for(event),
            get_room_version(version))
