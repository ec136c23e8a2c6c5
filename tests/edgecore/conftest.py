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
