"""State resolution v2 scenarios on real event DAGs."""

import itertools

import pytest

from homeserver.events.state_res import auth_chain, resolve_state_v2

from .event_builders import ALICE, BOB, CAROL, DAVE, public_room

PL = ("m.room.power_levels", "")
TOPIC = ("m.room.topic", "")
JOIN_RULES = ("m.room.join_rules", "")


def member_key(user):
    return ("m.room.member", user)


@pytest.fixture(params=["6", "7", "8", "9", "10", "11"])
def room(request):
    """Public room: Alice 100, Bob 50; Bob, Carol and Dave joined."""
    room = public_room(request.param, users={BOB: 50})
    for user in (BOB, CAROL, DAVE):
        room.member(user, "join")
    return room


def resolve(room, *state_sets):
    """Resolve, asserting the answer does not depend on the order of the sets."""
    results = [
        resolve_state_v2(room.rv, [dict(s) for s in perm], room.events)
        for perm in itertools.permutations(state_sets)
    ]
    assert all(r == results[0] for r in results)
    return results[0]


def fork(room, n=2):
    return [dict(room.state) for _ in range(n)]


def pl_content(**users):
    names = {"alice": ALICE, "bob": BOB, "carol": CAROL, "dave": DAVE}
    return {"users": {names[k]: v for k, v in users.items()}}


def test_ban_loses_to_concurrent_demotion_of_the_banner(room):
    s1, s2 = fork(room)
    carol_join = room.state[member_key(CAROL)]
    # The ban is earlier in time, but Alice's higher power orders her change first.
    demote = room.power_levels(ALICE, pl_content(alice=100, bob=0), state=s1, ts=9000)
    room.member(CAROL, "ban", sender=BOB, state=s2, ts=5000)
    resolved = resolve(room, s1, s2)
    assert resolved[PL] == demote["event_id"]
    assert resolved[member_key(CAROL)] == carol_join


def test_ban_survives_an_unrelated_concurrent_power_change(room):
    s1, s2 = fork(room)
    change = room.power_levels(ALICE, pl_content(alice=100, bob=50, dave=10), state=s1)
    ban = room.member(CAROL, "ban", sender=BOB, state=s2)
    resolved = resolve(room, s1, s2)
    assert resolved[PL] == change["event_id"]
    assert resolved[member_key(CAROL)] == ban["event_id"]


def test_two_topic_changes_resolve_to_the_later_one(room):
    s1, s2 = fork(room)
    early = room.send("m.room.topic", BOB, {"topic": "bob"}, "", state=s1, ts=5000)
    late = room.send("m.room.topic", ALICE, {"topic": "alice"}, "", state=s2, ts=6000)
    assert resolve(room, s1, s2)[TOPIC] == late["event_id"]
    # Swap the timestamps: the winner follows origin_server_ts, not sender power.
    s3, s4 = fork(room)
    late2 = room.send("m.room.topic", BOB, {"topic": "bob2"}, "", state=s3, ts=8000)
    room.send("m.room.topic", ALICE, {"topic": "alice2"}, "", state=s4, ts=7000)
    assert resolve(room, s3, s4)[TOPIC] == late2["event_id"]
    assert early["event_id"] != late2["event_id"]


def test_equal_timestamps_tie_break_on_event_id(room):
    s1, s2 = fork(room)
    a = room.send("m.room.topic", BOB, {"topic": "one"}, "", state=s1, ts=7000)
    b = room.send("m.room.topic", ALICE, {"topic": "two"}, "", state=s2, ts=7000)
    assert resolve(room, s1, s2)[TOPIC] == max(a["event_id"], b["event_id"])


def test_equal_power_and_time_power_events_tie_break_on_event_id(room):
    s1, s2 = fork(room)
    a = room.power_levels(ALICE, pl_content(alice=100, bob=50, carol=1), state=s1, ts=7000)
    b = room.power_levels(ALICE, pl_content(alice=100, bob=50, dave=1), state=s2, ts=7000)
    assert resolve(room, s1, s2)[PL] == max(a["event_id"], b["event_id"])


def test_join_rules_change_beats_concurrent_join(room):
    s1, s2 = fork(room)
    private = room.join_rules(ALICE, "invite", state=s1, ts=9000)
    eve = "@eve:e.test"
    room.member(eve, "join", state=s2, ts=5000)
    resolved = resolve(room, s1, s2)
    assert resolved[JOIN_RULES] == private["event_id"]
    assert member_key(eve) not in resolved


def test_join_survives_when_join_rules_stay_public(room):
    s1, s2 = fork(room)
    topic = room.send("m.room.topic", ALICE, {"topic": "t"}, "", state=s1)
    eve = "@eve:e.test"
    join = room.member(eve, "join", state=s2)
    resolved = resolve(room, s1, s2)
    assert resolved[member_key(eve)] == join["event_id"]
    assert resolved[TOPIC] == topic["event_id"]


def test_mainline_position_beats_timestamp(room):
    s1, s2 = fork(room)
    room.power_levels(ALICE, pl_content(alice=100, bob=50, dave=50), state=s1)
    dave_topic = room.send("m.room.topic", DAVE, {"topic": "dave"}, "", state=s1, ts=5000)
    # Later timestamp, but based on the older power levels, so ordered first.
    room.send("m.room.topic", ALICE, {"topic": "alice"}, "", state=s2, ts=9000)
    assert resolve(room, s1, s2)[TOPIC] == dave_topic["event_id"]


