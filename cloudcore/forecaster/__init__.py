"""The fleet forecaster: per-node history and a batched ONNX model.

This package is the only part of cloudcore that imports onnxruntime (in
`session.py`). The scheduler, alerts and rollouts use `Forecaster.predict()` and the
`Forecast` it returns. The model contract and its training live in `models/`; only
the shipped `.onnx` file is read here.
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

__all__ = [
    "MIN_POINTS_FOR_MODEL",
    "CapacityExceeded",
    "Forecast",
    "Forecaster",
    "ForecasterError",
    "InferenceError",
    "Method",
    "ModelLoadError",
    "Stats",
    "default_model_path",
]


def default_model_path() -> Path:
    """Where the shipped model is: `models/forecaster.onnx` beside this package, in a
    checkout and in an installed wheel alike (models/ is package data)."""
    return Path(__file__).resolve().parents[2] / "models" / "forecaster.onnx"
