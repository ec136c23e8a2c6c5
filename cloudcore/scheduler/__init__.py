"""Pod placement: filters, then scores, and a human-readable reason for every decision.

Pure logic over `NodeView`s (no I/O, no fleet state), so it is unit-tested with
plain values. The forecaster plugs in later as one more `Scorer`.
"""

from cloudcore.scheduler.core import (
    DEFAULT_FILTERS,
    DEFAULT_SCORERS,
    Decision,
    Filter,
    NodeView,
    Scheduler,
    Scorer,
    tolerates,
)

__all__ = ["DEFAULT_FILTERS", "DEFAULT_SCORERS", "Decision", "Filter", "NodeView", "Scheduler",
           "Scorer", "tolerates"]
