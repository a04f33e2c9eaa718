"""Wakes whoever waits for news of a user or a room: /sync long-polls and realtime pushes.

Small interface on purpose: a Redis-backed implementation (publish on notify, subscribe per
process) lets several worker processes share the load without changing callers.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Protocol


class Listener:
    __slots__ = ("user_id", "rooms", "event")

    def __init__(self, user_id: str, rooms: Iterable[str]) -> None:
        self.user_id = user_id
        self.rooms = set(rooms)
        self.event = asyncio.Event()


Subscriber = Callable[[str, int, list[str], list[str]], None]


class Notifier(Protocol):
    def notify(self, stream: str, position: int, rooms: Iterable[str] = (),
               users: Iterable[str] = ()) -> None: ...

    def listen(self, user_id: str, rooms: Iterable[str]) -> Iterator[Listener]: ...

    def subscribe(self, fn: Subscriber) -> None: ...


class InProcessNotifier:
    def __init__(self) -> None:
        self._by_user: defaultdict[str, set[Listener]] = defaultdict(set)
        self._by_room: defaultdict[str, set[Listener]] = defaultdict(set)
        self._subscribers: list[Subscriber] = []

    def notify(self, stream: str, position: int, rooms: Iterable[str] = (),
               users: Iterable[str] = ()) -> None:
        rooms, users = list(rooms), list(users)
        for r in rooms:
            for lst in self._by_room.get(r, ()):
                lst.event.set()
        for u in users:
            for lst in self._by_user.get(u, ()):
                lst.event.set()
        for fn in self._subscribers:
            fn(stream, position, rooms, users)

    @contextmanager
    def listen(self, user_id: str, rooms: Iterable[str]) -> Iterator[Listener]:
        lst = Listener(user_id, rooms)
        self._by_user[user_id].add(lst)
        for r in lst.rooms:
            self._by_room[r].add(lst)
        try:
            yield lst
        finally:
            self._discard(self._by_user, user_id, lst)
            for r in lst.rooms:
                self._discard(self._by_room, r, lst)

    def subscribe(self, fn: Subscriber) -> None:
        self._subscribers.append(fn)

    @staticmethod
    def _discard(index: defaultdict, key: str, lst: Listener) -> None:
        s = index.get(key)
        if s is not None:
            s.discard(lst)
            if not s:
                del index[key]

    def listener_count(self) -> int:
        return sum(len(s) for s in self._by_user.values())


async def wait_for(listener: Listener, timeout_s: float) -> bool:
    """True if woken before the timeout."""
    if listener.event.is_set():
        return True
    # asyncio.timeout, not wait_for: wait_for wraps the wait in a task of its own, and every
    # /sync long-poll passes here.
    try:
        async with asyncio.timeout(timeout_s):
            await listener.event.wait()
        return True
    except TimeoutError:
        return False
