"""The two-tier event cache: newest events decoded, older ones kept as JSON."""

from __future__ import annotations

from homeserver.handlers.event_cache import MIN_HOT, EventCache
from homeserver.storage.events import EventRow


def row(i: int, **kw) -> EventRow:
    fields = dict(
        stream_ordering=i, event_id=f"$e{i}", room_id="!r:hs", type="m.room.message",
        state_key=None, sender="@a:hs", depth=i, origin_server_ts=1000 + i,
        pdu={"type": "m.room.message", "content": {"body": f"message {i}", "n": [i, {"x": None}]},
             "prev_events": [f"$e{i - 1}"], "unsigned": {"age_ts": i}},
        state_group=7, txn_device="DEV", txn_id=f"t{i}")
    fields.update(kw)
    return EventRow(**fields)


def test_older_events_come_back_equal_from_the_compact_tier():
    cache = EventCache(MIN_HOT * 4)
    rows = [row(i) for i in range(MIN_HOT * 3)]
    rows[5] = row(5, state_key="", redacted_by="$r", outlier=True, soft_failed=True)
    for r in rows:
        cache.put(r)
    assert len(cache) == len(rows)
    assert len(cache._hot) == MIN_HOT  # the rest were packed
    found, missing = cache.get_many(["$e0", "$e5", f"$e{len(rows) - 1}", "$nope"])
    assert missing == ["$nope"]
    assert found["$e0"] == rows[0] and found["$e0"] is not rows[0]  # decoded again
    assert found["$e5"] == rows[5]
    assert found[f"$e{len(rows) - 1}"] is rows[-1]  # still decoded
    # What was asked for is hot again; the cold copy is gone (one copy per event).
    assert "$e0" in cache._hot and "$e0" not in cache._cold


def test_bounded_replaced_and_invalidated():
    cache = EventCache(MIN_HOT * 2)
    for i in range(MIN_HOT * 5):
        cache.put(row(i))
    assert len(cache) == MIN_HOT * 2
    assert cache.get_many(["$e0"])[1] == ["$e0"]  # the oldest are forgotten
    old = f"$e{MIN_HOT * 3 + 1}"
    assert old in cache._cold
    cache.put(row(MIN_HOT * 3 + 1, redacted_by="$red"))  # e.g. after a redaction
    assert old not in cache._cold and cache.get_many([old])[0][old].redacted_by == "$red"
    cache.pop(old)
    cache.pop(f"$e{MIN_HOT * 3 + 2}")
    assert cache.get_many([old, f"$e{MIN_HOT * 3 + 2}"])[1] == [old, f"$e{MIN_HOT * 3 + 2}"]
    cache.clear()
    assert len(cache) == 0


def test_packed_json_is_exact_size():
    """orjson hands back its whole write buffer (kilobytes); the cache must not keep that."""
    import tracemalloc

    from homeserver.handlers.event_cache import _compact_json

    pdu = row(1).pdu
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [_compact_json(pdu) for _ in range(100)]
        per_event = (tracemalloc.get_traced_memory()[0] - before) / 100
    finally:
        tracemalloc.stop()
    assert per_event < len(kept[0]) + 100


def test_small_caches_keep_everything_decoded():
    cache = EventCache(100)
    for i in range(150):
        cache.put(row(i))
    assert len(cache._hot) == 100 and not cache._cold


def test_lru_tells_what_it_forgets_for_room_only():
    from homeserver.handlers.lru import LRU

    evicted: list[tuple] = []
    lru = LRU(2, on_evict=lambda k, v: evicted.append((k, v)))
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get_item("a") == 1  # "a" is now the most recent
    lru.put("c", 3)
    assert evicted == [("b", 2)] and list(lru) == ["a", "c"]
    lru.pop("a")  # taken out by hand: not an eviction
    lru.put("a", 4)  # replaced in place: not an eviction either
    assert evicted == [("b", 2)]
