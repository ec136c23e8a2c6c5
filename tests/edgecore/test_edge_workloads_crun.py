"""The reconciler's workload features on real crun containers: configMap/secret/emptyDir/
hostPath volumes (with an in-place configMap update), runAsUser, an allocated device,
and readiness (httpGet) + liveness (exec) probes restarting an unhealthy container.

Real crun/conmon/skopeo/umoci against a local docker-registry (fixtures_runtime.py);
every test removes its containers and fails if a conmon is left behind.
"""

# ruff: noqa: F811  (pytest fixtures imported from fixtures_runtime are parameters here)
from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.devices import DeviceAllocator, discover
from edgecore.reconciler import CrashLoop, Reconciler
from edgecore.reconciler.naming import container_id
from edgecore.reconciler.prober import ProbeManager, make_probe
from edgecore.reconciler.volumes import Volumes
from edgecore.runtime import CrunRuntime
from shared.delta import EdgeDesired
from shared.entries import configmap_entry, configmap_key, pod_entry, pod_key, secret_entry
from shared.models import Pod
from shared.pods import PodStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_runtime import (  # noqa: F401  (fixtures are used by name)
    SeededRegistry,
    runtime,
    seeded_registry,
)

from testbed.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class Node:
    """A reconciler on a real runtime, run as a task (as the agent does)."""

    def __init__(self, rt: CrunRuntime, tmp_path: Path, *, devices: Any = None) -> None:
        self.items: dict[str, Any] = {}
        self.gen = 1
        self.latest: dict[str, PodStatus | None] = {}
        self.cache = Cache(tmp_path / "cache")
        self.volumes = Volumes(tmp_path / "pods")
        wake = asyncio.Event()  # shared, as the agent does: a probe change wakes the pass
        self.prober = ProbeManager(probe=make_probe(rt), on_change=wake.set)
        self.rec = Reconciler(
            node="n", runtime=rt, cache=self.cache, sink=self, interval_s=0.2,
            desired=lambda: EdgeDesired(epoch="E", gen=self.gen, items=dict(self.items)),
            crashloop=CrashLoop(initial_s=0.3, max_s=1), volumes=self.volumes,
            devices=devices, prober=self.prober, wake=wake)

    def update(self, key: str, status: PodStatus | None) -> None:
        self.latest[key] = status

    def put(self, key: str, value: Any) -> None:
        self.items[key] = value
        self.gen += 1
        self.rec.wake()

    async def until(self, what: str, pred: Callable[[], bool], timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout} s: {what}; statuses {self.latest}")
            await asyncio.sleep(0.05)


