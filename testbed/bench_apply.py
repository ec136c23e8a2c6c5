"""Benchmark: applying a DaemonSet over N registered nodes, with Python's default
garbage-collector settings and with cloudcore's (`cloudcore.service.tune_gc`).

    python -m testbed.bench_apply [--nodes 50000]

Each setting runs in a fresh interpreter (a subprocess of this program) over its
own LMDB store in a temporary directory: register the nodes, then time
`Fleet.apply` of one DaemonSet (one pod per node: placement, pod objects, per-node
desired sets) and the store commit after it. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from cloudcore.config import StoreSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store


async def register_nodes(fleet: Fleet, store: Store, nodes: int) -> None:
    """`nodes` Ready nodes with capacity, labels and arch, as agents leave them."""
    for i in range(nodes):
        name = f"edge-{i:06d}"
        fleet.register_node(name)
        fleet.node_status(name, {
            "allocatable": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
            "capacity": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
            "arch": "arm64" if i % 3 else "amd64", "agentVersion": "0.1.0",
            "labels": {"zone": f"z{i % 50}", "site": f"shop-{i % 1000}"},
            "heartbeat": 30})
        fleet.mark_ready(name)
        if i % 5000 == 4999:
            await store.flush()
    await store.flush()


@contextlib.asynccontextmanager
async def bench_fleet(prefix: str) -> AsyncIterator[tuple[Fleet, Store, Path]]:
    """A Fleet over its own LMDB store in a temporary directory (also yielded), with the
    store's writer running until the block ends."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        async with Store(StoreSettings(state_dir=Path(tmp) / "s", batch_max_ops=50_000)) as store:
            writer = asyncio.create_task(store.run())
            try:
                yield (Fleet(store=store, scheduler=Scheduler(),
                             liveness=Liveness(default_heartbeat=30, missed=3, now=0)),
                       store, Path(tmp))
            finally:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer


async def _one(nodes: int, tuned: bool) -> None:
    from cloudcore.service import tune_gc
    from shared.models import parse_object

    async with bench_fleet("bench-apply-") as (fleet, store, _):
        await register_nodes(fleet, store, nodes)
        if tuned:
            tune_gc()
        ds = parse_object({
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
            "spec": {"template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
                "containers": [{"name": "c", "image": "busybox"}]}}}})
        t = time.perf_counter()
        fleet.apply([ds])
        applied = time.perf_counter() - t
        await store.flush()
        total = time.perf_counter() - t
        print(f"{'cloudcore gc' if tuned else 'default gc  '}: apply of a DaemonSet over "
              f"{nodes} nodes {applied:.2f} s, committed {total:.2f} s "
              f"({len(fleet.pods)} pods)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=50_000)
    p.add_argument("--one", choices=("default", "tuned"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        asyncio.run(_one(a.nodes, a.one == "tuned"))
        return
    for mode in ("default", "tuned"):
        subprocess.run([sys.executable, "-m", "testbed.bench_apply",
                        "--nodes", str(a.nodes), "--one", mode], check=True)


if __name__ == "__main__":
    main()
