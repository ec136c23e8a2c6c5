"""What a shard's takeover costs in cloudcore's event loop (issue 14 part 2).

    python -m testbed.bench_shard [--nodes 20000] [--sealed] [--busy-ms MS]
                                  [--profile takeover]

Builds a fleet of N registered nodes with one DaemonSet on a real LMDB store (a
temporary directory), then runs `cloudcore.cluster.shard.Shard` as a shard that takes
all 256 partitions at once (the first shard of a cluster to start), writes one round of
liveness summaries, and gives half of the partitions up (a second shard joining); then
one round of node status summaries with every node's pod reported (written, unchanged,
and read by another shard: `cloudcore.cluster.status`), with
a probe task measuring the longest the event loop was held (the collector tuned as the
binary tunes it, `cloudcore.service.tune_gc`). Then the takeover proper (`_retake`):
the 128 partitions given up are taken over again from another shard's summaries (every
node Ready), the snapshots going through a publish queue the hub waits on, and given up
again: wall time per node, loop turns, until every push has left; with `--busy-ms` the
same with the loop held that long every turn (a saturated data plane: a takeover's wall
time there is about its loop turns times the turn). No NATS, no MQTT: the
subscriptions are no-ops and the summaries go to a bucket in memory. Prints one JSON
(`--profile takeover` also prints cProfile stats of that acquisition to stderr).

    python -m testbed.bench_shard --nodes 50000 --sealed --busy-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.leases import Change, LeaseSettings
from cloudcore.cluster.shard import STATUS_KEY, GatedNodes, Shard
from cloudcore.cluster.status import DOC_SLICE, NodeStatuses, node_key
from cloudcore.config import StoreSettings, SyncSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.fleet.naming import REVISION
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.service import tune_gc
from cloudcore.store import Store
from cloudcore.synchub import SyncHub
from shared import topics
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


async def bench(nodes: int, state: Path, *, busy_ms: float = 0.0, sealed: bool = False,
                publish_rate: int = 500, profile: str | None = None) -> dict[str, object]:
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
        node_key32 = bytes(range(32))
        hub = SyncHub(nodes=GatedNodes(fleet, is_global=lambda: False),
                      desired=fleet.desired_sets, store=store, settings=SyncSettings(),
                      metrics=Metrics(), insecure=True,
                      keys=(lambda node: node_key32) if sealed else None)
        hub.attach(lambda *a: None)

        async def noop(filters: list[str]) -> None:
            return None

        shard = Shard(name="S1", fleet=fleet, hub=hub, subscribe=noop, unsubscribe=noop,
                      lease=LeaseSettings(name="S1"), status_interval=0.01)
        shard.forget_all()
        bucket = MemoryBucket()
        shard._status = bucket  # type: ignore[assignment]
        worst = [0.0]
        lates: list[float] = []  # every lateness of the probe (the takeover's p50, p99)
        stop = asyncio.Event()

        async def probe() -> None:
            loop = asyncio.get_running_loop()
            while not stop.is_set():
                a = loop.time()
                await asyncio.sleep(0.005)
                late = loop.time() - a - 0.005
                worst[0] = max(worst[0], late)
                lates.append(late)

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
        retake = await _retake(shard, hub, bucket, half, worst, lates=lates, busy_ms=busy_ms,
                               publish_rate=publish_rate, profile=profile)
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
                **retake,
                "load_average": os.getloadavg()[0]}


class Turns:
    """Counts the event loop's turns (one step of this task per turn) while running."""

    def __init__(self) -> None:
        self.n = 0
        self._task: asyncio.Task[None] | None = None

    async def _count(self) -> None:
        while True:
            await asyncio.sleep(0)
            self.n += 1

    def start(self) -> None:
        self.n = 0
        self._task = asyncio.create_task(self._count())

    async def stop(self) -> int:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.n


