"""Image GC in the agent, the InsufficientDisk retry and pull progress in pod status,
with the fake runtime (reconciler logic; the real image store is tested in test_runtime)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgecore.agent import Agent
from edgecore.cache import Cache
from edgecore.config import AgentSettings
from edgecore.reconciler import CrashLoop, Reconciler
from edgecore.runtime.errors import InsufficientDisk
from edgecore.runtime.images import ImageStore, _ActivePull
from edgecore.runtime.types import ContainerSpec, ImageInfo, PullProgress
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key
from shared.models import Pod
from shared.pods import PodStatus

from edgecore_fakes import FakeRuntime  # isort: skip

NODE = "edge-1"
MiB = 1024 * 1024


class ImageFake(FakeRuntime):
    """The fake with an image list, so the reconciler pulls (and reports) before run()."""

    capabilities = replace(FakeRuntime.capabilities, images=True)
    present: set[str]

    async def images(self) -> list[ImageInfo]:
        return [ImageInfo(ref=r, digest="sha256:" + "0" * 64, size_bytes=1, last_used=0.0)
                for r in sorted(getattr(self, "present", set()))]


class Sink:
    def __init__(self) -> None:
        self.history: list[tuple[str, PodStatus | None]] = []

    def update(self, key: str, status: PodStatus | None) -> None:
        self.history.append((key, status))

    def pulling(self) -> list[PodStatus]:
        return [s for _, s in self.history
                if s is not None and (s.message or "").startswith("pulling ")]


def pod(name: str, image: str, policy: str = "IfNotPresent") -> tuple[str, dict[str, Any]]:
    p = Pod.model_validate({"metadata": {"name": name}, "spec": {"containers": [
        {"name": "main", "image": image, "imagePullPolicy": policy}]}})
    return pod_key("default", name), pod_entry(p)


@pytest.fixture
def cache(tmp_path: Path):
    c = Cache(tmp_path / "cache")
    yield c
    c.close()


def reconciler(runtime: FakeRuntime, cache: Cache, sink: Sink, *pods: tuple[str, dict],
               **kw: Any) -> Reconciler:
    desired = EdgeDesired(epoch="E", gen=1, items=dict(pods))
    return Reconciler(node=NODE, runtime=runtime, cache=cache, desired=lambda: desired,
                      sink=sink, crashloop=CrashLoop(), **kw)


def settings(tmp_path: Path, **kw: Any) -> AgentSettings:
    return AgentSettings(node=NODE, state_dir=tmp_path / "state", **kw)


async def test_gc_keeps_desired_images_and_logs_removals(tmp_path: Path, cache: Cache,
                                                         caplog) -> None:
    rt = FakeRuntime()
    rec = reconciler(rt, cache, Sink(), pod("a", "app:1"), pod("b", "reg:5000/side:2"))
    agent = Agent(settings(tmp_path, image_gc_max_unused_s=3600,
                           image_gc_min_free_bytes=512 * MiB), runtime=rt)
    rt.gc_removes = ["old:1", "older:0"]
    with caplog.at_level(logging.INFO, logger="edgecore.agent"):
        removed = await agent.collect_images(rt, keep=rec.desired_images(), why="periodic")
    assert removed == ["old:1", "older:0"]
    assert rt.gc_calls == [{"keep_refs": {"app:1", "reg:5000/side:2"}, "max_age_s": 3600,
                            "target_free_bytes": 512 * MiB}]
    assert "removed 2 image(s): old:1, older:0" in caplog.text


async def test_gc_runs_periodically(tmp_path: Path) -> None:
    rt = FakeRuntime()
    s = settings(tmp_path, image_gc_interval_s=1, reconcile_interval_s=0.05, heartbeat_s=3600,
                 reconnect_initial_s=0.05, reconnect_max_s=0.5, mqtt_port=9)  # no broker
    agent = Agent(s, runtime=rt)
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(5):
            while len(rt.gc_calls) < 1:
                await asyncio.sleep(0.05)
        assert rt.gc_calls[0]["max_age_s"] == 86400.0
        assert rt.gc_calls[0]["target_free_bytes"] == 1024 * MiB
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("fake", [ImageFake, FakeRuntime])
async def test_insufficient_disk_runs_gc_then_retries(cache: Cache, fake: type) -> None:
    rt = fake()
    key, entry = pod("a", "app:1")
    freed: list[InsufficientDisk] = []
    kept: list[set[str]] = []

    async def on_disk_full(exc: InsufficientDisk, keep: set[str]) -> None:
        freed.append(exc)
        kept.append(keep)

    full = InsufficientDisk("disk full", needed_bytes=100 * MiB, free_bytes=MiB)
    if fake is ImageFake:
        rt.pull_errors.append(full)  # the reconciler's own pull fails
    else:
        original = rt.run

        async def run_once_full(cid: str, spec: ContainerSpec) -> None:
            rt.run = original  # type: ignore[method-assign]
            raise full  # run() pulled and the disk was full
        rt.run = run_once_full  # type: ignore[method-assign]
    sink = Sink()
    rec = reconciler(rt, cache, sink, (key, entry), on_disk_full=on_disk_full)
    await rec.reconcile_once()
    assert freed == [full]
    assert kept == [{"app:1"}]  # the GC is told what the desired pods use
    assert rt.running()  # retried after the GC
    assert sink.history[-1][1] is not None and sink.history[-1][1].phase == "Running"


async def test_insufficient_disk_without_gc_is_image_pull_backoff(cache: Cache) -> None:
    rt = ImageFake()
    rt.pull_errors.append(InsufficientDisk("disk full", needed_bytes=1, free_bytes=0))
    key, entry = pod("a", "app:1", policy="Always")
    sink = Sink()
    await reconciler(rt, cache, sink, (key, entry)).reconcile_once()
    assert not rt.running()
    last = sink.history[-1][1]
    assert last is not None and last.reason == "ImagePullBackOff"


async def test_agent_wires_disk_full_to_gc(tmp_path: Path) -> None:
    rt = ImageFake()
    rt.pull_errors.append(InsufficientDisk("disk full", needed_bytes=2048 * MiB, free_bytes=0))
    agent = Agent(settings(tmp_path, mqtt_port=9, reconnect_initial_s=0.05,
                           reconnect_max_s=0.5), runtime=rt)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.started.wait(), 5)
        assert agent.reconciler is not None and agent.reconciler.on_disk_full is not None
        await agent.reconciler.on_disk_full(
            InsufficientDisk("x", needed_bytes=2048 * MiB, free_bytes=0), {"app:1"})
        # The bigger of the configured threshold and what the pull needed.
        assert rt.gc_calls[-1]["target_free_bytes"] == 2048 * MiB
        assert rt.gc_calls[-1]["keep_refs"] == {"app:1"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_pull_progress_reported_once_then_running(cache: Cache) -> None:
    rt = ImageFake()
    rt.pull_gate = asyncio.Event()
    key, entry = pod("a", "reg:5000/app:1")
    sink = Sink()
    rec = reconciler(rt, cache, sink, (key, entry), pull_report_after_s=0.01,
                     pull_report_s=30)
    step = asyncio.create_task(rec.reconcile_once())
    async with asyncio.timeout(5):
        while not sink.pulling():
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # a slow pull: still one report
    [st] = sink.pulling()
    assert (st.phase, st.reason) == ("Pending", "ContainerCreating")
    assert st.message is not None and st.message.startswith("pulling reg:5000/app:1 (")
    assert st.message.endswith(" s)")
    assert st.container_statuses[0].reason == "ContainerCreating"
    assert not rt.running()
    rt.pull_gate.set()
    await step
    assert rt.running() and sink.history[-1][1] is not None
    assert sink.history[-1][1].phase == "Running"
    assert rt.ops("pull") == [("pull", "reg:5000/app:1")]


async def test_pull_progress_repeats_at_a_slow_cadence(cache: Cache) -> None:
    rt = ImageFake()
    rt.pull_gate = asyncio.Event()
    key, entry = pod("a", "app:1")
    sink = Sink()
    rec = reconciler(rt, cache, sink, (key, entry), pull_report_after_s=0.01,
                     pull_report_s=0.1)
    step = asyncio.create_task(rec.reconcile_once())
    await asyncio.sleep(0.35)
    rt.pull_gate.set()
    await step
    assert 2 <= len(sink.pulling()) <= 5


class ProgressFake(ImageFake):
    """A runtime that measures its pulls (as CrunRuntime.pull_progress does)."""

    capabilities = replace(ImageFake.capabilities, pull_progress=True)
    progress: PullProgress | None = None

    async def pull_progress(self, image: str) -> PullProgress | None:
        return self.progress


async def test_pull_progress_names_bytes_and_layers(cache: Cache) -> None:
    rt = ProgressFake()
    rt.pull_gate = asyncio.Event()
    rt.progress = PullProgress(ref="app:1", bytes_done=3 * MiB, bytes_total=8 * MiB,
                               layers_done=1, layers_total=2)
    key, entry = pod("a", "app:1")
    sink = Sink()
    rec = reconciler(rt, cache, sink, (key, entry), pull_report_after_s=0.01,
                     pull_report_s=0.05)
    step = asyncio.create_task(rec.reconcile_once())
    async with asyncio.timeout(5):
        while not sink.pulling():
            await asyncio.sleep(0.01)
    assert sink.pulling()[0].message == "pulling app:1: 3.0 of 8.0 MiB, 1 of 2 layers (0 s)"
    rt.progress = None  # a runtime that cannot tell: elapsed time only
    n = len(sink.pulling())
    async with asyncio.timeout(5):
        while len(sink.pulling()) == n:
            await asyncio.sleep(0.01)
    assert sink.pulling()[-1].message == "pulling app:1 (0 s)"
    rt.pull_gate.set()
    await step
    assert sink.history[-1][1] is not None and sink.history[-1][1].phase == "Running"


async def test_image_store_measures_blobs_and_partial_files(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    assert await store.pull_progress("app:1") is None  # not being pulled
    blobs = store.layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    active = store._active["app:1"] = _ActivePull("app:1", insecure=False)
    queued = await store.pull_progress("app:1")
    assert queued is not None and queued.queued
    assert queued.describe() == "waiting for another pull"
    active.copying = True
    active.layers = [(a, 1000), (b, 3000)]
    (blobs / ("a" * 64)).write_bytes(b"x" * 1000)
    (store.layout / "oci-put-blob123").write_bytes(b"x" * 1200)
    p = await store.pull_progress("app:1")
    assert p == PullProgress(ref="app:1", bytes_done=2200, bytes_total=4000,
                             layers_done=1, layers_total=2)
    (store.layout / "oci-put-blob123").unlink()
    (blobs / ("b" * 64)).write_bytes(b"x" * 3000)
    p = await store.pull_progress("app:1")
    assert p is not None and (p.bytes_done, p.layers_done) == (4000, 2)
    active.layers = None  # the registry has not told the sizes (yet)
    p = await store.pull_progress("app:1")
    assert p is not None and p.bytes_total is None and p.describe() == "0.0 MiB"


async def test_present_image_is_neither_pulled_nor_reported(cache: Cache) -> None:
    rt = ImageFake()
    rt.present = {"app:1"}
    rt.pull_gate = asyncio.Event()  # would hang if pulled
    key, entry = pod("a", "app:1")
    sink = Sink()
    await reconciler(rt, cache, sink, (key, entry), pull_report_after_s=0.01).reconcile_once()
    assert rt.running() and rt.ops("pull") == [] and sink.pulling() == []


def test_gc_and_resync_flags_and_validation(tmp_path: Path) -> None:
    from edgecore.__main__ import build_parser, settings_from_args
    from edgecore.errors import ConfigError

    args = build_parser().parse_args([
        "run", "--name", NODE, "--state-dir", str(tmp_path), "--image-gc-interval", "60",
        "--image-gc-max-unused", "3600", "--image-gc-min-free-mib", "256",
        "--reconcile-interval", "2", "--reconcile-resync", "20", "--insecure"])
    s = settings_from_args(args)
    assert (s.image_gc_interval_s, s.image_gc_max_unused_s, s.image_gc_min_free_bytes,
            s.reconcile_interval_s, s.reconcile_resync_s) == (60, 3600, 256 * MiB, 2, 20)
    d = settings(tmp_path)
    assert (d.image_gc_interval_s, d.image_gc_max_unused_s, d.image_gc_min_free_bytes,
            d.reconcile_resync_s) == (600, 86400, 1024 * MiB, 30)
    with pytest.raises(ConfigError, match="image_gc_interval_s"):
        settings(tmp_path, image_gc_interval_s=0)
