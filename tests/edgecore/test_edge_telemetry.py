"""Telemetry: /proc parsing, 10 s samples -> 60 s points, reports in the outbox, and the
agent's periodic tasks (telemetry, log rotation) with a fake runtime."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edgecore.cache import Cache
from edgecore.reconciler.naming import ANN_POD
from edgecore.runtime.types import ContainerSpec, ContainerStats
from edgecore.sync import Reporter
from edgecore.telemetry import Telemetry, read_cpu_jiffies, read_mem_used
from shared.codec import Report, decode
from shared.delta import EdgeDesired
from shared.pods import PodStatus

from edgecore_fakes import FakeRuntime  # isort: skip


class FakeProc:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.busy = self.idle = 0
        self.set(busy=0, idle=0, used_kib=1000)

    def set(self, *, busy: int, idle: int, used_kib: int) -> None:
        self.busy, self.idle = busy, idle
        (self.root / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
        (self.root / "meminfo").write_text(
            f"MemTotal:       10000 kB\nMemFree:   1 kB\nMemAvailable:   {10000 - used_kib} kB\n")


def test_proc_readers(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    proc.set(busy=30, idle=70, used_kib=4000)
    assert read_cpu_jiffies(proc.root) == (30, 100)
    assert read_mem_used(proc.root) == 4000 * 1024
    assert read_cpu_jiffies(tmp_path) is None and read_mem_used(tmp_path) is None
    assert read_cpu_jiffies() is not None and (read_mem_used() or 0) > 0  # the real host


async def test_samples_aggregate_into_minute_points(tmp_path: Path) -> None:
    proc = FakeProc(tmp_path / "proc")
    rt = FakeRuntime()
    spec = ContainerSpec(name="main", image="x", annotations={ANN_POD: "pod/default/web"})
    await rt.run("web_main", spec)
    points: list[dict[str, Any]] = []

    async def sink(p: dict[str, Any]) -> None:
        points.append(p)

    tel = Telemetry(runtime=rt, sink=sink, proc=proc.root)
    tel._ncpu = 2
    # Six samples in minute 60..120: the node is 50 % busy (1 of 2 cores = 1000 m), the
    # container uses 0.25 cores and 1000 then 3000 bytes.
    for i in range(7):
        t = 60.0 + 10 * i
        proc.set(busy=50 * i, idle=50 * i, used_kib=2000 + i)
        rt.stats_of["web_main"] = ContainerStats(
            cpu_usage_ns=int(0.25e9 * 10 * i), memory_bytes=9999,
            memory_working_set_bytes=1000 if i < 3 else 3000, pids=1, timestamp=t)
        done = await tel.sample(t)
        assert (done is None) == (i < 6)
    assert len(points) == 1
    p = points[0]
    assert p["ts"] == 60
    assert p["node"]["cpu"] == 1000
    assert p["node"]["mem"] == round(sum(2000 + i for i in range(6)) / 6 * 1024)
    assert p["pods"] == {"pod/default/web": {"cpu": 250, "mem": 2000}}
    assert p["full"] is True  # the first point carries every pod
    assert tel.last_point == {k: v for k, v in p.items() if k != "full"}


def test_points_on_the_wire_carry_only_pods_that_moved() -> None:
    """Issue 16: compact telemetry; every full_every-th point has every pod again."""
    tel = Telemetry(runtime=FakeRuntime(), sink=lambda p: None,  # type: ignore[arg-type,return-value]
                    full_every=3)
    node = {"cpu": 100, "mem": 5 << 30}

    def point(ts: int, pods: dict[str, dict[str, float]]) -> dict[str, Any]:
        return tel._compact({"ts": ts, "node": dict(node), "pods": pods})

    a, b = "pod/default/a", "pod/default/b"
    first = point(0, {a: {"cpu": 10, "mem": 100 << 20}, b: {"cpu": 0, "mem": 8 << 20}})
    assert first["full"] is True and set(first["pods"]) == {a, b}
    # a moved by less than the quanta (4 m, 512 KiB), b did not move: no pods at all
    quiet = point(60, {a: {"cpu": 14, "mem": (100 << 20) + (512 << 10)},
                       b: {"cpu": 0, "mem": 8 << 20}})
    assert quiet == {"ts": 60, "node": node}
    # a moved 5 m from what was SENT (10 -> 15), b is gone, c is new
    c = "pod/default/c"
    moved = point(120, {a: {"cpu": 15, "mem": 100 << 20}, c: {"cpu": 1, "mem": 1 << 20}})
    assert moved["pods"] == {a: {"cpu": 15, "mem": 100 << 20}, b: None,
                             c: {"cpu": 1, "mem": 1 << 20}}
    assert "full" not in moved
    again = point(180, {a: {"cpu": 15, "mem": 100 << 20}, c: {"cpu": 1, "mem": 1 << 20}})
    assert again["full"] is True and set(again["pods"]) == {a, c}


async def test_reporter_puts_points_in_the_outbox_as_telemetry(tmp_path: Path) -> None:
    with Cache(tmp_path / "c", outbox_budget=64 * 1024) as cache:
        r = Reporter(node="n", cache=cache, desired=lambda: EdgeDesired(epoch="E", gen=1),
                     node_status=dict, batch_s=0)
        point = {"ts": 60, "node": {"cpu": 5, "mem": 7}, "pods": {}}
        seq = await r.telemetry(point)
        [(got_seq, raw)] = cache.outbox()
        msg = decode(raw)
        assert isinstance(msg, Report) and got_seq == seq
        assert msg.telemetry == [point] and msg.node_status is None
        # Over the budget, telemetry goes first and the newest status stays.
        big = {"ts": 0, "node": {}, "pods": {f"pod/a/p{i}": {"cpu": i} for i in range(400)}}
        for _ in range(10):
            await r.telemetry(big)
        r.update("pod/a/x", PodStatus(phase="Running"))
        status_seq = await r.flush()
        assert status_seq is not None
        assert status_seq in [s for s, _ in cache.outbox()]
        assert len(cache.outbox()) < 11


async def test_agent_runs_telemetry_and_log_rotation(tmp_path: Path) -> None:
    from edgecore.agent import Agent
    from edgecore.config import AgentSettings

    rt = FakeRuntime()
    settings = AgentSettings(node="n1", state_dir=tmp_path / "s", mqtt_port=1,
                             reconnect_initial_s=5, telemetry_sample_s=0.05,
                             telemetry_point_s=1, log_rotate_interval_s=0.05, log_keep=3,
                             discover_accelerators=False,
                             devices=(("example.com/npu", ("/dev/npu0",)),))
    agent = Agent(settings, runtime=rt)
    task = asyncio.create_task(agent.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if agent.telemetry is not None and agent.telemetry.last_point and rt.rotations:
                break
        assert rt.rotations and rt.rotations[0] == (0, 3)
        assert agent.telemetry is not None and agent.telemetry.last_point is not None
        status = agent._node_status()
        assert status["capacity"]["example.com/npu"] == 1
        assert "usage" in status and status["usage"]["memory"] > 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
