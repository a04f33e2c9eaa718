"""The newest events of each room, in memory, so an incremental /sync needs no database.

A room's tail knows every timeline event after `complete_after`; the event pipeline appends
to it right after each commit (in stream order, one writer per process). A sync whose since
token is inside the tail is answered from it; anything older goes to the database.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from homeserver.storage.events import EventRow

TAIL_LENGTH = 100
MAX_ROOMS = 5_000


@dataclass
class TailEntry:
    ordering: int
    event_id: str
    type: str
    sender: str


@dataclass
class RoomTail:
    entries: deque = field(default_factory=lambda: deque(maxlen=TAIL_LENGTH))
    # Every timeline event with a position above this is in `entries`; None while loading.
    complete_after: int | None = None

    @property
    def latest(self) -> int | None:
        if self.complete_after is None:
            return None
        return self.entries[-1].ordering if self.entries else self.complete_after


class RecentEvents:
    def __init__(self) -> None:
        self._tails: OrderedDict[str, RoomTail] = OrderedDict()

    def append(self, row: EventRow) -> None:
        tail = self._tails.get(row.room_id)
        if tail is None:
            return
        if len(tail.entries) == tail.entries.maxlen:
            # The oldest entry drops out: the tail is now complete only after it.
            tail.complete_after = max(tail.complete_after or 0, tail.entries[0].ordering)
        tail.entries.append(TailEntry(row.stream_ordering, row.event_id, row.type, row.sender))

    async def tails(self, room_ids: list[str],
                    load_latest: Callable[[list[str]], Awaitable[dict[str, int]]]
                    ) -> dict[str, RoomTail]:
        """The tails of these rooms, loading the missing ones' latest positions in one query."""
        missing = [r for r in room_ids if r not in self._tails]
        if missing:
            # Create first so that events committed while we query are not lost.
            for r in missing:
                self._tails[r] = RoomTail()
            latest = await load_latest(missing)
            for r in missing:
                tail = self._tails.get(r)
                if tail is None or tail.complete_after is not None:
                    continue
                base = latest.get(r, 0)
                while tail.entries and tail.entries[0].ordering <= base:
                    tail.entries.popleft()
                tail.complete_after = base
            while len(self._tails) > MAX_ROOMS:
                self._tails.popitem(last=False)
        out = {}
        for r in room_ids:
            tail = self._tails.get(r)
            if tail is not None and tail.complete_after is not None:
                self._tails.move_to_end(r)
                out[r] = tail
        return out

    @staticmethod
    def between(tail: RoomTail, after: int, upto: int) -> list[TailEntry] | None:
        """Entries with after < position <= upto, or None when the tail does not reach back."""
        if tail.complete_after is None or after < tail.complete_after:
            return None
        return [e for e in tail.entries if after < e.ordering <= upto]
