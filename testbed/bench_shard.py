"""What a shard's takeover costs in cloudcore's event loop (issue 14 part 2).

    python -m testbed.bench_shard [--nodes 20000]

Builds a fleet of N registered nodes with one DaemonSet on a real LMDB store (a
temporary directory), then runs `cloudcore.cluster.shard.Shard` as a shard that takes
all 256 partitions at once (the first shard of a cluster to start), writes one round of
liveness summaries, and gives half of the partitions up (a second shard joining); then
one round of node status summaries with every node's pod reported (written, unchanged,
and read by another shard: `cloudcore.cluster.status`), with
a probe task measuring the longest the event loop was held (the collector tuned as the
binary tunes it, `cloudcore.service.tune_gc`). No NATS, no MQTT: the
subscriptions are no-ops and the summaries go to a bucket in memory. Prints one JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.leases import Change, LeaseSettings
from cloudcore.cluster.shard import GatedNodes, Shard
from cloudcore.cluster.status import DOC_SLICE, NodeStatuses, node_key
from cloudcore.config import StoreSettings, SyncSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.fleet.naming import REVISION
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.service import tune_gc
from cloudcore.store import Store
from cloudcore.synchub import SyncHub
from shared.models import parse_object

DAEMONSET = {"apiVersion": "apps/v1", "kind": "DaemonSet",
             "metadata": {"name": "agent", "namespace": "default"},
             "spec": {"selector": {"matchLabels": {"app": "agent"}},
                      "template": {"metadata": {"labels": {"app": "agent"}},
                                   "spec": {"containers": [{"name": "c", "image": "busybox",
                                                            "args": ["sleep", "1d"]}]}}}}


class MemoryBucket:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}

    async def get(self, key: str) -> Entry | None:
        v = self.values.get(key)
        return None if v is None else Entry(key, v, 1)

    async def put(self, key: str, value: bytes) -> int:
        self.values[key] = value
        return 1


async def bench(nodes: int, state: Path) -> dict[str, object]:
    async with Store(StoreSettings(state_dir=state)) as store:
        writer = asyncio.create_task(store.run())
        fleet = Fleet(store=store, scheduler=Scheduler(),
                      liveness=Liveness(default_heartbeat=30, missed=3, now=time.monotonic()))
        t = time.perf_counter()
        for i in range(nodes):
            name = f"node-{i}"
            fleet.register_node(name)
            fleet.node_status(name, {"allocatable": {"cpu": 4000, "memory": 8 << 30,
                                                     "pods": 110},
                                     "capacity": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
                                     "arch": "amd64", "heartbeat": 30})
            fleet.mark_ready(name)
            if i % 1000 == 0:
                await asyncio.sleep(0)
        fleet.apply([parse_object(DAEMONSET)])
        await store.flush()
        made = time.perf_counter() - t
        tune_gc()  # as the cloudcore binary does once started
        hub = SyncHub(nodes=GatedNodes(fleet, is_global=lambda: False),
                      desired=fleet.desired_sets, store=store, settings=SyncSettings(),
                      metrics=Metrics(), insecure=True)
        hub.attach(lambda *a: None)

        async def noop(filters: list[str]) -> None:
            return None

        shard = Shard(name="S1", fleet=fleet, hub=hub, subscribe=noop, unsubscribe=noop,
                      lease=LeaseSettings(name="S1"), status_interval=0.01)
        shard.forget_all()
        bucket = MemoryBucket()
        shard._status = bucket  # type: ignore[assignment]
        worst = [0.0]
        stop = asyncio.Event()

        async def probe() -> None:
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                a = loop.time()
                await asyncio.sleep(0.005)
                worst[0] = max(worst[0], loop.time() - a - 0.005)

        prober = asyncio.create_task(probe())
        await asyncio.sleep(0.05)
        everything = frozenset(range(256))
        t = time.perf_counter()
        await shard.on_change(Change(acquired=everything, lost=frozenset(), owned=everything))
        acquire = time.perf_counter() - t
        hold_acquire, worst[0] = worst[0], 0.0
        writer_task = asyncio.create_task(shard._write_status())
        t = time.perf_counter()
        while len(bucket.values) < 256:
            await asyncio.sleep(0.01)
        summaries = time.perf_counter() - t
        writer_task.cancel()
        hold_summaries, worst[0] = worst[0], 0.0
        half = frozenset(range(128))
        t = time.perf_counter()
        await shard.on_change(Change(acquired=frozenset(), lost=half, owned=everything - half))
        lose = time.perf_counter() - t
        lose_hold, worst[0] = worst[0], 0.0
        # node status summaries with each node's reported pod status (proposal 0008:
        # the holder's rollout gates read them): every node's agent pod reported
        # Running, then one round of summaries of the 128 partitions still held, a
        # round with nothing changed, and the round read by another shard
        for i, (key, pod) in enumerate(list(fleet.pods.items()), 1):
            fleet.pod_statuses(pod.spec.node_name or "", {f"pod/{key[0]}/{key[1]}": {
                "phase": "Running", "revision": pod.metadata.annotations.get(REVISION),
                "containerStatuses": [{"name": "c", "state": "running", "ready": True}]}})
            if i % 1000 == 0:
                await asyncio.sleep(0)
        await asyncio.sleep(0.02)
        worst[0] = 0.0
        writer_st = NodeStatuses(fleet, shard="S1", owns=shard.owns)
        t = time.perf_counter()
        docs = await writer_st.changed_summaries()
        status_round = time.perf_counter() - t
        await asyncio.sleep(0.02)  # the probe notes the last hold
        status_hold, worst[0] = worst[0], 0.0
        t = time.perf_counter()
        again = await writer_st.changed_summaries()
        status_idle = time.perf_counter() - t
        await asyncio.sleep(0.02)
        worst[0] = 0.0
        reader = NodeStatuses(fleet, shard="S2", owns=lambda p: False)
        t = time.perf_counter()
        for i, (name, value) in enumerate(docs.items(), 1):
            reader.show(Entry(node_key(name), value, i))
            if i % DOC_SLICE == 0:  # as `NodeStatuses.run` reads its watch
                await asyncio.sleep(0)
        status_read = time.perf_counter() - t
        await asyncio.sleep(0.02)
        read_hold = worst[0]
        stop.set()
        await prober
        writer.cancel()
        return {"nodes": nodes, "fleet_made_s": round(made, 1),
                "acquire_256_partitions_s": round(acquire, 3),
                "acquire_worst_loop_hold_ms": round(hold_acquire * 1000, 1),
                "summaries_256_partitions_s": round(summaries, 3),
                "summaries_worst_loop_hold_ms": round(hold_summaries * 1000, 1),
                "summary_bytes": sum(len(v) for v in bucket.values.values()),
                "lose_128_partitions_s": round(lose, 3),
                "lose_worst_loop_hold_ms": round(lose_hold * 1000, 1),
                "node_summaries": len(docs),
                "node_summaries_with_pods_s": round(status_round, 3),
                "node_summaries_worst_loop_hold_ms": round(status_hold * 1000, 1),
                "node_summary_bytes": sum(len(v) for v in docs.values()),
                "node_summaries_unchanged_s": round(status_idle, 3),
                "node_summaries_unchanged_written": len(again),
                "node_summaries_read_s": round(status_read, 3),
                "node_summaries_read_worst_loop_hold_ms": round(read_hold * 1000, 1),
                "pod_statuses_shown": reader.pods_shown,
                "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.bench_shard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=20000)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefed-bench-shard-") as d:
        print(json.dumps(asyncio.run(bench(a.nodes, Path(d)))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
