"""Reconciler logic against the fake runtime, on a fake clock, with a real LMDB cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.reconciler import CrashLoop, Reconciler
from edgecore.reconciler.naming import ANN_POD, container_id
from edgecore.runtime.errors import ImagePullError, RuntimeCommandError
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key
from shared.models import Pod
from shared.pods import PodStatus

# tests/ is not a package (and gmqtt installs a top-level "tests" package), so the
# fake comes from this directory, which pytest puts on sys.path for its tests.
from edgecore_fakes import FakeRuntime  # isort: skip

NODE = "edge-1"


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Sink:
    def __init__(self) -> None:
        self.latest: dict[str, PodStatus | None] = {}
        self.history: list[tuple[str, PodStatus | None]] = []

    def update(self, key: str, status: PodStatus | None) -> None:
        self.latest[key] = status
        self.history.append((key, status))


def pod(name: str, *, image: str = "busybox:1", policy: str = "Always", grace: int = 10,
        containers: list[dict[str, Any]] | None = None, ns: str = "default") -> tuple[str, dict]:
    p = Pod.model_validate({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": grace,
                 "containers": containers or [{"name": "main", "image": image}]},
    })
    return pod_key(ns, name), pod_entry(p)


class World:
    """Desired set + fake runtime + cache + a reconciler that can be 'restarted'."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = Clock()
        self.runtime = FakeRuntime(clock=self.clock)
        self.cache = Cache(tmp_path / "cache")
        self.desired = EdgeDesired(epoch="E", gen=1, items={})
        self.sink = Sink()
        self.rec = self.new_reconciler()

    def new_reconciler(self) -> Reconciler:
        self.sink = Sink()
        return Reconciler(node=NODE, runtime=self.runtime, cache=self.cache,
                          desired=lambda: self.desired, sink=self.sink, clock=self.clock,
                          crashloop=CrashLoop())

    def set(self, *pods: tuple[str, dict]) -> None:
        self.desired = EdgeDesired(epoch="E", gen=self.desired.gen + 1, items=dict(pods))

    async def step(self) -> None:
        await self.rec.reconcile_once()

    def status(self, key: str) -> PodStatus:
        st = self.sink.latest[key]
        assert st is not None
        return st


@pytest.fixture
def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    w.cache.close()


def cid(name: str, entry: dict, container: str = "main", ns: str = "default") -> str:
    return container_id(ns, name, container, entry["revision"])


async def test_create_maps_container_spec(world: World) -> None:
    key, entry = pod("web", containers=[{
        "name": "main", "image": "reg:5000/app:1", "command": ["/bin/app"], "args": ["-v"],
        "env": [{"name": "A", "value": "1"}], "workingDir": "/srv",
        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
    }, {"name": "side", "image": "busybox:1"}])
    world.set((key, entry))
    await world.step()
    assert world.runtime.running() == {cid("web", entry), cid("web", entry, "side")}
    spec = world.runtime.containers[cid("web", entry)].spec
    assert (spec.image, spec.command, spec.args, dict(spec.env), spec.working_dir) == (
        "reg:5000/app:1", ("/bin/app",), ("-v",), {"A": "1"}, "/srv")
    assert (spec.cpu_limit_millis, spec.memory_limit_bytes) == (500, 64 * 2**20)
    assert spec.annotations[ANN_POD] == key
    st = world.status(key)
    assert st.phase == "Running" and st.revision == entry["revision"] and st.node_name == NODE
    assert [c.state for c in st.container_statuses] == ["running", "running"]
    # The "about to create" status went out before the runs.
    first = world.sink.history[0][1]
    assert first is not None and first.phase == "Pending" and first.reason == "ContainerCreating"
    # A second pass changes nothing.
    n = len(world.runtime.calls)
    await world.step()
    assert len(world.runtime.calls) == n


async def test_adopts_running_containers_after_agent_restart(world: World) -> None:
    key, entry = pod("web")
    world.set((key, entry))
    await world.step()
    world.runtime.calls.clear()
    world.rec = world.new_reconciler()  # agent restart: same cache, same runtime
    await world.step()
    assert world.runtime.calls == []
    assert world.status(key).phase == "Running"


