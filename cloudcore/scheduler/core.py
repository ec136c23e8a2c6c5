"""Filters and scorers of the scheduler, and the `Scheduler` that combines them.

A filter answers "can this pod run on this node?" with None (yes) or a short
reason ("insufficient memory"); the reasons of all rejected nodes are counted into
the Pending message, as Kubernetes does ("0/3 nodes available: 2 node selector
mismatch, 1 insufficient memory"). Scorers rank the feasible nodes from 0 to 100;
the weighted sum picks the node, ties broken by name so decisions are repeatable.

Affinity (`spec.affinity`): required node affinity and inter-pod (anti-)affinity are
filters, the preferred terms scorers (`NodePreference`, `PodPreference`, weight 2 as in
Kubernetes). The inter-pod parts read `NodeView.pod_topology`, which the caller builds
once per pod (`cloudcore.scheduler.affinity`); a pod without `affinity` and without a
topology skips all four (`Scheduler` keeps the lists without them).

The predicted filter and scorer use a node's p90 forecast plus the requests of the
pods placed there since the forecast's inputs ended (`NodeView.unforecast`); the
`Scheduler` fills that in from its own ledger of placements
(`cloudcore.scheduler.recent`), which the forecaster prunes through
`Scheduler.forecast_made` each time it forecasts.

Two placement modes (`Scheduler.requests_mode()`, the default, and
`Scheduler.right_sizing(safety=...)`):

- requests: cpu and memory are admitted by declared requests (`capacity`), and a
  node's forecast can only refuse more (`predicted_capacity`);
- right-sizing: on a node whose forecast is TRUSTED (`forecast["trusted"] == 1`: a
  full hour of history and the forecaster's p90 calibration within 85-95 %, set by
  `ForecastRunner`), cpu and memory are admitted by forecast instead of requests:
  p90 + safety (a fraction of allocatable) + the requests of pods bound since the
  forecast (`unforecast`) + the pod's request must fit allocatable, and the node's
  requests (the pod's included) may exceed allocatable by at most `overcommit`
  (`RightSizedCapacity`). With `by_usage` (the default of `Scheduler.right_sizing`)
  the pod and the pods bound since the forecast count at the share of their requests
  the node's pods use (`usage_per_request`), not whole: over-requested pods are
  admitted by what pods like them use. On any other node, or for any other resource (pods,
  accelerators), the request-based `capacity` filter applies, unchanged.
  With `requests_floor` (issue 15, fifth round; off by default) a trusted node takes
  every pod its requests admit, whatever its p90, and the forecast decides only past
  its requests: right-sizing then never refuses what the requests mode would.

  Why the overcommit cap: the forecast looks 15 minutes ahead, a pod stays for
  hours. Without a cap, a node whose load is in a trough of its daily cycle takes
  pods into room the cycle takes back later, and the overloads come from that drift,
  not from a wrong p90 (measured in `testbed.replay`, docs/benchmarks.md). Requests
  still say something about the long run; the cap keeps them as a bound on how far
  the forecast may reclaim.

  The lifetime bound (issue 15, optional: `Scheduler.right_sizing(lifetime_margin=0.1)`;
  off by default, see docs/benchmarks.md for why) bounds
  that drift by what the node itself has shown instead of a fixed cap: the scheduler
  remembers, per node and resource, the highest share of their requests the node's
  pods have used (`PeakUsage`: the forecast's p50 x allocatable / the requests that
  forecast saw, decaying toward the current share with a half-life of a day), and a
  trusted node takes a pod past its requests only while that peak share x its
  requests (the pod's included) stays within 1 - margin of allocatable. Pods that
  used half their requests at the node's busiest time so far may be packed to about
  1.8x allocatable in requests; pods that used all of theirs get nothing past them.
  What the node has not shown yet (a surge beyond its busiest time so far) it cannot
  bound: requests are the only guess about that. `lifetime_within=True` applies the
  bound within the node's requests too (issue 15, seventh round; off by default: it
  cost 4-10 % of packing in `testbed.replay`).

  `overcommit_safety` (issue 15, seventh round; 0, off, by default) is added to
  `safety` only when the pod would take a trusted node past its requests: within
  them the node is refused when its p90 is hot, past them only taken when it is cool
  by that much more. With careful requests (the p95 of usage) it trades packing for
  fewer overloads a little better than a tighter cap (docs/benchmarks.md).

  The rising guard (issue 15, eighth round; `Scheduler.right_sizing(rising_margin=0.1)`,
  off by default) keeps a trusted node within its requests while its pods' share of
  their requests (p50 x allocatable / the requests its forecast saw) is above 1 +
  margin times its slow average (`ShareTrend`, half-life an hour): a node on a rise
  (a surge of its workloads) is not packed past its requests on the strength of a
  15-minute forecast that cannot see where the rise ends. Even a perfect 15-minute
  forecast let right-sizing overload in `testbed.replay` (`--policies perfect-15`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cloudcore.scheduler.affinity import PodTopology
from cloudcore.scheduler.recent import (
    DEFAULT_PEAK_HALF_LIFE,
    DEFAULT_TREND_HALF_LIFE,
    PeakUsage,
    RecentPlacements,
    ShareTrend,
)
from shared.models import NodeSelector, PodSpec, Taint, Toleration

ARCH_LABEL = "kubernetes.io/arch"
# Resources every node has; if a node has not reported them yet they do not constrain.
# Any other resource (an accelerator such as nvidia.com/gpu) is 0 unless reported.
_BASIC = ("cpu", "memory", "pods", "ephemeral-storage")


@dataclass(frozen=True)
class NodeView:
    """What the scheduler may know about a node."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: Sequence[Taint] = ()
    unschedulable: bool = False
    ready: str = "Unknown"
    allocatable: dict[str, int] = field(default_factory=dict)
    requested: dict[str, int] = field(default_factory=dict)
    """Summed requests of the pods already bound there; `pods` is their count."""
    forecast: dict[str, float] | None = None
    """Predicted utilisation (0..1, peak over the next 15 minutes): `cpu_p50`,
    `cpu_p90`, `mem_p50`, `mem_p90`; None when the node has no forecast."""
    host_ports: frozenset[tuple[str, int]] = frozenset()
    """(protocol, port) pairs the pods already bound there take on the node."""
    unforecast: dict[str, int] = field(default_factory=dict)
    """Summed requests of the pods bound to the node after its forecast's inputs ended
    (so not in the forecast yet); added to the p90 by the predicted filter and scorer.
    `Scheduler` adds the placements of its own ledger to it."""
    pod_topology: PodTopology | None = None
    """For the pod being placed: the topology domains its inter-pod terms (and the placed
    pods' anti-affinity that selects it) found (`cloudcore.scheduler.affinity`), the same
    object in every node's view; None when no such term concerns the pod."""


