"""In-process figure for issue 14 (not a test): the memory the sync hub keeps per node.

N nodes (the fleet's own records made first, outside the measurement) each speak to a
real `SyncHub` through `handle` as a simulated edge does in `testbed bench sync`: a sealed
Resync and an opening report through one of 7 brokers; then a DaemonSet is applied (a
delta to every node) and every node acks it; then a telemetry-only report from each (its
ReportAck waits, `LAZY_RACK_S`). tracemalloc counts what is allocated from the first
message on and is still held at the end, and prints it by source line, the hub's own
files (cloudcore/synchub/) apart from the rest. Compare two trees in one sitting:

    PYTHONSAFEPATH=1 PYTHONPATH=/tmp/before .venv/bin/python \
        tests/cloudcore/bench_hub_memory.py 20000
    PYTHONSAFEPATH=1 PYTHONPATH=$PWD .venv/bin/python tests/cloudcore/bench_hub_memory.py 20000
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # cloudcore_fakes

from cloudcore_fakes import FakeStore, add_node, daemonset, make_fleet

from cloudcore.config import SyncSettings
from cloudcore.metrics import Metrics
from cloudcore.synchub.brokers import Routes
from cloudcore.synchub.hub import SyncHub
from shared import seal, topics
from shared.brokermap import BrokerMap
from shared.codec import Ack, Desired, Report, Resync, decode, encode
from shared.models import parse_object

BROKERS = 7


class _Durable:
    """A store whose every write is durable at once (the acks go out in the call)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def durable(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self._loop.create_future()
        fut.set_result(None)
        return fut


async def run(n: int, top: int) -> None:
    logging.disable(logging.WARNING)
    fleet = make_fleet(FakeStore())
    names = [f"sim-{i}" for i in range(n)]
    for name in names:
        add_node(fleet, name)
    keys = {name: os.urandom(32) for name in names}
    edge_keys = {name: seal.NodeKeys.derive(k) for name, k in keys.items()}
    brokers = {f"mq-{i}": f"mqtts://127.0.0.1:{2000 + i}" for i in range(BROKERS)}
    routes = Routes(BrokerMap.spread(brokers))
    hub = SyncHub(nodes=fleet, desired=fleet.desired_sets,
                  store=_Durable(asyncio.get_running_loop()),  # type: ignore[arg-type]
                  settings=SyncSettings(), metrics=Metrics(), keys=keys.get, routes=routes)
    last: dict[str, tuple[str, int]] = {}  # node -> the last Desired sent (epoch, gen)

    def send(partition: int, topic: str, payload: bytes, broker: str) -> None:
        name = topic.split("/")[-2]
        msg = decode(seal.unseal(edge_keys[name].down, topic, payload))
        if isinstance(msg, Desired):
            last[name] = (msg.epoch, msg.gen)

    hub.attach(send, backlog=lambda: 0)

    def up(name: str, msg: Resync | Report | Ack) -> None:
        topic = topics.up(name)
        payload = seal.seal(edge_keys[name].up, topic, encode(msg))
        hub.handle(topic, payload, broker=routes.broker_for(name, topics.partition_of(name)))

    gc.collect()
    tracemalloc.start(1)
    base = tracemalloc.take_snapshot()
    t0 = time.perf_counter()
    status = {"capacity": {"cpu": 4000, "memory": 2**33, "pods": 110},
              "allocatable": {"cpu": 4000, "memory": 2**33, "pods": 110},
              "arch": "amd64", "os": "linux", "labels": {}, "heartbeat": 300}

    def ack_all() -> None:
        for name, (epoch, gen) in list(last.items()):
            up(name, Ack(node=name, epoch=epoch, gen=gen))
        last.clear()

    for name in names:
        up(name, Resync(node=name, epoch=None, gen=0, seq=0, reason="connect"))
        up(name, Report(node=name, seq=1, ts=time.time(), node_status=status))
    ack_all()  # the snapshot each got at connect
    fleet.apply([parse_object(daemonset("bench", args=["sleep", "1"]))])
    ack_all()
    for name in names:
        nd = fleet.desired_sets.get(name)
        assert nd is not None
        up(name, Report(node=name, seq=2, epoch=nd.epoch, gen=nd.gen, ts=time.time(),
                        telemetry=[{"cpu": 0.1}]))

    gc.collect()
    elapsed = time.perf_counter() - t0
    snap = tracemalloc.take_snapshot()
    stats = snap.compare_to(base, "lineno")
    ours = [s for s in stats if "cloudcore/synchub/" in s.traceback[0].filename]
    total = sum(s.size_diff for s in stats)
    hub_total = sum(s.size_diff for s in ours)
    acked = sum(1 for name in names
                if (nd := fleet.desired_sets.get(name)) is not None and nd.acked >= nd.gen > 0)
    print(f"n={n}: {elapsed:.1f} s, {acked} nodes acked; held since the first message: "
          f"{total / 2**20:.1f} MiB ({total / n:.0f} B a node), of which cloudcore/synchub/ "
          f"{hub_total / 2**20:.1f} MiB ({hub_total / n:.0f} B a node)")
    print("  the hub's lines:")
    for s in ours[:top]:
        f = s.traceback[0]
        print(f"    {s.size_diff / n:7.0f} B/node  {f.filename.split('/work/main/')[-1]}:"
              f"{f.lineno}")
    print("  everything, largest first:")
    for s in stats[:top]:
        f = s.traceback[0]
        print(f"    {s.size_diff / n:7.0f} B/node  {f.filename.split('/work/main/')[-1]}:"
              f"{f.lineno}")


if __name__ == "__main__":
    asyncio.run(run(int(sys.argv[1]) if len(sys.argv) > 1 else 20000,
                    int(sys.argv[2]) if len(sys.argv) > 2 else 15))
