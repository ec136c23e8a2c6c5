"""Errors of the forecaster.

    CloudcoreError                     (cloudcore.errors)
    └── ForecasterError
        ├── ModelLoadError            the .onnx file is missing, unreadable, or breaks the
        │                             contract (input [batch, 2, 60], output
        │                             [batch, 2, 15, 2]); permanent
        ├── InferenceError            onnxruntime failed while running the batch
        └── CapacityExceeded          more nodes than `capacity_nodes`; permanent for
                                      this instance (raise the setting)

onnxruntime's own exceptions are wrapped with `raise ... from exc` in `session.py`,
the only module that imports it.
"""

from __future__ import annotations

from cloudcore.errors import CloudcoreError


class ForecasterError(CloudcoreError):
    """Base of every error the forecaster raises on purpose."""


class ModelLoadError(ForecasterError):
    """The model file cannot be used; `path` names it."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{message} (model {path})")
        self.path = path


class InferenceError(ForecasterError):
    """onnxruntime raised while running a batch."""


class CapacityExceeded(ForecasterError):
    """A new node arrived while all `capacity_nodes` rows are taken."""

    def __init__(self, capacity: int) -> None:
        super().__init__(
            f"forecaster is full: capacity_nodes={capacity} rows are all in use; "
            "raise capacity_nodes or remove nodes that left"
        )
        self.capacity = capacity
