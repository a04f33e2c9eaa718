"""Unread counts in memory, so that /sync (answered thousands of times a second under load)
does not ask the database for them on every response.

Per user: the rooms with non-zero counts, loaded in one query and then kept up to date by the
event writer right after each commit, under the persist lock (one writer per process, as for
the state caches). A load takes the same lock, so it never sees an event whose increments are
not applied yet. Receipts do not take it: they drop the user's entry after their commit, and a
load that overlapped such a drop is used for its response but not kept.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Awaitable, Callable

Counts = dict[str, tuple[int, int]]  # room_id -> (notifications, highlights)


class CountsCache:
    def __init__(self, users: int = 20_000, stamps: int = 100_000) -> None:
        self._users: OrderedDict[str, Counts] = OrderedDict()
        self._max_users = users
        self._drops = 0
        self._stamps: OrderedDict[str, int] = OrderedDict()  # user -> number of last drop
        self._max_stamps = stamps
        self._floor = 0  # the newest drop number among stamps forgotten

    # --- writers (after their commit) ------------------------------------------------------

    def add(self, room_id: str, user_id: str, notifications: int, highlights: int) -> None:
        """An event raised this user's counter (called under the persist lock)."""
        entry = self._users.get(user_id)
        if entry is not None:
            n, h = entry.get(room_id, (0, 0))
            entry[room_id] = (n + notifications, h + highlights)

    def clear(self, room_id: str, user_id: str) -> None:
        """The user's own event read the room (called under the persist lock)."""
        entry = self._users.get(user_id)
        if entry is not None:
            entry.pop(room_id, None)

    def forget(self, user_id: str) -> None:
        """A change not followed in place (a receipt): the next read loads."""
        self._users.pop(user_id, None)
        self._drops += 1
        self._stamps[user_id] = self._drops
        self._stamps.move_to_end(user_id)
        while len(self._stamps) > self._max_stamps:
            _, n = self._stamps.popitem(last=False)
            self._floor = max(self._floor, n)

    # --- readers ---------------------------------------------------------------------------

    async def get(self, user_id: str, load: Callable[[str], Awaitable[Counts]],
                  lock: Any) -> Counts:
        entry = self._users.get(user_id)
        if entry is not None:
            self._users.move_to_end(user_id)
            return entry
        async with lock:  # no event commits meanwhile, and none is half applied
            entry = self._users.get(user_id)
            if entry is not None:
                return entry
            start = self._drops
            entry = await load(user_id)
            if self._stamps.get(user_id, self._floor) <= start:
                self._users[user_id] = entry
                while len(self._users) > self._max_users:
                    self._users.popitem(last=False)
        return entry
