"""The in-memory fleet: objects, the controller that turns workloads into pods and
pods into per-node desired sets, and node lifecycle (liveness).

Everything here is synchronous and in memory; persistence goes through the small
`Persister` interface (the store, or a fake in unit tests) and desired-set changes
are announced to a listener (the sync hub).
"""

from cloudcore.fleet.controller import ApplyResult, Fleet, Persister
from cloudcore.fleet.lifecycle import Liveness

__all__ = ["ApplyResult", "Fleet", "Liveness", "Persister"]