def add_pod(node: Node, name: str, spec: dict[str, Any], *,
            policy: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Put a pod in the desired set; `policy` is what the cloud admitted it under."""
    # PID 1 ignores SIGTERM here (sh, httpd): keep the stop grace short.
    p = Pod.model_validate({"metadata": {"name": name},
                            "spec": {"terminationGracePeriodSeconds": 1, **spec}})
    key, entry = pod_key("default", name), pod_entry(p)
    if policy is not None:
        entry["policy"] = policy
    node.put(key, entry)
    return key, entry


async def test_volumes_user_and_device_in_a_real_container(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    host = tmp_path / "host"
    host.mkdir()
    (host / "in.txt").write_text("from the host")
    npu = tmp_path / "npu0"
    os.mknod(npu, 0o666 | 0o020000, os.makedev(1, 3))  # like /dev/null
    npu.chmod(0o666)  # past the umask: the container runs as uid 1000
    devices = DeviceAllocator(discover(builtin=False, generic=[("example.com/npu",
                                                                 (str(npu),))]))
    node = Node(runtime, tmp_path, devices=devices)
    node.put(configmap_key("default", "app"), configmap_entry({"greeting": "v1"}))
    node.put("secret/default/creds", secret_entry({"token": b"t0k"}))
    script = (
        "id -u > /out/uid; cat /run/creds/token > /out/token; cat /host/in.txt > /out/host;"
        " [ -c /dev/npu0 ] && echo x > /dev/npu0 && echo \"$EDGEFED_DEVICES\" > /out/dev;"
        " while true; do cat /etc/app/greeting > /out/greeting.tmp;"
        " mv /out/greeting.tmp /out/greeting; sleep 0.1; done"
    )
    key, entry = add_pod(node, "vol", {
        "volumes": [{"name": "conf", "configMap": {"name": "app"}},
                    {"name": "creds", "secret": {"secretName": "creds"}},
                    {"name": "out", "emptyDir": {}},
                    {"name": "host", "hostPath": {"path": str(host), "type": "Directory"}}],
        "containers": [{
            "name": "main", "image": seeded_registry.busybox, "command": ["sh", "-c", script],
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
            "resources": {"limits": {"example.com/npu": 1}},
            "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"},
                             {"name": "creds", "mountPath": "/run/creds"},
                             {"name": "out", "mountPath": "/out"},
                             {"name": "host", "mountPath": "/host", "readOnly": True}]}],
    }, policy={"level": "baseline", "hostPathAllow": [str(host)]})
    out = node.volumes.pod_dir(key) / "empty" / "out"
    task = asyncio.create_task(node.rec.run())
    try:
        await node.until("greeting v1", lambda: _read(out / "greeting") == "v1")
        assert _read(out / "uid") == "1000"
        assert _read(out / "token") == "t0k"
        assert _read(out / "host") == "from the host"
        assert _read(out / "dev") == "/dev/npu0"
        # Updated in place: the running container sees the new content, no restart.
        node.put(configmap_key("default", "app"), configmap_entry({"greeting": "v2"}))
        await node.until("greeting v2", lambda: _read(out / "greeting") == "v2")
        st = node.latest[key]
        assert st is not None and st.container_statuses[0].restart_count == 0
        # Read-only mounts refuse writes.
        cid = container_id("default", "vol", "main", entry["revision"])
        rc, _, err = await runtime.exec(cid, ["sh", "-c", "echo x > /etc/app/greeting"])
        assert rc != 0 and b"Read-only" in err
        # Deleting the pod removes its container, its volumes and frees the device.
        del node.items[key]
        node.gen += 1
        node.rec.wake()
        await node.until("pod gone", lambda: node.latest.get(key, 1) is None)
        assert not node.volumes.pod_dir(key).exists()
        assert devices.allocations() == {}
        assert (host / "in.txt").exists()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()


async def test_http_readiness_and_exec_liveness_on_a_real_container(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    port = free_port()
    node = Node(runtime, tmp_path)
    script = (f"touch /tmp/healthy; mkdir -p /tmp/www; echo ok > /tmp/www/index.html;"
              f" sleep 1; exec httpd -f -p 127.0.0.1:{port} -h /tmp/www")
    key, entry = add_pod(node, "web", {"containers": [{
        "name": "main", "image": seeded_registry.busybox, "command": ["sh", "-c", script],
        "readinessProbe": {"httpGet": {"path": "/index.html", "port": port},
                           "periodSeconds": 1},
        "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1,
                          "failureThreshold": 2},
    }]})
    cid = container_id("default", "web", "main", entry["revision"])
    task = asyncio.create_task(node.rec.run())

    def status() -> PodStatus:
        st = node.latest.get(key)
        assert st is not None
        return st

    try:
        await node.until("running", lambda: key in node.latest and status().phase == "Running")
        assert status().ready is False  # httpd starts after 1 s
        await node.until("ready", lambda: status().ready is True)
        await runtime.exec(cid, ["rm", "/tmp/healthy"])
        await node.until("restarted", lambda: status().container_statuses[0].restart_count == 1
                         and status().container_statuses[0].state == "running")
        last = status().container_statuses[0].last_state
        assert last is not None and "Unhealthy: liveness probe failed 2 times" in (
            last.message or "")
        await node.until("ready again", lambda: status().ready is True)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except OSError:
        return None
