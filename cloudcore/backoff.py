"""The one retry-delay helper: exponential backoff with full jitter and a cap.

Every retry loop in cloudcore (broker reconnects, late desired acks) uses it, so
the fleet-wide retry behaviour is tuned in one place. Full jitter (AWS's
"exponential backoff and jitter") spreads the retries of many nodes that failed at
the same moment, which matters when a broker restart drops 100k sessions at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number `attempt` (0-based): uniform in [base/2, min(cap, base*2^n)]."""

    base: float = 1.0
    cap: float = 60.0
    factor: float = 2.0

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        top = min(self.cap, self.base * self.factor ** max(0, min(attempt, 64)))
        low = min(top, self.base / 2)
        return (rng or random).uniform(low, top)