async def test_update_replaces_old_revision(world: World) -> None:
    key, v1 = pod("web", image="app:1", grace=3)
    world.set((key, v1))
    await world.step()
    _, v2 = pod("web", image="app:2", grace=3)
    world.set((key, v2))
    world.runtime.calls.clear()
    await world.step()
    assert world.runtime.ops() == [("stop", cid("web", v1)), ("remove", cid("web", v1)),
                                   ("run", cid("web", v2))]
    assert world.runtime.last_grace == 3
    assert world.status(key).revision == v2["revision"]


async def test_delete_stops_with_grace_and_reports_gone(world: World) -> None:
    key, entry = pod("web", grace=7)
    other = pod("db")
    world.set((key, entry), other)
    await world.step()
    world.set(other)
    await world.step()
    assert cid("web", entry) not in world.runtime.containers
    assert world.runtime.last_grace == 7
    assert world.sink.latest[key] is None
    assert key not in world.cache.pod_records()
    assert world.status(other[0]).phase == "Running"


async def test_crashloop_backoff_schedule(world: World) -> None:
    key, entry = pod("web")
    world.set((key, entry))
    await world.step()
    c = cid("web", entry)
    expected = [10, 20, 40, 80, 160, 300, 300]
    for i, delay in enumerate(expected, start=1):
        world.clock.t += 1
        world.runtime.exit(c, 1)
        crashed_at = world.clock.t
        await world.step()
        cs = world.status(key).container_statuses[0]
        assert (cs.state, cs.reason, cs.exit_code) == ("waiting", "CrashLoopBackOff", 1)
        assert f"back-off {delay}s" in (cs.message or "")
        assert world.status(key).phase == "Running"
        world.clock.t = crashed_at + delay - 0.5
        await world.step()
        assert c not in world.runtime.running()
        if i == 3:  # the schedule survives an agent restart
            world.rec = world.new_reconciler()
        world.clock.t = crashed_at + delay
        await world.step()
        assert c in world.runtime.running()
        assert world.status(key).container_statuses[0].restart_count == i
    # Ten minutes of running resets the backoff to 10 s.
    world.clock.t += 601
    world.runtime.exit(c, 2)
    await world.step()
    assert "back-off 10s" in (world.status(key).container_statuses[0].message or "")


async def test_a_clock_going_back_does_not_hold_a_restart(world: World) -> None:
    """A device without a battery-backed clock that boots offline, or an NTP step: a
    crashed container is restarted after its backoff, not when the clock catches up."""
    key, entry = pod("web")
    world.set((key, entry))
    await world.step()
    c = cid("web", entry)
    world.clock.t += 1
    world.runtime.exit(c, 1)
    await world.step()  # restart due in 10 s
    world.clock.t -= 86_400.0  # a day back
    await world.step()
    assert c not in world.runtime.running()
    assert "back-off 10s" in (world.status(key).container_statuses[0].message or "")
    world.clock.t += 10.0
    await world.step()
    assert c in world.runtime.running()


@pytest.mark.parametrize(("policy", "code", "phase", "restarts"), [
    ("Never", 0, "Succeeded", False),
    ("Never", 3, "Failed", False),
    ("OnFailure", 0, "Succeeded", False),
    ("OnFailure", 3, "Running", True),
    ("Always", 0, "Running", True),
])
async def test_restart_policies(world: World, policy: str, code: int, phase: str,
                                restarts: bool) -> None:
    key, entry = pod("job", policy=policy)
    world.set((key, entry))
    await world.step()
    world.runtime.exit(cid("job", entry), code)
    await world.step()
    st = world.status(key)
    assert st.phase == phase
    world.clock.t += 400
    await world.step()
    assert (cid("job", entry) in world.runtime.running()) is restarts
    if not restarts:
        cs = world.status(key).container_statuses[0]
        assert cs.state == "terminated" and cs.exit_code == code
        assert cs.reason == ("Completed" if code == 0 else "Error")


async def test_oom_killed_reason(world: World) -> None:
    key, entry = pod("hog", policy="Never")
    world.set((key, entry))
    await world.step()
    world.runtime.exit(cid("hog", entry), 137, oom=True)
    await world.step()
    cs = world.status(key).container_statuses[0]
    assert (cs.reason, world.status(key).phase) == ("OOMKilled", "Failed")


