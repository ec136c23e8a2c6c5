"""The pod fields of issue 18 on real crun containers (the busybox of the test registry):
env from a ConfigMap, a Secret, the node name and the pod's own fields, seen inside the
container; init containers running in order before the app container.

Real crun/conmon/skopeo/umoci (fixtures_runtime.py), the reconciler run as the agent
runs it (`Node` of test_edge_workloads_crun.py).
"""

# ruff: noqa: F811  (pytest fixtures imported from fixtures_runtime are parameters here)
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from edgecore.runtime import CrunRuntime
from shared.entries import configmap_entry, configmap_key, secret_entry, secret_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fixtures_runtime import (  # noqa: F401  (fixtures are used by name)
    SeededRegistry,
    runtime,
    seeded_registry,
)

from test_edge_workloads_crun import Node, _read, add_pod  # isort: skip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_env_from_configmap_secret_and_node_name_inside_a_container(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    node = Node(runtime, tmp_path)
    node.put(configmap_key("default", "app"), configmap_entry({"MODE": "fast", "LEVEL": "3"}))
    node.put(secret_key("default", "creds"), secret_entry({"password": b"s3cret"}))
    script = ('echo "$MODE $LEVEL $APP_LEVEL $PASSWORD $NODE $POD $CPU_M" > /out/env.tmp;'
              " mv /out/env.tmp /out/env; echo \"$1\" > /out/arg; sleep 300")
    key, _ = add_pod(node, "env", {
        "nodeName": "n",
        "volumes": [{"name": "out", "emptyDir": {}}],
        "containers": [{
            "name": "main", "image": seeded_registry.busybox,
            "command": ["sh", "-c", script, "sh", "node=$(NODE)"],
            "resources": {"limits": {"cpu": "500m"}},
            "envFrom": [{"configMapRef": {"name": "app"}},
                        {"prefix": "APP_", "configMapRef": {"name": "app"}}],
            "env": [
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                                    "key": "password"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "CPU_M", "valueFrom": {"resourceFieldRef": {
                    "resource": "limits.cpu", "divisor": "1m"}}}],
            "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
    })
    out = node.volumes.pod_dir(key) / "empty" / "out"
    task = asyncio.create_task(node.rec.run())
    try:
        await node.until("env written", lambda: _read(out / "env") is not None)
        assert _read(out / "env") == "fast 3 3 s3cret n env 500"
        assert _read(out / "arg") == "node=n"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()


async def test_a_missing_secret_key_keeps_the_container_waiting(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    node = Node(runtime, tmp_path)
    node.put(secret_key("default", "creds"), secret_entry({"user": b"u"}))
    key, _ = add_pod(node, "nokey", {"containers": [{
        "name": "main", "image": seeded_registry.busybox, "command": ["sleep", "300"],
        "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "creds",
                                                             "key": "password"}}}]}]})
    task = asyncio.create_task(node.rec.run())
    try:
        await node.until("config error", lambda: (st := node.latest.get(key)) is not None
                         and st.reason == "CreateContainerConfigError")
        st = node.latest[key]
        assert st is not None and st.phase == "Pending"
        assert "couldn't find key password in Secret default/creds" in (st.message or "")
        assert not [c for c in await runtime.list() if c.annotations.get(
            "edgefed.io/pod") == key]
        node.put(secret_key("default", "creds"), secret_entry({"password": b"p"}))
        await node.until("running", lambda: (st := node.latest.get(key)) is not None
                         and st.phase == "Running")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()


