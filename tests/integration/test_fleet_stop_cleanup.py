"""A stopped testbed fleet leaves nothing of its pods behind on the host: not their
containers (they outlive agents) and not their network namespaces and veths, which
outlive them too. Before the fix every real-fleet test run left one
`/run/netns/edgefed-*` per pod it ran (about a thousand a day here), each lengthening
the mount table every wrapped crun call copies. Real mosquitto, cloudcore, an agent in
its network namespace, real crun."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fixtures_fleet import real_fleet

from testbed.fleet import FleetSettings

pytestmark = pytest.mark.integration

NETNS = Path("/run/netns")


def pod_netns() -> set[str]:
    return {p.name for p in NETNS.glob("edgefed-*")} if NETNS.is_dir() else set()


def test_stopped_fleet_removes_its_pods_network_namespaces(tmp_path: Path) -> None:
    before = pod_netns()
    with real_fleet(FleetSettings(nodes=1, workdir=tmp_path / "fleet", heartbeat_s=1.0,
                                  cloud_args=("--forecast-interval", "3600"))) as fleet:
        node = fleet.agents[0].name
        pod: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "netpod"},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "c", "image": fleet.image,
                                     "command": ["sleep", "3600"],
                                     "resources": {"limits": {"memory": "16Mi"}}}]}}
        fleet.apply([pod])
        fleet.wait(lambda: (fleet.get("/api/v1/pods/default/netpod").get("status") or {})
                   .get("phase") == "Running", timeout=90, what="netpod Running")
        made = pod_netns() - before
        assert made, "the pod got no network namespace of its own (the test sees nothing)"
    left = made & pod_netns()
    assert not left, f"network namespaces left after the fleet stopped: {sorted(left)}"
