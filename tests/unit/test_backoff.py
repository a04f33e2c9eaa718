"""The federation sender's retry schedule: exponential growth from a base, a cap, full jitter."""

from __future__ import annotations

import random

import pytest

from homeserver.handlers.federation.sender import (
    DEFAULT_RETRY_BASE_MS,
    DEFAULT_RETRY_MAX_MS,
    _merge_edus,
    backoff_after_failures,
    backoff_delay_ms,
    new_txn_id,
    next_backoff_ceiling,
)


def test_first_failure_starts_at_base():
    assert next_backoff_ceiling(0) == DEFAULT_RETRY_BASE_MS == 500
    assert next_backoff_ceiling(0, base_ms=200, cap_ms=10_000) == 200
    assert next_backoff_ceiling(-5, base_ms=200, cap_ms=10_000) == 200


def test_ceiling_doubles_until_the_cap():
    seen = []
    ceiling = 0
    for _ in range(12):
        ceiling = next_backoff_ceiling(ceiling, 500, 60_000)
        seen.append(ceiling)
    assert seen[:8] == [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000]
    assert all(c == 60_000 for c in seen[7:])
    assert seen == sorted(seen)


def test_cap_below_base_wins():
    assert next_backoff_ceiling(0, base_ms=500, cap_ms=100) == 100
    assert next_backoff_ceiling(100, base_ms=500, cap_ms=100) == 100


def test_previous_below_base_is_raised_to_base():
    assert next_backoff_ceiling(10, base_ms=500, cap_ms=60_000) == 500


def test_default_cap_is_a_minute():
    assert DEFAULT_RETRY_MAX_MS == 60_000
    assert backoff_after_failures(1000, rand=lambda: 1.0) == (60_000, 60_000)


def test_full_jitter_bounds():
    assert backoff_delay_ms(1000, rand=lambda: 0.0) == 0
    assert backoff_delay_ms(1000, rand=lambda: 1.0) == 1000
    assert backoff_delay_ms(1000, rand=lambda: 0.25) == 250
    # A misbehaving random source is clamped into range.
    assert backoff_delay_ms(1000, rand=lambda: 1.5) == 1000
    assert backoff_delay_ms(1000, rand=lambda: -1.0) == 0
    assert backoff_delay_ms(0) == 0


@pytest.mark.parametrize("failures", [1, 2, 3, 5, 8, 20])
def test_delays_stay_in_the_window(failures):
    rng = random.Random(failures)
    for _ in range(500):
        ceiling, delay = backoff_after_failures(failures, 500, 60_000, rand=rng.random)
        assert ceiling == min(60_000, 500 * 2 ** (failures - 1))
        assert 0 <= delay <= ceiling


def test_jitter_spreads_over_the_window():
    rng = random.Random(7)
    delays = [backoff_delay_ms(10_000, rand=rng.random) for _ in range(2000)]
    assert min(delays) < 1_000 and max(delays) > 9_000
    assert 4_000 < sum(delays) / len(delays) < 6_000


def test_small_cap_for_tests():
    rng = random.Random(1)
    for failures in range(1, 30):
        ceiling, delay = backoff_after_failures(failures, 500, 50, rand=rng.random)
        assert ceiling == 50 and 0 <= delay <= 50


def test_txn_ids_are_unique():
    ids = {new_txn_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) <= 64 for i in ids)


def test_merge_edus_keeps_latest_per_user():
    edus = [
        {"edu_type": "m.presence", "content": {"push": [{"user_id": "@a:x", "presence": "online",
                                                         "last_active_ago": 1}]}},
        {"edu_type": "m.receipt", "content": {"!r:x": {"m.read": {"@a:x": {
            "event_ids": ["$1"], "data": {"ts": 1}}}}}},
        {"edu_type": "m.presence", "content": {"push": [{"user_id": "@a:x", "presence": "offline",
                                                         "last_active_ago": 2},
                                                        {"user_id": "@b:x", "presence": "online",
                                                         "last_active_ago": 3}]}},
        {"edu_type": "m.receipt", "content": {"!r:x": {"m.read": {"@a:x": {
            "event_ids": ["$2"], "data": {"ts": 2}}, "@b:x": {"event_ids": ["$1"],
                                                       "data": {"ts": 3}}}}}},
        {"edu_type": "org.example.custom", "content": {}},
    ]
    merged = _merge_edus(edus)
    assert [e["edu_type"] for e in merged] == ["m.presence", "m.receipt", "org.example.custom"]
    push = {p["user_id"]: p["presence"] for p in merged[0]["content"]["push"]}
    assert push == {"@a:x": "offline", "@b:x": "online"}
    reads = merged[1]["content"]["!r:x"]["m.read"]
    assert reads["@a:x"]["event_ids"] == ["$2"] and reads["@b:x"]["event_ids"] == ["$1"]
    assert _merge_edus(edus) == merged  # deterministic: a rebuilt transaction is identical
