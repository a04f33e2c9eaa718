"""Encryption at rest, pure parts: the sealed-value envelope, the keyring, key text, and the
segmented file format (crypto/at_rest.py, crypto/segmented.py)."""

from __future__ import annotations

import binascii
import os

import pytest

from homeserver.crypto.at_rest import (PREFIX, DecryptionError, Keyring, KeyFormatError,
                                       UnknownKeyError, aad, format_entry, format_keys,
                                       is_sealed, new_key, parse_keys, sealed_key_id)
from homeserver.crypto.segmented import (MAX_HEADER_BYTES, TAG_BYTES, SegmentSealer,
                                         StreamFormatError, build_header, layout, open_bytes,
                                         open_segment, parse_header, seal_bytes,
                                         segment_offset)

EVENT = b'{"type":"m.room.message","content":{"body":"the eagle lands at noon"}}'


def ring(*ids: str) -> Keyring:
    return Keyring([(i, new_key()) for i in ids])


def test_round_trip_and_envelope_shape():
    r = ring("k1")
    where = aad("events.json", "$ev1")
    sealed = r.seal(EVENT, where)
    assert sealed.startswith("nxe1:k1:") and is_sealed(sealed)
    assert sealed_key_id(sealed) == "k1"
    assert b"eagle" not in sealed.encode()
    assert r.open(sealed, where) == EVENT
    # A fresh nonce each time: the same plaintext never seals to the same text.
    assert r.seal(EVENT, where) != sealed


def test_newest_key_seals_all_keys_open():
    old = ring("k1")
    sealed_old = old.seal(EVENT, b"x")
    both = old.with_new_key("k2")
    assert both.current_id == "k2" and both.ids == ["k1", "k2"]
    sealed_new = both.seal(EVENT, b"x")
    assert sealed_key_id(sealed_new) == "k2"
    assert both.open(sealed_old, b"x") == both.open(sealed_new, b"x") == EVENT
    only_new = both.newest_only()
    assert only_new.ids == ["k2"]
    with pytest.raises(UnknownKeyError) as e:
        only_new.open(sealed_old, b"x")
    assert e.value.key_id == "k1"


def test_wrong_key_with_the_same_id_fails():
    sealed = ring("k1").seal(EVENT, b"x")
    with pytest.raises(DecryptionError):
        ring("k1").open(sealed, b"x")


