"""A size-bounded mapping that forgets the least recently used entry first."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Iterable


class LRU(OrderedDict):
    def __init__(self, size: int, on_evict: Callable[[Any, Any], None] | None = None) -> None:
        """`on_evict(key, value)` is told of each entry forgotten for room (not of pops)."""
        super().__init__()
        self.size = size
        self.on_evict = on_evict

    def get_item(self, key):
        val = super().get(key)
        if val is not None:
            self.move_to_end(key)
        return val

    def get_many(self, keys: Iterable) -> tuple[dict, list]:
        """(the cached values by key, the keys not cached, in order)."""
        found: dict = {}
        missing: list = []
        for key in keys:
            val = self.get_item(key)
            if val is None:
                missing.append(key)
            else:
                found[key] = val
        return found, missing

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            old = self.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(*old)
