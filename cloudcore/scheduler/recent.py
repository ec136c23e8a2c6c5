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

import math
import time
from collections.abc import Callable, Collection, Mapping

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


DEFAULT_PEAK_HALF_LIFE = 86_400.0
"""Seconds: how fast a node's remembered peak share of its requests decays toward its
current one (a day: the daily cycle's peak is remembered through its trough)."""


class PeakUsage:
    """Per node: the highest share of their requests the node's pods have been seen to
    use, per resource (right-sizing's lifetime bound, `RightSizedCapacity`).

    Why: a forecast looks 15 minutes ahead; a pod stays for hours. A node admitted past
    its requests in a trough of its daily cycle overloads when the cycle comes back
    (`testbed.replay` measured it: most right-sizing overloads came more than 15
    minutes after the node's newest pod). The node's past says how much of their
    requests its pods use at their peak; that share, times the requests, bounds what
    the node may take for the pods' whole life, whatever the next 15 minutes look like.

    `observe(node, resource, share, at)` records the share seen at `at` (Unix s): the p50
    of the node's forecast x allocatable / the requests that forecast has seen. The
    remembered peak is the largest share seen, its excess over the newest share decaying
    with `half_life` seconds (so a node whose pods changed for good is not held to its
    old pods' peak forever): peak' = share + (peak - share) x 0.5^(dt / half_life) when
    the new share is lower, else the new share. Memory: one 5-float list per node
    (about 180 bytes with its key: 18 MB at 100,000 nodes); `forget` drops a node and
    `keep_only` every node not in a set (`Scheduler.forecast_made` passes the nodes that
    still have a forecast)."""

    _SLOT = {"cpu": 0, "memory": 2}  # [time, peak] of each resource in a node's list

    def __init__(self, *, half_life: float = DEFAULT_PEAK_HALF_LIFE) -> None:
        if not half_life > 0:
            raise ValueError(f"peak half-life must be > 0 s, got {half_life}")
        self.half_life = half_life
        # node -> [cpu time, cpu peak, memory time, memory peak, looked at] (NaN: never)
        self._peak: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._peak)

    def observe(self, node: str, resource: str, share: float, at: float) -> float:
        """Records `share` at `at`; returns the remembered peak (>= share)."""
        i = self._SLOT[resource]
        entry = self._peak.get(node)
        if entry is None:
            entry = self._peak[node] = [math.nan] * 5
        when, old = entry[i], entry[i + 1]
        if math.isnan(old) or share >= old:
            entry[i + 1] = share
        elif at > when:
            entry[i + 1] = share + (old - share) * 0.5 ** ((at - when) / self.half_life)
        if math.isnan(when) or at > when:
            entry[i] = at
        return entry[i + 1]

    def recent(self, node: str, now: float, within: float) -> bool:
        """Whether `node` was looked at (`looked_at`) less than `within` seconds before
        `now`: its share cannot have changed unless a new forecast came since."""
        entry = self._peak.get(node)
        return entry is not None and now - entry[4] < within

    def looked_at(self, node: str, now: float) -> None:
        entry = self._peak.get(node)
        if entry is None:
            entry = self._peak[node] = [math.nan] * 5
        entry[4] = now

    def peak(self, node: str, resource: str) -> float | None:
        """The remembered peak share, or None if the node was never observed."""
        entry = self._peak.get(node)
        if entry is None or math.isnan(entry[self._SLOT[resource] + 1]):
            return None
        return entry[self._SLOT[resource] + 1]

    def forget(self, node: str) -> None:
        """The node left the fleet."""
        self._peak.pop(node, None)

    def keep_only(self, nodes: Collection[str]) -> None:
        """Drops every node not in `nodes` (cheap when none left: a length check)."""
        if len(self._peak) <= len(nodes):
            return
        for node in [n for n in self._peak if n not in nodes]:
            del self._peak[node]


DEFAULT_TREND_HALF_LIFE = 3_600.0
"""Seconds: the half-life of the slow average `ShareTrend` compares a node's share of its
requests against (an hour: a rise over the last hour or two shows, the daily cycle's
slow drift much less)."""


class ShareTrend:
    """Per node: a slow average of the share of their requests the node's pods use, per
    resource (right-sizing's rising guard, `RightSizedCapacity.rising_margin`).

    Why: the eighth round of issue 15 found that even a perfect 15-minute forecast lets
    right-sizing overload (`testbed.replay --policies perfect-15`): pods taken past a
    node's requests stay for hours while their usage keeps rising (a surge of the whole
    workload). A node whose pods' share of their requests is well above its own recent
    average is on such a rise; the guard keeps it within its requests until the rise
    stops.

    `observe(node, resource, share, at)` returns the average BEFORE `share` is folded in
    (the baseline to compare against), then updates it as an exponential average in
    time: avg' = share + (avg - share) x 0.5^(dt / half_life); the first share seen is
    its own baseline. Memory: one 4-float list per node; `keep_only` prunes as
    `PeakUsage.keep_only` does."""

    _SLOT = {"cpu": 0, "memory": 2}  # [time, average] of each resource in a node's list

    def __init__(self, *, half_life: float = DEFAULT_TREND_HALF_LIFE) -> None:
        if not half_life > 0:
            raise ValueError(f"trend half-life must be > 0 s, got {half_life}")
        self.half_life = half_life
        self._avg: dict[str, list[float]] = {}  # node -> [cpu t, cpu avg, mem t, mem avg]

    def __len__(self) -> int:
        return len(self._avg)

    def observe(self, node: str, resource: str, share: float, at: float) -> float:
        """Folds `share` (seen at `at`, Unix s) in; returns the average before it."""
        i = self._SLOT[resource]
        entry = self._avg.get(node)
        if entry is None:
            entry = self._avg[node] = [math.nan] * 4
        when, avg = entry[i], entry[i + 1]
        if math.isnan(avg):
            entry[i], entry[i + 1] = at, share
            return share
        if at > when:
            entry[i + 1] = share + (avg - share) * 0.5 ** ((at - when) / self.half_life)
            entry[i] = at
        return avg

    def average(self, node: str, resource: str) -> float | None:
        entry = self._avg.get(node)
        if entry is None or math.isnan(entry[self._SLOT[resource] + 1]):
            return None
        return entry[self._SLOT[resource] + 1]

    def forget(self, node: str) -> None:
        self._avg.pop(node, None)

    def keep_only(self, nodes: Collection[str]) -> None:
        if len(self._avg) <= len(nodes):
            return
        for node in [n for n in self._avg if n not in nodes]:
            del self._avg[node]
