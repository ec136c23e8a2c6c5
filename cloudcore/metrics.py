"""Counters and gauges exposed on /metrics, through prometheus-client.

The registry is an object passed around explicitly (a `CollectorRegistry` of its own
per `Metrics`, never prometheus-client's process-global default), which keeps tests
with two services in one process honest. Counting stays a dict addition on the hot
path (the sync hub counts every message): `Metrics` is a prometheus-client custom
collector that turns its counters and the scrape-time gauge callbacks into metric
families when scraped, and prometheus-client writes the text format. The names are
those of the hand-written registry this replaced (counters end in `_total`), so
dashboards and the tests that read `/metrics` are unchanged; values now print as
floats (`1.0`).

`add_edge_gauges` adds what the store of series scraped on devices holds and refused
(the series themselves are served apart, on `/metrics/edge`).
`add_rollout_gauges` adds rollout progress without names (`cloudcore_rollouts{kind,
phase}`, `cloudcore_rollout_pods{kind,state}`). Also in the registry:
prometheus-client's process collector (`process_cpu_seconds_total`,
`process_resident_memory_bytes`, open fds...) and, once `LoopLag.run()` is running,
how late the event loop runs a timer (`cloudcore_event_loop_lag_seconds`, and the
worst over the last minute, `cloudcore_event_loop_lag_max_seconds`): the design wants
no call to hold the loop more than 50 ms, and this is where that shows.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.samples import Sample

Labels = tuple[tuple[str, str], ...]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LAG = "cloudcore_event_loop_lag_seconds"
LAG_MAX = "cloudcore_event_loop_lag_max_seconds"


class Metrics:
    """Named counters with labels plus gauge callbacks evaluated at scrape time, in a
    prometheus-client registry of their own (`registry`)."""

    def __init__(self, *, process: bool = True) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._help: dict[str, str] = {}
        self._gauges: list[Callable[[], Iterable[tuple[str, Labels, float]]]] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Families(self))
        if process:
            ProcessCollector(namespace="", registry=self.registry)

    def describe(self, name: str, text: str) -> None:
        self._help[name] = text

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._counters[name][tuple(sorted(labels.items()))] += amount

    def value(self, name: str, **labels: str) -> float:
        return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def total(self, name: str) -> float:
        return sum(self._counters.get(name, {}).values())

    def add_gauges(self, fn: Callable[[], Iterable[tuple[str, Labels, float]]]) -> None:
        """Register a callback yielding (name, labels, value) for every scrape."""
        self._gauges.append(fn)

    def collect(self) -> Iterator[Metric]:
        """prometheus-client's collector protocol: every family, counters first."""
        for name in sorted(self._counters):
            family = CounterMetricFamily(name, self._help.get(name, name))
            sample = name if name.endswith("_total") else name + "_total"
            for labels, v in sorted(self._counters[name].items()):
                family.samples.append(Sample(sample, dict(labels), v))
            yield family
        gauges: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
        for fn in self._gauges:
            for name, labels, v in fn():
                gauges[name].append((labels, v))
        for name in sorted(gauges):
            family = GaugeMetricFamily(name, self._help.get(name, name))
            for labels, v in gauges[name]:
                family.samples.append(Sample(name, dict(labels), v))
            yield family

    def render(self) -> str:
        """Every metric of the registry in the Prometheus text format 0.0.4."""
        return generate_latest(self.registry).decode()


ROLLOUTS = "cloudcore_rollouts"
ROLLOUT_PODS = "cloudcore_rollout_pods"
PHASES = ("Complete", "Progressing", "Paused", "RolledBack", "Aborted")


def add_rollout_gauges(metrics: Metrics, fleet: Any) -> None:
    """Describe and register `rollout_gauges(fleet)` for every scrape."""
    metrics.describe(ROLLOUTS, "DaemonSets and Deployments by kind and rollout phase.")
    metrics.describe(ROLLOUT_PODS, "Pods of DaemonSets and Deployments by kind and "
                                   "rollout state (desired, updated, ready, available, "
                                   "failed in the rollout under way, on nodes not Ready).")
    metrics.add_gauges(lambda: rollout_gauges(fleet))


def rollout_gauges(fleet: Any) -> Iterable[tuple[str, Labels, float]]:
    """Rollout progress over every DaemonSet and Deployment, as counts without names:
    workloads by kind and rollout phase, and their pods by kind and state (desired,
    updated, ready, available, failed, offline). One pass over the workloads."""
    for kind, table, fields in (
            ("DaemonSet", fleet.daemonsets,
             ("desired_number_scheduled", "updated_number_scheduled", "number_ready",
              "number_available")),
            ("Deployment", fleet.deployments,
             ("replicas", "updated_replicas", "ready_replicas", "available_replicas"))):
        phases = dict.fromkeys(PHASES, 0)
        pods = dict.fromkeys(("desired", "updated", "ready", "available", "failed",
                              "offline"), 0)
        for obj in table.values():
            st = obj.status
            phases[st.rollout.phase] = phases.get(st.rollout.phase, 0) + 1
            for state, field in zip(("desired", "updated", "ready", "available"), fields,
                                    strict=True):
                pods[state] += getattr(st, field) or 0
            pods["failed"] += st.rollout.failed
            pods["offline"] += st.rollout.offline
        for phase, n in phases.items():
            yield ROLLOUTS, (("kind", kind), ("phase", phase)), float(n)
        for state, n in pods.items():
            yield ROLLOUT_PODS, (("kind", kind), ("state", state)), float(n)


