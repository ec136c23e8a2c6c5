"""Counters and gauges exposed on /metrics in the Prometheus text format.

A tiny registry instead of prometheus_client: cloudcore needs a handful of
labelled counters, and the registry is an object passed around explicitly (no
process-global default registry, which makes tests with two services in one
process honest).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Named counters with labels plus gauge callbacks evaluated at scrape time."""

    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self._help: dict[str, str] = {}
        self._gauges: list[Callable[[], Iterable[tuple[str, Labels, float]]]] = []

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

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._counters):
            if name in self._help:
                lines.append(f"# HELP {name} {self._help[name]}")
            lines.append(f"# TYPE {name} counter")
            for labels, v in sorted(self._counters[name].items()):
                lines.append(f"{name}{_fmt(labels)} {v:g}")
        gauges: dict[str, list[tuple[Labels, float]]] = defaultdict(list)
        for fn in self._gauges:
            for name, labels, v in fn():
                gauges[name].append((labels, v))
        for name in sorted(gauges):
            if name in self._help:
                lines.append(f"# HELP {name} {self._help[name]}")
            lines.append(f"# TYPE {name} gauge")
            for labels, v in gauges[name]:
                lines.append(f"{name}{_fmt(labels)} {v:g}")
        return "\n".join(lines) + "\n"


def _fmt(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
