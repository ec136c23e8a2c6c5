"""Pod volumes: the Volumes helper on a real directory, and the reconciler using it
(fake runtime, fake clock, real LMDB cache)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.reconciler import Reconciler
from edgecore.reconciler.naming import container_id
from edgecore.reconciler.volumes import VolumeError, Volumes
from shared.delta import EdgeDesired
from shared.entries import (
    configmap_entry,
    configmap_key,
    parse_pod_entry,
    pod_entry,
    pod_key,
    secret_entry,
    secret_key,
)
from shared.models import Pod
from shared.pods import PodStatus

from edgecore_fakes import FakeRuntime  # isort: skip

NODE = "edge-1"


def pod(name: str, *, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]],
        image: str = "busybox:1", **container: Any) -> tuple[str, dict[str, Any]]:
    p = Pod.model_validate({
        "metadata": {"name": name},
        "spec": {"volumes": volumes,
                 "containers": [{"name": "main", "image": image, "volumeMounts": mounts,
                                 **container}]},
    })
    return pod_key("default", name), pod_entry(p)


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.t = 1000.0
        self.runtime = FakeRuntime(clock=lambda: self.t)
        self.cache = Cache(tmp_path / "cache")
        self.volumes = Volumes(tmp_path / "pods")
        self.items: dict[str, Any] = {}
        self.gen = 1
        self.latest: dict[str, PodStatus | None] = {}
        self.rec = Reconciler(node=NODE, runtime=self.runtime, cache=self.cache,
                              desired=self.desired, sink=self, clock=lambda: self.t,
                              volumes=self.volumes)

    def desired(self) -> EdgeDesired:
        return EdgeDesired(epoch="E", gen=self.gen, items=dict(self.items))

    def update(self, key: str, status: PodStatus | None) -> None:
        self.latest[key] = status

    def put(self, key: str, value: Any) -> None:
        self.items[key] = value
        self.gen += 1

    def drop(self, key: str) -> None:
        del self.items[key]
        self.gen += 1


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.cache.close()


async def test_configmap_secret_emptydir_hostpath_become_mounts(world: World,
                                                               tmp_path: Path) -> None:
    host = tmp_path / "host" / "data"
    key, entry = pod("web", volumes=[
        {"name": "conf", "configMap": {"name": "app"}},
        {"name": "creds", "secret": {"secretName": "creds"}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "data", "hostPath": {"path": str(host), "type": "DirectoryOrCreate"}},
    ], mounts=[
        {"name": "conf", "mountPath": "/etc/app"},
        {"name": "creds", "mountPath": "/run/creds"},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "data", "mountPath": "/data", "readOnly": True},
    ])
    world.put(configmap_key("default", "app"), configmap_entry({"a.conf": "x=1", "b": "2"}))
    world.put(secret_key("default", "creds"), secret_entry({"token": b"s3cret"}))
    # Admitted under baseline with the host dir allowed read-only (the cloud's record).
    entry["policy"] = {"level": "baseline", "hostPathAllow": [str(host.parent)]}
    world.put(key, entry)
    await world.rec.reconcile_once()
    cid = container_id("default", "web", "main", entry["revision"])
    spec = world.runtime.containers[cid].spec
    mounts = {m.destination: m for m in spec.mounts}
    pod_dir = world.volumes.pod_dir(key)
    assert mounts["/etc/app"].source == pod_dir / "configmap" / "conf"
    assert mounts["/etc/app"].read_only and mounts["/run/creds"].read_only
    assert (mounts["/etc/app"].source / "a.conf").read_text() == "x=1"
    assert (mounts["/run/creds"].source / "token").read_bytes() == b"s3cret"
    assert mounts["/scratch"].source == pod_dir / "empty" / "scratch"
    assert not mounts["/scratch"].read_only
    assert stat.S_IMODE(mounts["/scratch"].source.stat().st_mode) == 0o777
    assert mounts["/data"].source == host and host.is_dir() and mounts["/data"].read_only
    assert stat.S_IMODE(world.volumes.root.stat().st_mode) == 0o700
    # Secret values live on a tmpfs of the pod's own, never on disk.
    assert mount_type(pod_dir / "secret") == "tmpfs"
    assert mount_type(pod_dir / "configmap") is None

    # A configMap change reaches the running container in place: same dir, new files,
    # written by rename (new inode), removed keys gone; the container is not restarted.
    conf = mounts["/etc/app"].source
    inode = (conf / "a.conf").stat().st_ino
    (mounts["/scratch"].source / "keep").write_text("scratch data")
    world.put(configmap_key("default", "app"), configmap_entry({"a.conf": "x=2"}))
    runs = len(world.runtime.ops("run"))
    await world.rec.reconcile_once()
    assert (conf / "a.conf").read_text() == "x=2"
    assert (conf / "a.conf").stat().st_ino != inode
    assert sorted(os.listdir(conf)) == ["a.conf"]
    assert len(world.runtime.ops("run")) == runs

    # emptyDir survives a container restart, and goes with the pod.
    world.runtime.exit(cid, 1)
    world.t += 100
    await world.rec.reconcile_once()
    await world.rec.reconcile_once()
    assert cid in world.runtime.running()
    assert (mounts["/scratch"].source / "keep").read_text() == "scratch data"
    world.drop(key)
    await world.rec.reconcile_once()
    assert not pod_dir.exists()
    assert mount_type(pod_dir / "secret") is None
    assert host.is_dir()  # hostPath content is never deleted
    assert world.latest[key] is None


def mount_type(path: Path) -> str | None:
    """The file system type mounted exactly at `path`, or None."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if left.split()[4] == str(path):
            return right.split()[0]
    return None


