"""Reporter: change detection, persisted seq before publish, node status, heartbeat."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecore.cache import Cache
from edgecore.config import AgentSettings
from edgecore.nodeinfo import go_arch, mem_total_bytes, node_status
from edgecore.sync import Reporter
from shared.codec import Report, decode
from shared.delta import EdgeDesired
from shared.pods import ContainerStatus, PodStatus

NODE = "edge-1"


def make(cache: Cache, kicks: list[int]) -> Reporter:
    return Reporter(node=NODE, cache=cache, desired=lambda: EdgeDesired(epoch="E", gen=4),
                    node_status=lambda: {"arch": "amd64"}, kick=lambda: kicks.append(1),
                    batch_s=0, clock=lambda: 123.0)


def reports(cache: Cache) -> list[Report]:
    out = []
    for _, raw in cache.outbox():
        msg = decode(raw)
        assert isinstance(msg, Report)
        out.append(msg)
    return out


RUNNING = PodStatus(phase="Running", container_statuses=[
    ContainerStatus(name="main", state="running", ready=True)])


async def test_reports_changes_once_and_gone_pods(tmp_path: Path) -> None:
    kicks: list[int] = []
    with Cache(tmp_path / "c") as cache:
        r = make(cache, kicks)
        assert await r.flush() == 1  # first report: node status, even without pods
        r.update("pod/a/x", RUNNING)
        r.update("pod/a/x", RUNNING)
        r.update("pod/a/gone-before-reported", RUNNING)
        r.update("pod/a/gone-before-reported", None)
        assert await r.flush() == 2
        r.update("pod/a/x", RUNNING)  # unchanged: nothing to say
        assert await r.flush() is None
        r.update("pod/a/x", None)
        assert await r.flush() == 3
        first, second, third = reports(cache)
        assert first.node_status == {"arch": "amd64"} and first.pods == {}
        assert (second.seq, second.epoch, second.gen, second.node_status) == (2, "E", 4, None)
        assert list(second.pods) == ["pod/a/x"]
        assert second.pods["pod/a/x"]["phase"] == "Running"
        assert second.pods["pod/a/x"]["updatedAt"] == 123.0
        assert third.pods == {"pod/a/x": None}
        assert len(kicks) == 3
        # After a restart, what the cloud was told is remembered: no duplicate report.
        r2 = make(cache, kicks)
        r2._send_node_status = False
        r2.update("pod/a/y", RUNNING)
        await r2.flush()
        r3 = make(cache, kicks)
        r3.update("pod/a/y", RUNNING)
        assert r3.pending == 0


async def test_heartbeat_is_an_empty_report(tmp_path: Path) -> None:
    with Cache(tmp_path / "c") as cache:
        r = make(cache, [])
        seq = await r.heartbeat()
        (hb,) = reports(cache)
        assert (hb.seq, hb.pods, hb.node_status) == (seq, {}, None)


async def test_status_eviction_triggers_full_resend(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", outbox_budget=3000) as cache:
        r = make(cache, [])
        for i in range(30):
            r.update(f"pod/a/p{i}", RUNNING)
            await r.flush()
        # Old status reports were dropped: everything is queued again.
        assert r.pending > 0
        await r.flush()
        assert reports(cache)[-1].node_status is not None


def test_node_status_defaults_and_overrides(tmp_path: Path) -> None:
    s = AgentSettings(node=NODE, state_dir=tmp_path, labels={"zone": "a"}, heartbeat_s=15)
    ns = node_status(s)
    assert ns["capacity"]["cpu"] % 1000 == 0 and ns["capacity"]["memory"] > 0
    assert ns["capacity"]["pods"] == 110 and ns["allocatable"] == ns["capacity"]
    assert (ns["labels"], ns["heartbeat"], ns["os"]) == ({"zone": "a"}, 15, "linux")
    s2 = AgentSettings(node=NODE, state_dir=tmp_path, capacity_cpu_millis=1500,
                       capacity_memory_bytes=2**30, capacity_pods=8)
    assert node_status(s2)["capacity"] == {"cpu": 1500, "memory": 2**30, "pods": 8}


@pytest.mark.parametrize(("machine", "arch"), [
    ("x86_64", "amd64"), ("aarch64", "arm64"), ("armv7l", "arm"), ("armv6l", "arm")])
def test_arch_names(machine: str, arch: str) -> None:
    assert go_arch(machine) == arch


def test_mem_total(tmp_path: Path) -> None:
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:        2048 kB\nMemFree: 1 kB\n")
    assert mem_total_bytes(f) == 2048 * 1024
    assert mem_total_bytes(tmp_path / "missing") == 0


PENDING = PodStatus(phase="Pending", reason="ContainerCreating", container_statuses=[
    ContainerStatus(name="main", state="waiting", reason="ContainerCreating")])


def test_which_changes_are_urgent() -> None:
    from edgecore.sync.reporter import _comparable, urgent

    pending, running = _comparable(PENDING), _comparable(RUNNING)
    assert not urgent(None, pending)  # a new pod's first Pending can wait
    assert urgent(None, running) and urgent(pending, running) and urgent(running, None)
    pulling = _comparable(PodStatus(phase="Pending", reason="ContainerCreating",
                                    message="pulling x (10 s)"))
    assert not urgent(pending, pulling)  # progress text only
    backoff = _comparable(PodStatus(phase="Pending", reason="ImagePullBackOff", message="m"))
    assert urgent(pending, backoff) and urgent(None, backoff)
    unready = _comparable(PodStatus(phase="Running", ready=False, container_statuses=[
        ContainerStatus(name="main", state="running", ready=False)]))
    assert urgent(running, unready)
    assert urgent(running, _comparable(PodStatus(phase="Running", revision="r2",
                                                 container_statuses=RUNNING.container_statuses)))
    restarted = _comparable(PodStatus(phase="Running", container_statuses=[
        ContainerStatus(name="main", state="running", ready=True, restart_count=1)]))
    assert not urgent(running, restarted)
    assert not urgent(None, None)


async def test_running_is_reported_at_once_and_progress_waits(tmp_path: Path) -> None:
    """A pod's Running must not wait for the batch window its Pending opened (issue 16):
    with a 60 s window, Running still reaches the outbox at once; a message-only change
    waits for the window."""
    import asyncio

    with Cache(tmp_path / "c") as cache:
        kicks: list[int] = []
        r = Reporter(node=NODE, cache=cache, desired=lambda: EdgeDesired(epoch="E", gen=4),
                     node_status=lambda: {"arch": "amd64"}, kick=lambda: kicks.append(1),
                     batch_s=60.0, clock=lambda: 123.0)
        task = asyncio.create_task(r.run())
        try:
            async def outbox_len(n: int) -> None:
                async with asyncio.timeout(5):
                    while len(reports(cache)) < n:
                        await asyncio.sleep(0.005)

            await outbox_len(1)  # node status
            r.update("pod/a/x", PENDING)  # opens the window
            await asyncio.sleep(0.05)
            assert len(reports(cache)) == 1
            r.update("pod/a/x", RUNNING)
            await outbox_len(2)
            # The flush is over (it kicks last, after noting what the cloud was told):
            # an update while it still runs is judged against the old Pending.
            async with asyncio.timeout(5):
                while len(kicks) < 2:
                    await asyncio.sleep(0.005)
            (_, second) = reports(cache)
            assert second.pods["pod/a/x"]["phase"] == "Running"
            assert r.urgent_flushes == 1
            r.update("pod/a/x", PodStatus(phase="Running", container_statuses=[
                ContainerStatus(name="main", state="running", ready=True, restart_count=1)]))
            await asyncio.sleep(0.1)
            assert len(reports(cache)) == 2  # waits for the batch window
            r.update("pod/a/x", None)  # gone: at once, with the waiting change folded in
            await outbox_len(3)
            assert reports(cache)[2].pods == {"pod/a/x": None}
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
