"""What a change of the partition -> broker map costs cloudcore's event loop (issue 14,
proposal 0007): N registered nodes, a map of B brokers, one broker drained; prints how
many nodes were told their new list, the total time and the longest slice (one commit of
`cloudcore.synchub.brokers.TELL_SLICE` nodes, during which the loop is held).

    python -m testbed.brokermap_drain --nodes 100000 --brokers 7

No broker, no store on disk: the fleet core and the broker tier in one process, with the
collector tuned as the cloudcore binary tunes it (`cloudcore.service.tune_gc`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable
from typing import Any

from cloudcore.fleet import Fleet, Liveness
from cloudcore.scheduler import Scheduler
from cloudcore.service import tune_gc
from cloudcore.synchub.brokers import TELL_SLICE, BrokerTier, Routes
from shared.brokermap import Broker, BrokerMap
from shared.entries import BROKER_MAP_KEY


class _NullStore:
    epoch = "bench"

    def put(self, db: str, key: str, value: Any) -> None:
        pass

    def put_later(self, db: str, key: str, producer: Callable[[], Any]) -> None:
        pass

    def delete(self, db: str, key: str) -> None:
        pass

    async def flush(self) -> None:
        pass


class _Connections:
    def open(self, name: str, broker: Broker) -> None:
        pass

    def close(self, name: str) -> None:
        pass

    def connected(self, name: str) -> bool:
        return True


async def measure(nodes: int, brokers: int) -> dict[str, Any]:
    store = _NullStore()
    fleet = Fleet(store=store, scheduler=Scheduler(),
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    for i in range(nodes):
        fleet.register_node(f"edge-{i}")
    fleet.commit()
    tune_gc()
    slices: list[float] = []

    def tell(entries: dict[str, dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        for node, value in entries.items():
            fleet.desired_sets.put_entry(node, BROKER_MAP_KEY, value)
        fleet.commit()
        slices.append(time.perf_counter() - t0)

    m = BrokerMap.spread({f"mq-{i}": f"mqtts://mq-{i}.example:8883" for i in range(brokers)})
    tier = BrokerTier(routes=Routes(m), store=store, connections=_Connections(),  # type: ignore[arg-type]
                      nodes=lambda: list(fleet.nodes), tell=tell, persisted=True)
    t = time.perf_counter()
    await tier.drain("mq-0")
    total = time.perf_counter() - t
    return {"nodes": nodes, "brokers": brokers, "slice": TELL_SLICE,
            "told": len(fleet.desired_sets.entries_of(BROKER_MAP_KEY)),
            "seconds": round(total, 3), "slices": len(slices),
            "longest_slice_ms": round(max(slices, default=0.0) * 1000, 1),
            "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.brokermap_drain",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--brokers", type=int, default=7)
    a = p.parse_args(argv)
    if a.brokers < 2 or a.nodes < 1:
        p.error("needs at least 2 brokers and 1 node")
    print(json.dumps(asyncio.run(measure(a.nodes, a.brokers))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
