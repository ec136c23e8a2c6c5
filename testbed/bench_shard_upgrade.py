"""What one AgentUpgrade batch costs across shards (issue 14, `cloudcore.cluster.upgrades`):
two fleet cores in one process (no NATS), the holder telling a batch of nodes and the
other shard adopting the values it would write.

    python -m testbed.bench_shard_upgrade --nodes 20000 --batch 2000

Prints, per run: the holder's ticks until it told the batch (the passes over every
node go a slice a tick; the last one tells the batch and commits), building the batch's
KV values (the writer builds them 64 at a time, each put round yields), the other shard
reading them (the watch loop yields every 200) and its one desired-set commit (its
committer runs at most every 50 ms). Both keep their long-lived objects frozen, as the
cloudcore binary does (`tune_gc`)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.upgrades import SharedBatches, batch_key
from cloudcore.fleet import Fleet, Liveness
from cloudcore.scheduler import Scheduler
from cloudcore.service import tune_gc
from shared.models import parse_object
from testbed.bench_placement import NullStore


def _shard(name: str, names: list[str], *, holds: bool) -> tuple[Fleet, SharedBatches]:
    fleet = Fleet(store=NullStore(), scheduler=Scheduler(),
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    for n in names:
        fleet.register_node(n)
        fleet.node_status(n, {"agentVersion": "0.9.0", "arch": "amd64",
                              "allocatable": {"cpu": 4000, "memory": 8 << 30, "pods": 110}})
        fleet.mark_ready(n)
    shared = SharedBatches(fleet, shard=name, holds_global=lambda: holds,
                           fence=lambda: 7 if holds else None)
    shared.caught_up = True
    return fleet, shared


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=2_000, help="maxUnavailable (at most "
                   "2,000 are told per tick: MAX_TELL_PER_TICK)")
    a = p.parse_args()
    names = [f"node-{i:06d}" for i in range(a.nodes)]
    t0 = time.perf_counter()
    holder, hs = _shard("A", names, holds=True)
    other, os_ = _shard("B", names, holds=False)
    print(f"2 x {a.nodes} nodes registered in {time.perf_counter() - t0:.1f} s")
    tune_gc()
    doc = {"apiVersion": "edgefed.io/v1", "kind": "AgentUpgrade",
           "metadata": {"name": "agent-0.9.1"},
           "spec": {"version": "0.9.1", "image": "reg:5000/edgefed/agent:0.9.1",
                    "maxUnavailable": a.batch}}
    other.apply([parse_object(doc)])
    other.commit()
    holder.apply([parse_object(doc)])
    holder.commit()
    ticks: list[float] = []  # the owners' pass and the classifying pass go a slice a tick
    while not hs._out and len(ticks) < 20:
        t0 = time.perf_counter()
        if holder.upgrades.tick():
            holder.commit()
        ticks.append((time.perf_counter() - t0) * 1e3)
    mine = other.objects.agentupgrades["agent-0.9.1"]
    theirs = holder.objects.agentupgrades["agent-0.9.1"]
    mine.metadata.uid, mine.metadata.creation_timestamp = (
        theirs.metadata.uid, theirs.metadata.creation_timestamp)
    keys = sorted(hs._out)
    t0 = time.perf_counter()
    values = [(k, hs.value(k, 7)) for k in keys]
    build_ms = (time.perf_counter() - t0) * 1e3
    sizes = [len(v) for _, v in values if v is not None]
    t0 = time.perf_counter()
    for i, (k, v) in enumerate(values, 1):
        if v is not None:
            os_.apply_entry(Entry(batch_key(*k), v, i))
    read_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    other.commit()
    commit_ms = (time.perf_counter() - t0) * 1e3
    told = sum(1 for n in names if other.desired_sets.entry(n, "agent/-/release"))
    out: dict[str, Any] = {
        "nodes": a.nodes, "values": len(values), "told_on_the_other_shard": told,
        "holder_ticks_ms": [round(t, 1) for t in ticks],
        "build_values_ms": round(build_ms, 1),
        "value_bytes_mean": round(sum(sizes) / max(1, len(sizes))),
        "other_reads_ms": round(read_ms, 1),
        "other_reads_us_per_value": round(read_ms * 1e3 / max(1, len(values)), 1),
        "other_commit_ms": round(commit_ms, 1)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