async def test_missing_configmap_keeps_pod_pending_until_delivered(world: World) -> None:
    key, entry = pod("web", volumes=[{"name": "conf", "configMap": {"name": "late"}}],
                     mounts=[{"name": "conf", "mountPath": "/etc/app"}])
    world.put(key, entry)
    await world.rec.reconcile_once()
    await world.rec.reconcile_once()
    st = world.latest[key]
    assert st is not None and st.phase == "Pending"
    assert st.reason == "CreateContainerConfigError"
    assert "configmap default/late not found" in (st.message or "")
    assert world.runtime.ops("run") == []
    world.put(configmap_key("default", "late"), configmap_entry({"k": "v"}))
    await world.rec.reconcile_once()  # retried on the next pass, no backoff
    st = world.latest[key]
    assert st is not None and st.phase == "Running"
    assert st.container_statuses[0].restart_count == 0


async def test_configmap_removed_later_keeps_running_container(world: World) -> None:
    key, entry = pod("web", volumes=[{"name": "conf", "configMap": {"name": "c"}}],
                     mounts=[{"name": "conf", "mountPath": "/etc/app"}])
    world.put(configmap_key("default", "c"), configmap_entry({"k": "v"}))
    world.put(key, entry)
    await world.rec.reconcile_once()
    world.drop(configmap_key("default", "c"))
    await world.rec.reconcile_once()
    st = world.latest[key]
    assert st is not None and st.phase == "Running"
    conf = world.volumes.pod_dir(key) / "configmap" / "conf"
    assert (conf / "k").read_text() == "v"  # last content stays, as in Kubernetes


