"""Pod placement: filters, then scores, and a human-readable reason for every decision.

Logic over `NodeView`s (no I/O, no fleet state), so it is unit-tested with plain
values. Its one piece of state is a ledger of its own recent placements
(`RecentPlacements`): the forecast-aware filter and scorer count pods placed since a
node's forecast was made, until a forecast has seen them.
"""

from cloudcore.scheduler.core import (
    DEFAULT_FILTERS,
    DEFAULT_SCORERS,
    RIGHT_SIZING_FILTERS,
    Decision,
    Filter,
    NodeView,
    RightSizedCapacity,
    Scheduler,
    Scorer,
    tolerates,
)
from cloudcore.scheduler.recent import RecentPlacements

__all__ = ["DEFAULT_FILTERS", "DEFAULT_SCORERS", "RIGHT_SIZING_FILTERS", "Decision", "Filter",
           "NodeView", "RecentPlacements", "RightSizedCapacity", "Scheduler", "Scorer",
           "tolerates"]
