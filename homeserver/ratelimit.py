"""Token-bucket rate limiting per key (client address or user) for login, registration, sends."""

from __future__ import annotations

import time

from homeserver.config import RateLimit
from homeserver.errors import limit_exceeded


class RateLimiter:
    def __init__(self, limit: RateLimit, max_keys: int = 100_000) -> None:
        self.rate = limit.per_second
        self.burst = limit.burst
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)

    def check(self, key: str, cost: float = 1.0) -> None:
        """Take `cost` tokens or raise M_LIMIT_EXCEEDED with the time until enough are back."""
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            raise limit_exceeded(int((cost - tokens) / self.rate * 1000) + 1)
        if len(self._buckets) >= self.max_keys and key not in self._buckets:
            self._buckets.clear()  # bounded memory; a reset only ever lets more through
        self._buckets[key] = (tokens - cost, now)
