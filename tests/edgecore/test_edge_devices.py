"""Accelerators: discovery plugins on a fake /dev, exclusive allocation persisted in the
cache, and the reconciler's InsufficientDevices (fake runtime)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from edgecore.__main__ import build_parser, settings_from_args
from edgecore.cache import Cache
from edgecore.config import AgentSettings
from edgecore.devices import CORAL, DRI, HAILO, NVIDIA, DeviceAllocator, discover
from edgecore.errors import ConfigError
from edgecore.nodeinfo import node_status
from edgecore.reconciler import Reconciler
from edgecore.reconciler.naming import ENV_DEVICES, container_id
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key
from shared.models import Pod
from shared.pods import PodStatus

from edgecore_fakes import FakeRuntime  # isort: skip

NPU = "example.com/npu"


def fake_dev(root: Path, *names: str) -> Path:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).touch()
    return root


def test_builtin_plugins_and_generic_devices(tmp_path: Path) -> None:
    dev = fake_dev(tmp_path / "dev", "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm",
                   "dri/renderD128", "dri/card0", "apex_0", "hailo0", "null")
    found = discover(dev_root=dev, generic=[(NPU, ("/tmp/x/npu0", "/dev/npu1:/dev/accel1"))])
    assert {r: len(ds) for r, ds in found.items()} == {NVIDIA: 2, DRI: 1, CORAL: 1, HAILO: 1,
                                                       NPU: 2}
    gpu0 = found[NVIDIA][0]
    assert gpu0.id == str(dev / "nvidia0")
    assert gpu0.paths == (str(dev / "nvidia0"), str(dev / "nvidiactl"), str(dev / "nvidia-uvm"))
    assert [d.paths for d in found[NPU]] == [("/tmp/x/npu0:/dev/npu0",),
                                             ("/dev/npu1:/dev/accel1",)]
    assert discover(dev_root=dev, builtin=False) == {}


def test_allocation_is_exclusive_reused_and_released() -> None:
    found = discover(builtin=False, generic=[(NPU, ("/dev/npu0", "/dev/npu1", "/dev/npu2"))])
    alloc = DeviceAllocator(found)
    from shared.pods import Container

    two = Container.parse({"name": "a", "image": "x",
                                    "resources": {"limits": {NPU: 2, "cpu": "1"}}})
    one = Container.parse({"name": "b", "image": "x",
                                    "resources": {"limits": {NPU: "1"}}})
    devs, changed = alloc.allocate("pod/d/p", two)
    assert changed and [d.id for d in devs] == ["/dev/npu0", "/dev/npu1"]
    assert alloc.allocate("pod/d/p", two) == (devs, False)  # stable across passes
    devs_b, _ = alloc.allocate("pod/d/q", one)
    assert [d.id for d in devs_b] == ["/dev/npu2"]
    from edgecore.devices import InsufficientDevices

    with pytest.raises(InsufficientDevices, match=r"needs 1 example\.com/npu; this node has 3, 0"):
        alloc.allocate("pod/d/r", one)
    # Persisted value -> a new allocator (agent restart) sees the same owners.
    saved = {k: alloc.pod_value(k) for k in ("pod/d/p", "pod/d/q")}
    again = DeviceAllocator(found, saved)
    assert again.allocate("pod/d/p", two) == (devs, False)
    with pytest.raises(InsufficientDevices):
        again.allocate("pod/d/r", one)
    assert again.release("pod/d/p") and again.pod_value("pod/d/p") is None
    assert [d.id for d in again.allocate("pod/d/r", one)[0]] == ["/dev/npu0"]
    assert again.capacity() == {NPU: 3}


class World:
    def __init__(self, tmp_path: Path, devices: int = 1) -> None:
        self.runtime = FakeRuntime()
        self.cache = Cache(tmp_path / "cache")
        paths = tuple(f"/dev/npu{i}" for i in range(devices))
        self.found = discover(builtin=False, generic=[(NPU, paths)])
        self.items: dict[str, Any] = {}
        self.latest: dict[str, PodStatus | None] = {}
        self.rec = self.reconciler()

    def reconciler(self) -> Reconciler:
        return Reconciler(node="n", runtime=self.runtime, cache=self.cache,
                          desired=lambda: EdgeDesired(epoch="E", gen=2, items=self.items),
                          sink=self, devices=DeviceAllocator(self.found,
                                                             self.cache.pod_allocations()))

    def update(self, key: str, status: PodStatus | None) -> None:
        self.latest[key] = status

    def add(self, name: str, n: int = 1, image: str = "x") -> tuple[str, str]:
        p = Pod.model_validate({"metadata": {"name": name}, "spec": {"containers": [
            {"name": "main", "image": image, "resources": {"limits": {NPU: n}}}]}})
        key, entry = pod_key("default", name), pod_entry(p)
        self.items[key] = entry
        return key, container_id("default", name, "main", entry["revision"])


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.cache.close()


async def test_pod_waits_for_a_free_device_and_gets_it_when_freed(world: World) -> None:
    a, cid_a = world.add("a")
    await world.rec.reconcile_once()
    spec = world.runtime.containers[cid_a].spec
    assert spec.devices == ("/dev/npu0",) and spec.env[ENV_DEVICES] == "/dev/npu0"
    assert world.cache.pod_allocations() == {a: {"main": {NPU: ["/dev/npu0"]}}}

    b, cid_b = world.add("b")
    await world.rec.reconcile_once()
    st = world.latest[b]
    assert st is not None and (st.phase, st.reason) == ("Pending", "InsufficientDevices")
    assert cid_b not in world.runtime.containers

    # Agent restart: the allocation comes back from the cache, b still waits.
    world.rec = world.reconciler()
    await world.rec.reconcile_once()
    assert world.latest[b].reason == "InsufficientDevices"  # type: ignore[union-attr]
    assert world.runtime.containers[cid_a].state.status == "running"

    del world.items[a]
    await world.rec.reconcile_once()  # a goes, its device is freed ...
    await world.rec.reconcile_once()  # ... and b gets it on the next pass
    assert world.runtime.containers[cid_b].spec.devices == ("/dev/npu0",)
    assert world.cache.pod_allocations() == {b: {"main": {NPU: ["/dev/npu0"]}}}


async def test_update_keeps_the_device_and_unknown_resource_waits(world: World) -> None:
    a, _ = world.add("a", image="x:1")
    await world.rec.reconcile_once()
    _, cid2 = world.add("a", image="x:2")  # new revision of the same pod
    await world.rec.reconcile_once()
    assert world.runtime.containers[cid2].spec.devices == ("/dev/npu0",)
    p = Pod.model_validate({"metadata": {"name": "g"}, "spec": {"containers": [
        {"name": "main", "image": "x", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}})
    world.items["pod/default/g"] = pod_entry(p)
    await world.rec.reconcile_once()
    st = world.latest["pod/default/g"]
    assert st is not None and st.reason == "InsufficientDevices"
    assert "this node has 0" in (st.message or "")
    assert world.latest[a].phase == "Running"  # type: ignore[union-attr]


def test_device_flag_settings_and_capacity(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "run", "--name", "n1", "--state-dir", str(tmp_path),
        "--device", f"{NPU}=/tmp/x/npu0,/tmp/x/npu1", "--log-max-bytes", "65536",
        "--log-keep", "3", "--insecure"])
    s = settings_from_args(args)
    assert s.devices == ((NPU, ("/tmp/x/npu0", "/tmp/x/npu1")),)
    assert (s.log_max_bytes, s.log_keep) == (65536, 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--name", "n", "--state-dir", "d", "--device", "x"])
    with pytest.raises(ConfigError, match="devices"):
        AgentSettings(node="n", state_dir=tmp_path, devices=(("npu", ("/dev/x",)),))
    with pytest.raises(ConfigError, match="log_keep"):
        AgentSettings(node="n", state_dir=tmp_path, log_keep=0)
    st = node_status(s, accelerators={NPU: 2}, usage={"cpu": 120, "memory": 5})
    assert st["capacity"][NPU] == 2 and st["allocatable"][NPU] == 2
    assert st["usage"] == {"cpu": 120, "memory": 5}
    assert isinstance(args, argparse.Namespace)
