"""Probes: the prober's rules on a fake clock, the real TCP/HTTP/exec handlers, and the
reconciler acting on readiness and liveness (fake runtime, real LMDB cache)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.reconciler import Reconciler
from edgecore.reconciler.naming import container_id
from edgecore.reconciler.prober import (
    ContainerProber,
    ProbeManager,
    exec_probe,
    http_probe,
    make_probe,
    tcp_probe,
)
from edgecore.runtime.errors import ExecTimeout
from edgecore.runtime.types import Capabilities
from shared.delta import EdgeDesired
from shared.entries import pod_entry, pod_key
from shared.models import Pod
from shared.pods import Container, PodStatus, Probe

from edgecore_fakes import FakeRuntime  # isort: skip


class Scripted:
    """A probe function answering from a per-kind script of results (default success)."""

    def __init__(self) -> None:
        self.results: dict[str, list[bool]] = {}
        self.calls: list[str] = []

    async def __call__(self, cid: str, c: Container, p: Probe) -> tuple[bool, str]:
        kind = p.exec.command[0] if p.exec is not None else "?"
        self.calls.append(kind)
        script = self.results.get(kind, [])
        ok = script.pop(0) if script else True
        return ok, "" if ok else f"{kind} said no"


def container(**probes: Any) -> Container:
    return Container.parse({"name": "main", "image": "x", **probes})


def probe(cmd: str, **kw: Any) -> dict[str, Any]:
    return {"exec": {"command": [cmd]}, **kw}


async def test_startup_gates_the_others_and_readiness_thresholds() -> None:
    fn, changes = Scripted(), []
    c = container(startupProbe=probe("startup", periodSeconds=2, failureThreshold=5),
                  readinessProbe=probe("ready", initialDelaySeconds=1, successThreshold=2,
                                       failureThreshold=2),
                  livenessProbe=probe("live", initialDelaySeconds=1))
    fn.results = {"startup": [False, True], "ready": [True, True, False, False, True, True]}
    p = ContainerProber(cid="c", container=c, started_at=100.0, probe=fn,
                        on_change=lambda: changes.append(1))
    assert (p.state.started, p.state.ready) == (False, False)
    await p.step(100.0)
    assert fn.calls == ["startup"] and not p.state.started
    await p.step(101.0)  # not due yet (period 2)
    assert fn.calls == ["startup"]
    await p.step(102.0)
    assert p.state.started and not p.state.ready and len(changes) == 1
    await p.step(102.0)  # liveness and readiness now run, startup never again
    assert sorted(fn.calls[2:]) == ["live", "ready"]
    assert not p.state.ready  # one success of two
    await p.step(112.0)
    assert p.state.ready and len(changes) == 2
    await p.step(122.0)
    assert p.state.ready  # one failure of two
    await p.step(132.0)
    assert not p.state.ready and len(changes) == 3
    await p.step(142.0)
    await p.step(152.0)
    assert p.state.ready and "startup" not in fn.calls[2:]


async def test_liveness_failures_mark_unhealthy_and_stop_probing() -> None:
    fn = Scripted()
    fn.results = {"live": [False, True, False, False, False]}
    c = container(livenessProbe=probe("live", periodSeconds=1, failureThreshold=3))
    p = ContainerProber(cid="c", container=c, started_at=0.0, probe=fn, on_change=lambda: None)
    for t in range(5):
        await p.step(float(t))
    assert p.state.unhealthy == "Unhealthy: liveness probe failed 3 times: live said no"
    assert p.next_due() is None
    n = len(fn.calls)
    await p.step(10.0)
    assert len(fn.calls) == n


async def test_liveness_keeps_probing_when_the_clock_goes_back() -> None:
    """An NTP step back (or a device booting offline without a battery-backed clock)
    must not pause a liveness probe until the wall clock catches up."""
    fn = Scripted()
    fn.results = {"live": [True, False, False, False]}
    c = container(livenessProbe=probe("live", periodSeconds=10, failureThreshold=3))
    p = ContainerProber(cid="c", container=c, started_at=1000.0, probe=fn,
                        on_change=lambda: None)
    await p.step(1000.0)
    assert fn.calls == ["live"]
    back = 1000.0 - 86_400.0  # a day back
    await p.step(back)  # the pre-jump due time (1010) is pulled in to one period from now
    assert fn.calls == ["live"] and p.next_due() is not None
    for t in (10.0, 20.0, 30.0):
        await p.step(back + t)
    assert p.state.unhealthy is not None and len(fn.calls) == 4


async def test_startup_failure_threshold_is_unhealthy() -> None:
    fn = Scripted()
    fn.results = {"startup": [False, False]}
    c = container(startupProbe=probe("startup", failureThreshold=2, periodSeconds=1))
    p = ContainerProber(cid="c", container=c, started_at=0.0, probe=fn, on_change=lambda: None)
    await p.step(0.0)
    await p.step(1.0)
    assert p.state.unhealthy is not None and "startup probe failed 2 times" in p.state.unhealthy


async def test_tcp_and_http_probes_against_real_sockets() -> None:
    release = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = line.split()[1].decode()
        code = {"/ok": 200, "/redirect": 302, "/bad": 503}.get(path, 404)
        if path == "/slow":
            await release.wait()
        writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await tcp_probe("127.0.0.1", port, 1) == (True, "")
        assert await http_probe("127.0.0.1", port, "/ok", 1) == (True, "")
        assert (await http_probe("127.0.0.1", port, "/redirect", 1))[0]
        ok, msg = await http_probe("127.0.0.1", port, "/bad", 1)
        assert not ok and "HTTP 503" in msg
        ok, msg = await http_probe("127.0.0.1", port, "/slow", 0.2)
        assert not ok and "timed out" in msg
    finally:
        release.set()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)  # the slow handler finishes
    ok, msg = await tcp_probe("127.0.0.1", port, 1)
    assert not ok and "tcp connect" in msg
    ok, msg = await http_probe("127.0.0.1", port, "/ok", 1)
    assert not ok


async def test_exec_probe_and_named_ports() -> None:
    rt = FakeRuntime()
    rt.exec_result = lambda cid, argv: (0, b"", b"") if argv == ["true"] else (1, b"", b"nope\n")
    assert await exec_probe(rt, "c", ["true"], 1) == (True, "")
    assert await exec_probe(rt, "c", ["false"], 1) == (False, "command exited 1: nope")

    def slow(cid: str, argv: list[str]) -> tuple[int, bytes, bytes]:
        raise ExecTimeout("slow")

    rt.exec_result = slow
    assert await exec_probe(rt, "c", ["x"], 2) == (False, "command timed out after 2s")
    no_exec = FakeRuntime()
    no_exec.capabilities = Capabilities()  # type: ignore[misc]  # the core operations only
    assert await exec_probe(no_exec, "c", ["x"], 1) == (
        False, "the runtime cannot exec in containers")
    assert no_exec.ops("exec") == []
    # A named port resolves against the container's ports; a refused connect is a failure.
    c = Container.parse({"name": "m", "image": "x",
                                  "ports": [{"containerPort": 1, "name": "web"}],
                                  "readinessProbe": {"tcpSocket": {"port": "web"}}})
    assert c.readiness_probe is not None
    ok, msg = await make_probe(rt)("c", c, c.readiness_probe)
    assert not ok and "127.0.0.1:1" in msg


# -- the reconciler with probes -------------------------------------------------------


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.t = 1000.0
        self.runtime = FakeRuntime(clock=lambda: self.t)
        self.cache = Cache(tmp_path / "cache")
        self.fn = Scripted()
        self.woken = 0
        self.prober = ProbeManager(probe=self.fn, clock=lambda: self.t, spawn=False,
                                   on_change=self.wake)
        self.items: dict[str, Any] = {}
        self.latest: dict[str, PodStatus | None] = {}
        self.rec = Reconciler(node="n", runtime=self.runtime, cache=self.cache,
                              desired=lambda: EdgeDesired(epoch="E", gen=2, items=self.items),
                              sink=self, clock=lambda: self.t, prober=self.prober)

    def wake(self) -> None:
        self.woken += 1

    def update(self, key: str, status: PodStatus | None) -> None:
        self.latest[key] = status

    async def probe_all(self) -> None:
        for p in list(self.prober.probers.values()):
            await p.step(self.t)


@pytest.fixture
async def world(tmp_path: Path):
    w = World(tmp_path)
    yield w
    await w.prober.close()
    w.cache.close()


def add_pod(w: World | dict[str, Any], name: str, **c: Any) -> tuple[str, str]:
    p = Pod.model_validate({"metadata": {"name": name},
                            "spec": {"containers": [{"name": "main", "image": "x", **c}]}})
    key, entry = pod_key("default", name), pod_entry(p)
    (w.items if isinstance(w, World) else w)[key] = entry
    return key, container_id("default", name, "main", entry["revision"])


async def test_readiness_gates_ready_and_changes_are_reported(world: World) -> None:
    key, cid = add_pod(world, "web", readinessProbe=probe("ready", periodSeconds=1))
    plain, _ = add_pod(world, "plain")
    world.fn.results = {"ready": [False, True]}
    await world.rec.reconcile_once()
    st = world.latest[key]
    assert st is not None and st.phase == "Running" and st.ready is False
    assert st.container_statuses[0].ready is False
    plain_st = world.latest[plain]
    assert plain_st is not None and plain_st.ready is True  # no probes: running is ready
    await world.probe_all()
    world.t += 1
    await world.probe_all()
    assert world.woken == 1  # readiness flipped: the reconciler is woken to report it
    await world.rec.reconcile_once()
    st = world.latest[key]
    assert st is not None and st.ready is True and st.container_statuses[0].ready
    assert set(world.prober.probers) == {cid}


async def test_liveness_failure_restarts_container_as_unhealthy(world: World) -> None:
    key, cid = add_pod(world, "web", livenessProbe=probe("live", periodSeconds=1,
                                                         failureThreshold=2))
    world.fn.results = {"live": [False, False]}
    await world.rec.reconcile_once()
    await world.probe_all()
    world.t += 1
    await world.probe_all()
    await world.rec.reconcile_once()
    assert ("stop", cid) in world.runtime.calls
    cs = world.latest[key].container_statuses[0]  # type: ignore[union-attr]
    assert (cs.state, cs.reason) == ("waiting", "CrashLoopBackOff")
    assert "Unhealthy: liveness probe failed 2 times" in (cs.message or "")
    assert cs.last_state is not None and cs.last_state.exit_code == 143
    assert "Unhealthy" in (cs.last_state.message or "")
    assert cid not in world.prober.probers
    world.t += 10
    await world.rec.reconcile_once()
    cs = world.latest[key].container_statuses[0]  # type: ignore[union-attr]
    assert (cs.state, cs.restart_count) == ("running", 1)
    assert cs.last_state is not None and cs.last_state.finished_at is not None
    # The new instance is probed afresh.
    assert world.prober.probers[cid].state.unhealthy is None


async def test_startup_probe_reported_as_started(world: World) -> None:
    key, _ = add_pod(world, "web", startupProbe=probe("startup", periodSeconds=1))
    world.fn.results = {"startup": [False, True]}
    await world.rec.reconcile_once()
    cs = world.latest[key].container_statuses[0]  # type: ignore[union-attr]
    assert (cs.started, cs.ready) == (False, False)
    await world.probe_all()
    world.t += 1
    await world.probe_all()
    await world.rec.reconcile_once()
    cs = world.latest[key].container_statuses[0]  # type: ignore[union-attr]
    assert (cs.started, cs.ready) == (True, True)


async def test_prober_tasks_run_and_are_cancelled_with_the_reconciler(tmp_path: Path) -> None:
    rt = FakeRuntime()
    items: dict[str, Any] = {}
    calls: list[str] = []

    async def fn(cid: str, c: Container, p: Probe) -> tuple[bool, str]:
        calls.append(cid)
        return True, ""

    with Cache(tmp_path / "c") as cache:
        import time

        prober = ProbeManager(probe=fn, clock=time.time)
        rec = Reconciler(node="n", runtime=rt, cache=cache, interval_s=0.05, prober=prober,
                         desired=lambda: EdgeDesired(epoch="E", gen=2, items=items),
                         sink=type("S", (), {"update": lambda *a: None})())
        add_pod(items, "web", readinessProbe=probe("r"))
        task = asyncio.create_task(rec.run())
        for _ in range(100):
            await asyncio.sleep(0.02)
            if calls:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert calls and not prober.probers
