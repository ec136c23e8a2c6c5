"""Fixtures for edgecore tests: a real mosquitto on a free port.

The no-leftover-tasks guard is the repository-wide one in tests/conftest.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.broker import Mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private broker; tests may stop() it to cut every link at once."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed")
    with Mosquitto(workdir=tmp_path / "mosquitto", insecure=True) as broker:
        yield broker


@pytest.fixture
def sweeps_pod_network(tmp_path: Path) -> Iterator[None]:
    """After the test, the pod network of an agent whose state was `tmp_path/state` is
    removed: an agent leaves its pods' network namespaces (as their containers) when it
    stops, and a test's fake runtime does not remove them either (a full run left four
    `/run/netns/edgefed-*` behind, one per such test)."""
    yield
    import asyncio

    from edgecore.join import remove_pod_network

    asyncio.run(remove_pod_network(tmp_path / "state"))
