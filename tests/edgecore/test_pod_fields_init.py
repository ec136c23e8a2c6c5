"""initContainers on the reconciler (fake runtime, fake clock, real LMDB cache): in order,
each to completion, before the app containers; restarted per restartPolicy; the statuses
kubectl shows (Init:1/2, Init:CrashLoopBackOff, Init:Error); sidecars
(`restartPolicy: Always`) kept running beside the app containers; the schema's rules and
the policy check covering init containers too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.reconciler import CrashLoop, Reconciler
from edgecore.reconciler.naming import container_id
from shared import policy
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key
from shared.errors import ObjectError
from shared.models import Pod
from shared.pods import PodSpec, PodStatus

from edgecore_fakes import FakeRuntime  # isort: skip


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.runtime = FakeRuntime(clock=self.clock)
        self.cache = Cache(tmp_path / "cache")
        self.items: dict[str, Any] = {}
        self.latest: dict[str, PodStatus | None] = {}
        self.rec = self.new_reconciler()

    def new_reconciler(self) -> Reconciler:
        return Reconciler(node="edge-1", runtime=self.runtime, cache=self.cache,
                          desired=lambda: EdgeDesired(epoch="E", gen=1, items=dict(self.items)),
                          sink=self, clock=self.clock, crashloop=CrashLoop())

    def update(self, key: str, status: PodStatus | None) -> None:
        self.latest[key] = status

    def add(self, name: str, spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        p = Pod.model_validate({"metadata": {"name": name}, "spec": spec})
        key, entry = pod_key("default", name), pod_entry(p)
        self.items[key] = entry
        return key, entry

    def status(self, key: str) -> PodStatus:
        st = self.latest[key]
        assert st is not None
        return st

    def runs(self) -> list[str]:
        return [cid.split("_")[2] for op, cid in self.runtime.ops("run")]


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.cache.close()


def cid(entry: dict[str, Any], container: str, name: str = "web") -> str:
    return container_id("default", name, container, entry["revision"])


TWO_INITS = {"initContainers": [{"name": "first", "image": "busybox:1"},
                                {"name": "second", "image": "busybox:1"}],
             "containers": [{"name": "main", "image": "busybox:1"}]}


async def test_init_containers_run_in_order_each_to_completion(world: World) -> None:
    key, entry = world.add("web", TWO_INITS)
    await world.rec.reconcile_once()
    assert world.runs() == ["first"]
    st = world.status(key)
    assert (st.phase, st.reason) == ("Pending", "Init:0/2")
    assert [c.reason for c in st.container_statuses] == ["PodInitializing"]
    assert st.init_container_statuses is not None
    assert [c.state for c in st.init_container_statuses] == ["running", "waiting"]
    await world.rec.reconcile_once()  # still running: nothing new
    assert world.runs() == ["first"]
    world.runtime.exit(cid(entry, "first"), 0)
    await world.rec.reconcile_once()
    assert world.runs() == ["first", "second"]
    assert world.status(key).reason == "Init:1/2"
    world.runtime.exit(cid(entry, "second"), 0)
    await world.rec.reconcile_once()
    assert world.runs() == ["first", "second", "main"]
    st = world.status(key)
    assert (st.phase, st.reason, st.ready) == ("Running", None, True)
    assert [(c.state, c.exit_code, c.reason) for c in st.init_container_statuses or []] == [
        ("terminated", 0, "Completed"), ("terminated", 0, "Completed")]
    # An agent restart does not run them again (the records say they completed).
    world.rec = world.new_reconciler()
    await world.rec.reconcile_once()
    assert world.runs() == ["first", "second", "main"]
    assert world.status(key).phase == "Running"


async def test_a_failed_init_container_is_restarted_with_backoff(world: World) -> None:
    key, entry = world.add("web", TWO_INITS)
    await world.rec.reconcile_once()
    world.runtime.exit(cid(entry, "first"), 3)
    await world.rec.reconcile_once()
    st = world.status(key)
    assert (st.phase, st.reason) == ("Pending", "Init:CrashLoopBackOff")
    assert "last exit 3" in (st.message or "")
    assert world.runs() == ["first"]
    world.clock.t += 11  # the first back-off is 10 s
    await world.rec.reconcile_once()
    assert world.runs() == ["first", "first"]
    st = world.status(key)
    assert st.init_container_statuses is not None
    assert st.init_container_statuses[0].restart_count == 1
    assert st.reason == "Init:0/2"


async def test_restart_policy_never_fails_the_pod_on_an_init_failure(world: World) -> None:
    key, entry = world.add("web", {**TWO_INITS, "restartPolicy": "Never"})
    await world.rec.reconcile_once()
    world.runtime.exit(cid(entry, "first"), 1)
    await world.rec.reconcile_once()
    world.clock.t += 400
    await world.rec.reconcile_once()
    st = world.status(key)
    assert (st.phase, st.reason) == ("Failed", "Init:Error")
    assert world.runs() == ["first"]


async def test_a_sidecar_starts_in_order_and_keeps_running(world: World) -> None:
    key, entry = world.add("web", {
        "restartPolicy": "Never",
        "initContainers": [{"name": "proxy", "image": "busybox:1", "restartPolicy": "Always"},
                           {"name": "migrate", "image": "busybox:1"}],
        "containers": [{"name": "main", "image": "busybox:1"}]})
    await world.rec.reconcile_once()
    assert world.runs() == ["proxy", "migrate"]  # the sidecar runs: the next one starts
    assert world.status(key).reason == "Init:1/2"
    world.runtime.exit(cid(entry, "migrate"), 0)
    await world.rec.reconcile_once()
    assert world.runs() == ["proxy", "migrate", "main"]
    assert world.runtime.running() == {cid(entry, "proxy"), cid(entry, "main")}
    assert world.status(key).phase == "Running"
    # The sidecar is restarted even though the pod's restartPolicy is Never.
    world.runtime.exit(cid(entry, "proxy"), 1)
    await world.rec.reconcile_once()
    world.clock.t += 11
    await world.rec.reconcile_once()
    assert world.runs().count("proxy") == 2
    # Once the app container is done for good, the sidecar is stopped: Succeeded.
    world.runtime.exit(cid(entry, "main"), 0)
    await world.rec.reconcile_once()
    st = world.status(key)
    assert st.phase == "Succeeded"
    assert world.runtime.running() == set()
    assert st.init_container_statuses is not None
    assert st.init_container_statuses[0].state == "terminated"


def test_the_schema_rules_of_init_containers() -> None:
    with pytest.raises(ObjectError, match="allowed only on init containers") as info:
        PodSpec.parse({"containers": [{"name": "m", "image": "b", "restartPolicy": "Always"}]},
                      "spec")
    assert info.value.field == "spec.containers[0].restartPolicy"
    with pytest.raises(ObjectError, match="cannot have probes") as info:
        PodSpec.parse({"initContainers": [{"name": "i", "image": "b", "livenessProbe": {
            "exec": {"command": ["true"]}}}], "containers": [{"name": "m", "image": "b"}]},
            "spec")
    assert info.value.field == "spec.initContainers[0].livenessProbe"
    with pytest.raises(ObjectError, match="container names must be unique"):
        PodSpec.parse({"initContainers": [{"name": "m", "image": "b"}],
                       "containers": [{"name": "m", "image": "b"}]})
    with pytest.raises(ObjectError, match="volumeMount 'v' names no volume"):
        PodSpec.parse({"initContainers": [{"name": "i", "image": "b", "volumeMounts": [
            {"name": "v", "mountPath": "/v"}]}], "containers": [{"name": "m", "image": "b"}]})
    # A sidecar may have probes.
    PodSpec.parse({"initContainers": [{"name": "s", "image": "b", "restartPolicy": "Always",
                                       "readinessProbe": {"exec": {"command": ["true"]}}}],
                   "containers": [{"name": "m", "image": "b"}]})


def test_requests_count_init_containers_as_kubernetes_does() -> None:
    spec = PodSpec.parse({
        "initContainers": [
            {"name": "big", "image": "b", "resources": {"requests": {"cpu": "2"}}},
            {"name": "side", "image": "b", "restartPolicy": "Always",
             "resources": {"requests": {"cpu": "100m", "memory": "10Mi"}}},
            {"name": "after", "image": "b", "resources": {"requests": {"cpu": "1950m"}}}],
        "containers": [{"name": "m", "image": "b",
                        "resources": {"requests": {"cpu": "500m", "memory": "1Mi"}}}]})
    # max(app 500m + sidecar 100m, big 2000m, after 1950m + sidecar 100m)
    assert spec.requests() == {"cpu": 2050, "memory": 11 * 2**20}


def test_policy_checks_init_containers() -> None:
    spec = PodSpec.parse({"initContainers": [{"name": "i", "image": "b", "securityContext": {
        "privileged": True}}], "containers": [{"name": "m", "image": "b"}]})
    found = policy.check(spec, "baseline")
    assert [v.field for v in found] == ["spec.initContainers[0].securityContext.privileged"]


async def test_an_init_container_breaking_policy_runs_nothing(world: World) -> None:
    key, _ = world.add("web", {"initContainers": [{"name": "i", "image": "b",
                                                   "securityContext": {"privileged": True}}],
                               "containers": [{"name": "main", "image": "busybox:1"}]})
    await world.rec.reconcile_once()
    st = world.status(key)
    assert (st.phase, st.reason) == ("Failed", "PolicyViolation")
    assert "initContainers[0].securityContext.privileged" in (st.message or "")
    assert world.runs() == []


async def test_the_next_init_container_waits_for_a_sidecars_startup_probe(
        tmp_path: Path) -> None:
    from test_edge_probes import World as ProbeWorld
    from test_edge_probes import probe

    w = ProbeWorld(tmp_path)
    try:
        p = Pod.model_validate({"metadata": {"name": "web"}, "spec": {
            "initContainers": [{"name": "proxy", "image": "x", "restartPolicy": "Always",
                                "startupProbe": probe("startup", periodSeconds=1)},
                               {"name": "migrate", "image": "x"}],
            "containers": [{"name": "main", "image": "x"}]}})
        key = pod_key("default", "web")
        w.items[key] = pod_entry(p)
        w.fn.results = {"startup": [False, True]}
        await w.rec.reconcile_once()
        runs = [cid.split("_")[2] for op, cid in w.runtime.ops("run")]
        assert runs == ["proxy"]
        st = w.latest[key]
        assert st is not None and st.reason == "Init:0/2"
        await w.probe_all()
        w.t += 1
        await w.probe_all()
        await w.rec.reconcile_once()
        runs = [cid.split("_")[2] for op, cid in w.runtime.ops("run")]
        assert runs == ["proxy", "migrate"]
        st = w.latest[key]
        assert st is not None and st.reason == "Init:1/2"
    finally:
        await w.prober.close()
        w.cache.close()


async def test_a_sidecar_crashing_after_initialization_leaves_the_pod_running(
        world: World) -> None:
    key, entry = world.add("web", {
        "initContainers": [{"name": "proxy", "image": "busybox:1", "restartPolicy": "Always"}],
        "containers": [{"name": "main", "image": "busybox:1"}]})
    await world.rec.reconcile_once()
    assert world.runs() == ["proxy", "main"]
    world.runtime.exit(cid(entry, "proxy"), 1)
    await world.rec.reconcile_once()
    st = world.status(key)
    assert (st.phase, st.reason, st.ready) == ("Running", None, False)
    assert st.init_container_statuses is not None
    assert st.init_container_statuses[0].reason == "CrashLoopBackOff"
    world.clock.t += 11
    await world.rec.reconcile_once()
    assert world.runs() == ["proxy", "main", "proxy"]
    assert world.status(key).ready is True


async def test_pulling_an_init_containers_image_is_reported_as_init_progress(
        tmp_path: Path) -> None:
    import asyncio

    from test_edge_gc import ImageFake

    rt = ImageFake(clock=lambda: 1000.0)
    rt.pull_gate = asyncio.Event()
    latest: dict[str, PodStatus | None] = {}

    class Sink:
        def update(self, key: str, status: PodStatus | None) -> None:
            latest[key] = status

    p = Pod.model_validate({"metadata": {"name": "web"}, "spec": {
        "initContainers": [{"name": "first", "image": "reg:5000/init:1"}],
        "containers": [{"name": "main", "image": "reg:5000/app:1"}]}})
    key = pod_key("default", "web")
    cache = Cache(tmp_path / "cache")
    rec = Reconciler(node="n", runtime=rt, cache=cache, sink=Sink(), clock=lambda: 1000.0,
                     desired=lambda: EdgeDesired(epoch="E", gen=1, items={key: pod_entry(p)}),
                     pull_report_after_s=0.01)
    step = asyncio.create_task(rec.reconcile_once())
    try:
        async with asyncio.timeout(5):
            while (latest.get(key) is None
                   or not (latest[key].message or "").startswith("pulling")):  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
        st = latest[key]
        assert st is not None and (st.phase, st.reason) == ("Pending", "Init:0/1")
        assert (st.message or "").startswith("pulling reg:5000/init:1 (")
        assert st.container_statuses[0].reason == "PodInitializing"
        assert st.init_container_statuses is not None
        assert st.init_container_statuses[0].reason == "ContainerCreating"
    finally:
        rt.pull_gate.set()
        await step
        cache.close()