@dataclass(frozen=True)
class Decision:
    node: str | None
    reason: str  # "Scheduled" or "Unschedulable"
    message: str


class Filter(Protocol):
    def __call__(self, spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None: ...


class Scorer(Protocol):
    """0..100, higher is better. `weight` scales it in the sum (read-only, so frozen
    dataclasses are scorers)."""

    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...

    def __call__(self, spec: PodSpec, req: dict[str, int], node: NodeView) -> float: ...


# -- filters ---------------------------------------------------------------------------


def unschedulable(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    return "node unschedulable" if node.unschedulable else None


def not_ready(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    # Unknown (e.g. right after a cloudcore restart) is allowed: the node most likely
    # still runs and will converge; only a node known to be gone is avoided.
    return "node not ready" if node.ready == "NotReady" else None


def arch(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    want = spec.node_selector.get(ARCH_LABEL)
    if want is None or node.labels.get(ARCH_LABEL) == want:
        return None
    return "arch mismatch"


def host_ports(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    """No two pods on a node with the same host port (and protocol)."""
    if not node.host_ports:
        return None
    taken = spec.host_ports() & node.host_ports
    if not taken:
        return None
    proto, port = min(taken)
    return f"host port {port}/{proto} in use"


def node_selector(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    for k, v in spec.node_selector.items():
        if k != ARCH_LABEL and node.labels.get(k) != v:
            return "node selector mismatch"
    return None


_DESCRIBED: dict[int, tuple[NodeSelector, str]] = {}


def _describe(sel: NodeSelector) -> str:
    """`sel.describe()`, kept per selector object (a template's pods share theirs), so a
    pod rejected by 100,000 nodes formats its reason once."""
    hit = _DESCRIBED.get(id(sel))
    if hit is not None and hit[0] is sel:
        return hit[1]
    if len(_DESCRIBED) > 1000:
        _DESCRIBED.clear()
    text = sel.describe()
    _DESCRIBED[id(sel)] = (sel, text)
    return text


def node_affinity(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    """Required node affinity: one of the node selector terms matches the node."""
    sel = spec.affinity.required_nodes() if spec.affinity is not None else None
    if sel is None or sel.matches(node.labels, node.name):
        return None
    return f"node affinity mismatch ({_describe(sel)})"


def pod_affinity(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    """Required inter-pod affinity and anti-affinity (`NodeView.pod_topology`)."""
    topo = node.pod_topology
    return None if topo is None else topo.refuses(node.name, node.labels)


def taints(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    for t in node.taints:
        if t.effect in ("NoSchedule", "NoExecute") and not tolerates(spec.tolerations, t):
            return "untolerated taint"
    return None


def capacity(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    for res in sorted(req):
        amount = req[res]
        if amount <= 0:
            continue
        alloc = node.allocatable.get(res)
        if alloc is None:
            if res in _BASIC:
                continue
            return f"insufficient {res}"
        if node.requested.get(res, 0) + amount > alloc:
            return f"insufficient {res}"
    return None


def predicted_capacity(spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
    """The node's predicted usage (p90, plus the requests of pods placed since the
    forecast: `unforecast`) plus the pod's request must fit allocatable."""
    if node.forecast is None:
        return None
    return _over_p90(req, node, safety=0.0, what="predicted")


def usage_per_request(node: NodeView, res: str, *, floor: float = 0.25) -> float:
    """How much of its requests the node's pods use, by its forecast: p90 x allocatable /
    requested, clipped to [floor, 1] (1 without requests or forecast). The p90 includes
    the system's own use, so this errs high (toward charging the whole request)."""
    key = "cpu_p90" if res == "cpu" else "mem_p90"
    alloc = node.allocatable.get(res)
    requested = node.requested.get(res, 0)
    p90 = (node.forecast or {}).get(key)
    if not alloc or requested <= 0 or p90 is None:
        return 1.0
    return min(1.0, max(floor, p90 * alloc / requested))


def _over_p90(req: dict[str, int], node: NodeView, *, safety: float, what: str,
              by_usage: bool = False) -> str | None:
    """Why the node's p90 (plus `safety`, a fraction of allocatable, plus the requests
    placed since the forecast) and the pod's request do not fit allocatable, or None.
    `by_usage`: the pod's and the recent placements' requests count at the node's
    `usage_per_request` (what its pods actually use of theirs)."""
    fc = node.forecast or {}
    for res, key in (("cpu", "cpu_p90"), ("memory", "mem_p90")):
        alloc = node.allocatable.get(res)
        p90 = fc.get(key)
        if not alloc or p90 is None:
            continue
        charge = usage_per_request(node, res) if by_usage else 1.0
        extra = node.unforecast.get(res, 0)
        if (p90 + safety) * alloc + charge * (extra + req.get(res, 0)) > alloc or p90 >= 1.0:
            short = "cpu" if res == "cpu" else "mem"
            margin = f" + {100 * safety:.0f}% safety" if safety else ""
            since = f" + {100 * extra / alloc:.0f}% placed since" if extra > 0 else ""
            return f"{what} over capacity ({short} p90 {100 * p90:.0f}%{margin}{since})"
    return None


def tolerates(tolerations: Iterable[Toleration], taint: Taint) -> bool:
    """Kubernetes toleration matching (key/operator/value/effect)."""
    for tol in tolerations:
        if tol.effect is not None and tol.effect != taint.effect:
            continue
        if tol.operator == "Exists":
            if tol.key is None or tol.key == taint.key:
                return True
        elif tol.key == taint.key and (tol.value or "") == (taint.value or ""):
            return True
    return False


def trusted(node: NodeView) -> bool:
    """The node's forecast may replace its requests (see the module doc)."""
    return node.forecast is not None and node.forecast.get("trusted", 0.0) >= 1.0


@dataclass(frozen=True)
class RightSizedCapacity:
    """Right-sizing's capacity filter: by forecast on a trusted node, by requests
    otherwise (see the module doc). `safety` is a fraction of allocatable (0.05 = 5
    points of utilisation) kept free above the p90; `overcommit` the most a trusted
    node's cpu or memory requests may exceed its allocatable (0.25 = requests up to
    125 %; `math.inf` = no cap).

    `lifetime` (a `PeakUsage` ledger; None = off) bounds a trusted node by its pods'
    whole life, not only the next 15 minutes: the filter records the share of their
    requests the node's pods use now (p50 x allocatable / the requests the forecast
    has seen) and admits past the node's requests only while the remembered peak share
    times the node's requests, the pod's included, stays within 1 - `lifetime_margin`
    of allocatable (`lifetime_bound`). A node that has not been seen with at least
    `MIN_SEEN_REQUESTS` of its allocatable requested has no peak yet: it is not
    admitted past its requests."""

    safety: float = 0.05
    overcommit: float = math.inf
    by_usage: bool = False
    """Count the pod (and the pods placed since the forecast) at the share of their
    requests this node's pods use (`usage_per_request`) instead of whole."""
    lifetime: PeakUsage | None = field(default=None, compare=False)
    lifetime_margin: float = 0.1
    clock: Callable[[], float] = field(default=time.time, compare=False)
    requests_floor: bool = False
    """A trusted node takes every pod whose requests fit its allocatable, as the
    requests mode would, whatever its p90; the forecast decides only past the requests
    (so right-sizing never refuses what requests would admit)."""
    overcommit_safety: float = 0.0
    """Added to `safety` when the pod would take the node's cpu or memory requests past
    its allocatable: within its requests a trusted node is refused only when its p90
    is hot, past them only when it is cool by this much more."""
    lifetime_within: bool = False
    """The lifetime bound refuses within the node's requests too: a node whose pods were
    seen using more than 1 - `lifetime_margin` of allocatable per their requests' worth
    (peak share x requests) takes no more pods even while its requests fit (a node with
    no peak known is admitted by requests there)."""
    trend: ShareTrend | None = field(default=None, compare=False)
    """The rising guard (issue 15, eighth round; None = off): a trusted node whose pods'
    share of their requests (p50 x allocatable / the requests the forecast saw) is
    above `1 + rising_margin` times its slow average (`ShareTrend`) takes no pod past
    its requests (within them, the p90 check decides as usual)."""
    rising_margin: float = 0.1

    def __call__(self, spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
        if not trusted(node):
            return capacity(spec, req, node)
        # the rising guard follows every trusted node it is shown, whatever refuses it
        rising = (None if self.trend is None
                  else rising_guard(req, node, self.trend, self.rising_margin, self.clock()))
        if self.requests_floor and capacity(spec, req, node) is None:
            return None
        others = {r: v for r, v in req.items() if r not in ("cpu", "memory")}
        reason = capacity(spec, others, node)
        if reason is not None:
            return reason
        for res in ("cpu", "memory"):
            alloc = node.allocatable.get(res)
            if alloc and (node.requested.get(res, 0) + req.get(res, 0)
                          > alloc * (1.0 + self.overcommit)):
                return (f"right-sized over capacity ({'cpu' if res == 'cpu' else 'mem'} "
                        f"requests over {100 * (1.0 + self.overcommit):.0f}%)")
        if rising is not None:
            return rising
        if self.lifetime is not None:
            reason = lifetime_bound(req, node, self.lifetime, self.lifetime_margin,
                                    self.clock(), within=self.lifetime_within)
            if reason is not None:
                return reason
        safety = self.safety
        if self.overcommit_safety and _past_requests(req, node):
            safety += self.overcommit_safety
        return _over_p90(req, node, safety=safety, what="right-sized",
                         by_usage=self.by_usage)


def _past_requests(req: dict[str, int], node: NodeView) -> bool:
    """Whether the pod takes the node's cpu or memory requests past its allocatable."""
    for res in ("cpu", "memory"):
        alloc = node.allocatable.get(res)
        if alloc and node.requested.get(res, 0) + req.get(res, 0) > alloc:
            return True
    return False


def rising_guard(req: dict[str, int], node: NodeView, trend: ShareTrend, margin: float,
                 now: float) -> str | None:
    """Folds the node's current share of its requests into `trend` and returns why the
    pod may not take it past its requests while that share is rising (above 1 + `margin`
    times its slow average), or None. Share as in `lifetime_bound`; learnt only from
    forecasts that saw at least `MIN_SEEN_REQUESTS` of allocatable requested."""
    fc = node.forecast or {}
    reason = None
    for res, key in (("cpu", "cpu_p50"), ("memory", "mem_p50")):
        alloc = node.allocatable.get(res)
        p50 = fc.get(key)
        if not alloc or p50 is None:
            continue
        seen = node.requested.get(res, 0) - node.unforecast.get(res, 0)
        if seen < MIN_SEEN_REQUESTS * alloc:
            continue
        share = p50 * alloc / seen
        base = trend.observe(node.name, res, share, now)
        if (reason is None and share > (1.0 + margin) * base
                and node.requested.get(res, 0) + req.get(res, 0) > alloc):
            short = "cpu" if res == "cpu" else "mem"
            reason = (f"right-sized: {short} use rising (share of requests "
                      f"{100 * share:.0f}% > {100 * (1.0 + margin):.0f}% of its average)")
    return reason


LIFETIME_MARGIN = 0.1
"""Right-sizing's lifetime bound, when turned on, keeps this fraction of allocatable
free above the node's peak share x its requests (chosen in `testbed.replay` on seeds
0-2 with safety 0.05 and no cap, docs/benchmarks.md)."""

LOOK_AGAIN_AFTER = 30.0
"""Seconds: a node within its requests is looked at (its share recorded) at most this
often by the lifetime bound (forecasts come once a minute); the cost of the bound per
node and decision is otherwise a few dictionary reads."""

MIN_SEEN_REQUESTS = 0.1
"""Right-sizing's lifetime bound learns a node's share of its requests only from
forecasts that saw at least this fraction of its allocatable requested (below it the
system's own use dominates the share)."""


def lifetime_bound(req: dict[str, int], node: NodeView, peaks: PeakUsage, margin: float,
                   now: float, *, within: bool = False) -> str | None:
    """Records the node's current share of its requests in `peaks` and returns why the
    pod would take it past its lifetime bound, or None (see `RightSizedCapacity`).
    Share = the forecast's p50 peak (what the node uses, system included) x allocatable
    / the requests the forecast has seen. Past its requests (for cpu and memory) a node
    takes the pod only while peak share x (requested + the pod's request) <= (1 -
    margin) x allocatable; within its requests the bound does not refuse (the p90
    check still applies) unless `within` (then the bound applies there too, and a node
    with no peak known is admitted by requests); with no peak known, not past its
    requests at all."""
    alloc_c, alloc_m = node.allocatable.get("cpu"), node.allocatable.get("memory")
    inside = ((not alloc_c or node.requested.get("cpu", 0) + req.get("cpu", 0) <= alloc_c)
              and (not alloc_m
                   or node.requested.get("memory", 0) + req.get("memory", 0) <= alloc_m))
    if inside and not within and peaks.recent(node.name, now, LOOK_AGAIN_AFTER):
        return None  # fast path: nothing to refuse, nothing new to learn
    peaks.looked_at(node.name, now)
    fc = node.forecast or {}
    for res, key in (("cpu", "cpu_p50"), ("memory", "mem_p50")):
        alloc = node.allocatable.get(res)
        p50 = fc.get(key)
        if not alloc or p50 is None:
            continue
        requested = node.requested.get(res, 0)
        seen = requested - node.unforecast.get(res, 0)  # the requests the forecast saw
        if seen >= MIN_SEEN_REQUESTS * alloc:
            peak: float | None = peaks.observe(node.name, res, min(2.0, p50 * alloc / seen),
                                               now)
        else:
            peak = peaks.peak(node.name, res)
        after = requested + req.get(res, 0)
        if after <= alloc and (not within or peak is None):
            continue
        short = "cpu" if res == "cpu" else "mem"
        if peak is None:
            return f"right-sized over lifetime bound ({short}: no usage peak known yet)"
        if peak * after > (1.0 - margin) * alloc:
            return (f"right-sized over lifetime bound ({short} requests x peak use "
                    f"{100 * peak:.0f}% > {100 * (1.0 - margin):.0f}%)")
    return None


DEFAULT_FILTERS: tuple[Filter, ...] = (unschedulable, not_ready, arch, node_selector,
                                       node_affinity, taints, pod_affinity, host_ports,
                                       capacity, predicted_capacity)
"""In order; a node is rejected with the reason of the first filter that fails (the
affinity a user wrote is named before a host port that also clashes)."""

RIGHT_SIZING_FILTERS: tuple[Filter, ...] = (unschedulable, not_ready, arch, node_selector,
                                            node_affinity, taints, pod_affinity, host_ports,
                                            RightSizedCapacity())
"""Right-sizing: the request capacity and predicted filters replaced by one
`RightSizedCapacity` (safety 5 %)."""

AFFINITY_FILTERS = frozenset({node_affinity, pod_affinity})
"""Filters that pass every node for a pod without `affinity` and without a
`pod_topology`: the scheduler leaves them out for such pods (no cost to them)."""

# A DaemonSet pod is meant for one node: it tolerates unschedulable and not-ready
# nodes (as in Kubernetes) and only the placement constraints apply.
DAEMON_SKIP = frozenset({unschedulable, not_ready, predicted_capacity})


# -- scorers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Headroom:
    """Most free cpu + memory after placing the pod (mean of the two free fractions)."""

    name: str = "headroom"
    weight: float = 1.0

    def __call__(self, spec: PodSpec, req: dict[str, int], node: NodeView) -> float:
        fractions = []
        for res in ("cpu", "memory"):
            alloc = node.allocatable.get(res)
            if not alloc:
                fractions.append(0.5)  # unknown capacity: neither preferred nor avoided
                continue
            used = node.requested.get(res, 0) + req.get(res, 0)
            fractions.append(max(0.0, 1.0 - used / alloc))
        return 100.0 * sum(fractions) / len(fractions)


@dataclass(frozen=True)
class PreferNoSchedule:
    """Avoid nodes with untolerated PreferNoSchedule taints."""

    name: str = "prefer-no-schedule"
    weight: float = 0.5

    def __call__(self, spec: PodSpec, req: dict[str, int], node: NodeView) -> float:
        bad = [t for t in node.taints
               if t.effect == "PreferNoSchedule" and not tolerates(spec.tolerations, t)]
        return 0.0 if bad else 100.0


@dataclass(frozen=True)
class PredictedHeadroom:
    """Most predicted headroom after placing the pod, 1 - max over cpu and memory of
    (p90 + (unforecast + the pod's request) / allocatable), when the node has a
    forecast; without one, the request-based headroom (as `Headroom`)."""

    name: str = "predicted-headroom"
    weight: float = 1.0

    def __call__(self, spec: PodSpec, req: dict[str, int], node: NodeView) -> float:
        fc = node.forecast
        if fc is None:
            return Headroom()(spec, req, node)
        peak = 0.0
        for res, key in (("cpu", "cpu_p90"), ("memory", "mem_p90")):
            used = fc.get(key, 0.0)
            alloc = node.allocatable.get(res)
            if alloc:
                used += (node.unforecast.get(res, 0) + req.get(res, 0)) / alloc
            peak = max(peak, used)
        return 100.0 * max(0.0, 1.0 - peak)


@dataclass(frozen=True)
class NodePreference:
    """Preferred node affinity: the share of the preferred terms' weight the node
    matches (0 without preferred terms)."""

    name: str = "node-affinity"
    weight: float = 2.0

    def __call__(self, spec: PodSpec, req: dict[str, int], node: NodeView) -> float:
        na = spec.affinity.node_affinity if spec.affinity is not None else None
        return 0.0 if na is None else na.score(node.labels, node.name)


@dataclass(frozen=True)
class PodPreference:
    """Preferred inter-pod affinity and anti-affinity (`PodTopology.score`; 0 without
    preferred terms)."""

    name: str = "pod-affinity"
    weight: float = 2.0

    def __call__(self, spec: PodSpec, req: dict[str, int], node: NodeView) -> float:
        topo = node.pod_topology
        return 0.0 if topo is None else topo.score(node.name, node.labels)


DEFAULT_SCORERS: tuple[Scorer, ...] = (Headroom(), PreferNoSchedule(), PredictedHeadroom(),
                                       NodePreference(), PodPreference())
"""Kubernetes' weights for its affinity scores (2 each) against 1 for the room."""

AFFINITY_SCORERS = (NodePreference, PodPreference)
"""Scorer types that give 0 to a pod without affinity and without a `pod_topology`."""


# -- the scheduler ---------------------------------------------------------------------


class Scheduler:
    """Filters then scores; every decision carries its reason.

    `schedule()` records each placement it decides in `recent` (the caller binds the
    pod to `Decision.node`), so the next decisions count it against the node's
    forecast until `forecast_made` reports a forecast that has seen it. `check()` (a
    pod already bound by name, or re-checked on its own node) neither records nor
    adds the ledger: such a pod may already be in it.
    """

    def __init__(self, *, filters: Sequence[Filter] = DEFAULT_FILTERS,
                 scorers: Sequence[Scorer] = DEFAULT_SCORERS,
                 clock: Callable[[], float] = time.time,
                 recent: RecentPlacements | None = None) -> None:
        self.filters = tuple(filters)
        self.scorers = tuple(scorers)
        # for pods that no affinity concerns (most): the same without the affinity parts
        self._plain_filters = tuple(f for f in self.filters if f not in AFFINITY_FILTERS)
        self._plain_scorers = tuple(s for s in self.scorers
                                    if not isinstance(s, AFFINITY_SCORERS))
        self.recent = RecentPlacements(clock=clock) if recent is None else recent
        # right-sizing's lifetime bound keeps its ledger in its filter; pruned here
        self.peaks = next((f.lifetime for f in self.filters
                           if isinstance(f, RightSizedCapacity) and f.lifetime is not None),
                          None)
        self.trend = next((f.trend for f in self.filters
                           if isinstance(f, RightSizedCapacity) and f.trend is not None),
                          None)

    @classmethod
    def right_sizing(cls, *, safety: float = 0.05, overcommit: float = 0.3,
                     by_usage: bool = True, clock: Callable[[], float] = time.time,
                     scorers: Sequence[Scorer] = DEFAULT_SCORERS,
                     lifetime_margin: float | None = None,
                     lifetime_half_life: float = DEFAULT_PEAK_HALF_LIFE,
                     requests_floor: bool = False,
                     lifetime_within: bool = False,
                     overcommit_safety: float = 0.0,
                     rising_margin: float | None = None,
                     rising_half_life: float = DEFAULT_TREND_HALF_LIFE) -> Scheduler:
        """A scheduler in right-sizing mode (module doc); `safety` in 0..0.5,
        `overcommit` >= 0 (math.inf: requests do not bound a trusted node), `by_usage`
        as in `RightSizedCapacity`. The defaults (cap 30 %, pods counted by usage) were
        chosen in `testbed.replay` on training seeds (docs/benchmarks.md), with safety
        0.1 (the caller's: cloudcore passes `forecast.placement_safety`).
        `lifetime_margin` in 0..0.5 turns on the lifetime bound (`RightSizedCapacity`,
        `PeakUsage` with `lifetime_half_life` seconds; `LIFETIME_MARGIN` is the margin
        measured); None (the default) leaves it off: in `testbed.replay` it did not beat
        the requests cap on the seeds where both were run (docs/benchmarks.md).
        `rising_margin` in 0..1 turns on the rising guard (`RightSizedCapacity.trend`,
        `ShareTrend` with `rising_half_life` seconds); None (the default) leaves it off."""
        if not 0.0 <= safety <= 0.5:
            raise ValueError(f"right-sizing safety must be within 0..0.5, got {safety}")
        if not overcommit >= 0.0:
            raise ValueError(f"right-sizing overcommit must be >= 0, got {overcommit}")
        if not 0.0 <= overcommit_safety <= 0.5:
            raise ValueError(f"right-sizing overcommit safety must be within 0..0.5, "
                             f"got {overcommit_safety}")
        if lifetime_margin is not None and not 0.0 <= lifetime_margin <= 0.5:
            raise ValueError(f"right-sizing lifetime margin must be within 0..0.5, "
                             f"got {lifetime_margin}")
        if rising_margin is not None and not 0.0 <= rising_margin <= 1.0:
            raise ValueError(f"right-sizing rising margin must be within 0..1, "
                             f"got {rising_margin}")
        peaks = (None if lifetime_margin is None
                 else PeakUsage(half_life=lifetime_half_life))
        trend = None if rising_margin is None else ShareTrend(half_life=rising_half_life)
        rsc = RightSizedCapacity(safety, overcommit, by_usage, lifetime=peaks,
                                 lifetime_margin=0.0 if lifetime_margin is None
                                 else lifetime_margin, clock=clock,
                                 requests_floor=requests_floor,
                                 lifetime_within=lifetime_within,
                                 overcommit_safety=overcommit_safety, trend=trend,
                                 rising_margin=0.0 if rising_margin is None
                                 else rising_margin)
        filters = tuple(rsc if isinstance(f, RightSizedCapacity) else f
                        for f in RIGHT_SIZING_FILTERS)
        return cls(filters=filters, scorers=scorers, clock=clock)

    def forecast_made(self, origins: dict[str, float]) -> None:
        """New forecasts exist; `origins[node]` is the start (Unix s) of the newest
        telemetry minute the node's forecast saw. Placements they cover stop counting;
        the lifetime bound forgets nodes that no longer have a forecast."""
        self.recent.forecast_made(origins)
        if self.peaks is not None:
            self.peaks.keep_only(origins)
        if self.trend is not None:
            self.trend.keep_only(origins)

    def _with_recent(self, node: NodeView) -> NodeView:
        # the right-sizing filter counts the ledger against the forecast, as the
        # predicted filter does
        if node.forecast is None or node.name not in self.recent:
            return node
        extra = self.recent.unforecast(node.name)
        if not extra:
            return node
        merged = dict(node.unforecast)
        for res, v in extra.items():
            merged[res] = merged.get(res, 0) + v
        return dataclasses.replace(node, unforecast=merged)

    def check(self, spec: PodSpec, node: NodeView, *, daemon: bool = False) -> str | None:
        """None if the pod fits `node`, else the first failing filter's reason."""
        req = requests_of(spec)
        affine = spec.affinity is not None or node.pod_topology is not None
        for f in self.filters if affine else self._plain_filters:
            if daemon and f in DAEMON_SKIP:
                continue
            if daemon and isinstance(f, RightSizedCapacity):
                f = capacity  # noqa: PLW2901  (a DaemonSet pod: requests, as in requests mode)
            reason = f(spec, req, node)
            if reason is not None:
                return reason
        return None

    def placeable(self, spec: PodSpec, node: NodeView) -> bool:
        """Whether a DaemonSet pod belongs on `node`: selector, arch, required node
        affinity, taints (not capacity, not pod affinity), as Kubernetes' DaemonSet
        controller decides. Reads only the node's name, labels and taints."""
        req = requests_of(spec)
        return all(f(spec, req, node) is None
                   for f in (arch, node_selector, node_affinity, taints))

    def schedule(self, spec: PodSpec, nodes: Iterable[NodeView]) -> Decision:
        """Pick the best feasible node, or explain why none fits."""
        req = requests_of(spec)
        rejected: Counter[str] = Counter()
        best: tuple[float, str] | None = None
        feasible = 0
        total = 0
        affine = spec.affinity is not None
        for given in nodes:
            total += 1
            node = self._with_recent(given)
            if affine or node.pod_topology is not None:
                filters, scorers = self.filters, self.scorers
            else:
                filters, scorers = self._plain_filters, self._plain_scorers
            reason = next((r for f in filters if (r := f(spec, req, node)) is not None),
                          None)
            if reason is not None:
                rejected[reason] += 1
                continue
            feasible += 1
            score = sum(s.weight * s(spec, req, node) for s in scorers)
            if best is None or score > best[0] or (score == best[0] and node.name < best[1]):
                best = (score, node.name)
        if best is None:
            return Decision(node=None, reason="Unschedulable",
                            message=unschedulable_message(total, rejected))
        self.recent.add(best[1], req)
        return Decision(node=best[1], reason="Scheduled",
                        message=f"scheduled on {best[1]}: highest score {best[0]:.1f} "
                                f"of {feasible}/{total} feasible nodes")


def requests_of(spec: PodSpec) -> dict[str, int]:
    """The pod's summed requests, plus one `pods` slot."""
    req = spec.requests()
    req["pods"] = req.get("pods", 0) + 1
    return req


def unschedulable_message(total: int, rejected: Counter[str]) -> str:
    if total == 0:
        return "0/0 nodes available: no nodes registered"
    parts = ", ".join(f"{n} {r}" for r, n in sorted(rejected.items(), key=lambda x: (-x[1], x[0])))
    return f"0/{total} nodes available: {parts}"


def explain_single(node: str, reason: str) -> str:
    return f"0/1 nodes available: 1 {reason} (pod is bound to node {node})"


FilterFn = Callable[[PodSpec, dict[str, int], NodeView], str | None]
