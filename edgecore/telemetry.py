"""Telemetry: node and per-pod cpu and memory, sampled every 10 s, sent as 60 s points.

Each sample reads the node's `/proc/stat` (cpu busy jiffies) and `/proc/meminfo`
(MemTotal - MemAvailable), and the stats of every running container of ours
(cumulative cpu ns, working-set memory), grouped by pod: one batched
`runtime.stats_all()` if the runtime declares it (`capabilities.stats_all`; crun: one
`crun list` and the cgroup files, no process per pod), else `runtime.stats(cid)` one
by one. cpu is a rate
between two samples, so the first sample after start (or after a container
restart) contributes memory only. Samples are averaged per point interval
(aligned to wall-clock minutes by default):

    {"ts": minute start, "node": {"cpu": millicores, "mem": bytes},
     "pods": {"pod/ns/name": {"cpu": millicores, "mem": bytes}}}

A point is emitted when the first sample of the next interval arrives (a
partial last interval before a stop is dropped).

What goes on the wire is compact (issue 16, proposal 0003): `pods` holds only the
pods whose figures moved by at least `cpu_quantum_m` millicores or
`mem_quantum_bytes` since the value last sent for them (and `null` for a pod gone
since), and is left out when nothing moved; every `full_every`-th point (and the
first) carries every pod and `"full": true`, so a reader that lost track (a cloud
restart) is whole again within `full_every` minutes. The node's figures are always
there: they are what the cloud forecasts from. The sink (the reporter) puts
it into the outbox as a telemetry report, which the outbox drops first when
over its byte budget, and which is kept while offline (the outbox is the ring).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecore.reconciler.naming import ANN_POD
from edgecore.runtime.errors import ContainerRuntimeError
from edgecore.runtime.types import ContainerStats, ExtendedRuntime
from shared.entries import telemetry_point

log = logging.getLogger(__name__)


def read_cpu_jiffies(proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """(busy, total) jiffies of all cpus from /proc/stat, or None if unreadable."""
    try:
        with open(proc / "stat") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values)
    return total - idle, total


def read_mem_used(proc: Path = Path("/proc")) -> int | None:
    """MemTotal - MemAvailable in bytes, or None if unreadable."""
    found: dict[str, int] = {}
    try:
        with open(proc / "meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("MemTotal", "MemAvailable"):
                    found[name] = int(rest.split()[0]) * 1024
                    if len(found) == 2:
                        break
    except (OSError, ValueError, IndexError):
        return None
    if len(found) != 2:
        return None
    return found["MemTotal"] - found["MemAvailable"]


@dataclass
class _Acc:
    """Sums of one interval for one subject (the node or a pod)."""

    cpu: float = 0.0
    cpu_n: int = 0
    mem: float = 0.0
    mem_n: int = 0

    def add(self, cpu: float | None, mem: float | None) -> None:
        if cpu is not None:
            self.cpu += cpu
            self.cpu_n += 1
        if mem is not None:
            self.mem += mem
            self.mem_n += 1

    def value(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.cpu_n:
            out["cpu"] = round(self.cpu / self.cpu_n)
        if self.mem_n:
            out["mem"] = round(self.mem / self.mem_n)
        return out


@dataclass
class Telemetry:
    runtime: ExtendedRuntime
    sink: Callable[[dict[str, Any]], Awaitable[None]]
    sample_s: float = 10.0
    point_s: int = 60
    clock: Callable[[], float] = time.time
    proc: Path = Path("/proc")
    node: str = ""
    last_point: dict[str, Any] | None = None  # the newest point, every pod in it
    cpu_quantum_m: int = 5  # a pod's cpu moving less than this is not sent again
    mem_quantum_bytes: int = 1 << 20  # ... nor its memory moving less than this
    full_every: int = 10  # every n-th point carries every pod (0: always)
    _points: int = 0
    _sent: dict[str, dict[str, float]] = field(default_factory=dict)  # last sent per pod
    _bucket: int | None = None
    _node_acc: _Acc = field(default_factory=_Acc)
    _pod_acc: dict[str, _Acc] = field(default_factory=dict)
    _prev_node: tuple[int, int] | None = None
    _prev_ctr: dict[str, tuple[int, float]] = field(default_factory=dict)
    _pod_of: dict[str, str] = field(default_factory=dict)  # container id -> pod key
    _ncpu: int = field(default_factory=lambda: os.cpu_count() or 1)

    async def run(self) -> None:
        """Sample every sample_s (aligned to the clock) until cancelled."""
        while True:
            try:
                await self.sample()
            except ContainerRuntimeError as exc:
                log.warning("telemetry sample skipped: %s", exc)
            now = self.clock()
            await asyncio.sleep(self.sample_s - (now % self.sample_s))

    async def sample(self, now: float | None = None) -> dict[str, Any] | None:
        """Take one sample; returns the point it completed (already given to the sink)."""
        now = self.clock() if now is None else now
        bucket = int(now // self.point_s) * self.point_s
        done = None
        if self._bucket is not None and bucket != self._bucket:
            done = self._point(self._bucket)
        if self._bucket != bucket:
            self._bucket = bucket
            self._node_acc, self._pod_acc = _Acc(), {}
        node_cpu, node_mem = await asyncio.to_thread(self._node_sample)
        self._node_acc.add(node_cpu, node_mem)
        for key, (cpu, mem) in (await self._pod_samples()).items():
            self._pod_acc.setdefault(key, _Acc()).add(cpu, mem)
        if done is not None:
            self.last_point = done
            await self.sink(self._compact(done))
        return done

    def _compact(self, point: dict[str, Any]) -> dict[str, Any]:
        """The point as sent: only the pods that moved (module docstring)."""
        pods: dict[str, dict[str, float]] = point.get("pods") or {}
        full = self.full_every <= 0 or self._points % self.full_every == 0
        self._points += 1
        if full:
            self._sent = {k: dict(v) for k, v in pods.items()}
            return {**point, "full": True}
        changed: dict[str, dict[str, float] | None] = {}
        for key, value in pods.items():
            last = self._sent.get(key)
            if last is None or self._moved(last, value):
                changed[key] = dict(value)
                self._sent[key] = dict(value)
        for gone in set(self._sent) - set(pods):
            changed[gone] = None
            del self._sent[gone]
        out = {k: v for k, v in point.items() if k != "pods"}
        if changed:
            out["pods"] = changed
        return out

    def _moved(self, last: dict[str, float], value: dict[str, float]) -> bool:
        if set(last) != set(value):
            return True
        return (abs(value.get("cpu", 0) - last.get("cpu", 0)) >= self.cpu_quantum_m
                or abs(value.get("mem", 0) - last.get("mem", 0)) >= self.mem_quantum_bytes)

    def _point(self, bucket: int) -> dict[str, Any]:
        return telemetry_point(bucket, node=self._node_acc.value(),
                               pods={k: a.value() for k, a in sorted(self._pod_acc.items())})

    def _node_sample(self) -> tuple[float | None, float | None]:
        cur = read_cpu_jiffies(self.proc)
        cpu = None
        if cur is not None and self._prev_node is not None:
            busy, total = cur[0] - self._prev_node[0], cur[1] - self._prev_node[1]
            if total > 0 and busy >= 0:
                cpu = busy / total * self._ncpu * 1000
        self._prev_node = cur
        mem = read_mem_used(self.proc)
        return cpu, None if mem is None else float(mem)

    async def _pod_samples(self) -> dict[str, tuple[float | None, float | None]]:
        if self.runtime.capabilities.stats_all:
            # One batched read per tick (one `crun list`, cgroup files in one thread);
            # the full list(), for the pod annotation, only when a new container shows up.
            all_stats = await self.runtime.stats_all()
            if not set(all_stats) <= set(self._pod_of):
                self._pod_of = {st.id: st.annotations.get(ANN_POD, "")
                                for st in await self.runtime.list()}
            stats = {cid: s for cid, s in all_stats.items() if self._pod_of.get(cid)}
            self._pod_of = {cid: self._pod_of[cid] for cid in all_stats if cid in self._pod_of}
        else:
            stats = await self._stats_one_by_one()
        out: dict[str, list[float | None]] = {}
        for cid, s in stats.items():
            key = self._pod_of[cid]
            cpu = None
            prev = self._prev_ctr.get(cid)
            if prev is not None and s.timestamp > prev[1] and s.cpu_usage_ns >= prev[0]:
                cpu = (s.cpu_usage_ns - prev[0]) / ((s.timestamp - prev[1]) * 1e9) * 1000
            self._prev_ctr[cid] = (s.cpu_usage_ns, s.timestamp)
            mem = s.memory_working_set_bytes
            if mem is None:
                mem = s.memory_bytes
            acc = out.setdefault(key, [None, 0.0])
            if cpu is not None:
                acc[0] = (acc[0] or 0.0) + cpu
            acc[1] = (acc[1] or 0.0) + mem
        for gone in set(self._prev_ctr) - set(stats):
            del self._prev_ctr[gone]
        return {k: (v[0], v[1]) for k, v in out.items()}

    async def _stats_one_by_one(self) -> dict[str, ContainerStats]:
        """Runtimes without `stats_all`: list, then `stats(cid)` per running container."""
        if not self.runtime.capabilities.stats:
            return {}
        out: dict[str, ContainerStats] = {}
        pod_of: dict[str, str] = {}
        for st in await self.runtime.list():
            key = st.annotations.get(ANN_POD)
            if not key or st.status != "running":
                continue
            try:
                s = await self.runtime.stats(st.id)
            except ContainerRuntimeError:
                continue
            if s is not None:
                out[st.id] = s
                pod_of[st.id] = key
        self._pod_of = pod_of
        return out
