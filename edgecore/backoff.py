"""The one backoff helper: capped exponential delays with optional jitter.

Every retry loop in the agent (MQTT reconnect, image pull retries, the
CrashLoopBackOff of containers) takes its delays from here, so the shape of
"how long until we try again" is defined once. Jitter spreads a fleet's
reconnects after a broker restart; CrashLoopBackOff uses no jitter so its
schedule is the documented 10 s, 20 s, ... 300 s.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def capped_delay(attempt: int, *, initial: float, cap: float, factor: float = 2.0) -> float:
    """Delay before retry number `attempt` (1-based): initial * factor**(attempt-1), capped."""
    if attempt <= 0:
        return 0.0
    # Avoid float overflow for very large attempt counts.
    exp = min(attempt - 1, 64)
    return min(cap, initial * factor**exp)


def jittered(seconds: float, fraction: float, rng: random.Random | None = None) -> float:
    """`seconds` spread uniformly over [seconds*(1-fraction), seconds*(1+fraction)]."""
    if fraction <= 0 or seconds <= 0:
        return seconds
    r = (rng or random).uniform(-fraction, fraction)
    return max(0.0, seconds * (1.0 + r))


@dataclass
class Backoff:
    """Stateful capped exponential backoff with "equal jitter".

    Each `next()` returns a delay in [d/2, d] where d doubles from `initial` to
    `cap`; `reset()` after a success starts again from `initial`.
    """

    initial: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5  # fraction of the delay that is randomised away (0 = none)
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next(self) -> float:
        self.attempt += 1
        d = capped_delay(self.attempt, initial=self.initial, cap=self.cap, factor=self.factor)
        if self.jitter <= 0:
            return d
        return d * (1.0 - self.jitter * self.rng.random())

    def reset(self) -> None:
        self.attempt = 0
