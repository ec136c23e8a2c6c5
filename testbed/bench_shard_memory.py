"""Where a shard's memory goes per node (issue 14: cloud RSS summed over 3 shards at
most 1 GB at 100,000 nodes).

    python -m testbed.bench_shard_memory [--nodes 15000] [--owned-fraction 0.333]
                                         [--top 25] [--rss-only]
                                         [--trace FILE:LINE ...]

In one process, no NATS and no MQTT: a fleet of N registered, Ready nodes on a real
LMDB store (a temporary directory), one DaemonSet over all of them, every pod reported
Running; then a sync hub and a `Shard` that takes a third of the partitions (its
nodes get their snapshots), and a `NodeStatuses` reader that shows the other
shards' summaries of the nodes it does not own (as a shard's watch of `node.>` does),
then one round of its own nodes' summaries. tracemalloc (Python allocations only, not
LMDB's map nor the allocator's free lists) is snapshotted after each stage; each
stage's growth is grouped by the allocating file:line and divided by the nodes it
concerns (all, owned, not owned). Prints the largest lines of each stage to stderr and
one JSON of bytes per node per stage and in total, with the process's RSS per node
(VmRSS; tracemalloc's own bookkeeping inflates it) and the load average. With
`--rss-only`, no tracemalloc: the RSS growth of each stage per node (what the
allocator and LMDB's map add to the Python objects).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.leases import Change, LeaseSettings
from cloudcore.cluster.shard import GatedNodes, Shard
from cloudcore.cluster.status import NodeStatuses, node_key
from cloudcore.config import StoreSettings, SyncSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.fleet.naming import REVISION
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store
from cloudcore.synchub import SyncHub
from shared import topics
from shared.models import parse_object
from testbed.bench_shard import DAEMONSET


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _rss_split_mb() -> dict[str, float]:
    """RssAnon (the heap) and RssFile (LMDB's mapped pages, the libraries) in MB."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024, 1)
    return out


def _trimmed() -> float | None:
    """RSS after glibc's malloc_trim(0) (free memory the allocator held, given back)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        return None
    return round(_rss_mb(), 1)


class Stages:
    """tracemalloc snapshots between stages: growth per stage by file:line."""

    def __init__(self, top: int, trace: list[str]) -> None:
        self.top = top
        self.trace = trace
        self.out: dict[str, Any] = {}
        gc.collect()
        self._last = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        self._rss = _rss_mb()

    def mark(self, stage: str, per: int) -> None:
        gc.collect()
        if self._last is None:  # --rss-only
            rss = _rss_mb()
            print(f"== {stage}: RSS +{rss - self._rss:.1f} MB, "
                  f"{(rss - self._rss) * 2**20 / max(1, per):,.0f} B per node over {per}",
                  file=sys.stderr)
            self.out[stage] = {"nodes": per, "rss_mb_growth": round(rss - self._rss, 1),
                               "rss_bytes_per_node": round((rss - self._rss) * 2**20
                                                           / max(1, per))}
            self._rss = rss
            return
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        stats = snap.compare_to(self._last, "lineno")
        grown = sum(s.size_diff for s in stats)
        rss = _rss_mb()
        lines = sorted(stats, key=lambda s: -s.size_diff)[:self.top]
        print(f"\n== {stage}: {grown / max(1, per):,.0f} B per node over {per} nodes "
              f"(python heap +{grown / 2**20:.1f} MB, RSS +{rss - self._rss:.1f} MB)",
              file=sys.stderr)
        for s in lines:
            if s.size_diff < per:  # under a byte a node
                break
            fr = s.traceback[0]
            print(f"  {s.size_diff / per:8.0f} B/node  {s.count_diff / per:6.2f} blocks/node"
                  f"  {_short(fr.filename)}:{fr.lineno}", file=sys.stderr)
        for s in snap.compare_to(self._last, "traceback") if self.trace else []:
            fr = s.traceback[-1]  # the most recent frame is the last
            if f"{_short(fr.filename)}:{fr.lineno}" in self.trace and s.size_diff >= per // 4:
                print(f"  -- {s.size_diff / per:.0f} B/node from:", file=sys.stderr)
                for f in s.traceback:
                    print(f"       {_short(f.filename)}:{f.lineno}", file=sys.stderr)
        self.out[stage] = {"nodes": per, "bytes_per_node": round(grown / max(1, per)),
                           "rss_mb_growth": round(rss - self._rss, 1),
                           "top": {f"{_short(s.traceback[0].filename)}:"
                                   f"{s.traceback[0].lineno}": round(s.size_diff / per)
                                   for s in lines[:8] if s.size_diff >= per}}
        self._last, self._rss = snap, rss


def _short(path: str) -> str:
    for root in ("/cloudcore/", "/shared/", "/testbed/"):
        i = path.rfind(root)
        if i >= 0:
            return path[i + 1:]
    return "/".join(path.rsplit("/", 2)[-2:])


async def measure(nodes: int, state: Path, *, owned_fraction: float, top: int,
                  trace: list[str], rss_only: bool = False,
                  pod_reports: bool = True) -> dict[str, Any]:
    rss0 = _rss_mb()
    if not rss_only:
        tracemalloc.start(8 if trace else 1)
    async with Store(StoreSettings(state_dir=state)) as store:
        writer = asyncio.create_task(store.run())
        fleet = Fleet(store=store, scheduler=Scheduler(),
                      liveness=Liveness(default_heartbeat=30, missed=3, now=time.monotonic()))
        hub = SyncHub(nodes=GatedNodes(fleet, is_global=lambda: False),
                      desired=fleet.desired_sets, store=store, settings=SyncSettings(),
                      metrics=Metrics(), insecure=True)
        hub.attach(lambda *a: None)

        async def noop(filters: list[str]) -> None:
            return None

        shard = Shard(name="S1", fleet=fleet, hub=hub, subscribe=noop, unsubscribe=noop,
                      lease=LeaseSettings(name="S1"), status_interval=3600)
        stages = Stages(top, trace)
        names = [f"edge-node-{i:06d}" for i in range(nodes)]
        for i, name in enumerate(names):
            fleet.register_node(name)
            fleet.node_status(name, {"allocatable": {"cpu": 4000, "memory": 8 << 30,
                                                     "pods": 110},
                                     "capacity": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
                                     "arch": "amd64", "heartbeat": 30,
                                     "agentVersion": "0.9.0"})
            fleet.mark_ready(name)
            if i % 1000 == 0:
                await store.flush()
        await store.flush()
        stages.mark("nodes registered, Ready (every node)", nodes)
        fleet.apply([parse_object(DAEMONSET)])
        await store.flush()
        stages.mark("DaemonSet expanded (every node)", nodes)
        for i, (key, pod) in enumerate(list(fleet.pods.items()) if pod_reports else [], 1):
            fleet.pod_statuses(pod.spec.node_name or "", {f"pod/{key[0]}/{key[1]}": {
                "phase": "Running", "revision": pod.metadata.annotations.get(REVISION),
                "containerStatuses": [{"name": "c", "state": "running", "ready": True}]}})
            if i % 1000 == 0:
                await store.flush()
        await store.flush()
        stages.mark("pods reported Running (every node)", nodes)
        # the other shards' summaries of every node, as their writers make them
        other = NodeStatuses(fleet, shard="S2", owns=lambda p: True)
        docs = await other.changed_summaries()
        del other
        fleet.eviction.trusted = None
        shard.forget_all()
        cut = round(256 * owned_fraction)
        parts = frozenset(range(cut))
        owned_names = [n for n in names if topics.partition_of(n) in parts]
        stages.mark("(summaries of the other shards made: not the shard's)", nodes)
        await shard.on_change(Change(acquired=parts, lost=frozenset(), owned=parts))
        await store.flush()
        stages.mark("partitions taken, snapshots pushed (owned nodes)", len(owned_names))
        statuses = NodeStatuses(fleet, shard="S1", owns=shard.owns,
                                holder=shard.partition_holder)
        foreign = [n for n in names if topics.partition_of(n) not in parts]
        for i, name in enumerate(foreign, 1):
            # a copy: the bytes a watch delivers are the reader's own
            statuses.show(Entry(node_key(name), bytes(bytearray(docs[name])), i))
        del docs
        stages.mark("other shards' summaries shown (not-owned nodes)", len(foreign))
        mine = await statuses.changed_summaries()
        del mine
        stages.mark("own summaries made (owned nodes)", len(owned_names))
        writer.cancel()
        tracemalloc.stop()
        what = "rss_mb_growth" if rss_only else "bytes_per_node"
        scale = 2**20 if rss_only else 1
        total = sum(s[what] * scale * (1 if rss_only else s["nodes"])
                    for k, s in stages.out.items() if not k.startswith("("))
        return {"nodes": nodes, "owned": len(owned_names), "not_owned": len(foreign),
                "stages": stages.out,
                ("rss_growth_bytes_per_fleet_node" if rss_only
                 else "python_heap_bytes_per_fleet_node"): round(total / nodes),
                "rss_mb": round(_rss_mb(), 1), "rss_mb_at_start": round(rss0, 1),
                "rss_split_mb": _rss_split_mb(),
                "rss_mb_after_malloc_trim": _trimmed(),
                "rss_bytes_per_fleet_node": round((_rss_mb() - rss0) * 2**20 / nodes),
                "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.bench_shard_memory",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=15000)
    p.add_argument("--owned-fraction", type=float, default=1 / 3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--rss-only", action="store_true",
                   help="no tracemalloc: the process's RSS growth per stage only")
    p.add_argument("--no-pod-reports", action="store_true",
                   help="no pod reports its status (as `bench_storm`'s simulators, "
                        "without --report-pods): summaries carry no pods")
    p.add_argument("--trace", action="append", default=[], metavar="FILE:LINE",
                   help="also print where the allocations of this line come from "
                        "(8 frames; slower)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefed-bench-shardmem-") as d:
        print(json.dumps(asyncio.run(measure(a.nodes, Path(d),
                                             owned_fraction=a.owned_fraction, top=a.top,
                                             trace=a.trace, rss_only=a.rss_only,
                                             pod_reports=not a.no_pod_reports))),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
