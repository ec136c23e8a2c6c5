"""A real cloudcore API (FastAPI + LMDB store, no broker) served by uvicorn in a thread.

Shared by the end-to-end tests (tests/e2e) and the `edgecore join` tests: the CLI
under test talks real HTTP to it, from this process or from a subprocess.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from cloudcore.api import create_app
from cloudcore.auth import Auth
from cloudcore.config import StoreSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store


class Clock:
    """A settable clock for the token registry (expiry tests)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Cloud:
    url: str
    fleet: Fleet
    auth: Auth
    loop: asyncio.AbstractEventLoop
    clock: Clock

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        """Run fn in the server's loop thread (the fleet is not thread-safe)."""
        async def wrap() -> Any:
            return fn(*args, **kw)

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(10)


def serve_cloud(tmp: Path, *, broker: tuple[str, int] = ("broker.example", 8883)
                ) -> Iterator[Cloud]:
    """Start the API on a free port of 127.0.0.1; yields it, stops it on exit."""
    ready, box = threading.Event(), {}  # type: ignore[var-annotated]
    clock = Clock()

    def run() -> None:
        async def main() -> None:
            async with Store(StoreSettings(state_dir=tmp / "cloud", batch_interval=0.005)) as store:
                writer = asyncio.create_task(store.run())
                fleet = Fleet(store=store, scheduler=Scheduler(),
                              liveness=Liveness(default_heartbeat=30, missed=3, now=0))
                auth = Auth(store=store, enabled=False, clock=clock)
                api = create_app(fleet, metrics=Metrics(), flush=store.flush, auth=auth,
                                 broker=broker)
                sock = socket.socket()
                sock.bind(("127.0.0.1", 0))
                server = uvicorn.Server(uvicorn.Config(api, lifespan="off", log_level="warning"))
                box.update(server=server, fleet=fleet, auth=auth, loop=asyncio.get_running_loop(),
                           url=f"http://127.0.0.1:{sock.getsockname()[1]}")
                serving = asyncio.create_task(server.serve(sockets=[sock]))
                while not server.started:
                    await asyncio.sleep(0.01)
                ready.set()
                await serving
                writer.cancel()
                sock.close()

        asyncio.run(main())

    t = threading.Thread(target=run, daemon=True, name="cloudcore-api")
    t.start()
    assert ready.wait(15), "the cloudcore API did not start"
    try:
        yield Cloud(box["url"], box["fleet"], box["auth"], box["loop"], clock)
    finally:
        box["loop"].call_soon_threadsafe(box["fleet"].watches.close)
        box["server"].should_exit = True
        t.join(10)