async def test_init_containers_run_in_order_before_the_main_one(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    node = Node(runtime, tmp_path)
    img = seeded_registry.busybox
    mount = [{"name": "out", "mountPath": "/out"}]
    key, _ = add_pod(node, "init", {
        "volumes": [{"name": "out", "emptyDir": {}}],
        "initContainers": [
            {"name": "first", "image": img, "volumeMounts": mount,
             "command": ["sh", "-c", "sleep 0.3; echo first >> /out/order"]},
            {"name": "second", "image": img, "volumeMounts": mount,
             "command": ["sh", "-c", "echo second >> /out/order"]}],
        "containers": [{"name": "main", "image": img, "volumeMounts": mount,
                        "command": ["sh", "-c", "echo main >> /out/order; sleep 300"]}],
    })
    out = node.volumes.pod_dir(key) / "empty" / "out"
    task = asyncio.create_task(node.rec.run())
    try:
        await node.until("main ran", lambda: (_read(out / "order") or "").endswith("main"))
        assert _read(out / "order") == "first\nsecond\nmain"
        await node.until("running", lambda: (st := node.latest.get(key)) is not None
                         and st.phase == "Running")
        st = node.latest[key]
        assert st is not None and st.init_container_statuses is not None
        assert [(c.state, c.exit_code) for c in st.init_container_statuses] == [
            ("terminated", 0), ("terminated", 0)]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()


async def test_host_pid_sysctl_and_dns_config_in_a_real_container(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    node = Node(runtime, tmp_path)
    script = ("cat /proc/sys/kernel/shm_rmid_forced > /out/sysctl;"
              " cat /etc/resolv.conf > /out/resolv; ls /proc | grep -c '^[0-9]' > /out/procs.t;"
              " mv /out/procs.t /out/procs; sleep 300")
    key, _ = add_pod(node, "hostpid", {
        "hostPID": True,
        "dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.0.0.53"],
                                           "options": [{"name": "ndots", "value": "2"}]},
        "securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}]},
        "volumes": [{"name": "out", "emptyDir": {}}],
        "containers": [{"name": "main", "image": seeded_registry.busybox,
                        "command": ["sh", "-c", script],
                        "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
    }, policy={"level": "privileged"})
    out = node.volumes.pod_dir(key) / "empty" / "out"
    task = asyncio.create_task(node.rec.run())
    try:
        await node.until("written", lambda: _read(out / "procs") is not None)
        assert _read(out / "sysctl") == "1"
        assert _read(out / "resolv") == "nameserver 10.0.0.53\noptions ndots:2"
        assert int(_read(out / "procs") or 0) > 5  # the host's processes, not just its own
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()


async def test_a_hostpath_without_type_that_is_missing_is_created_and_runs(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    """The canonical fluentd DaemonSet's case: /var/lib/docker/containers is not there."""
    node = Node(runtime, tmp_path)
    missing = tmp_path / "var" / "lib" / "docker" / "containers"
    key, _ = add_pod(node, "fluentd", {
        "volumes": [{"name": "logs", "hostPath": {"path": str(missing)}}],
        "containers": [{"name": "main", "image": seeded_registry.busybox,
                        "command": ["sh", "-c", "touch /logs/seen; sleep 300"],
                        "volumeMounts": [{"name": "logs", "mountPath": "/logs"}]}],
    }, policy={"level": "privileged"})
    task = asyncio.create_task(node.rec.run())
    try:
        await node.until("ran", (missing / "seen").exists)
        # the container can write before the reconciler has recorded its start (CI of
        # stop 28 read Pending/ContainerCreating right after the file appeared)
        await node.until("running", lambda: (st := node.latest.get(key)) is not None
                         and st.phase == "Running")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()


async def test_host_to_container_propagation_in_a_real_container(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    """A mount made on the host under a HostToContainer volume after the container
    started is seen inside (the host path is a shared mount, as / is under systemd)."""
    import subprocess

    host = tmp_path / "host"
    host.mkdir()
    subprocess.run(["mount", "--bind", str(host), str(host)], check=True)
    subprocess.run(["mount", "--make-shared", str(host)], check=True)
    node = Node(runtime, tmp_path)
    sub = host / "sub"
    sub.mkdir()
    key, _ = add_pod(node, "prop", {
        "volumes": [{"name": "out", "emptyDir": {}},
                    {"name": "host", "hostPath": {"path": str(host), "type": "Directory"}}],
        "containers": [{"name": "main", "image": seeded_registry.busybox,
                        "command": ["sh", "-c", "while true; do ls /host/sub > /out/l.t;"
                                    " mv /out/l.t /out/l; sleep 0.1; done"],
                        "volumeMounts": [{"name": "out", "mountPath": "/out"},
                                         {"name": "host", "mountPath": "/host",
                                          "readOnly": True,
                                          "mountPropagation": "HostToContainer"}]}],
    }, policy={"level": "privileged"})
    out = node.volumes.pod_dir(key) / "empty" / "out"
    task = asyncio.create_task(node.rec.run())
    try:
        await node.until("running", lambda: _read(out / "l") == "")
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(sub)], check=True)
        (sub / "marker").write_text("x")
        await node.until("host mount seen inside", lambda: _read(out / "l") == "marker")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()
        subprocess.run(["umount", "-l", str(sub)], check=False)
        subprocess.run(["umount", "-l", str(host)], check=False)


async def test_a_localhost_seccomp_profile_confines_a_real_container(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    import json

    profiles = tmp_path / "seccomp"
    profiles.mkdir()
    (profiles / "deny-mkdir.json").write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO",
                      "errnoRet": 1}]}))
    node = Node(runtime, tmp_path)
    node.rec.seccomp_dir = profiles
    key, _ = add_pod(node, "seccomp", {
        "securityContext": {"seccompProfile": {"type": "Localhost",
                                               "localhostProfile": "deny-mkdir.json"}},
        "volumes": [{"name": "out", "emptyDir": {}}],
        "containers": [{"name": "main", "image": seeded_registry.busybox,
                        "command": ["sh", "-c", "mkdir /tmp/x 2> /out/err.t;"
                                    " mv /out/err.t /out/err; sleep 300"],
                        "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
    })
    out = node.volumes.pod_dir(key) / "empty" / "out"
    task = asyncio.create_task(node.rec.run())
    try:
        await node.until("ran", lambda: _read(out / "err") is not None)
        assert "Operation not permitted" in (_read(out / "err") or "")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()


async def test_host_ipc_shares_the_nodes_shm_with_a_real_container(
    runtime: CrunRuntime, seeded_registry: SeededRegistry, tmp_path: Path,
) -> None:
    import uuid

    name = f"edgefed-test-{uuid.uuid4().hex[:8]}"
    seen = Path("/dev/shm") / name
    node = Node(runtime, tmp_path)
    add_pod(node, "hostipc", {
        "hostIPC": True,
        "containers": [{"name": "main", "image": seeded_registry.busybox,
                        "command": ["sh", "-c", f"echo shared > /dev/shm/{name}; sleep 300"]}],
    }, policy={"level": "privileged"})
    task = asyncio.create_task(node.rec.run())
    try:
        await node.until("written to the node's /dev/shm", seen.exists)
        assert seen.read_text().strip() == "shared"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        node.cache.close()
        seen.unlink(missing_ok=True)
