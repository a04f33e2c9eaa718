"""Events by ID, in memory: the newest decoded, the rest as their JSON.

A decoded event (the row and its PDU as Python dicts and strings) takes about 2 KB; the same
event as JSON bytes about 0.7 KB. What is read over and over (the room state every new
event is authorised against, the newest timeline events every /sync sends out) stays
decoded in a small hot tier; older events move to a compact tier and are decoded again only
if someone asks for them. `caches.events` bounds the two together.
"""

from __future__ import annotations

from typing import Iterable

import orjson

from homeserver.handlers.lru import LRU
from homeserver.storage.events import EventRow

HOT_SHARE = 16  # one event in sixteen stays decoded
MIN_HOT = 256


class EventCache:
    def __init__(self, size: int) -> None:
        hot = min(size, max(MIN_HOT, size // HOT_SHARE))
        self._cold: LRU = LRU(max(0, size - hot))
        self._hot: LRU = LRU(hot, on_evict=self._cool)

    def get_many(self, event_ids: Iterable[str]) -> tuple[dict[str, EventRow], list[str]]:
        """(the cached events by ID, the IDs not cached, in order)."""
        found, missing = self._hot.get_many(event_ids)
        if missing and self._cold:
            still = []
            for eid in missing:
                packed = self._cold.pop(eid, None)
                if packed is None:
                    still.append(eid)
                else:
                    found[eid] = row = _unpack(packed)
                    self._hot.put(eid, row)
            missing = still
        return found, missing

    def put(self, row: EventRow) -> None:
        self._cold.pop(row.event_id, None)
        self._hot.put(row.event_id, row)

    def pop(self, event_id: str) -> None:
        self._hot.pop(event_id, None)
        self._cold.pop(event_id, None)

    def clear(self) -> None:
        self._hot.clear()
        self._cold.clear()

    def __len__(self) -> int:
        return len(self._hot) + len(self._cold)

    def _cool(self, event_id: str, row: EventRow) -> None:
        """An event leaving the hot tier is kept packed (if the cold tier has room at all)."""
        if self._cold.size:
            self._cold.put(event_id, _pack(row))


def _pack(row: EventRow) -> tuple:
    return (row.stream_ordering, row.event_id, row.room_id, row.type, row.state_key,
            row.sender, row.depth, row.origin_server_ts, _compact_json(row.pdu),
            row.state_group, row.redacted_by, row.txn_device, row.txn_id, row.outlier,
            row.soft_failed)


def _compact_json(value) -> bytes:
    # orjson's result keeps the buffer it was written into (8 KB for a 0.7 KB event):
    # a copy of the exact size is what stays in the cache.
    return bytes(memoryview(orjson.dumps(value)))


def _unpack(p: tuple) -> EventRow:
    return EventRow(
        stream_ordering=p[0], event_id=p[1], room_id=p[2], type=p[3], state_key=p[4],
        sender=p[5], depth=p[6], origin_server_ts=p[7], pdu=orjson.loads(p[8]),
        state_group=p[9], redacted_by=p[10], txn_device=p[11], txn_id=p[12], outlier=p[13],
        soft_failed=p[14])
