"""The one retry-delay helper: capped exponential delays with jitter.

Every retry loop in edgefed takes its delays from here: the cloud's broker
reconnects and late desired acks, the agent's MQTT reconnects and status retries,
the CrashLoopBackOff of containers. The shape of "how long until we try again" is
therefore defined and tuned in one place.

The shape: retry number n (0-based) waits at most ``ceiling(n) = min(cap,
initial * factor**n)``, and at least ``ceiling(n) * (1 - jitter)``, uniformly in
between ("equal jitter" for the default ``jitter=0.5``). Jitter spreads the retries
of many nodes that failed at the same moment (a broker restart drops 100k sessions
at once); the floor keeps a retry loop from spinning. ``jitter=0`` gives the plain
documented schedule (CrashLoopBackOff's 10 s, 20 s, ... 300 s, see `capped_delay`).

A `Backoff` can be used two ways, and both use the same shape:
- stateless, ``delay(attempt)``, for a caller that counts its own attempts (the
  cloud's sync hub keeps one count per node);
- stateful, ``next()`` / ``reset()``, for one retry loop that owns its count.
"""

from __future__ import annotations

import random

_MAX_EXP = 64  # larger exponents only overflow floats; the cap is reached long before


def capped_delay(attempt: int, *, initial: float, cap: float, factor: float = 2.0) -> float:
    """Delay before retry number `attempt` (1-based), without jitter.

    ``initial * factor**(attempt-1)`` capped at `cap`; 0 for ``attempt <= 0`` (no
    failure yet, no wait).
    """
    if attempt <= 0:
        return 0.0
    return min(cap, initial * factor ** min(attempt - 1, _MAX_EXP))


def jittered(seconds: float, fraction: float, rng: random.Random | None = None) -> float:
    """`seconds` spread uniformly over [seconds*(1-fraction), seconds*(1+fraction)], >= 0."""
    if fraction <= 0 or seconds <= 0:
        return seconds
    r = (rng or random).uniform(-fraction, fraction)
    return max(0.0, seconds * (1.0 + r))


class Backoff:
    """Capped exponential backoff with jitter (see the module docstring for the shape).

    `initial` (alias `base`) is the ceiling of the first retry in seconds, `cap` the
    largest ceiling, `factor` the growth per retry, `jitter` the fraction of the
    ceiling that is randomised away (0 = none, 1 = anything down to 0).
    """

    __slots__ = ("attempt", "cap", "factor", "initial", "jitter", "rng")

    def __init__(self, initial: float | None = None, cap: float = 30.0, factor: float = 2.0,
                 jitter: float = 0.5, *, base: float | None = None,
                 rng: random.Random | None = None) -> None:
        if initial is not None and base is not None and initial != base:
            raise ValueError("Backoff: give initial or base (the same thing), not both")
        first = initial if initial is not None else base
        self.initial: float = 0.5 if first is None else float(first)
        self.cap = float(cap)
        self.factor = float(factor)
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"Backoff: jitter must be within [0, 1], not {jitter}")
        self.jitter = float(jitter)
        self.rng = rng
        self.attempt = 0
        """Retries handed out by `next()` since the last `reset()`."""

    @property
    def base(self) -> float:
        """The same as `initial` (the cloud's name for it)."""
        return self.initial

    def ceiling(self, attempt: int) -> float:
        """The longest delay before retry number `attempt` (0-based), without jitter."""
        return capped_delay(max(0, attempt) + 1, initial=self.initial, cap=self.cap,
                            factor=self.factor)

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Delay before retry number `attempt` (0-based): uniform in
        [ceiling*(1-jitter), ceiling]. Does not touch the stateful count."""
        top = self.ceiling(attempt)
        if self.jitter <= 0:
            return top
        r = (rng or self.rng or random).random()
        return top * (1.0 - self.jitter * r)

    def next(self) -> float:
        """The delay before the next retry of this loop; counts the retry."""
        d = self.delay(self.attempt)
        self.attempt += 1
        return d

    def reset(self) -> None:
        """After a success: the next retry waits `initial` (jittered) again."""
        self.attempt = 0

    def __repr__(self) -> str:
        return (f"Backoff(initial={self.initial}, cap={self.cap}, factor={self.factor}, "
                f"jitter={self.jitter}, attempt={self.attempt})")
