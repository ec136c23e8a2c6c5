"""The fleet forecaster: per-node history, batched ONNX inference and online learning.

This package is the only part of cloudcore that imports onnxruntime (in
`session.py`). The scheduler, alerts and rollouts use `Forecaster.predict()` and the
`Forecast` it returns. The graph and the prior it ships are built in `models/`
(`models/online.py`); only the shipped `.onnx` file is read here. What the fleet
teaches it is learned in `online.py` and served through the same graph.
"""

from __future__ import annotations

from pathlib import Path

from cloudcore.forecaster.core import MIN_POINTS_FOR_MODEL, Forecast, Forecaster, Method, Stats
from cloudcore.forecaster.errors import (
    CapacityExceeded,
    ForecasterError,
    InferenceError,
    ModelLoadError,
)
from cloudcore.forecaster.online import OnlineSettings

__all__ = [
    "MIN_POINTS_FOR_MODEL",
    "CapacityExceeded",
    "Forecast",
    "Forecaster",
    "ForecasterError",
    "InferenceError",
    "Method",
    "ModelLoadError",
    "OnlineSettings",
    "Stats",
    "default_model_path",
]


def default_model_path() -> Path:
    """Where the shipped model is: `models/forecaster_online.onnx` beside this package,
    in a checkout and in an installed wheel alike (models/ is package data)."""
    return Path(__file__).resolve().parents[2] / "models" / "forecaster_online.onnx"
