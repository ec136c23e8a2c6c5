"""Accelerators end to end: an agent exposes two device nodes made for the test with
the generic plugin; three pods each ask for one; two run and each sees only its own
device inside the container; the third stays Pending with the scheduler's reason."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator

import pytest

from testbed.fleet import Fleet, FleetSettings

pytestmark = pytest.mark.integration
RESOURCE = "example.com/npu"


@pytest.fixture(scope="module")
def npu_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0 or shutil.which("crun") is None:
        pytest.skip("needs root and crun")
    work = tmp_path_factory.mktemp("npu")
    devdir = work / "dev"
    devdir.mkdir()
    for name, minor in (("npu0", 3), ("npu1", 5)):  # char 1:3 and 1:5, like null and zero
        os.mknod(devdir / name, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    devices = f"{RESOURCE}={devdir / 'npu0'},{devdir / 'npu1'}"
    f = Fleet(FleetSettings(nodes=1, workdir=work / "fleet", heartbeat_s=1.0,
                            agent_args=("--device", devices)))
    f.start()
    try:
        f.wait_nodes_ready(timeout=60)
        yield f
    finally:
        f.stop()


def npu_deployment(image: str) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "infer"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "infer"}},
                 "template": {"metadata": {"labels": {"app": "infer"}}, "spec": {
                     "containers": [{"name": "c", "image": image,
                                     "command": ["sleep", "3600"],
                                     "resources": {"limits": {RESOURCE: 1}}}]}}}}


def fedctl(f: Fleet, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedctl", *argv], capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, **f.fedctl_env()})


def test_two_pods_get_one_device_each_and_the_third_waits(npu_fleet: Fleet) -> None:
    f = npu_fleet
    node = f.nodes()[0]
    assert node["status"]["capacity"].get(RESOURCE) == 2
    f.apply([npu_deployment(f.image)])

    def placed() -> bool:
        phases = sorted(p["status"].get("phase") for p in f.pods("app=infer"))
        return phases == ["Pending", "Running", "Running"]

    f.wait(placed, timeout=90, what="2 infer pods Running and 1 Pending")
    pods = {p["metadata"]["name"]: p for p in f.pods("app=infer")}
    pending = [p for p in pods.values() if p["status"]["phase"] == "Pending"]
    assert RESOURCE in (pending[0]["status"].get("message") or ""), pending[0]["status"]

    seen = []
    for name, p in pods.items():
        if p["status"]["phase"] != "Running":
            continue
        r = fedctl(f, "exec", name, "--", "sh", "-c", "ls /dev | grep npu")
        assert r.returncode == 0, r.stderr
        seen.append(r.stdout.split())
    assert sorted(map(len, seen)) == [1, 1]  # each sees exactly one device ...
    assert {d for s in seen for d in s} == {"npu0", "npu1"}  # ... and not the same one
