"""The one backoff helper: its shape, both ways of using it, and the old call forms."""

from __future__ import annotations

import random

import pytest

from shared.backoff import Backoff, capped_delay, jittered


def test_capped_delay_is_the_documented_schedule() -> None:
    assert [capped_delay(i, initial=10, cap=300) for i in range(8)] == [
        0, 10, 20, 40, 80, 160, 300, 300]
    assert capped_delay(10_000, initial=1, cap=5) == 5  # no float overflow
    assert capped_delay(-3, initial=1, cap=5) == 0


def test_jittered_stays_within_its_fraction() -> None:
    rng = random.Random(1)
    for _ in range(200):
        assert 27 <= jittered(30, 0.1, rng) <= 33
    assert jittered(30, 0) == 30 and jittered(0, 0.5) == 0
    assert jittered(1, 5.0, rng) >= 0


def test_stateful_next_doubles_to_the_cap_and_reset_starts_again() -> None:
    b = Backoff(initial=1, cap=8, rng=random.Random(1))
    delays = [b.next() for _ in range(6)]
    for d, top in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert top / 2 <= d <= top
    assert b.attempt == 6
    b.reset()
    assert b.attempt == 0 and b.next() <= 1


def test_stateless_delay_is_zero_based_and_leaves_the_count_alone() -> None:
    """The cloud's form: `Backoff(base=..., cap=...)` and `delay(attempt)` from 0."""
    b = Backoff(base=2.0, cap=10.0)
    assert b.base == b.initial == 2.0
    rng = random.Random(7)
    for attempt, top in [(0, 2), (1, 4), (2, 8), (3, 10), (50, 10), (10_000, 10)]:
        for _ in range(50):
            assert top / 2 <= b.delay(attempt, rng=rng) <= top
    assert b.attempt == 0
    assert [b.ceiling(n) for n in range(5)] == [2, 4, 8, 10, 10]


def test_jitter_spreads_and_zero_jitter_is_exact() -> None:
    spread = {round(Backoff(initial=1, cap=60, rng=random.Random(s)).next(), 6)
              for s in range(20)}
    assert len(spread) > 10  # a fleet failing at once does not retry in lockstep
    plain = Backoff(initial=10, cap=300, jitter=0)
    assert [plain.next() for _ in range(7)] == [10, 20, 40, 80, 160, 300, 300]
    full = Backoff(initial=1, cap=1, jitter=1.0, rng=random.Random(3))
    assert all(0 <= full.next() <= 1 for _ in range(100))


def test_defaults_and_bad_arguments() -> None:
    b = Backoff()
    assert (b.initial, b.cap, b.factor, b.jitter) == (0.5, 30.0, 2.0, 0.5)
    assert "initial=0.5" in repr(b)
    assert Backoff(1.0, 5.0).cap == 5.0  # positional (initial, cap)
    with pytest.raises(ValueError, match="not both"):
        Backoff(initial=1, base=2)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=1.5)
