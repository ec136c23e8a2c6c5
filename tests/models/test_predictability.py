"""The optimistic linear estimator of models.predictability fits the median, not the mean."""

from __future__ import annotations

import numpy as np

from models.predictability import lad_fit, linear_on_answers


def test_lad_fit_ignores_outliers_that_pull_least_squares() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 400)
    y = 2.0 * x + 1.0 + rng.normal(0, 0.01, 400)
    y[:80] += 5.0  # a fifth of the points far above the line
    m = np.stack([x, np.ones_like(x)], axis=1)
    assert np.allclose(lad_fit(m, y), [2.0, 1.0], atol=0.05)
    assert abs(np.linalg.lstsq(m, y, rcond=None)[0][1] - 1.0) > 0.5


def test_linear_on_answers_recovers_a_linear_future_exactly() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(0.2, 0.8, (300, 2, 60))
    # the future is the last value plus a fixed multiple of the last change
    step = (x[..., -1] - x[..., -2])[..., None] * np.arange(1, 16)
    y = x[..., -1:] + step
    p = linear_on_answers(x, y, np.arange(300) * 7)
    assert np.abs(p - y).max() < 1e-4