AGENT_UPGRADES = "cloudcore_agent_upgrades"
AGENT_UPGRADE_NODES = "cloudcore_agent_upgrade_nodes"
AGENT_VERSIONS = "cloudcore_agent_versions"
UPGRADE_PHASES = ("Progressing", "Complete", "Paused", "Aborted")


def add_upgrade_gauges(metrics: Metrics, fleet: Any) -> None:
    """Describe and register `upgrade_gauges(fleet)` for every scrape."""
    metrics.describe(AGENT_UPGRADES, "AgentUpgrades by phase.")
    metrics.describe(AGENT_UPGRADE_NODES, "Nodes of every AgentUpgrade by state (selected, "
                                          "upgraded, in_progress, failed, waiting, "
                                          "rolled_back).")
    metrics.describe(AGENT_VERSIONS, "Nodes by the agent version they report (unknown: "
                                     "none reported yet).")
    metrics.add_gauges(lambda: upgrade_gauges(fleet))


def upgrade_gauges(fleet: Any) -> Iterable[tuple[str, Labels, float]]:
    """Agent upgrades as counts without names: AgentUpgrades by phase, their nodes by
    state, and the fleet's nodes by agent version (one pass over the nodes)."""
    phases = dict.fromkeys(UPGRADE_PHASES, 0)
    nodes = dict.fromkeys(("selected", "upgraded", "in_progress", "failed", "waiting",
                           "rolled_back"), 0)
    for au in fleet.objects.agentupgrades.values():
        st = au.status
        if st is None:
            continue
        phases[st.phase] = phases.get(st.phase, 0) + 1
        for state, n in (("selected", st.total), ("upgraded", st.upgraded),
                         ("in_progress", st.in_progress), ("failed", st.failed),
                         ("waiting", st.waiting), ("rolled_back", st.rolled_back)):
            nodes[state] += n
    for phase, n in phases.items():
        yield AGENT_UPGRADES, (("phase", phase),), float(n)
    for state, n in nodes.items():
        yield AGENT_UPGRADE_NODES, (("state", state),), float(n)
    versions: dict[str, int] = {}
    for node in fleet.nodes.values():
        v = node.status.agent_version or "unknown"
        versions[v] = versions.get(v, 0) + 1
    for v, n in sorted(versions.items()):
        yield AGENT_VERSIONS, (("version", v),), float(n)


EDGE_BATCHES = "cloudcore_edge_metrics_batches"
EDGE_SERIES = "cloudcore_edge_series"
EDGE_NODES = "cloudcore_edge_series_nodes"


def add_edge_gauges(metrics: Metrics, series: Any) -> None:
    """What the store of edge series (`cloudcore.fleet.edgemetrics.EdgeSeries`) holds
    and refused, on /metrics: batches accepted and refused by reason (malformed, stale,
    node_limit, fleet_limit), series held and the nodes they come from."""
    metrics.describe(EDGE_BATCHES, "Metrics batches from agents by result (accepted, or "
                                   "why refused: malformed, stale, node_limit, "
                                   "fleet_limit); counts since start.")
    metrics.describe(EDGE_SERIES, "Series scraped on devices held for /metrics/edge.")
    metrics.describe(EDGE_NODES, "Nodes whose scraped series are held.")

    def gauges() -> Iterable[tuple[str, Labels, float]]:
        yield EDGE_BATCHES, (("result", "accepted"),), float(series.accepted)
        for reason in ("malformed", "stale", "node_limit", "fleet_limit"):
            yield EDGE_BATCHES, (("result", reason),), float(series.refused[reason])
        yield EDGE_SERIES, (), float(series.series)
        yield EDGE_NODES, (), float(series.nodes())

    metrics.add_gauges(gauges)


class _Families:
    """The registry's view of a `Metrics` (whose `describe` means something else)."""

    def __init__(self, metrics: Metrics) -> None:
        self.collect = metrics.collect


class LoopLag:
    """How late the event loop wakes a timer: `run()` sleeps `interval` seconds again
    and again and records the overshoot, the last one and the worst of the last
    `window` seconds, as gauges of `metrics`."""

    def __init__(self, metrics: Metrics, *, interval: float = 0.25,
                 window: float = 60.0) -> None:
        self.interval = interval
        self.window = window
        self.last = 0.0
        self._seen: deque[tuple[float, float]] = deque()
        metrics.describe(LAG, "How late the event loop last ran a timer (seconds); "
                              "high values mean a call held the loop.")
        metrics.describe(LAG_MAX, "The worst event loop lag of the last minute (seconds).")
        metrics.add_gauges(self._gauges)

    def worst(self) -> float:
        return max((lag for _, lag in self._seen), default=0.0)

    def _gauges(self) -> Iterable[tuple[str, Labels, float]]:
        yield LAG, (), self.last
        yield LAG_MAX, (), self.worst()

    def record(self, lag: float, now: float) -> None:
        self.last = max(0.0, lag)
        self._seen.append((now, self.last))
        while self._seen and self._seen[0][0] < now - self.window:
            self._seen.popleft()

    async def run(self) -> None:
        """Measure until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.record(now - start - self.interval, time.monotonic())
