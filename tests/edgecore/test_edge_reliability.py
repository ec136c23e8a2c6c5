"""Agent reliability: a full disk never silences the node, backoff settings scale.

- Reporter: a heartbeat the outbox cannot hold (CacheError) goes out unpersisted,
  with the highest seq the cloud is known to have processed (a duplicate for the
  cloud); status changes stay pending and are retried with backoff until persisted.
- Agent over a real mosquitto: with every cache write failing, heartbeats keep
  arriving (same seq, nothing new persisted); after space returns seqs grow again;
  after a reconnect the agent reports at once.
- Settings and flags: reconnect cap and operation timeout default to
  min(30 s, heartbeat) and the heartbeat clamped to [5 s, 15 s].
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edgecore.__main__ import build_parser, settings_from_args
from edgecore.agent import Agent
from edgecore.cache import Cache
from edgecore.config import AgentSettings
from edgecore.errors import CacheError, ConfigError
from edgecore.sync import Reporter
from shared.codec import Report, ReportAck, Resync, decode, encode
from shared.delta import EdgeDesired
from shared.pods import PodStatus

from edgecore_fakes import FakeRuntime  # isort: skip
from test_edge_link import fake_cloud, running  # isort: skip

NODE = "edge-link-1"  # the fake cloud of test_edge_link listens for this node
pytestmark = pytest.mark.timeout(60)


def _enospc(*_: Any, **__: Any) -> Any:
    raise CacheError("mdb_txn_commit: No space left on device")


def make(cache: Cache, beats: list[bytes], acked: list[int] | None = None) -> Reporter:
    return Reporter(node=NODE, cache=cache, desired=lambda: EdgeDesired(epoch="E", gen=4),
                    node_status=lambda: {"arch": "amd64"}, batch_s=0, clock=lambda: 123.0,
                    acked=lambda: max(acked or [0]), publish_unpersisted=beats.append)


def heartbeat_payload(seq: int) -> bytes:
    return encode(Report(node=NODE, seq=seq, epoch="E", gen=4, ts=123.0))


# ---- reporter -------------------------------------------------------------------------

async def test_unpersisted_heartbeat_reuses_the_acked_floor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Cache(tmp_path / "c") as cache:
        acked: list[int] = []
        beats: list[bytes] = []
        r = make(cache, beats, acked)
        assert await r.heartbeat() == 1
        assert await r.heartbeat() == 2
        assert await r.heartbeat() == 3
        cache.ack_reports(1)  # 2 and 3 still wait in the outbox

        monkeypatch.setattr(cache, "append_report", _enospc)
        assert await r.heartbeat() is None
        # the oldest unacked entry is 2: seq 1 is the highest the cloud surely has
        assert [decode(b).seq for b in beats] == [1]  # type: ignore[union-attr]
        assert beats[0] == heartbeat_payload(1)
        acked.append(3)  # the link saw ReportAck(3)
        await r.heartbeat()
        assert decode(beats[-1]).seq == 3  # type: ignore[union-attr]
        assert cache.last_seq() == 3  # no seq was used without being persisted
        assert r.unpersisted_heartbeats == 2


async def test_unpersisted_heartbeat_with_empty_outbox_uses_last_seq(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Cache(tmp_path / "c") as cache:
        r0 = make(cache, [])
        await r0.heartbeat()
        await r0.heartbeat()
        cache.ack_reports(2)
        beats: list[bytes] = []
        r = make(cache, beats)  # a restarted agent: no ack seen in this process yet
        monkeypatch.setattr(cache, "append_report", _enospc)
        await r.heartbeat()
        assert decode(beats[0]).seq == 2  # type: ignore[union-attr]


async def test_no_heartbeat_without_any_seq_to_reuse(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with Cache(tmp_path / "c") as cache:
        beats: list[bytes] = []
        r = make(cache, beats)
        monkeypatch.setattr(cache, "append_report", _enospc)
        assert await r.heartbeat() is None
        assert beats == []  # seq 0 does not exist; the hello Resync covers a fresh node


async def test_status_changes_are_kept_and_retried_with_backoff(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Cache(tmp_path / "c") as cache:
        r = make(cache, [])
        r.retry.initial, r.retry.cap, r.retry.jitter = 0.05, 0.1, 0
        real = cache.append_report
        calls: list[float] = []

        def full(*a: Any, **kw: Any) -> Any:
            calls.append(time.monotonic())
            raise CacheError("No space left on device")

        monkeypatch.setattr(cache, "append_report", full)
        task = asyncio.create_task(r.run())
        try:
            r.update("pod/default/a", PodStatus(phase="Running"))
            await asyncio.sleep(0.5)
            assert r.pending == 1 and cache.last_seq() == 0
            # retried, but with backoff: not once per batch_s (0 here) in a hot loop
            assert 2 <= len(calls) <= 12, len(calls)
            monkeypatch.setattr(cache, "append_report", real)
            deadline = time.monotonic() + 5
            while r.pending or cache.last_seq() == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        msg = decode(cache.outbox()[0][1])
        assert isinstance(msg, Report)
        # the first persisted report carries everything still unsaid: node status + pod
        assert msg.node_status is not None and "pod/default/a" in msg.pods
        assert cache.reported_statuses()["pod/default/a"]["phase"] == "Running"


# ---- agent over a real broker ---------------------------------------------------------

def agent_settings(tmp_path: Path, port: int, **kw: Any) -> AgentSettings:
    return AgentSettings(node=NODE, state_dir=tmp_path / "state", mqtt_port=port,
                         report_batch_s=0.05, reconcile_interval_s=0.2,
                         reconnect_initial_s=0.05, **kw)


async def test_agent_keeps_beating_on_a_full_disk(tmp_path: Path, mosquitto) -> None:
    agent = Agent(agent_settings(tmp_path, mosquitto.port, heartbeat_s=0.2,
                                 heartbeat_jitter=0),
                  runtime=FakeRuntime(clock=time.time))
    async with fake_cloud(mosquitto.port, lambda a: None) as cloud, running(agent):
        first = await cloud.expect(Report)
        await cloud.send(ReportAck(node=NODE, seq=first.seq))
        assert agent.cache is not None and agent.link is not None
        cache = agent.cache
        await _until(lambda: agent.link is not None and agent.link.report_acked >= first.seq)
        last = cache.last_seq()
        real = cache.append_report
        cache.append_report = _enospc  # type: ignore[method-assign]
        try:
            await asyncio.sleep(0.3)
            cloud.seen.clear()
            await asyncio.sleep(1.0)
            beats = [m for m in cloud.seen if isinstance(m, Report)]
            assert len(beats) >= 3, cloud.seen  # the cloud still hears the node
            assert {m.seq for m in beats} <= {first.seq, last}  # a duplicate for the cloud
            assert all(not m.pods and m.node_status is None for m in beats)
            assert cache.last_seq() == last
        finally:
            cache.append_report = real  # type: ignore[method-assign]
        later = await cloud.expect(Report, lambda m: m.seq > last)
        assert later.seq == last + 1  # space is back: persisted reports again
        assert agent.link.stats.beats_sent >= 3


async def test_agent_reports_right_after_a_reconnect(tmp_path: Path, mosquitto) -> None:
    agent = Agent(agent_settings(tmp_path, mosquitto.port, heartbeat_s=3600),
                  runtime=FakeRuntime(clock=time.time))
    async with fake_cloud(mosquitto.port, lambda a: None) as cloud, running(agent):
        first = await cloud.expect(Report)
        await cloud.send(ReportAck(node=NODE, seq=first.seq))
        await asyncio.sleep(0.3)
        assert agent.link is not None
        # Take the node's session over: the broker disconnects the agent, which reconnects.
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=NODE,
                                  clean_session=False):
            pass
        await _until(lambda: agent.link is not None and agent.link.stats.connects >= 2)
        hello = await cloud.expect(Resync, lambda m: m.reason == "connect")
        # no hour-long wait for the next heartbeat: a report follows the hello at once
        beat = await cloud.expect(Report, timeout=5)
        assert beat.seq > first.seq and hello.seq >= first.seq


async def _until(cond: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# ---- settings and flags ---------------------------------------------------------------

def test_backoff_defaults_follow_the_heartbeat(tmp_path: Path) -> None:
    s = AgentSettings(node="n", state_dir=tmp_path)
    assert (s.reconnect_cap_s, s.op_timeout) == (30.0, 15.0)
    s = AgentSettings(node="n", state_dir=tmp_path, heartbeat_s=8)
    assert (s.reconnect_cap_s, s.op_timeout) == (8.0, 8.0)
    s = AgentSettings(node="n", state_dir=tmp_path, heartbeat_s=120)
    assert (s.reconnect_cap_s, s.op_timeout) == (30.0, 15.0)
    s = AgentSettings(node="n", state_dir=tmp_path, heartbeat_s=0.2)
    assert s.reconnect_cap_s == 0.5  # never below the first delay
    assert s.op_timeout == 5.0
    s = AgentSettings(node="n", state_dir=tmp_path, heartbeat_s=5, reconnect_max_s=60,
                      op_timeout_s=20)
    assert (s.reconnect_cap_s, s.op_timeout) == (60, 20)
    with pytest.raises(ConfigError, match="reconnect_max_s"):
        AgentSettings(node="n", state_dir=tmp_path, reconnect_max_s=0.1)
    with pytest.raises(ConfigError, match="op_timeout_s"):
        AgentSettings(node="n", state_dir=tmp_path, op_timeout_s=0)


def test_backoff_flags(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--name", "n", "--state-dir", str(tmp_path),
                                      "--heartbeat", "10", "--reconnect-max", "4",
                                      "--op-timeout", "3", "--insecure"])
    s = settings_from_args(args)
    assert (s.reconnect_cap_s, s.op_timeout) == (4, 3)
    args = build_parser().parse_args(["run", "--name", "n", "--state-dir", str(tmp_path),
                                      "--heartbeat", "10", "--insecure"])
    s = settings_from_args(args)
    assert (s.reconnect_cap_s, s.op_timeout) == (10, 10)


async def test_agent_uses_the_effective_backoff(tmp_path: Path) -> None:
    agent = Agent(AgentSettings(node="n", state_dir=tmp_path / "s", heartbeat_s=2,
                                mqtt_port=1, reconnect_initial_s=0.05),
                  runtime=FakeRuntime(clock=time.time))
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.started.wait(), 5)
        assert agent.link is not None
        assert agent.link.backoff.cap == 2 and agent.link.op_timeout_s == 5
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

