"""What sharing the node forecasts between shards costs (issue 14, proposal 0008
"Placement"; `cloudcore.cluster.forecasts`).

    python -m testbed.bench_shard_forecasts [--nodes 100000] [--nats]

One forecaster tick of a fleet of N nodes (names as the simulator makes them,
`sim-<i>`; forecasts drawn at random in 0..1, so most peaks take their full three
msgpack bytes), as the cluster makes it whatever the number of shards:

- writer: `SharedForecasts.exchange` of every node (the part of the tick on the event
  loop; the first one also computes each node's partition, remembered after), the
  encoding of the values a partition between two yields (the longest hold measured by
  a probe), and the values it makes, one per partition: KV writes per tick, bytes per tick,
  the largest value and bytes per node;
- reader: a shard holding none of those partitions, with a fleet core of the N nodes
  (`cloudcore.fleet.Fleet`, a store that keeps nothing: the reader writes nothing to
  its store): every value taken (`take`, the decoding), applied to the nodes
  (`apply_read`, which yields between partitions: the longest the event loop was held
  is measured by a probe), and its next tick's merge of the origins (`exchange`, no
  own node).

With `--nats` the values also go through a real nats-server (`testbed.natskv.NatsKV`,
TLS and a password, as a shard connects): the writer's `write_pending` (every value of
the tick in flight together) and the seconds until a reader's watch on another
connection has every one. The collector is tuned as the cloudcore binary tunes it
(`cloudcore.service.tune_gc`) once the reader's fleet is built. Prints one JSON with
the load average beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cloudcore.cluster.forecasts import SharedForecasts, bucket_name
from cloudcore.cluster.kv import Entry
from cloudcore.fleet import Fleet, Liveness
from cloudcore.scheduler import Scheduler
from cloudcore.service import tune_gc
from shared import topics
from testbed.bench_placement import NullStore  # a Persister that keeps nothing

T0 = 1_800_000_000.0


class MemoryBucket:
    def __init__(self) -> None:
        self.values: dict[str, Entry] = {}
        self.rev = 0

    async def put(self, key: str, value: bytes) -> int:
        self.rev += 1
        self.values[key] = Entry(key, value, self.rev)
        return self.rev


def forecasts(names: list[str], seed: int = 1) -> tuple[dict[str, dict[str, float]],
                                                        dict[str, float]]:
    rnd = random.Random(seed)
    out, origins = {}, {}
    for n in names:
        c50, m50 = rnd.random() * 0.8, rnd.random() * 0.8
        out[n] = {"cpu_p50": c50, "cpu_p90": min(1.0, c50 + rnd.random() * 0.2),
                  "mem_p50": m50, "mem_p90": min(1.0, m50 + rnd.random() * 0.2),
                  "trusted": float(rnd.random() < 0.5)}
        origins[n] = T0 - 60 * (rnd.random() < 0.05)
    return out, origins


def writer(names: list[str]) -> SharedForecasts:
    return SharedForecasts(SimpleNamespace(objects=SimpleNamespace(nodes={})), shard="W",
                           owns=lambda p: True, holder=lambda p: "W", fence=lambda p: 7,
                           instance=lambda: "w-1", interval=60.0, wall=lambda: T0)


def reader_fleet(names: list[str]) -> Fleet:
    fleet = Fleet(store=NullStore(), scheduler=Scheduler(),  # type: ignore[arg-type]
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0))
    for name in names:
        fleet.register_node(name)
        fleet.node_status(name, {"allocatable": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
                                 "capacity": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
                                 "arch": "amd64", "heartbeat": 30})
        fleet.mark_ready(name)
    return fleet


async def held(call: Any) -> tuple[float, float]:
    """(seconds, longest event-loop hold in seconds) of awaiting `call`."""
    worst, stop = [0.0], asyncio.Event()

    async def probe() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            a = loop.time()
            await asyncio.sleep(0)
            worst[0] = max(worst[0], loop.time() - a)

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    t = time.perf_counter()
    await call
    took = time.perf_counter() - t
    stop.set()
    await task
    return took, worst[0]


async def bench(nodes: int, use_nats: bool) -> dict[str, Any]:
    names = [f"sim-{i}" for i in range(nodes)]
    results, origins = forecasts(names)
    fleet = reader_fleet(names)
    tune_gc()  # as the cloudcore binary does once started
    w = writer(names)
    bucket = MemoryBucket()
    w.bucket = bucket  # type: ignore[assignment]
    t = time.perf_counter()
    w.exchange(results, origins)  # the first tick: every node's partition computed
    first_s = time.perf_counter() - t
    w._tick = None
    t = time.perf_counter()
    mine, _ = w.exchange(results, origins)
    exchange_s = time.perf_counter() - t
    assert len(mine) == nodes
    pending = w._tick
    took, worst = await held(w.write_pending())
    out_w = {"writer_encode_and_put_ms": round(took * 1000, 1),
             "writer_worst_hold_ms": round(worst * 1000, 2)}
    sizes = [len(e.value) for e in bucket.values.values()]
    out: dict[str, Any] = {
        "nodes": nodes, "load_before": [round(x, 2) for x in os.getloadavg()],
        "writes_per_tick": len(sizes), "bytes_per_tick": sum(sizes),
        "largest_value_bytes": max(sizes), "bytes_per_node": round(sum(sizes) / nodes, 1),
        "writer_first_exchange_ms": round(first_s * 1000, 1),
        "writer_exchange_ms": round(exchange_s * 1000, 1), **out_w}

    r = SharedForecasts(fleet, shard="R", owns=lambda p: False, holder=lambda p: "W",
                        fence=lambda p: None, interval=60.0, wall=lambda: T0)
    t = time.perf_counter()
    longest = 0.0
    for e in bucket.values.values():
        t1 = time.perf_counter()
        r.take(e)
        longest = max(longest, time.perf_counter() - t1)
    out["reader_take_ms"] = round((time.perf_counter() - t) * 1000, 1)
    out["reader_take_longest_partition_ms"] = round(longest * 1000, 2)
    took, worst = await held(r.apply_read())
    assert r.applied == nodes, r.applied
    out["reader_apply_ms"] = round(took * 1000, 1)
    out["reader_apply_worst_hold_ms"] = round(worst * 1000, 2)
    t = time.perf_counter()
    _, merged = r.exchange({}, {})
    out["reader_tick_merge_ms"] = round((time.perf_counter() - t) * 1000, 1)
    assert len(merged) == nodes

    if use_nats:
        out["nats"] = await through_nats(pending, names)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


async def through_nats(pending: Any, names: list[str]) -> dict[str, Any]:
    from cloudcore.cluster.kv import KV, KVSettings
    from testbed.natskv import NatsKV

    with tempfile.TemporaryDirectory(prefix="bench-fc-") as tmp, \
            NatsKV(rundir=Path(tmp), servers=1) as srv:
        kv_settings = KVSettings(urls=tuple(srv.urls), user=srv.user, password=srv.password,
                                 ca_file=srv.ca_file)
        async with KV(kv_settings) as kv_w, KV(kv_settings) as kv_r:
            b = await kv_w.bucket(bucket_name("bench"), create=True)
            w = writer(names)
            w.bucket = b
            seen: set[str] = set()
            rb = await kv_r.bucket(bucket_name("bench"))
            watch = await rb.watch("fc.>", deliver="new")
            done = asyncio.Event()

            async def follow() -> None:
                async for e in watch:
                    seen.add(e.key)
                    if len(seen) == topics.PARTITIONS:
                        done.set()

            task = asyncio.create_task(follow())
            w._tick = pending
            t = time.perf_counter()
            written = await w.write_pending()
            put_s = time.perf_counter() - t
            await asyncio.wait_for(done.wait(), 60)
            seen_s = time.perf_counter() - t
            await watch.stop()
            task.cancel()
            assert written == topics.PARTITIONS
            return {"writes": written, "write_pending_ms": round(put_s * 1000, 1),
                    "all_seen_by_reader_ms": round(seen_s * 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=100_000)
    ap.add_argument("--nats", action="store_true",
                    help="also write and watch the values through a real nats-server")
    args = ap.parse_args()
    if args.nodes < 1:
        ap.error("--nodes: at least 1")
    res = asyncio.run(bench(args.nodes, args.nats))
    res["partitions"] = topics.PARTITIONS
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
