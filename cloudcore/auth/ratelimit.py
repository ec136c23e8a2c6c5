"""A token bucket per client address, for `POST /api/v1/join` (proposal 0002).

Join tokens are random and long, so guessing one is hopeless; the limit keeps a
client that tries anyway, or a script gone wrong, from costing cloudcore a store write
and a PBKDF2 hash per request. Buckets live in memory (a restart refills them) and
are bounded: past `max_clients` addresses, full buckets are forgotten first.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """`rate` tokens per second up to `burst`, per key (a client address)."""

    def __init__(self, *, per_minute: float, burst: int,
                 clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 10_000) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """Take one token for `key`: 0.0 if allowed, else the seconds until one is free."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_clients:
            self._forget(now)
        return 0.0

    def _forget(self, now: float) -> None:
        full = [k for k, (t, at) in self._buckets.items()
                if min(self.burst, t + (now - at) * self.rate) >= self.burst]
        for k in full:
            del self._buckets[k]
        while len(self._buckets) > self.max_clients:  # all busy: drop the oldest
            del self._buckets[next(iter(self._buckets))]
