"""Scores of a forecast [B, 2, 15, 2] (p50, p90) against actuals [B, 2, 15].

- sMAPE of p50, in %: mean of 2|y - f| / (|y| + |f|) (0 where both are 0).
- MAE of p50, in utilisation points (0..1 scale).
- pinball loss of p90: mean of max(0.9 (y - q), 0.1 (q - y)).
- coverage of p90, in %: share of actuals at or below p90 (target 90).
"""

from __future__ import annotations

import numpy as np


def smape(y: np.ndarray, f: np.ndarray) -> float:
    den = np.abs(y) + np.abs(f)
    ratio = np.where(den > 0, 2.0 * np.abs(y - f) / np.where(den > 0, den, 1.0), 0.0)
    return float(100.0 * ratio.mean())


def pinball(y: np.ndarray, q: np.ndarray, tau: float) -> float:
    e = y - q
    return float(np.maximum(tau * e, (tau - 1.0) * e).mean())


def score(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Both resources and all 15 steps pooled."""
    p50, p90 = pred[..., 0], pred[..., 1]
    out = {"smape_p50": smape(y, p50), "mae_p50": float(np.abs(y - p50).mean())}
    if np.isnan(p90).any():
        out["pinball_p90"] = float("nan")
        out["coverage_p90"] = float("nan")
    else:
        out["pinball_p90"] = pinball(y, p90, 0.9)
        out["coverage_p90"] = float(100.0 * (y <= p90).mean())
    return out
