"""Placements the forecast has not seen yet (the scheduler's "assumed" pods).

A node's forecast is made from the telemetry minutes it has reported; a pod bound to
the node after those minutes is not in it. Without a correction, a burst of pods
all see the same stale p90 and all land on the node with the best forecast, far past
its predicted headroom. kube-scheduler solves the same race with its cache of
"assumed" pods; this ledger is the forecast's version of it.

`RecentPlacements` keeps, per node, the requests and bind times of the pods the
scheduler placed there. The predicted usage of a node is then its p90 plus the
requests of the pods bound at or after its forecast's origin:

- `origin` of a node's forecast = the start (Unix seconds) of the newest telemetry
  minute its inputs contain (`Forecast.newest * 60`, handed over by
  `ForecastRunner` through `Scheduler.forecast_made`).
- A placement stops counting once a forecast's newest minute began at or after its
  bind time: that forecast has seen at least one whole minute of the pod (or of the
  node without it, if the pod never started: then it is rightly forgotten too).
- A placement that no forecast ever covers (forecasting off, the node stopped
  reporting) is forgotten after `max_age` seconds, so the ledger cannot grow or
  block a node forever. Entries of pods deleted before a forecast saw them keep
  counting until then (conservative: at most a forecast interval or two).

Bind times and origins must share a clock: cloudcore's wall clock and the edges'
telemetry timestamps (clock skew between them shifts the window by the skew).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

DEFAULT_MAX_AGE = 900.0
"""Seconds after which a placement no forecast covered is forgotten (15 minutes,
the forecast horizon)."""


class RecentPlacements:
    """Per node: (bind time, requests) of placements newer than its forecast."""

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 max_age: float = DEFAULT_MAX_AGE) -> None:
        self.clock = clock
        self.max_age = max_age
        self._by_node: dict[str, list[tuple[float, dict[str, int]]]] = {}

    def __len__(self) -> int:
        """Placements currently counted, over all nodes."""
        return sum(len(v) for v in self._by_node.values())

    def __contains__(self, node: object) -> bool:
        return node in self._by_node

    def add(self, node: str, requests: Mapping[str, int], *, at: float | None = None) -> None:
        """A pod with `requests` was bound to `node` (now, or at `at`)."""
        when = self.clock() if at is None else at
        amounts = {r: int(v) for r, v in requests.items() if r != "pods" and v > 0}
        self._by_node.setdefault(node, []).append((when, amounts))

    def forecast_made(self, origins: Mapping[str, float]) -> None:
        """New forecasts: `origins[node]` = start (Unix s) of the newest minute they saw.
        Drops the placements they cover, and every placement older than `max_age`."""
        oldest = self.clock() - self.max_age
        for node in list(self._by_node):
            origin = origins.get(node)
            kept = [e for e in self._by_node[node]
                    if e[0] >= oldest and (origin is None or e[0] > origin)]
            if kept:
                self._by_node[node] = kept
            else:
                del self._by_node[node]

    def unforecast(self, node: str) -> dict[str, int]:
        """Summed requests of the pods bound to `node` that its forecast has not seen."""
        entries = self._by_node.get(node)
        if not entries:
            return {}
        oldest = self.clock() - self.max_age
        out: dict[str, int] = {}
        for when, amounts in entries:
            if when < oldest:
                continue
            for res, v in amounts.items():
                out[res] = out.get(res, 0) + v
        return out

    def forget(self, node: str) -> None:
        """The node left the fleet."""
        self._by_node.pop(node, None)
