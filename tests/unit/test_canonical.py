"""Canonical JSON and base64 (spec appendix examples) plus room versions."""

import pytest

from homeserver.events.canonical import (
    canonical_json,
    decode_b64,
    encode_b64,
    encode_b64_urlsafe,
    parse_json,
)
from homeserver.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    UnsupportedRoomVersion,
    get_room_version,
)

# (input JSON text, expected canonical output) from the spec appendix.
SPEC_EXAMPLES = [
    ("{}", "{}"),
    ('{\n    "one": 1,\n    "two": "Two"\n}', '{"one":1,"two":"Two"}'),
    ('{\n    "b": "2",\n    "a": "1"\n}', '{"a":"1","b":"2"}'),
    ('{"b":"2","a":"1"}', '{"a":"1","b":"2"}'),
    (
        """{"auth": {"success": true, "mxid": "@john.doe:example.com",
            "profile": {"display_name": "John Doe", "three_pids": [
                {"medium": "email", "address": "john.doe@example.org"},
                {"medium": "msisdn", "address": "123456789"}]}}}""",
        '{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe",'
        '"three_pids":[{"address":"john.doe@example.org","medium":"email"},'
        '{"address":"123456789","medium":"msisdn"}]},"success":true}}',
    ),
    ('{"a": "日本語"}', '{"a":"日本語"}'),
    ('{"本": 2, "日": 1}', '{"日":1,"本":2}'),
    ('{"a": "\\u65E5"}', '{"a":"日"}'),
    ('{"a": null}', '{"a":null}'),
    ('{"a": -0, "b": 1e10}', '{"a":0,"b":10000000000}'),
]


@pytest.mark.parametrize("text,expected", SPEC_EXAMPLES)
def test_spec_canonical_json_examples(text, expected):
    assert canonical_json(parse_json(text)) == expected.encode("utf-8")


def test_non_ascii_is_raw_utf8_and_control_chars_escaped():
    assert canonical_json({"a": "é\n\x01"}) == '{"a":"é\\n\\u0001"}'.encode()


@pytest.mark.parametrize(
    "bad",
    [
        {"a": 1.5},
        {"a": 1.0},  # floats are rejected even when integral
        {"a": float("nan")},
        {"a": float("inf")},
        {"a": 2**53},
        {"a": -(2**53)},
        [[[{"x": 0.1}]]],
        {1: "non-string key"},
        {"a": b"bytes"},
        {"a": {1, 2}},
        {"a": "\ud800"},  # lone surrogate cannot be UTF-8 encoded
    ],
)
def test_invalid_values_raise_value_error(bad):
    with pytest.raises(ValueError):
        canonical_json(bad)


def test_integer_range_limits_are_inclusive():
    assert canonical_json([2**53 - 1, -(2**53) + 1]) == b"[9007199254740991,-9007199254740991]"


def test_booleans_are_not_treated_as_integers():
    assert canonical_json({"t": True, "f": False}) == b'{"f":false,"t":true}'


def test_deep_nesting_raises_value_error_not_recursion_error():
    deep = current = {}
    for _ in range(5000):
        current["a"] = {}
        current = current["a"]
    current["x"] = 0.5
    with pytest.raises(ValueError):
        canonical_json(deep)


def test_parse_json_rejects_nan_and_keeps_fractions_as_float():
    with pytest.raises(ValueError):
        parse_json('{"a": NaN}')
    with pytest.raises(ValueError):
        parse_json('{"a": Infinity}')
    value = parse_json(b'{"a": 1.25, "b": 2.0}')
    assert value == {"a": 1.25, "b": 2}
    assert type(value["b"]) is int
    with pytest.raises(ValueError):
        canonical_json(value)  # 1.25 is still not canonical


def test_parse_json_rejects_absurd_exponents():
    with pytest.raises(ValueError):
        parse_json('{"a": 1e999999999}')


@pytest.mark.parametrize(
    "raw,encoded",
    [(b"", ""), (b"f", "Zg"), (b"fo", "Zm8"), (b"foo", "Zm9v"), (b"foob", "Zm9vYg"),
     (b"fooba", "Zm9vYmE"), (b"foobar", "Zm9vYmFy")],
)
def test_spec_unpadded_base64_examples(raw, encoded):
    assert encode_b64(raw) == encoded
    assert decode_b64(encoded) == raw


def test_urlsafe_base64_uses_minus_and_underscore():
    raw = bytes([0xFB, 0xFF, 0xBF])
    assert encode_b64(raw) == "+/+/"
    assert encode_b64_urlsafe(raw) == "-_-_"
    assert decode_b64("-_-_") == raw


def test_decode_accepts_padding():
    assert decode_b64("Zm8=") == b"fo"


@pytest.mark.parametrize("bad", ["Z", "Zm9v!", "Zm 9v", "a===", 123])
def test_decode_rejects_malformed_input(bad):
    with pytest.raises(ValueError):
        decode_b64(bad)


def test_room_versions_registry():
    assert set(KNOWN_ROOM_VERSIONS) == {"6", "7", "8", "9", "10", "11"}
    assert DEFAULT_ROOM_VERSION == "10"
    # What changed from one version to the next (the spec's room version history).
    flags = {v: get_room_version(v) for v in KNOWN_ROOM_VERSIONS}
    assert [v for v, rv in flags.items() if rv.knock_join_rule] == ["7", "8", "9", "10", "11"]
    assert [v for v, rv in flags.items() if rv.restricted_join_rule] == ["8", "9", "10", "11"]
    assert [v for v, rv in flags.items() if rv.knock_restricted_join_rule] == ["10", "11"]
    assert [v for v, rv in flags.items() if rv.enforce_int_power_levels] == ["10", "11"]
    assert [v for v, rv in flags.items() if rv.redaction_keeps_allow] == ["8", "9", "10", "11"]
    assert [v for v, rv in flags.items()
            if rv.redaction_keeps_join_authorised] == ["9", "10", "11"]
    v10, v11 = get_room_version("10"), get_room_version("11")
    assert not v10.updated_redaction_rules and v11.updated_redaction_rules
    assert not v10.implicit_room_creator and v11.implicit_room_creator
    for rv in (v10, v11):
        assert rv.knock_join_rule and rv.restricted_join_rule
        assert rv.knock_restricted_join_rule and rv.enforce_int_power_levels


@pytest.mark.parametrize("ident", ["1", "5", "12", "", None, 10])
def test_unknown_room_version_raises(ident):
    with pytest.raises(UnsupportedRoomVersion) as info:
        get_room_version(ident)
    assert isinstance(info.value, ValueError)


def test_room_version_is_frozen():
    with pytest.raises(Exception):
        get_room_version("10").identifier = "11"


# --- the fast encoder against the reference library ------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
import canonicaljson  # noqa: E402

_json_values = st.recursive(
    st.none() | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(st.characters(blacklist_categories=("Cs",))),  # any code point but surrogates
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
                      children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(_json_values)
def test_fast_canonical_json_is_byte_identical_to_the_library(value):
    """canonical_json encodes with orjson; the canonicaljson library is the reference. Key
    order across all of Unicode, control characters and escapes must come out the same."""
    assert canonical_json(value) == canonicaljson.encode_canonical_json(value)


def test_nesting_beyond_orjson_and_lone_surrogates_fall_back_to_the_library():
    deep: object = 1
    for _ in range(300):  # orjson stops at 255 levels
        deep = {"a": [deep]}
    assert canonical_json(deep) == canonicaljson.encode_canonical_json(deep)
    with pytest.raises(ValueError):
        canonical_json({"a": "\ud800"})
