"""A pod deleted and created again under the same name (a new uid) is a new pod on the
node: new containers, fresh restart counts, empty emptyDirs; a pod whose entry comes
down again (moved away and back) is reported again. Fake runtime, real LMDB cache."""

from __future__ import annotations

from pathlib import Path

from edgecore.cache import Cache
from edgecore.reconciler import CrashLoop, Reconciler
from edgecore.reconciler.naming import ANN_UID, container_id
from edgecore.reconciler.volumes import Volumes
from edgecore.sync import Renewed, Reporter, SyncHandler
from shared.codec import Desired
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key
from shared.models import Pod
from shared.pods import ContainerStatus, PodStatus

from edgecore_fakes import FakeRuntime  # isort: skip

NODE = "edge-1"
KEY = pod_key("default", "web")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Sink:
    def __init__(self) -> None:
        self.latest: dict[str, PodStatus | None] = {}

    def update(self, key: str, status: PodStatus | None) -> None:
        self.latest[key] = status


def entry(uid: str | None, *, volume: bool = False) -> dict:
    spec: dict = {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox:1"}]}
    if volume:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
        spec["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/s"}]
    return pod_entry(Pod.model_validate({
        "metadata": {"name": "web", "namespace": "default", "uid": uid}, "spec": spec}))


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.runtime = FakeRuntime(clock=self.clock)
        self.cache = Cache(tmp_path / "cache")
        self.volumes = Volumes(tmp_path / "pods")
        self.desired = EdgeDesired(epoch="E", gen=1, items={})
        self.sink = Sink()
        self.rec = self.new_reconciler()

    def new_reconciler(self) -> Reconciler:
        return Reconciler(node=NODE, runtime=self.runtime, cache=self.cache,
                          desired=lambda: self.desired, sink=self.sink, clock=self.clock,
                          crashloop=CrashLoop(), volumes=self.volumes)

    def set(self, value: dict) -> None:
        self.desired = EdgeDesired(epoch="E", gen=self.desired.gen + 1, items={KEY: value})

    def status(self) -> PodStatus:
        st = self.sink.latest[KEY]
        assert st is not None
        return st


CID = container_id("default", "web", "main", entry("u1")["revision"])


async def test_a_new_uid_under_the_same_name_and_spec_runs_a_new_container(
        tmp_path: Path) -> None:
    w = World(tmp_path)
    w.set(entry("u1"))
    await w.rec.reconcile_once()
    assert w.runtime.containers[CID].spec.annotations[ANN_UID] == "u1"
    # It ran to completion (restartPolicy Never): the old pod is Succeeded for good.
    w.runtime.exit(CID, 0)
    await w.rec.reconcile_once()
    assert w.status().phase == "Succeeded"
    w.runtime.calls.clear()
    # The same entry again: nothing happens.
    w.set(entry("u1"))
    await w.rec.reconcile_once()
    assert w.runtime.ops("run", "stop", "remove") == []
    # Deleted and created again at once: same name, same revision, another uid.
    w.set(entry("u2"))
    w.clock.t += 5
    await w.rec.reconcile_once()
    assert w.runtime.ops("run", "remove") == [("remove", CID), ("run", CID)]
    assert w.runtime.containers[CID].spec.annotations[ANN_UID] == "u2"
    st = w.status()
    assert st.phase == "Running"
    assert st.container_statuses[0].started_at == w.clock.t
    assert w.cache.pod_records()[KEY]["uid"] == "u2"


async def test_the_new_pod_gets_fresh_counts_and_empty_volumes(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.set(entry("u1", volume=True))
    await w.rec.reconcile_once()
    scratch = w.volumes.pod_dir(KEY)
    left = next(p for p in scratch.rglob("*") if p.is_dir() and p.name == "scratch") / "f"
    left.write_text("from the old pod")
    (cid,) = w.runtime.containers
    w.runtime.exit(cid, 1)  # restartPolicy Never: Failed for good
    await w.rec.reconcile_once()
    assert w.status().phase == "Failed"
    w.set(entry("u2", volume=True))
    await w.rec.reconcile_once()
    assert w.status().phase == "Running"
    assert not left.exists()


async def test_containers_and_records_without_a_uid_are_adopted(tmp_path: Path) -> None:
    """Made by an agent (or for entries) from before uids: kept, not restarted; the uid
    is remembered, so a later new pod under the name is still told apart."""
    w = World(tmp_path)
    w.set(entry(None))
    await w.rec.reconcile_once()
    assert ANN_UID not in w.runtime.containers[CID].spec.annotations
    w.runtime.calls.clear()
    w.set(entry("u1"))  # the cloud now sends uids
    w.rec = w.new_reconciler()  # and the agent was upgraded (restarted) meanwhile
    await w.rec.reconcile_once()
    assert w.runtime.ops("run", "stop", "remove") == []
    assert w.cache.pod_records()[KEY]["uid"] == "u1"
    w.set(entry("u2"))
    await w.rec.reconcile_once()
    assert w.runtime.ops("run", "remove") == [("remove", CID), ("run", CID)]


RUNNING = PodStatus(phase="Running", container_statuses=[
    ContainerStatus(name="main", state="running", ready=True)])


async def test_a_pod_whose_entry_comes_down_again_is_reported_again(tmp_path: Path) -> None:
    """Moved away and back while this node did not see it go: the delta puts the same
    entry, the cloud set its status to Pending, so the unchanged status goes out."""
    with Cache(tmp_path / "c") as cache:
        renewed = Renewed()
        sync = SyncHandler(node=NODE, cache=cache, renewed=renewed)
        reporter = Reporter(node=NODE, cache=cache, desired=lambda: sync.desired,
                            node_status=dict, batch_s=0, renewed=renewed)
        await reporter.flush()  # the first report (node status)
        value = entry("u1")
        await sync.handle(Desired(node=NODE, epoch="E", base=0, gen=1, snapshot=True,
                                  put={KEY: value, "configmap/default/c": {"data": {}}}))
        reporter.update(KEY, RUNNING)
        assert await reporter.flush() is not None
        reporter.update(KEY, RUNNING)
        assert await reporter.flush() is None  # unchanged: nothing to say
        # gen 2 took it away, gen 3 brought it back: one delta from 1, the same value.
        await sync.handle(Desired(node=NODE, epoch="E", base=1, gen=3, put={KEY: value}))
        reporter.update(KEY, RUNNING)
        seq = await reporter.flush()
        assert seq is not None
        assert reporter.pending == 0
        # A delta that puts only other keys changes nothing for the pod.
        await sync.handle(Desired(node=NODE, epoch="E", base=3, gen=4,
                                  put={"configmap/default/c": {"data": {"a": "b"}}}))
        reporter.update(KEY, RUNNING)
        assert await reporter.flush() is None
