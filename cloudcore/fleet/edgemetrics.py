"""The latest Prometheus samples scraped on each device, for Prometheus to scrape here.

Each agent sends a batch per scrape round (`shared.entries.metrics_batch`: its own
metrics and those of its annotated pods, issue 17). A batch replaces everything held
for its node, so a pod that is gone, or no longer scraped, leaves with the next batch.
What is held is bounded: at most `max_series_per_node` series a node (a larger batch
is refused) and `max_series` over the fleet (a batch that would pass it is refused,
the node keeps what it had until that expires). A node's series expire `ttl` after
its last batch arrived, with `ttl` = max(`stale_s`, 3 x the node's scrape interval);
a batch whose scrape time is already older than that (a device's backlog after a
long outage, as far as the clocks agree) is refused as stale. Refusals are counted
by reason (`refused`) and logged once per node and reason a minute.

`render()` writes the Prometheus text format (0.0.4), each sample labelled with
`node` and, for a pod's, `namespace` and `pod`; a label of the sample's own with one
of those names becomes `exported_node` / `exported_namespace` / `exported_pod`, as
Prometheus renames clashing target labels. Lines are rendered when a batch arrives,
so a scrape only joins them; families keep their TYPE (one that two sources declare
differently becomes untyped).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from shared.entries import (
    MetricsBatch,
    SeriesSet,
    is_metrics_batch,
    parse_metrics_batch,
    split_key,
)
from shared.errors import ObjectError

log = logging.getLogger("cloudcore.fleet")

EXPIRE_EVERY_S = 10.0
"""Seconds between expiry passes made by arriving batches (`render` makes its own)."""

_SUFFIXES = (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
             ("_count", ("histogram", "summary")))


@dataclass
class _Held:
    received: float
    ttl: float
    series: int
    families: dict[str, tuple[str, list[str]]]  # family -> (type, rendered lines)


class EdgeSeries:
    """The newest scraped samples per node (see the module docstring)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, stale_s: float = 180.0,
                 max_series: int = 500_000, max_series_per_node: int = 20_000) -> None:
        self.clock = clock
        self.stale_s = stale_s
        self.max_series = max_series
        self.max_series_per_node = max_series_per_node
        self.accepted = 0
        self.refused: Counter[str] = Counter()
        self.series = 0  # held now, over every node
        self._nodes: dict[str, _Held] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self._expired_at = -math.inf

    def put(self, node: str, value: Any) -> bool:
        """Hold `value` (a metrics batch from `node`) as the node's newest; False (and
        counted, logged) if it is malformed, stale or over a bound."""
        now = self.clock()
        try:
            batch = parse_metrics_batch(value)
        except ObjectError as exc:
            return self._refuse(node, "malformed", exc.message, now)
        ttl = max(self.stale_s, 3 * batch.interval)
        if now - batch.ts > ttl:
            return self._refuse(node, "stale", f"scraped {now - batch.ts:.0f}s ago", now)
        n = len(batch.agent.samples) + sum(len(s.samples) for s in batch.pods.values())
        if n > self.max_series_per_node:
            return self._refuse(node, "node_limit", f"{n} series, over the limit of "
                                f"{self.max_series_per_node}", now)
        if now - self._expired_at >= EXPIRE_EVERY_S:  # a pass over every node: not per batch
            self.expire(now)
        old = self._nodes.get(node)
        held = self.series - (old.series if old is not None else 0)
        if held + n > self.max_series:
            return self._refuse(node, "fleet_limit", f"the fleet holds {held} series, "
                                f"the limit is {self.max_series}", now)
        self._nodes[node] = _Held(received=now, ttl=ttl, series=n,
                                  families=_render_node(node, batch))
        self.series = held + n
        self.accepted += 1
        return True

    def take(self, node: str, items: list[Any]) -> list[Any]:
        """Hold the metrics batches among a report's telemetry items (`put`); returns
        the other items (the telemetry points)."""
        if not any(is_metrics_batch(i) for i in items):
            return items
        rest = []
        for item in items:
            if is_metrics_batch(item):
                self.put(node, item)
            else:
                rest.append(item)
        return rest

    def forget(self, node: str) -> None:
        held = self._nodes.pop(node, None)
        if held is not None:
            self.series -= held.series

    def expire(self, now: float | None = None) -> int:
        """Drop the nodes whose newest batch is older than their ttl; returns how many."""
        now = self.clock() if now is None else now
        self._expired_at = now
        gone = [n for n, h in self._nodes.items() if now - h.received > h.ttl]
        for n in gone:
            self.forget(n)
        return len(gone)

    def nodes(self) -> int:
        return len(self._nodes)

    def render(self) -> str:
        """Every held sample that has not expired in the Prometheus text format, families
        sorted by name. It changes nothing (a node's rendered lines are replaced whole,
        never edited), so it may run in a worker thread while batches arrive."""
        now = self.clock()
        held = sorted(self._nodes.items())  # a copy: batches may replace entries meanwhile
        merged: dict[str, tuple[str, list[list[str]]]] = {}
        for _, h in held:
            if now - h.received > h.ttl:
                continue
            for family, (kind, lines) in h.families.items():
                have = merged.get(family)
                if have is None:
                    merged[family] = (kind, [lines])
                else:
                    have[1].append(lines)
                    if have[0] != kind:
                        merged[family] = ("untyped", have[1])
        out: list[str] = []
        for family in sorted(merged):
            kind, chunks = merged[family]
            out.append(f"# TYPE {family} {kind}")
            for lines in chunks:
                out.extend(lines)
        return "\n".join(out) + "\n" if out else ""

    def _refuse(self, node: str, reason: str, why: str, now: float) -> bool:
        self.refused[reason] += 1
        if now - self._logged.get((node, reason), -math.inf) >= 60:
            self._logged[(node, reason)] = now
            log.warning("metrics batch from node %s refused (%s): %s", node, reason, why)
            if len(self._logged) > 10_000:
                self._logged = {k: t for k, t in self._logged.items() if now - t < 60}
        return False


def _family(name: str, types: dict[str, str]) -> tuple[str, str]:
    """The family a sample belongs to in the text format 0.0.4: its own name, or for
    histograms and summaries the name without `_bucket` / `_sum` / `_count`."""
    if name in types:
        return name, types[name]
    for suffix, kinds in _SUFFIXES:
        base = name[: -len(suffix)]
        if name.endswith(suffix) and types.get(base) in kinds:
            return base, types[base]
    return name, "untyped"


def _render_node(node: str, batch: MetricsBatch) -> dict[str, tuple[str, list[str]]]:
    out: dict[str, tuple[str, list[str]]] = {}
    for key, series in _sources(batch):
        target = {"node": node}
        if key:
            _, target["namespace"], target["pod"] = split_key(key)
        for name, labels, value in series.samples:
            family, kind = _family(name, series.types)
            have = out.get(family)
            if have is None:
                have = out[family] = (kind, [])
            elif have[0] != kind:
                out[family] = have = ("untyped", have[1])
            have[1].append(f"{name}{{{_labels(target, labels)}}} {_value(value)}")
    return out


def _sources(batch: MetricsBatch) -> Iterator[tuple[str, SeriesSet]]:
    yield "", batch.agent
    yield from sorted(batch.pods.items())


def _labels(target: dict[str, str], own: dict[str, str]) -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in target.items()]
    for k, v in own.items():
        name = "exported_" + k if k in target else k
        parts.append(f'{name}="{_escape(v)}"')
    return ",".join(parts)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)