async def test_pull_failure_backs_off_and_does_not_block_other_pods(world: World) -> None:
    bad_key, bad = pod("bad", image="nowhere:1")
    good_key, good = pod("good")
    world.runtime.fail_images["nowhere:1"] = ImagePullError("registry unreachable")
    world.set((bad_key, bad), (good_key, good))
    await world.step()
    st = world.status(bad_key)
    assert (st.phase, st.reason) == ("Pending", "ImagePullBackOff")
    assert "registry unreachable" in (st.message or "")
    assert world.status(good_key).phase == "Running"
    runs = len(world.runtime.ops("run"))
    await world.step()  # inside the backoff: no retry
    assert len(world.runtime.ops("run")) == runs
    del world.runtime.fail_images["nowhere:1"]
    world.clock.t += 10
    await world.step()
    assert world.status(bad_key).phase == "Running"
    assert world.status(bad_key).container_statuses[0].restart_count == 0


async def test_invalid_entry_fails_only_that_pod(world: World) -> None:
    good = pod("good")
    world.set(("pod/default/broken", {"name": "broken", "spec": {"containers": []}}), good)
    await world.step()
    st = world.status("pod/default/broken")
    assert (st.phase, st.reason) == ("Failed", "InvalidSpec")
    assert world.status(good[0]).phase == "Running"


async def test_unexpected_runtime_error_becomes_status(world: World) -> None:
    key, entry = pod("web")
    world.set((key, entry))
    await world.step()
    world.runtime.exit(cid("web", entry), 1)
    world.clock.t += 100

    async def broken_remove(_cid: str) -> None:
        raise RuntimeCommandError("umount failed")

    world.runtime.remove = broken_remove  # type: ignore[method-assign]
    await world.step()
    st = world.status(key)
    assert (st.phase, st.reason) == ("Unknown", "ReconcileError")


async def test_list_failure_skips_the_pass(world: World) -> None:
    key, entry = pod("web")
    world.set((key, entry))
    await world.step()
    world.set()
    world.runtime.list_error = RuntimeCommandError("crun list failed")
    await world.step()
    assert world.runtime.running() == {cid("web", entry)}


async def test_never_deletes_before_first_desired_set(world: World) -> None:
    key, entry = pod("web")
    world.set((key, entry))
    await world.step()
    world.desired = EdgeDesired()  # e.g. a fresh cache beside an old runtime root
    await world.step()
    assert world.runtime.running() == {cid("web", entry)}


async def test_run_cancels_inflight_work_without_touching_containers(world: World) -> None:
    import asyncio

    key, entry = pod("web")
    world.set((key, entry))
    world.rec.interval_s = 0.05
    task = asyncio.create_task(world.rec.run())
    for _ in range(100):
        await asyncio.sleep(0.01)
        if world.runtime.running():
            break
    world.rec.wake()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert world.runtime.running() == {cid("web", entry)}
    assert world.rec.passes >= 2


def test_container_ids_are_unambiguous_and_short() -> None:
    assert container_id("a.b", "c", "m", "r" * 10) != container_id("a", "b.c", "m", "r" * 10)
    long = container_id("n" * 63, "p" * 200, "c" * 63, "abcdef1234")
    assert len(long) <= 100
    assert long != container_id("n" * 63, "p" * 199 + "q", "c" * 63, "abcdef1234")


async def test_a_new_image_replaces_one_whose_pull_keeps_failing(world: World) -> None:
    """The registry of the old image is gone (moved, or a typo fixed by a new apply):
    the next start uses the new spec at once, and the old image is not tried again."""
    key, old = pod("web", image="gone.example:5000/busybox:1", policy="Always")
    world.runtime.fail_images["gone.example:5000/busybox:1"] = ImagePullError("unreachable")
    world.set((key, old))
    await world.step()
    assert world.status(key).reason == "ImagePullBackOff"
    _, new = pod("web", image="busybox:2", policy="Always")
    assert new["revision"] != old["revision"]
    world.set((key, new))
    tried = len([op for op in world.runtime.calls if "gone.example" in str(op)])
    await world.step()
    st = world.status(key)
    assert st.phase == "Running", st
    assert st.revision == new["revision"]
    assert len([op for op in world.runtime.calls if "gone.example" in str(op)]) == tried