def test_tampering_is_detected():
    r = ring("k1")
    sealed = r.seal(EVENT, b"x")
    body = bytearray(binascii.a2b_base64(sealed.split(":", 2)[2]))
    for pos in (0, 12, len(body) // 2, len(body) - 1):  # nonce, ciphertext, tag
        bad = bytearray(body)
        bad[pos] ^= 1
        forged = "nxe1:k1:" + binascii.b2a_base64(bytes(bad), newline=False).decode()
        with pytest.raises(DecryptionError):
            r.open(forged, b"x")
    for malformed in ("nxe1:k1:not base64!", "nxe1:k1:AAAA", "nxe1:k1", "nxe1:"):
        with pytest.raises((DecryptionError, UnknownKeyError)):
            r.open(malformed, b"x")


def test_values_cannot_move_between_rows_or_columns():
    r = ring("k1")
    sealed = r.seal(EVENT, aad("events.json", "$ev1"))
    with pytest.raises(DecryptionError):
        r.open(sealed, aad("events.json", "$ev2"))
    with pytest.raises(DecryptionError):
        r.open(sealed, aad("account_data.content", "$ev1"))
    # The parts are separated: ("a", "bc") and ("ab", "c") are different places.
    sealed = r.seal(b"{}", aad("account_data.content", "@a:hs", "", "bc"))
    with pytest.raises(DecryptionError):
        r.open(sealed, aad("account_data.content", "@a:hs", "b", "c"))


def test_key_id_is_bound_to_the_ciphertext():
    k = new_key()
    r = Keyring([("k1", k), ("k2", k)])  # same bytes under two names
    sealed = r.seal(EVENT, b"x")
    renamed = sealed.replace("nxe1:k2:", "nxe1:k1:", 1)
    with pytest.raises(DecryptionError):
        r.open(renamed, b"x")


def test_legacy_plaintext_reads_as_it_is():
    r = ring("k1")
    legacy = '{"body":"written before at-rest encryption"}'
    assert not is_sealed(legacy) and sealed_key_id(legacy) is None
    assert r.open(legacy, b"anything") == legacy.encode()


def test_keyring_validation():
    with pytest.raises(KeyFormatError):
        Keyring([])
    with pytest.raises(KeyFormatError):
        Keyring([("k1", b"short")])
    with pytest.raises(KeyFormatError):
        Keyring([("k1", new_key()), ("k1", new_key())])
    with pytest.raises(KeyFormatError):
        Keyring([("bad:id", new_key())])
    # Key material never shows in a repr (logs).
    k = new_key()
    assert format_entry("k1", k).split(":", 1)[1] not in repr(Keyring([("k1", k)]))


def test_key_text_round_trip_and_env_style():
    entries = [("k1", new_key()), ("k2", new_key())]
    text = format_keys(entries)
    assert text.startswith("#")
    assert parse_keys(text) == entries
    env = ", ".join(format_entry(*e) for e in entries)
    assert parse_keys(env) == entries
    for bad in ("", "# only a comment\n", "k1", "k1:!!!", f"k1:{'A' * 44}",
                f"{format_entry(*entries[0])}\n{format_entry(*entries[0])}"):
        with pytest.raises(KeyFormatError) as e:
            parse_keys(bad, "test")
        # Errors name the problem, never the key.
        assert binascii.b2a_base64(entries[0][1], newline=False).decode() not in str(e.value)


# --- segmented files ---------------------------------------------------------------------

SEG = 64


@pytest.mark.parametrize("size", [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 5])
def test_segmented_round_trip_at_boundaries(size):
    r = ring("k1")
    aead = r.aead("k1")
    header = build_header("k1", SEG)
    data = os.urandom(size)
    sealed = seal_bytes(aead, header, data)
    assert open_bytes(aead, sealed) == data
    count, plain = layout(header, len(sealed))
    assert plain == size and count == max(1, -(-size // SEG))
    assert len(sealed) == header.size + size + count * TAG_BYTES


def test_segmented_streaming_matches_one_shot_layout():
    r = ring("k1")
    header = build_header("k1", SEG)
    data = os.urandom(5 * SEG + 7)
    sealer = SegmentSealer(r.aead("k1"), header)
    out = header.raw
    for i in range(0, len(data), 13):  # arbitrary chunking
        out += sealer.update(data[i:i + 13])
    out += sealer.finish()
    assert open_bytes(r.aead("k1"), out) == data
    with pytest.raises(ValueError):
        sealer.update(b"more")


def test_segmented_detects_truncation_reordering_and_swaps():
    r = ring("k1")
    aead = r.aead("k1")
    header = build_header("k1", SEG)
    data = os.urandom(3 * SEG)
    sealed = seal_bytes(aead, header, data)
    stride = SEG + TAG_BYTES
    # Cut off the last segment: the one now last was not sealed as last.
    with pytest.raises(DecryptionError):
        open_bytes(aead, sealed[:header.size + 2 * stride])
    # Cut inside a tag.
    with pytest.raises(StreamFormatError):
        layout(header, len(sealed) - stride + 3)
    # Swap two segments.
    s0 = segment_offset(header, 0)
    swapped = (sealed[:s0] + sealed[s0 + stride:s0 + 2 * stride] + sealed[s0:s0 + stride]
               + sealed[s0 + 2 * stride:])
    with pytest.raises(DecryptionError):
        open_bytes(aead, swapped)
    # A segment from another file (another nonce prefix) does not fit in.
    other = seal_bytes(aead, build_header("k1", SEG), data)
    mixed = sealed[:s0] + other[s0:s0 + stride] + sealed[s0 + stride:]
    with pytest.raises(DecryptionError):
        open_bytes(aead, mixed)
    # Random access: each segment opens alone.
    seg1 = sealed[segment_offset(header, 1):segment_offset(header, 2)]
    assert open_segment(aead, header, 1, False, seg1) == data[SEG:2 * SEG]


def test_segmented_header_parsing():
    header = build_header("k-abc_1", 1024)
    parsed = parse_header(header.raw + b"rest")
    assert parsed == header
    assert len(header.raw) <= MAX_HEADER_BYTES
    assert parse_header(b"\x89PNG....") is None  # legacy plaintext file
    for bad in (b"NXS1", header.raw[:-1], b"NXS1\x03k\x00\x01" + b"\x00" * 11):
        with pytest.raises(StreamFormatError):
            parse_header(bad)


def test_sealed_values_are_text_for_text_columns():
    sealed = ring("k1").seal(EVENT, b"x")
    sealed.encode("ascii")
    assert sealed.startswith(PREFIX)