def test_items_projection_optional_and_bad_hostpath(tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    vols = Volumes(tmp_path / "pods")
    key, value = pod("p", volumes=[
        {"name": "conf", "configMap": {"name": "c", "items": [{"key": "a", "path": "x/y.conf"}]}},
        {"name": "opt", "secret": {"secretName": "nope", "optional": True}},
    ], mounts=[])
    entry = parse_pod_entry(key, value)
    request.addfinalizer(lambda: vols.remove(key))  # the pod's secret tmpfs
    prepared = vols.prepare(entry, {"configmap/default/c": {"data": {"a": "A", "b": "B"}}})
    conf = prepared.paths["conf"]
    assert (conf / "x" / "y.conf").read_text() == "A"
    assert sorted(p.relative_to(conf).as_posix() for p in conf.rglob("*")) == ["x", "x/y.conf"]
    assert list(prepared.paths["opt"].iterdir()) == []
    # The projected key disappears: the pod's next start waits (not optional).
    with pytest.raises(VolumeError, match="has no key 'a'"):
        vols.prepare(entry, {"configmap/default/c": {"data": {"b": "B"}}})
    with pytest.raises(VolumeError, match="not a valid file name"):
        vols.prepare(entry, {"configmap/default/c": {"data": {"a": "A", "..": "x"}}})

    key2, value2 = pod("q", volumes=[
        {"name": "d", "hostPath": {"path": str(tmp_path / "missing"), "type": "Directory"}},
    ], mounts=[])
    with pytest.raises(VolumeError, match="does not exist"):
        vols.prepare(parse_pod_entry(key2, value2), {})
    (tmp_path / "file").write_text("x")
    key3, value3 = pod("r", volumes=[
        {"name": "d", "hostPath": {"path": str(tmp_path / "file"), "type": "Directory"}},
    ], mounts=[])
    with pytest.raises(VolumeError, match="is not a Directory"):
        vols.prepare(parse_pod_entry(key3, value3), {})
    key4, value4 = pod("s", volumes=[
        {"name": "f", "hostPath": {"path": str(tmp_path / "new.sock"), "type": "FileOrCreate"}},
    ], mounts=[])
    assert vols.prepare(parse_pod_entry(key4, value4), {}).paths["f"].is_file()


async def test_leftover_pod_dirs_are_swept(world: World) -> None:
    stale = world.volumes.root / "default_gone" / "empty" / "x"
    stale.mkdir(parents=True)
    world.put("pod/default/other", pod("other", volumes=[], mounts=[])[1])
    await world.rec.reconcile_once()
    assert not stale.parent.parent.exists()


async def test_agent_without_volume_dir_refuses_volumes(tmp_path: Path) -> None:
    w = World(tmp_path)
    try:
        w.rec.volumes = None
        key, entry = pod("web", volumes=[{"name": "s", "emptyDir": {}}],
                         mounts=[{"name": "s", "mountPath": "/s"}])
        w.put(key, entry)
        await w.rec.reconcile_once()
        st = w.latest[key]
        assert st is not None and (st.phase, st.reason) == ("Pending",
                                                            "CreateContainerConfigError")
    finally:
        w.cache.close()


async def test_pull_policy_and_user_reach_the_runtime(world: World) -> None:
    key, entry = pod("web", volumes=[], mounts=[], imagePullPolicy="Never",
                     securityContext={"runAsUser": 1000, "runAsGroup": 1001})
    world.put(key, entry)
    await world.rec.reconcile_once()
    spec = world.runtime.containers[container_id("default", "web", "main",
                                                 entry["revision"])].spec
    assert (spec.pull_policy, spec.user) == ("Never", "1000:1001")


async def test_always_pull_falls_back_to_local_copy_when_offline(world: World) -> None:
    from edgecore.runtime.errors import ImagePullError

    key, entry = pod("web", volumes=[], mounts=[], imagePullPolicy="Always")
    specs = []
    real_run = world.runtime.run

    async def run(cid: str, spec: Any) -> None:
        specs.append(spec.pull_policy)
        if spec.pull_policy == "Always":
            raise ImagePullError("registry unreachable")
        await real_run(cid, spec)

    world.runtime.run = run  # type: ignore[method-assign]
    world.put(key, entry)
    await world.rec.reconcile_once()
    assert specs == ["Always", "IfNotPresent"]
    st = world.latest[key]
    assert st is not None and st.phase == "Running"
