"""Authorisation rules: create, sending, membership (v10 and v11)."""

import pytest

from homeserver.events.auth import (
    AuthError,
    auth_types_for_event,
    check_auth,
    check_auth_events_selection,
    get_send_level,
    get_user_power_level,
)
from homeserver.events.room_versions import get_room_version

from .event_builders import ALICE, BOB, DAVE, Room, public_room, rejected

VERSIONS = ["6", "7", "8", "9", "10", "11"]
MEMBER = "m.room.member"


def create_event(version, **overrides):
    content = {"room_version": version}
    if not get_room_version(version).implicit_room_creator:
        content["creator"] = ALICE
    event = {"type": "m.room.create", "state_key": "", "sender": ALICE,
             "room_id": "!r:a.test", "content": content, "prev_events": [],
             "auth_events": [], "depth": 1, "origin_server_ts": 1}
    event.update(overrides)
    return event


# --- m.room.create ----------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_valid_create_event_allowed(version):
    check_auth(create_event(version), {}, get_room_version(version))


@pytest.mark.parametrize(
    "overrides,reason",
    [
        ({"prev_events": ["$x"]}, "prev_events"),
        ({"room_id": "!r:other.test"}, "room ID"),
        ({"content": {"creator": ALICE, "room_version": "999"}}, "unknown room version"),
    ],
)
@pytest.mark.parametrize("version", VERSIONS)
def test_invalid_create_events_rejected(version, overrides, reason):
    assert reason in rejected(check_auth, create_event(version, **overrides), {},
                              get_room_version(version))


def test_v10_create_requires_creator_but_v11_does_not():
    event = create_event("11")
    assert "creator" not in event["content"]
    check_auth(event, {}, get_room_version("11"))
    assert "creator" in rejected(check_auth, event, {}, get_room_version("10"))


def test_non_create_event_without_create_in_auth_events_rejected():
    room = public_room()
    event = room.make("m.room.message", ALICE, {"body": "x"})
    assert "m.room.create" in rejected(check_auth, event, {}, room.rv)


def test_auth_event_from_another_room_rejected():
    room = public_room()
    event = room.make("m.room.message", ALICE, {"body": "x"})
    auth = room.auth_events_for(event)
    auth[("m.room.create", "")] = {**auth[("m.room.create", "")], "room_id": "!other:a.test"}
    assert "different room" in rejected(check_auth, event, auth, room.rv)


def test_m_federate_false_blocks_other_servers():
    room = Room()
    room.events[room.create["event_id"]]["content"]["m.federate"] = False
    room.join_rules(ALICE, "public")
    assert "not federated" in rejected(room.check, MEMBER, BOB, {"membership": "join"}, BOB)
    room.member(DAVE, "join")  # same server as the creator


# --- creator and power defaults ----------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_creator_has_100_without_power_levels(version):
    room = Room(version)
    auth = {k: room.events[v] for k, v in room.state.items()}
    assert get_user_power_level(ALICE, auth, room.rv) == 100
    assert get_user_power_level(BOB, auth, room.rv) == 0
    # Without power levels state_default is 50, so only the creator may set state.
    room.send("m.room.name", ALICE, {"name": "n"}, "")


def test_v11_creator_is_sender_not_content_creator():
    room = Room("11", creator=ALICE)
    forged = {**room.create, "content": {"creator": BOB, "room_version": "11"}}
    auth = {("m.room.create", ""): forged}
    assert get_user_power_level(ALICE, auth, room.rv) == 100
    assert get_user_power_level(BOB, auth, room.rv) == 0
    v10 = get_room_version("10")
    assert get_user_power_level(BOB, auth, v10) == 100  # v10 trusts content.creator


@pytest.mark.parametrize("version", VERSIONS)
def test_only_creator_may_join_straight_after_create(version):
    room = Room(version)  # Alice's join directly after create was accepted
    assert room.state[(MEMBER, ALICE)]
    fresh = Room(version)
    first_join_by_other = fresh.make(MEMBER, BOB, {"membership": "join"}, BOB,
                                     prev=[fresh.create["event_id"]])
    auth = {("m.room.create", ""): fresh.create}
    assert "invite" in rejected(check_auth, first_join_by_other, auth, fresh.rv)


def test_get_send_level_defaults():
    assert get_send_level("m.room.name", "", None) == 50
    assert get_send_level("m.room.message", None, None) == 0
    content = {"events": {"m.room.name": 10}, "state_default": 70, "events_default": 5}
    assert get_send_level("m.room.name", "", content) == 10
    assert get_send_level("m.room.topic", "", content) == 70
    assert get_send_level("m.room.message", None, content) == 5


# --- sending events -----------------------------------------------------------