async def test_a_new_spec_stops_the_pull_of_the_old_one(world: World) -> None:
    """The new spec arrives while the old image's pull still hangs (a registry that is
    gone can take a minute to fail): that work is stopped and the new spec starts."""
    import asyncio

    gate = asyncio.Event()
    pulled: list[str] = []

    async def images() -> list[Any]:
        return []

    async def pull(image: str, **_: Any) -> str:
        pulled.append(image)
        if image.startswith("gone.example"):
            await gate.wait()  # never set: the old registry does not answer
        return "sha256:" + "0" * 64

    world.runtime.images = images  # type: ignore[attr-defined]
    world.runtime.capabilities = replace(  # type: ignore[misc]
        world.runtime.capabilities, images=True)
    world.runtime.pull = pull  # type: ignore[method-assign]
    key, old = pod("web", image="gone.example:5000/busybox:1", policy="Always")
    world.set((key, old))
    await world.rec.reconcile_once(wait=False)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if pulled:
            break
    assert pulled == ["gone.example:5000/busybox:1"]
    _, new = pod("web", image="busybox:2", policy="Always")
    world.set((key, new))
    await world.rec.reconcile_once(wait=False)  # cancels the superseded work
    for _ in range(100):
        await asyncio.sleep(0.01)
        if not world.rec._inflight:
            break
    await world.step()
    st = world.status(key)
    assert (st.phase, st.revision) == ("Running", new["revision"]), st
    assert pulled == ["gone.example:5000/busybox:1", "busybox:2"]


