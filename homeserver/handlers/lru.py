"""A size-bounded mapping that forgets the least recently used entry first."""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable


class LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

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
            self.popitem(last=False)
