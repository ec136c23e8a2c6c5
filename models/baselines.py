"""Baselines the model is compared with. Each returns forecasts shaped like the
model's output, [B, 2, 15, 2] (p50, p90); a baseline without a notion of p90 puts
NaN there (and the table shows "-").

- last value:       every step = the last observed point.
- seasonal naive:   the value one day (1440 minutes) before each target minute.
- EWMA:             exponentially weighted mean of the 60-point window (alpha tuned
                    on the history part of the training series).
- VPA-style:        Kubernetes VPA's recommender idea: a histogram of all past points
                    with exponentially growing buckets (5 % apart) and exponentially
                    decaying weights (half-life 24 h); p50 and p90 read from it, no
                    safety margin, flat over the horizon.
- ridge:            closed-form ridge regression on the same 60 raw lags (plus an
                    intercept), one per resource, 15 outputs; p90 = p50 + the 90th
                    percentile of its training residuals per resource and step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data import CONTEXT, HORIZON

DAY = 1440


def _flat(p50: np.ndarray, p90: np.ndarray | None = None) -> np.ndarray:
    out = np.full((*p50.shape, 2), np.nan)
    out[..., 0] = p50
    if p90 is not None:
        out[..., 1] = p90
    return out


def last_value(x: np.ndarray) -> np.ndarray:
    return _flat(np.repeat(x[..., -1:], HORIZON, axis=2))


def seasonal_naive(values: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """values [2, T]; origins = index of the first forecast minute of each window."""
    idx = origins[:, None] + np.arange(HORIZON)[None, :] - DAY
    return _flat(values[:, idx].transpose(1, 0, 2))


def ewma(x: np.ndarray, alpha: float) -> np.ndarray:
    w = (1.0 - alpha) ** np.arange(CONTEXT - 1, -1, -1, dtype=np.float64)
    w[1:] *= alpha  # the oldest point carries the initial level, as in the recursion
    level = (x * w).sum(axis=2, keepdims=True)
    return _flat(np.repeat(level, HORIZON, axis=2))


def vpa_histogram(
    values: np.ndarray, origins: np.ndarray, *, half_life_min: float = DAY, first: float = 1e-3,
    ratio: float = 1.05,
) -> np.ndarray:
    """Decaying-histogram percentiles at each origin from every point before it."""
    n_buckets = int(np.ceil(np.log(1.0 / first) / np.log(ratio))) + 2
    edges = np.concatenate([[0.0], first * ratio ** np.arange(n_buckets)])
    mids = 0.5 * (edges[:-1] + edges[1:])
    out = np.empty((len(origins), values.shape[0], HORIZON, 2))
    for r in range(values.shape[0]):
        v = values[r]
        b = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(mids) - 1)
        # weights grow instead of old ones decaying (VPA's trick); relative to the origin
        t = np.arange(len(v), dtype=np.float64)
        hist = np.zeros(len(mids))
        pos = 0
        for i, o in enumerate(origins):
            if o > pos:
                np.add.at(hist, b[pos:o], 2.0 ** ((t[pos:o] - t[0]) / half_life_min))
                pos = o
            c = np.cumsum(hist)
            total = c[-1]
            q50 = mids[np.searchsorted(c, 0.5 * total)]
            q90 = mids[np.searchsorted(c, 0.9 * total)]
            out[i, r, :, 0] = q50
            out[i, r, :, 1] = q90
    return out


@dataclass
class Ridge:
    """Ridge on raw lags, per resource: coef [2, 61, 15], resid_q90 [2, 15]."""

    coef: np.ndarray
    resid_q90: np.ndarray

    @staticmethod
    def fit(x: np.ndarray, y: np.ndarray, lam: float) -> Ridge:
        coef = np.empty((x.shape[1], CONTEXT + 1, HORIZON))
        q90 = np.empty((x.shape[1], HORIZON))
        for r in range(x.shape[1]):
            a = np.concatenate([x[:, r, :], np.ones((len(x), 1))], axis=1).astype(np.float64)
            reg = lam * np.eye(a.shape[1])
            reg[-1, -1] = 0.0
            coef[r] = np.linalg.solve(a.T @ a + reg, a.T @ y[:, r, :])
            q90[r] = np.quantile(y[:, r, :] - a @ coef[r], 0.9, axis=0)
        return Ridge(coef=coef, resid_q90=q90)

    def predict(self, x: np.ndarray) -> np.ndarray:
        p50 = np.empty((len(x), x.shape[1], HORIZON))
        for r in range(x.shape[1]):
            a = np.concatenate([x[:, r, :], np.ones((len(x), 1))], axis=1)
            p50[:, r, :] = a @ self.coef[r]
        p90 = p50 + self.resid_q90[None, :, :]
        return _flat(np.clip(p50, 0, 1), np.clip(p90, 0, 1))