async def test_a_full_disk_does_not_fail_pods_and_records_are_written_later(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecore.errors import CacheError

    real_put = world.cache.put_pod_record
    full = True
    attempts = []

    def put(key: str, value: dict) -> None:
        attempts.append(key)
        if full:
            raise CacheError("cache write failed: mdb_txn_commit: No space left on device")
        real_put(key, value)

    monkeypatch.setattr(world.cache, "put_pod_record", put)
    key, entry = pod("web")
    world.set((key, entry))
    await world.step()
    assert world.status(key).phase == "Running"  # not a ReconcileError
    assert key not in world.cache.pod_records() and len(attempts) == 1
    await world.step()  # backing off: not retried before 0.5 s
    assert len(attempts) == 1
    world.clock.t += 0.6
    await world.step()  # still full: retried, still waiting, the pod untouched
    assert len(attempts) == 2 and world.status(key).phase == "Running"
    full = False
    world.clock.t += 0.6
    await world.step()  # not due yet (second failure: 1 s)
    assert len(attempts) == 2 and key not in world.cache.pod_records()
    world.clock.t += 0.6
    await world.step()
    assert world.cache.pod_records()[key]["revision"] == entry["revision"]
    assert not world.rec._unpersisted
    # a later delete while the disk is full is not overwritten by the older write
    real_delete = world.cache.delete_pod_record

    def delete(key: str) -> None:
        if full:
            raise CacheError("cache write failed: mdb_txn_commit: No space left on device")
        real_delete(key)

    monkeypatch.setattr(world.cache, "delete_pod_record", delete)
    full = True
    world.set()
    await world.step()
    assert world.sink.latest[key] is None and not world.runtime.running()
    assert key in world.cache.pod_records()
    full = False
    world.clock.t += 1.0
    await world.step()
    assert key not in world.cache.pod_records()


class TokenRuntime(FakeRuntime):
    """The fake with crun's cheap exit token and a count of listings."""

    capabilities = replace(FakeRuntime.capabilities, state_token=True)

    exits = 0
    lists = 0

    def state_token(self) -> int:
        return self.exits

    async def list(self):  # type: ignore[no-untyped-def]
        self.lists += 1
        return await super().list()

    def exit(self, cid: str, code: int | None, **kw: Any) -> None:  # type: ignore[override]
        self.exits += 1
        super().exit(cid, code, **kw)


async def test_a_new_pod_after_a_quiet_spell_starts_without_listing(tmp_path: Path) -> None:
    """Issue 16: no `crun list` on the start path when the last listing still holds;
    a listing is taken again once the token moved or a pod to sync has had work."""
    import asyncio

    w = World(tmp_path)
    rt = w.runtime = TokenRuntime(clock=w.clock)
    w.rec = Reconciler(node=NODE, runtime=rt, cache=w.cache, desired=lambda: w.desired,
                       sink=w.sink, clock=w.clock, interval_s=3600, resync_s=3600)
    task = asyncio.create_task(w.rec.run())

    async def settle() -> None:
        for _ in range(200):
            await asyncio.sleep(0.002)
            if not w.rec._inflight and not w.rec._wake.is_set():
                return

    try:
        await settle()
        assert rt.lists == 1  # the first pass lists
        a, b, c = pod("a"), pod("b"), pod("c")
        w.set(a)
        w.rec.wake()
        await settle()
        assert w.status(a[0]).phase == "Running" and rt.lists == 1
        assert w.rec.cached_passes == 1
        w.set(a, b)  # a has had work since the listing: list again (a is synced too)
        w.rec.wake()
        await settle()
        assert w.status(b[0]).phase == "Running" and rt.lists == 2
        assert rt.ops("run").count(("run", cid("a", a[1]))) == 1  # never started twice
        w.set(a, b, c)  # b has had work since the second listing
        w.rec.wake()
        await settle()
        assert rt.lists == 3
        w.set(a, b)  # a removal leaves its pod clean (and empty) in the listing
        w.rec.wake()
        await settle()
        assert w.sink.latest[c[0]] is None and rt.lists == 4
        # c's stop moved the exit token; the periodic pass lists again and finds a and b
        # as they were (left alone, so clean): a new pod then starts without a list
        await w.rec.reconcile_once()
        assert rt.lists == 5
        d = pod("d")
        w.set(a, b, d)
        w.rec.wake()
        await settle()
        assert w.status(d[0]).phase == "Running" and rt.lists == 5
        assert w.rec.cached_passes == 2
        rt.exit(cid("a", a[1]), 1)  # an exit moves the token: a woken pass lists
        w.set(a)
        w.rec.wake()
        await settle()
        assert rt.lists == 6
        assert w.sink.latest[b[0]] is None and w.sink.latest[d[0]] is None
        assert w.status(a[0]).container_statuses[0].state
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        w.cache.close()


async def test_a_started_pods_status_is_reported_before_its_record_is_written(
        tmp_path: Path) -> None:
    """Issue 16, the start path: the report's synced commit must not queue behind the
    pod record's, so the status reaches the sink first; the record still follows in
    the same pass (and holds what the status says)."""
    w = World(tmp_path)
    key, entry = pod("web")
    seen_at_write: list[PodStatus | None] = []
    put = w.cache.put_pod_record

    def spying_put(k: str, value: Any) -> None:
        seen_at_write.append(w.sink.latest.get(k))
        put(k, value)

    w.cache.put_pod_record = spying_put  # type: ignore[method-assign]
    w.set((key, entry))
    await w.step()
    assert w.status(key).phase == "Running"
    [reported] = seen_at_write  # one record write, after the status was reported
    assert reported is not None and reported.phase == "Running"
    restarted = World.new_reconciler(w)  # a restarted agent reads the record
    await restarted.reconcile_once()
    assert w.sink.latest[key] is not None and w.sink.latest[key].phase == "Running"


async def test_at_most_parallel_starts_containers_start_at_once(world: World) -> None:
    # Issue 16: twenty pods applied at once all started their containers together, and
    # their transient objects raised the agent's memory for good. Pods still converge
    # in parallel; runtime.run (bundle, OCI config, conmon, crun) waits for a slot.
    import asyncio

    from edgecore.reconciler.reconciler import PARALLEL_STARTS

    running, most = 0, 0
    plain_run = world.runtime.run

    async def slow_run(cid, spec):
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1
        await plain_run(cid, spec)

    world.runtime.run = slow_run  # type: ignore[method-assign]
    pods = [pod(f"p{i}") for i in range(3 * PARALLEL_STARTS)]
    world.set(*pods)
    await world.step()
    assert most == PARALLEL_STARTS
    assert all(world.status(key).phase == "Running" for key, _ in pods)
