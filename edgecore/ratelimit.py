"""Log a recurring complaint at most once per interval per key, counting the rest.

Malformed input from the wire must be visible to an operator without letting a
misbehaving peer flood the device's log (DESIGN.md section 3: "logged once per
node per minute").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    def __init__(
        self, logger: logging.Logger, *, interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic, max_keys: int = 256,
    ) -> None:
        self._log = logger
        self._interval = interval_s
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log unless `key` was logged within the interval; True if it was logged."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if len(self._last) >= self._max_keys and key not in self._last:
            self._last.clear()  # bounded memory under key churn
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        suffix = f" ({n} similar suppressed)" if n else ""
        self._log.warning(msg + suffix, *args)
        return True
