"""Fixtures for cloudcore tests: a real mosquitto on a free port, settings in
tmp_path, a running service."""
# The no-leftover-tasks guard is the repository-wide one in tests/conftest.py.

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cloudcore.config import Settings
from cloudcore.service import Running, run
from testbed.broker import Mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[int]:
    """A private mosquitto broker; yields its port."""
    with Mosquitto(workdir=tmp_path / "mosquitto", insecure=True) as broker:
        yield broker.port


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings()
    # Service tests drive the hub with unsealed fake edges on an anonymous broker and
    # call the API over plain HTTP: insecure mode. The shipped default (secure) is
    # tested where it matters (test_api.py's HTTPS tests, test_cli.py).
    s.insecure = True
    s.store.state_dir = tmp_path / "state"
    s.store.batch_interval = 0.005
    s.http.port = 0
    s.sync.liveness_interval = 0.05
    s.sync.ack_timeout = 0.5
    s.sync.ack_timeout_cap = 1.0
    s.mqtt.reconnect_base = 0.05
    s.mqtt.reconnect_cap = 0.5
    s.mqtt.publish_concurrency = 8
    return s


class ServiceHandle:
    """Start/stop a cloudcore service inside the test's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.task: asyncio.Task[None] | None = None
        self.running: Running | None = None

    async def start(self) -> Running:
        started: asyncio.Future[Running] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(run(self.settings, on_started=started.set_result))
        done, _ = await asyncio.wait({started, self.task}, timeout=10,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()
        self.running = started.result()
        return self.running

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


@pytest.fixture
async def service_factory(settings: Settings) -> AsyncIterator[type[ServiceHandle]]:
    handles: list[ServiceHandle] = []

    class _Factory(ServiceHandle):
        def __init__(self, s: Settings = settings) -> None:
            super().__init__(s)
            handles.append(self)

    yield _Factory
    for h in handles:
        await h.stop()
