"""Benchmark: `fedctl get nodes` against a cloudcore API holding N registered nodes.

    python -m testbed.bench_list [--nodes 100000] [--runs 3]

Registers the nodes directly through the fleet (with capacity, labels and a Ready
status, as real agents would leave them) over a real LMDB store in a temporary
directory, serves the real API with uvicorn on a free port, then times the real
`fedctl` as subprocesses: `get nodes -o json` and the `get nodes` table, both with
stdout to a file. Run 1 of each is "cold" (the API restarted with a new, empty list cache,
`cloudcore.api.listcache.ListCache`: the first list within a second of a restart,
before the background encoder has filled the `get nodes` view, or of another view after
10 minutes unlisted); run 2 is "live" (every node reported since the last list, which
changes its lastSeen, and the cache's background encoder, as in the service,
re-encoded them: its CPU time is printed); later runs are "warm". Only public names of
cloudcore are used (the fleet, its objects' change feed through ListCache, the app). A
benchmark prints figures, it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

from cloudcore.api import create_app
from cloudcore.api.listcache import ListCache
from cloudcore.fleet.projection import NODE_TABLE
from cloudcore.metrics import Metrics
from testbed.bench_apply import bench_fleet, register_nodes


def _fedctl(url: str, *args: str, out: Path) -> tuple[float, int]:
    t = time.perf_counter()
    with out.open("wb") as f:
        subprocess.run([sys.executable, "-m", "fedctl", "--server", url, *args], stdout=f,
                       check=True, env={**os.environ, "NO_COLOR": "1"})
    return time.perf_counter() - t, out.stat().st_size


class _Api:
    """The real API app served by uvicorn on a free port, over the bench's fleet, with
    its own list cache (`cloudcore.api.listcache.ListCache`, as the service builds it);
    `restart` is a cloudcore restart as the API sees it: a new, empty cache."""

    def __init__(self, fleet: Any, store: Any) -> None:
        self.fleet, self.store = fleet, store
        self.cache = ListCache(fleet.objects)
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = create_app(self.fleet, metrics=Metrics(), flush=self.store.flush,
                         cache=self.cache)
        server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning",
                                               access_log=False))
        self._serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        self._server, self._sock = server, sock

    async def stop(self) -> None:
        if self._server is not None and self._serving is not None:
            self._server.should_exit = True
            await self._serving
        if self._sock is not None:
            self._sock.close()

    async def restart(self) -> None:
        await self.stop()
        self.fleet.objects.unsubscribe(self.cache.changed)
        self.cache = ListCache(self.fleet.objects)
        await self.start()


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def bench(nodes: int, runs: int) -> None:
    async with bench_fleet("bench-list-") as (fleet, store, tmp):
        t = time.perf_counter()
        await register_nodes(fleet, store, nodes)
        print(f"registered {nodes} nodes in {time.perf_counter() - t:.1f} s", flush=True)
        api = _Api(fleet, store)
        await api.start()
        out = tmp / "out"
        secs, _ = await asyncio.to_thread(_fedctl, api.url, "--help", out=out)
        print(f"fedctl --help (interpreter + imports): {secs:.2f} s")
        refresher: asyncio.Task[None] | None = asyncio.create_task(api.cache.keep_encoded())
        t = time.perf_counter()
        while len(api.cache.cached("Node", NODE_TABLE)) < nodes:
            await asyncio.sleep(0.01)  # the service encodes the get-nodes view at start
        print(f"get-nodes view encoded in the background in {time.perf_counter() - t:.2f} s")
        for label, args in (("get nodes -o json", ("get", "nodes", "-o", "json")),
                            ("get nodes (table)", ("get", "nodes")),
                            ("get nodes -o name", ("get", "nodes", "-o", "name"))):
            for run in range(runs):
                what = "warm"
                if run == 0:  # cold: the worst case, see the docstring
                    await _stop(refresher)
                    refresher = None
                    await api.restart()
                    what = "cold"
                elif run == 1:  # live: every node reported since the last list
                    await _stop(refresher)  # measured on its own below
                    cpu = time.process_time()
                    for name in list(fleet.nodes):
                        fleet.mark_ready(name)
                    await store.flush()  # the reports' own writes are done
                    reports = time.process_time() - cpu
                    stale = api.cache.stale_count()
                    cpu = time.process_time()
                    refresher = asyncio.create_task(api.cache.keep_encoded(interval=0.01))
                    while (api.cache.stale_count()
                           or len(api.cache.cached("Node", NODE_TABLE)) < nodes):
                        await asyncio.sleep(0.01)  # the background re-encoding catches up
                    views = ["full" if f is None else f"{len(f)} fields"
                             for k, f in api.cache.projections() if k == "Node"]
                    print(f"  {len(fleet.nodes)} reports: {reports:.2f} CPU s; background "
                          f"re-encoding of {stale} nodes for {len(views)} listed views "
                          f"({', '.join(views)}) and the pinned table view: "
                          f"{time.process_time() - cpu:.2f} CPU s", flush=True)
                    what = "live"
                secs, size = await asyncio.to_thread(_fedctl, api.url, *args, out=out)
                lines = out.read_bytes().count(b"\n")
                print(f"fedctl {label:<20} run {run + 1} {what}:"
                      f" {secs:5.2f} s  ({size / 1e6:.1f} MB, {lines} lines)", flush=True)
        await _stop(refresher)
        await api.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    asyncio.run(bench(a.nodes, a.runs))


if __name__ == "__main__":
    main()
