"""Benchmark (a program that prints figures, not a test): the console at fleet scale.

    .venv/bin/python tests/console/bench_console.py [--nodes 100000] [--idle 60]
                                                    [--screenshot docs/console-fleet-100k.png]

Registers N nodes (1 % NotReady or Unknown, 400 sites) in an in-process cloudcore API
over a real LMDB store (no broker: what is measured is the console and the API), then
with Debian's chromium: the time each page takes until its data is shown (a fresh tab
each time, the overview's server cache cold for the fleet page), the longest stretch the
overview's walk holds the event loop, and this process's CPU while a fleet page sits
open and idle, against the same time with no page open. The machine is shared: read
the load average it prints beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import uvicorn
from playwright.sync_api import sync_playwright

from cloudcore.api import create_app
from cloudcore.auth import Auth
from cloudcore.config import StoreSettings
from cloudcore.console import routes
from cloudcore.fleet import Fleet, Liveness
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOWN = {"#/": "#node-table tbody tr",
         "#/nodes/node-050000": "#node-status dl",
         "#/workloads": "#daemonsets table"}


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def serve(n: int, box: dict[str, Any], ready: threading.Event) -> None:
    async def main() -> None:
        tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
        async with Store(StoreSettings(state_dir=tmp / "s")) as store:
            writer = asyncio.create_task(store.run())
            fleet = Fleet(store=store, scheduler=Scheduler(),
                          liveness=Liveness(default_heartbeat=30, missed=3, now=0))
            rnd = random.Random(1)
            for i in range(n):
                name = f"node-{i:06d}"
                fleet.register_node(name)
                node = fleet.nodes[name]
                node.metadata.labels["edgefed.io/site"] = f"site-{i % 400}"
                node.status.ready = ("Ready" if rnd.random() > 0.01
                                     else rnd.choice(["NotReady", "Unknown"]))
                node.status.last_seen = time.time() - rnd.random() * 30
            await routes.summarize(fleet, selector=None, troubled=20)  # warm
            pieces: list[float] = []
            real_sleep = asyncio.sleep
            mark = [time.perf_counter()]

            async def timed(delay: float) -> None:
                pieces.append(time.perf_counter() - mark[0])
                await real_sleep(delay)
                mark[0] = time.perf_counter()

            routes.asyncio.sleep = timed  # type: ignore[assignment]
            t = time.perf_counter()
            mark[0] = t
            await routes.summarize(fleet, selector=None, troubled=20)
            total = time.perf_counter() - t
            pieces.append(time.perf_counter() - mark[0])  # after the last yield
            routes.asyncio.sleep = real_sleep
            print(f"overview walk of {n} nodes: {total * 1000:.0f} ms, longest piece between "
                  f"yields {max(pieces) * 1000:.1f} ms", flush=True)
            app = create_app(fleet, metrics=Metrics(), flush=store.flush,
                             auth=Auth(store=store, enabled=False))
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
            box.update(url=f"http://127.0.0.1:{sock.getsockname()[1]}", server=server)
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started:
                await asyncio.sleep(0.01)
            ready.set()
            await serving
            writer.cancel()

    asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=100_000)
    p.add_argument("--idle", type=float, default=60.0, help="seconds a page sits open")
    p.add_argument("--screenshot", type=Path)
    args = p.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    box: dict[str, Any] = {}
    ready = threading.Event()
    threading.Thread(target=serve, args=(args.nodes, box, ready), daemon=True).start()
    if not ready.wait(900):
        raise SystemExit("the API did not start")
    url = box["url"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        for route, shown in SHOWN.items():
            seen = []
            for _ in range(3):
                time.sleep(routes.OVERVIEW_TTL + 0.5 if route == "#/" else 0.5)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{url}/console/{route}", wait_until="commit")
                page.wait_for_selector(shown)
                if route == "#/":
                    page.wait_for_selector(".card.Ready")
                seen.append(page.evaluate("() => performance.now()"))
                page.close()
            print(f"{route:22s} shown after (browser clock from navigation): "
                  + ", ".join(f"{x:.0f} ms" for x in seen), flush=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{url}/console/#/")
        page.wait_for_selector(".card.Ready")
        page.wait_for_selector("#node-table tbody tr")
        if args.screenshot:
            page.screenshot(path=str(args.screenshot))
        c0, t0 = cpu(), time.monotonic()
        time.sleep(args.idle)
        busy = (cpu() - c0) / (time.monotonic() - t0)
        page.close()
        c0, t0 = cpu(), time.monotonic()
        time.sleep(args.idle / 2)
        quiet = (cpu() - c0) / (time.monotonic() - t0)
        print(f"CPU of this process (API + playwright client): fleet page open and idle "
              f"{busy * 100:.2f} % of a core, no page open {quiet * 100:.2f} %", flush=True)
        browser.close()
    box["server"].should_exit = True
    print(f"load average {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
