"""A real fleet for integration tests: mosquitto, registry, cloudcore, 3 agents in
network namespaces, real crun containers. One fleet per module (start-up is the cost)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixtures_fleet import real_fleet

from testbed.fleet import Fleet, FleetSettings


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("fleet")
    with real_fleet(FleetSettings(nodes=3, workdir=workdir, heartbeat_s=1.0,
                                  broker_probe=True)) as f:
        yield f
