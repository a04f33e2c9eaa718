"""Filter parsing and matching (homeserver.handlers.filters): pure logic, no server."""

import pytest

from homeserver.errors import MatrixError
from homeserver.handlers.filters import (
    DEFAULT_FILTER, DEFAULT_TIMELINE_LIMIT, MAX_TIMELINE_LIMIT, EventFilter, parse_filter,
    type_matches,
)

SPEC_EXAMPLE = {
    "room": {
        "state": {"types": ["m.room.*"], "not_rooms": ["!726s6s6q:example.com"]},
        "timeline": {"limit": 10, "types": ["m.room.message"],
                     "not_rooms": ["!726s6s6q:example.com"], "not_senders": ["@spam:example.com"]},
        "ephemeral": {"types": ["m.receipt", "m.typing"], "not_rooms": ["!726s6s6q:example.com"],
                      "not_senders": ["@spam:example.com"]},
    },
    "presence": {"types": ["m.presence"], "not_senders": ["@alice:example.com"]},
    "event_format": "client",
    "event_fields": ["type", "content", "sender"],
}


def test_spec_example_parses():
    f = parse_filter(SPEC_EXAMPLE)
    assert f.room.timeline.limit == 10
    assert f.room.timeline.types == ("m.room.message",)
    assert f.room.state.allows_room("!other:example.com")
    assert not f.room.state.allows_room("!726s6s6q:example.com")
    assert f.presence.not_senders == ("@alice:example.com",)
    assert f.event_fields == ("type", "content", "sender")
    assert f.raw is SPEC_EXAMPLE


def test_empty_filter_defaults():
    f = parse_filter({})
    assert f.timeline_limit == DEFAULT_TIMELINE_LIMIT
    assert not f.lazy_load_members and not f.include_leave
    assert f.room.timeline.matches("anything", "@a:b", "!r:b")
    assert DEFAULT_FILTER.timeline_limit == DEFAULT_TIMELINE_LIMIT


def test_flags_and_limits():
    f = parse_filter({"room": {"include_leave": True,
                               "state": {"lazy_load_members": True,
                                         "include_redundant_members": True},
                               "timeline": {"limit": 5000}}})
    assert f.include_leave and f.lazy_load_members and f.include_redundant_members
    assert f.timeline_limit == MAX_TIMELINE_LIMIT
    assert parse_filter({"room": {"timeline": {"limit": 0}}}).timeline_limit == 0


@pytest.mark.parametrize("bad", [
    [],
    "not an object",
    {"presence": "not_an_object"},
    {"account_data": "Hello World"},
    {"room": "nope"},
    {"room": {"timeline": "not_an_object"}},
    {"room": {"state": []}},
    {"room": {"ephemeral": 1}},
    {"room": {"account_data": True}},
    {"room": {"timeline": {"types": "not_a_list"}}},
    {"room": {"timeline": {"not_types": [1]}}},
    {"room": {"timeline": {"limit": "10"}}},
    {"room": {"timeline": {"limit": -1}}},
    {"room": {"timeline": {"limit": 1.5}}},
    {"room": {"timeline": {"limit": True}}},
    {"room": {"state": {"lazy_load_members": "yes"}}},
    {"room": {"include_leave": 1}},
    {"room": {"timeline": {"contains_url": "true"}}},
    {"event_format": "other"},
    {"event_fields": "type"},
    {"room": {"not_rooms": ["#foo:pik-test"]}},
    {"room": {"rooms": ["not_a_room_id"]}},
    {"room": {"timeline": {"rooms": ["@user:example.com"]}}},
    {"presence": {"senders": ["@bar;pik.test.com"]}},
    {"room": {"timeline": {"not_senders": ["not_a_user_id"]}}},
])
def test_invalid_filters_are_bad_json(bad):
    with pytest.raises(MatrixError) as e:
        parse_filter(bad)
    assert e.value.status == 400
    assert e.value.errcode == "M_BAD_JSON"


def test_unknown_keys_are_tolerated():
    f = parse_filter({"room": {"timeline": {"org.example.x": 1}}, "org.example.y": {}})
    assert f.room.timeline.types is None


def test_type_wildcards():
    assert type_matches("m.room.message", ("m.room.*",))
    assert type_matches("m.room.message", ("*",))
    assert type_matches("m.room.message", ("m.*.message",))
    assert not type_matches("m.room.message", ("m.room",))
    assert not type_matches("m.roomy", ("m.room.*",))
    # Only '*' is special: regex characters are literal.
    assert not type_matches("mxroom", ("m.room",))
    assert type_matches("a+b", ("a+b",))


def test_not_lists_win_over_allow_lists():
    f = EventFilter(types=("m.*",), not_types=("m.room.member",),
                    senders=("@a:x", "@b:x"), not_senders=("@b:x",),
                    rooms=("!r:x",), not_rooms=("!r:x",))
    assert f.matches("m.room.message", "@a:x")
    assert not f.matches("m.room.member", "@a:x")
    assert not f.matches("m.room.message", "@b:x")
    assert not f.matches("m.room.message", "@c:x")
    assert not f.matches("m.room.message", "@a:x", "!r:x")
    assert not f.matches("org.other", "@a:x")


def test_contains_url():
    with_url = EventFilter(contains_url=True)
    without = EventFilter(contains_url=False)
    assert with_url.matches("m.room.message", content={"url": "mxc://a/b"})
    assert not with_url.matches("m.room.message", content={"body": "x"})
    assert without.matches("m.room.message", content={"body": "x"})
    assert not without.matches("m.room.message", content={"url": "mxc://a/b"})


def test_missing_dimensions_are_not_checked():
    # Account data has no sender: a senders list does not exclude it.
    f = EventFilter(senders=("@a:x",))
    assert f.matches("m.direct")
    events = [{"type": "m.presence", "sender": "@a:x"}, {"type": "m.presence", "sender": "@b:x"}]
    assert f.filter_events(events) == events[:1]


def test_limit_or():
    assert EventFilter().limit_or(20) == 20
    assert EventFilter(limit=3).limit_or(20) == 3
    assert EventFilter(limit=500).limit_or(20, 50) == 50