@pytest.mark.parametrize("version", VERSIONS)
def test_non_member_cannot_post(version):
    room = public_room(version)
    reason = rejected(room.check, "m.room.message", BOB, {"body": "hi"})
    assert reason == f"user {BOB} is not joined to the room"
    room.member(BOB, "join")
    room.check("m.room.message", BOB, {"body": "hi"})
    room.member(BOB, "leave")
    rejected(room.check, "m.room.message", BOB, {"body": "hi"})


def test_send_levels_from_power_levels():
    room = public_room(users={BOB: 20})
    room.member(BOB, "join")
    rejected(room.check, "m.room.topic", BOB, {"topic": "t"}, "")  # state_default 50
    room.power_levels(ALICE, {"users": {ALICE: 100, BOB: 20},
                              "events": {"m.room.topic": 20, "m.reaction": 30},
                              "events_default": 10})
    room.check("m.room.topic", BOB, {"topic": "t"}, "")
    room.check("m.room.message", BOB, {"body": "x"})
    assert "requires 30" in rejected(room.check, "m.reaction", BOB, {})


def test_state_key_of_another_user_rejected():
    room = public_room()
    room.check("com.example.state", ALICE, {}, ALICE)
    assert "another user" in rejected(room.check, "com.example.state", ALICE, {}, BOB)
    room.check("com.example.state", ALICE, {}, "not-a-user")


def test_third_party_invite_event_needs_invite_level():
    room = public_room(users={BOB: 0})
    room.member(BOB, "join")
    room.power_levels(ALICE, {"users": {ALICE: 100}, "invite": 10})
    rejected(room.check, "m.room.third_party_invite", BOB, {"public_key": "x"}, "tok")
    room.check("m.room.third_party_invite", ALICE, {"public_key": "x"}, "tok")


# --- auth event selection -----------------------------------------------------

def test_auth_types_for_member_events():
    event = {"type": MEMBER, "sender": ALICE, "state_key": BOB,
             "content": {"membership": "invite",
                         "third_party_invite": {"signed": {"token": "tok"}}}}
    assert auth_types_for_event(event) == [
        ("m.room.create", ""), ("m.room.power_levels", ""), (MEMBER, ALICE), (MEMBER, BOB),
        ("m.room.join_rules", ""), ("m.room.third_party_invite", "tok"),
    ]
    join = {"type": MEMBER, "sender": BOB, "state_key": BOB,
            "content": {"membership": "join", "join_authorised_via_users_server": ALICE}}
    assert auth_types_for_event(join) == [
        ("m.room.create", ""), ("m.room.power_levels", ""), (MEMBER, BOB),
        ("m.room.join_rules", ""), (MEMBER, ALICE),
    ]
    leave = {"type": MEMBER, "sender": BOB, "state_key": BOB, "content": {"membership": "leave"}}
    assert ("m.room.join_rules", "") not in auth_types_for_event(leave)
    assert auth_types_for_event({"type": "m.room.create", "sender": ALICE}) == []


def test_check_auth_events_selection():
    room = public_room()
    event = room.make("m.room.message", ALICE, {"body": "x"})
    cited = [room.events[e] for e in event["auth_events"]]
    selected = check_auth_events_selection(event, cited, room.rv)
    check_auth(event, selected, room.rv)
    assert "duplicate" in rejected(check_auth_events_selection, event, cited + cited[:1], room.rv)
    join_rules = room.events[room.state[("m.room.join_rules", "")]]
    assert "not a valid auth event" in rejected(
        check_auth_events_selection, event, cited + [join_rules], room.rv)
    no_create = [e for e in cited if e["type"] != "m.room.create"]
    assert "m.room.create" in rejected(check_auth_events_selection, event, no_create, room.rv)


def test_auth_error_has_reason():
    err = AuthError("user @a:x is not joined")
    assert err.reason == "user @a:x is not joined" and str(err) == err.reason


@pytest.mark.parametrize("version", VERSIONS)
def test_malformed_values_give_auth_errors_not_crashes(version):
    rv = get_room_version(version)
    bad_create = create_event(version, content={"creator": ALICE, "room_version": ["10"]})
    assert "unknown room version" in rejected(check_auth, bad_create, {}, rv)
    room = public_room(version)
    event = room.make("m.room.message", ALICE, {"body": "x"})
    cited = [room.events[e] for e in event["auth_events"]]
    weird = {**cited[0], "state_key": ["x"]}
    rejected(check_auth_events_selection, event, cited + [weird], rv)
    assert "state_key" in rejected(check_auth, {**event, "state_key": 5},
                                   room.auth_events_for(event), rv)
    assert "type or sender" in rejected(check_auth, {**event, "sender": None}, {}, rv)