def test_state_from_revoked_power_is_dropped(room):
    base_topic = room.send("m.room.topic", ALICE, {"topic": "base"}, "")
    s1, s2 = fork(room)
    room.power_levels(ALICE, pl_content(alice=100, bob=50, dave=50), state=s1)
    room.send("m.room.topic", DAVE, {"topic": "dave"}, "", state=s1)
    revoke = room.power_levels(ALICE, pl_content(alice=100, bob=50), state=s1)
    resolved = resolve(room, s1, s2)
    assert resolved[PL] == revoke["event_id"]
    # Dave's topic is re-checked against the resolved power levels and fails.
    assert resolved[TOPIC] == base_topic["event_id"]


def test_three_way_resolution(room):
    s1, s2, s3 = fork(room, 3)
    room.send("m.room.topic", BOB, {"topic": "1"}, "", state=s1, ts=5000)
    room.send("m.room.name", ALICE, {"name": "n"}, "", state=s2, ts=5000)
    t3 = room.send("m.room.topic", ALICE, {"topic": "3"}, "", state=s3, ts=6000)
    kick = room.member(CAROL, "leave", sender=BOB, state=s3)
    resolved = resolve(room, s1, s2, s3)
    assert resolved[TOPIC] == t3["event_id"]
    assert resolved[member_key(CAROL)] == kick["event_id"]
    assert ("m.room.name", "") in resolved


def test_unconflicted_state_is_kept_and_trivial_inputs(room):
    state = dict(room.state)
    assert resolve_state_v2(room.rv, [], room.events) == {}
    assert resolve_state_v2(room.rv, [state], room.events) == state
    assert resolve_state_v2(room.rv, [state, dict(state)], room.events) == state
    s1, s2 = fork(room)
    room.send("m.room.topic", ALICE, {"topic": "t"}, "", state=s1)
    resolved = resolve(room, s1, s2)
    for key, event_id in state.items():
        assert resolved[key] == event_id


def test_missing_event_raises_key_error_with_message(room):
    s1, s2 = fork(room)
    topic = room.send("m.room.topic", ALICE, {"topic": "t"}, "", state=s1)
    partial_map = {k: v for k, v in room.events.items() if k != topic["event_id"]}
    with pytest.raises(KeyError, match="missing from event_map"):
        resolve_state_v2(room.rv, [s1, s2], partial_map)
    partial_map = {k: v for k, v in room.events.items() if k != room.create["event_id"]}
    with pytest.raises(KeyError, match=room.create["event_id"].replace("$", r"\$")):
        resolve_state_v2(room.rv, [s1, s2], partial_map)


def test_auth_chain_walks_auth_events_transitively(room):
    dave_join = room.events[room.state[member_key(DAVE)]]
    chain = auth_chain([dave_join["event_id"]], room.events)
    assert dave_join["event_id"] not in chain
    assert room.create["event_id"] in chain
    assert set(dave_join["auth_events"]) <= chain
    for event_id in chain:  # closed under auth_events
        assert set(room.events[event_id]["auth_events"]) <= chain
    assert auth_chain([room.create["event_id"]], room.events) == set()
    both = auth_chain([dave_join["event_id"], room.state[PL]], room.events)
    assert room.state[PL] in both  # one start event is in the other's chain


def test_power_chain_in_auth_difference_is_replayed(room):
    s1, s2 = fork(room)
    # Bob's change is only valid given Alice's promotion, which is not in s2's
    # state or auth chains, so it must come in through the auth difference.
    room.power_levels(ALICE, pl_content(alice=100, bob=75), state=s1)
    raise_carol = room.power_levels(BOB, pl_content(alice=100, bob=75, carol=75), state=s1)
    assert resolve(room, s1, s2)[PL] == raise_carol["event_id"]


def test_unconflicted_state_overrides_replayed_auth_events(room):
    eve = "@eve:e.test"
    (s1,) = fork(room, 1)
    room.join_rules(ALICE, "invite", state=s1)
    room.member(eve, "invite", sender=ALICE, state=s1)
    eve_join = room.member(eve, "join", state=s1)  # cites the "invite" join rules
    public_again = room.join_rules(ALICE, "public", state=s1)
    # A state set that has the final join rules but never saw Eve.
    s2 = {**room.state, JOIN_RULES: public_again["event_id"]}
    resolved = resolve(room, s1, s2)
    # The "invite" rule is replayed (it is in the auth difference) so Eve's
    # join can be checked, but the unconflicted join rules win at the end.
    assert resolved[member_key(eve)] == eve_join["event_id"]
    assert resolved[JOIN_RULES] == public_again["event_id"]


def test_topic_by_concurrently_banned_user_is_dropped(room):
    base_topic = room.send("m.room.topic", ALICE, {"topic": "base"}, "")
    s1, s2 = fork(room)
    room.send("m.room.topic", BOB, {"topic": "bob"}, "", state=s1, ts=9000)
    ban = room.member(BOB, "ban", sender=ALICE, state=s2, ts=5000)
    resolved = resolve(room, s1, s2)
    assert resolved[member_key(BOB)] == ban["event_id"]
    assert resolved[TOPIC] == base_topic["event_id"]
