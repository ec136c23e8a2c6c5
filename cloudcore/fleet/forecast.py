"""Telemetry normalisation and forecast bookkeeping for the fleet (no onnxruntime here).

Edge reports carry one-minute telemetry points (`shared.entries.telemetry_point`):
{"ts": minute start (Unix s), "node": {"cpu": ..., "mem": bytes}, "pods": {...}}.
`node.cpu` is accepted as a 0..1 fraction of the node's cpu or as millicores (any
value > 1); it is normalised by the node's allocatable cpu millicores, `mem` by its
allocatable memory bytes; both are clipped to 0..1.

Forecast results land in `status.usage` as `cpu_p50`, `cpu_p90`, `mem_p50`,
`mem_p90`: the peak over the 15-minute horizon, 0..1, and `trusted` (1.0 when the
right-sizing scheduler may admit by this forecast, else 0.0; NodeStatus.usage is a
float dict, so the forecast method is not stored there).
"""

from __future__ import annotations

import math
from typing import Any

FORECAST_KEYS = ("cpu_p50", "cpu_p90", "mem_p50", "mem_p90", "trusted")
WARN_INTERVAL = 600.0
"""Seconds between two `PredictedOverCapacity` warnings about the same node."""


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def normalise(entry: Any, allocatable: dict[str, int]) -> tuple[int, float, float] | None:
    """(minute, cpu 0..1, mem 0..1) of one telemetry point, or None if malformed."""
    if not isinstance(entry, dict):
        return None
    ts = _num(entry.get("ts"))
    node = entry.get("node")
    if ts is None or ts < 0 or not isinstance(node, dict):
        return None
    cpu, mem = _num(node.get("cpu")), _num(node.get("mem"))
    if cpu is None or mem is None or cpu < 0 or mem < 0:
        return None
    if cpu > 1.0:  # millicores
        alloc_cpu = allocatable.get("cpu")
        if not alloc_cpu or alloc_cpu <= 0:
            return None
        cpu = cpu / alloc_cpu
    alloc_mem = allocatable.get("memory")
    if not alloc_mem or alloc_mem <= 0:
        return None
    mem = mem / alloc_mem
    return int(ts) // 60, min(max(cpu, 0.0), 1.0), min(max(mem, 0.0), 1.0)


def forecast_of(usage: dict[str, float]) -> dict[str, float] | None:
    """The forecast keys of a node's usage, or None if it has no forecast."""
    if all(k in usage for k in FORECAST_KEYS):
        return {k: usage[k] for k in FORECAST_KEYS}
    return None
