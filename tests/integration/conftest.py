"""A real fleet for integration tests: mosquitto, registry, cloudcore, 3 agents in
network namespaces, real crun containers. One fleet per module (start-up is the cost)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.fleet import Fleet, FleetSettings

NEEDS = ("mosquitto", "crun", "conmon", "skopeo", "umoci", "docker-registry")


def _missing() -> list[str]:
    return [b for b in NEEDS if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.skip("integration tests run real containers and need root")
    if missing := _missing():
        pytest.fail(f"missing system packages: {missing} (make test installs them)")
    workdir = tmp_path_factory.mktemp("fleet")
    f = Fleet(FleetSettings(nodes=3, workdir=workdir, heartbeat_s=1.0, broker_probe=True))
    f.start()
    try:
        f.wait_nodes_ready(timeout=60)
        yield f
    finally:
        f.stop()