class Publisher:
    """The hub's publish queue, drained `rate` messages a loop turn (as the brokers'
    publishers would), so pushes beyond `QUEUE_AHEAD` wait in the hub's deferred
    queue and `SyncHub.run_retries` sends them as the queue makes room."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.queue: collections.deque[int] = collections.deque()
        self.sent = 0
        self.bytes = 0

    def send(self, partition: int, topic: str, payload: bytes, broker: str) -> None:
        self.queue.append(len(payload))

    def backlog(self) -> int:
        return len(self.queue)

    async def run(self) -> None:
        while True:
            for _ in range(min(self.rate, len(self.queue))):
                self.bytes += self.queue.popleft()
                self.sent += 1
            await asyncio.sleep(0)


async def _busy(ms: float) -> None:
    """A saturated data plane: holds the loop `ms` milliseconds every turn."""
    while True:
        end = time.perf_counter() + ms / 1000
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)


async def _retake(shard: Shard, hub: SyncHub, bucket: MemoryBucket, half: frozenset[int],
                  worst: list[float], *, lates: list[float], busy_ms: float,
                  publish_rate: int,
                  profile: str | None) -> dict[str, object]:
    """The takeover proper (a shard taking over a dead shard's partitions): the 128
    partitions given up are taken again from another shard's liveness summaries (every
    node Ready, last seen 5 s ago), the pushes going through a publish queue of
    `QUEUE_AHEAD` (drained `publish_rate` messages a turn); then given up again. Timed: the
    acquisition (`on_change`), until every push left the queue, the loss; per node; the
    loop turns each took; and with `busy_ms`, the same again with a task holding the
    loop that long every turn (the 100,000-node runs' loop lag)."""
    fleet = shard.fleet
    owned = frozenset(shard.owned)
    names = [n for n in fleet.nodes if topics.partition_of(n) in half]
    pub = Publisher(rate=publish_rate)
    hub.attach(pub.send, backlog=pub.backlog)
    tasks = [asyncio.create_task(pub.run()), asyncio.create_task(hub.run_retries())]
    turns = Turns()
    out: dict[str, object] = {"retake_nodes": len(names)}

    def summaries() -> None:
        at = time.time()
        by_part: dict[int, dict[str, list[object]]] = {p: {} for p in half}
        for n in names:
            by_part[topics.partition_of(n)][n] = ["Ready", at - 5]
        for p, nodes in by_part.items():
            bucket.values[STATUS_KEY.format(pp=topics.pp(p))] = json.dumps(
                {"shard": "S2", "instance": "i2", "at": at, "nodes": nodes},
                separators=(",", ":")).encode()

    async def once(tag: str) -> None:
        summaries()
        await asyncio.sleep(0.02)
        worst[0] = 0.0
        lates.clear()
        sent0, bytes0 = pub.sent, pub.bytes
        prof = cProfile.Profile() if profile == tag else None
        turns.start()
        t = time.perf_counter()
        if prof is not None:
            prof.enable()
        await shard.on_change(Change(acquired=half, lost=frozenset(), owned=owned | half))
        if prof is not None:
            prof.disable()
        took = time.perf_counter() - t
        n_turns = await turns.stop()
        hold = worst[0]
        held = sorted(lates) or [0.0]
        while hub._deferred or pub.queue:
            await asyncio.sleep(0.001)
        pushed = time.perf_counter() - t
        worst[0] = 0.0
        turns.start()
        t = time.perf_counter()
        await shard.on_change(Change(acquired=frozenset(), lost=half, owned=owned))
        lost = time.perf_counter() - t
        lose_turns = await turns.stop()
        n = max(1, len(names))
        out.update({f"{tag}_s": round(took, 3), f"{tag}_us_per_node": round(took / n * 1e6, 1),
                    f"{tag}_loop_turns": n_turns,
                    f"{tag}_worst_loop_hold_ms": round(hold * 1000, 1),
                    f"{tag}_p50_p99_loop_hold_ms": [
                        round(held[len(held) // 2] * 1000, 1),
                        round(held[min(len(held) - 1, len(held) * 99 // 100)] * 1000, 1)],
                    f"{tag}_pushes_sent_s": round(pushed, 3),
                    f"{tag}_pushed": pub.sent - sent0,
                    f"{tag}_pushed_kb": round((pub.bytes - bytes0) / 1024),
                    f"{tag}_lose_s": round(lost, 3),
                    f"{tag}_lose_us_per_node": round(lost / n * 1e6, 1),
                    f"{tag}_lose_loop_turns": lose_turns,
                    f"{tag}_lose_worst_loop_hold_ms": round(worst[0] * 1000, 1)})
        for what, parts in (("", getattr(shard, "last_takeover", None)),
                            ("_lose", getattr(shard, "last_loss", None))):
            if parts:  # the shard's own breakdown (`Shard.last_takeover`, `last_loss`)
                out[f"{tag}{what}_parts"] = {k: round(v, 4) if isinstance(v, float) else v
                                             for k, v in parts.items()}
        if prof is not None:
            stats = pstats.Stats(prof, stream=sys.stderr)
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(40)

    await once("takeover")
    if busy_ms > 0:
        busy = asyncio.create_task(_busy(busy_ms))
        await once("takeover_busy")
        busy.cancel()
        out["busy_ms_per_turn"] = busy_ms
    for task in tasks:
        task.cancel()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.bench_shard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=20000)
    p.add_argument("--busy-ms", type=float, default=0.0,
                   help="also time the takeover with a task holding the loop this many "
                        "ms every turn (a saturated data plane)")
    p.add_argument("--publish-rate", type=int, default=500,
                   help="messages the publish queue sends a loop turn in the takeover")
    p.add_argument("--sealed", action="store_true",
                   help="seal every message to the nodes (one key for all), as the "
                        "service does; without it the hub runs insecure")
    p.add_argument("--profile", choices=["takeover", "takeover_busy"],
                   help="cProfile that acquisition (the loss not included); stats to "
                        "stderr")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefed-bench-shard-") as d:
        print(json.dumps(asyncio.run(bench(a.nodes, Path(d), busy_ms=a.busy_ms,
                                           sealed=a.sealed, publish_rate=a.publish_rate,
                                           profile=a.profile))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
