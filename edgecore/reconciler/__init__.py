"""Level-triggered convergence of the node: desired pods (cache) vs containers (runtime)."""

from edgecore.reconciler.reconciler import CrashLoop, Reconciler, StatusSink

__all__ = ["CrashLoop", "Reconciler", "StatusSink"]
