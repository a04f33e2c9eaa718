"""StreamToken: the /sync position, serialised and compared on every wake-up."""

from dataclasses import fields

import pytest

from homeserver.errors import MatrixError
from homeserver.types import StreamToken


def test_tuple_covers_every_stream_in_declaration_order():
    names = [f.name for f in fields(StreamToken)]
    token = StreamToken(**{n: i + 1 for i, n in enumerate(names)})
    assert token.as_tuple() == tuple(range(1, len(names) + 1))


def test_serialize_parse_round_trip():
    token = StreamToken(5, 4, 3, 2, 1, 9, 8)
    assert token.serialize() == "s5_4_3_2_1_9_8"
    assert StreamToken.parse(token.serialize()) == token


@pytest.mark.parametrize("field", [f.name for f in fields(StreamToken)])
def test_is_after_notices_each_stream(field):
    base = StreamToken(1, 1, 1, 1, 1, 1, 1)
    moved = base.copy_with(**{field: 2})
    assert moved.is_after(base)
    assert not base.is_after(moved)
    assert not base.is_after(base)


def test_bad_tokens_are_m_invalid_param():
    for bad in ("", "x1", "s1_a", "s" + "_".join(["1"] * 9)):
        with pytest.raises(MatrixError) as e:
            StreamToken.parse(bad)
        assert e.value.errcode == "M_INVALID_PARAM"
