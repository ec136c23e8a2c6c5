"""The agent against a real mosquitto and a scripted fake cloud (aiomqtt).

The cloud sends a snapshot, a delta, a duplicate, a gap, garbled bytes and a
message for another node, and checks the acks and resyncs; every ack is checked
against what the agent has persisted at the moment it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest

from edgecore.agent import Agent
from edgecore.config import AgentSettings
from shared import topics
from shared.codec import Ack, Desired, Report, ReportAck, Resync, decode, encode
from shared.entries import pod_entry, pod_key
from shared.models import Pod

from edgecore_fakes import FakeRuntime  # isort: skip

NODE = "edge-link-1"
M = TypeVar("M")
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("sweeps_pod_network")]


class FakeCloud:
    """Subscribes to the node's up and will topics; sends whatever the script says."""

    def __init__(self, client: aiomqtt.Client, on_ack: Callable[[Ack], None]) -> None:
        self.client = client
        self.on_ack = on_ack
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.seen: list[Any] = []

    async def reader(self) -> None:
        async for m in self.client.messages:
            msg = decode(bytes(m.payload))  # type: ignore[arg-type]
            if isinstance(msg, Ack):
                self.on_ack(msg)
            self.seen.append(msg)
            await self.inbox.put(msg)

    async def send(self, msg: Any) -> None:
        payload = msg if isinstance(msg, bytes) else encode(msg)
        await self.client.publish(topics.down(NODE), payload, qos=1)

    async def expect(self, kind: type[M], pred: Callable[[M], bool] = lambda m: True,
                     timeout: float = 10) -> M:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.inbox.get()
                if isinstance(msg, kind) and pred(msg):
                    return msg


@contextlib.asynccontextmanager
async def fake_cloud(port: int, on_ack: Callable[[Ack], None]) -> AsyncIterator[FakeCloud]:
    async with aiomqtt.Client("127.0.0.1", port, identifier="fake-cloud") as client:
        await client.subscribe(topics.up(NODE), qos=1)
        await client.subscribe(topics.will(NODE), qos=1)
        cloud = FakeCloud(client, on_ack)
        task = asyncio.create_task(cloud.reader())
        try:
            yield cloud
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.started.wait(), 5)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def settings(tmp_path: Path, port: int, **kw: Any) -> AgentSettings:
    return AgentSettings(node=NODE, state_dir=tmp_path / "state", mqtt_port=port,
                         report_batch_s=0.05, reconcile_interval_s=0.2, heartbeat_s=3600,
                         reconnect_initial_s=0.05, reconnect_max_s=0.5, **kw)


def pod(name: str) -> tuple[str, dict[str, Any]]:
    p = Pod.model_validate({"metadata": {"name": name},
                            "spec": {"containers": [{"name": "main", "image": "busybox:1"}]}})
    return pod_key("default", name), pod_entry(p)


async def until(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_sync_protocol_over_real_broker(tmp_path: Path, mosquitto) -> None:
    runtime = FakeRuntime(clock=time.time)
    agent = Agent(settings(tmp_path, mosquitto.port), runtime=runtime)
    ack_violations: list[str] = []

    def check_persisted(ack: Ack) -> None:
        assert agent.cache is not None
        on_disk = agent.cache.get_desired()
        if (on_disk.epoch, on_disk.gen) != (ack.epoch, ack.gen):
            ack_violations.append(f"ack {ack.gen} but disk has {on_disk.gen}")

    web, db = pod("web"), pod("db")
    async with fake_cloud(mosquitto.port, check_persisted) as cloud, running(agent):
        hello = await cloud.expect(Resync)
        assert (hello.reason, hello.epoch, hello.gen) == ("connect", None, 0)
        assert hello.seq <= 1  # the first report may be persisted before the link is up
        first = await cloud.expect(Report)
        assert first.seq == 1 and first.node_status is not None
        assert first.node_status["capacity"]["pods"] == 110

        await cloud.send(Desired(node=NODE, epoch="E", base=0, gen=2, snapshot=True,
                                 put=dict([web])))
        assert (await cloud.expect(Ack)).gen == 2
        running_web = await cloud.expect(
            Report, lambda r: (r.pods.get(web[0]) or {}).get("phase") == "Running")
        assert running_web.gen == 2

        delta = Desired(node=NODE, epoch="E", base=2, gen=3, put=dict([db]))
        await cloud.send(delta)
        assert (await cloud.expect(Ack)).gen == 3
        await cloud.send(delta)  # duplicate
        assert (await cloud.expect(Ack)).gen == 3
        await cloud.send(Desired(node=NODE, epoch="E", base=5, gen=6, put={}))  # gap
        gap = await cloud.expect(Resync, lambda r: r.reason == "gap")
        assert (gap.epoch, gap.gen) == ("E", 3)

        await cloud.send(b"\xc1 definitely not msgpack")
        await cloud.send(Desired(node="someone-else", epoch="E", base=3, gen=4, put={}))
        await cloud.send(Desired(node=NODE, epoch="E", base=2, gen=3, put={}))
        assert (await cloud.expect(Ack)).gen == 3  # still alive after the junk
        assert agent.link is not None
        assert (agent.link.stats.malformed, agent.link.stats.foreign) == (1, 1)
        await until(lambda: runtime.running() and len(runtime.running()) == 2)

        # Reports wait in the outbox until acked, then go.
        last = max(m.seq for m in cloud.seen if isinstance(m, Report))
        await cloud.send(ReportAck(node=NODE, seq=last))
        await until(lambda: all(s > last for s, _ in agent.cache.outbox()))  # type: ignore[union-attr]

        # Delete a pod, keep its report unacked, then break the session (takeover).
        await cloud.send(Desired(node=NODE, epoch="E", base=3, gen=4, delete=[web[0]]))
        assert (await cloud.expect(Ack)).gen == 4
        gone = await cloud.expect(Report, lambda r: web[0] in r.pods)
        assert gone.pods[web[0]] is None
        unacked = [s for s, _ in agent.cache.outbox()]  # type: ignore[union-attr]
        assert unacked and gone.seq in unacked
        connects = agent.link.stats.connects
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier=NODE,
                                  clean_session=False):
            pass  # steals the session; the agent must reconnect and resend
        again = await cloud.expect(Resync, lambda r: r.reason == "connect")
        assert (again.epoch, again.gen, again.seq) == ("E", 4, max(unacked))
        resent = [(await cloud.expect(Report)).seq for _ in unacked]
        assert resent == unacked  # in seq order
        assert agent.link.stats.connects == connects + 1

    assert ack_violations == []
    # Stopping the agent left the containers running.
    assert len(runtime.running()) == 1


async def test_offline_restart_brings_pods_back_from_cache(tmp_path: Path, mosquitto) -> None:
    runtime = FakeRuntime(clock=time.time)
    agent = Agent(settings(tmp_path, mosquitto.port), runtime=runtime)
    web = pod("web")
    async with fake_cloud(mosquitto.port, lambda a: None) as cloud, running(agent):
        await cloud.expect(Resync)
        await cloud.send(Desired(node=NODE, epoch="E", base=0, gen=1, snapshot=True,
                                 put=dict([web])))
        await cloud.expect(Ack)
        await until(lambda: len(runtime.running()) == 1)
    # The device reboots (containers gone) and the broker is unreachable.
    mosquitto.stop()
    rebooted = FakeRuntime(clock=time.time)
    agent2 = Agent(settings(tmp_path, mosquitto.port), runtime=rebooted)
    async with running(agent2):
        await until(lambda: len(rebooted.running()) == 1)
        assert agent2.link is not None and not agent2.link.connected
    # And an agent restart with the containers still running adopts them.
    agent3 = Agent(settings(tmp_path, mosquitto.port), runtime=rebooted)
    rebooted.calls.clear()
    async with running(agent3):
        await until(lambda: agent3.reconciler is not None and agent3.reconciler.passes >= 2)
    assert rebooted.ops("run", "stop", "remove") == []


async def test_heartbeat_is_an_empty_report_while_connected(tmp_path: Path, mosquitto) -> None:
    s = AgentSettings(node=NODE, state_dir=tmp_path / "state", mqtt_port=mosquitto.port,
                      heartbeat_s=0.3, report_batch_s=0.05)
    agent = Agent(s, runtime=FakeRuntime(clock=time.time))
    async with fake_cloud(mosquitto.port, lambda a: None) as cloud, running(agent):
        first = await cloud.expect(Report)
        assert first.node_status is not None
        hb = await cloud.expect(Report, lambda r: r.seq > first.seq, timeout=5)
        assert (hb.pods, hb.node_status, hb.telemetry) == ({}, None, [])


class _Quiet:
    """A LinkHandler with nothing to say."""

    def hello(self) -> Resync:
        return Resync(node=NODE, gen=0)

    def pending(self, after: int) -> list[tuple[int, bytes]]:
        return []

    async def handle(self, msg: Any) -> list[Any]:
        return []


async def test_cancel_wins_over_a_failing_disconnect(mosquitto, monkeypatch) -> None:
    """An MQTT error raised while the link is being cancelled must not swallow the stop."""
    from edgecore.link import Link

    link = Link(node=NODE, host="127.0.0.1", port=mosquitto.port, handler=_Quiet())
    task = asyncio.create_task(link.run())
    await asyncio.wait_for(link.wait_connected(), 5)
    real_exit = aiomqtt.Client.__aexit__

    async def failing_exit(self: aiomqtt.Client, *exc: Any) -> None:
        await real_exit(self, *exc)
        raise aiomqtt.MqttError("Operation timed out")

    monkeypatch.setattr(aiomqtt.Client, "__aexit__", failing_exit)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)



async def test_a_stop_during_the_subscribe_logs_no_error(
        mosquitto, monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    """The agent stopped as its SUBSCRIBE goes out: the SUBACK that arrives while the
    session closes is not logged as an error. aiomqtt forgets a cancelled subscribe and
    logs its answer with a traceback (`KeyError: 1`, seen in CI when `edgecore run` got
    SIGTERM right after starting). Made certain here by a loop busy for 0.2 s as the
    DISCONNECT is queued: the SUBACK is then read before the DISCONNECT is written."""
    import time as clock

    import paho.mqtt.client as paho

    from edgecore.link import Link

    link = Link(node=NODE, host="127.0.0.1", port=mosquitto.port, handler=_Quiet())
    task = asyncio.create_task(link.run())
    real_subscribe, real_disconnect = aiomqtt.Client.subscribe, paho.Client.disconnect

    async def subscribe_as_the_stop_comes(self: aiomqtt.Client, *a: Any, **kw: Any) -> Any:
        task.cancel()
        return await real_subscribe(self, *a, **kw)

    def busy_then_disconnect(self: paho.Client, *a: Any, **kw: Any) -> Any:
        clock.sleep(0.2)
        return real_disconnect(self, *a, **kw)

    monkeypatch.setattr(aiomqtt.Client, "subscribe", subscribe_as_the_stop_comes)
    monkeypatch.setattr(paho.Client, "disconnect", busy_then_disconnect)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    await asyncio.sleep(0.3)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not link.connected


class _Reporting(_Quiet):
    """A LinkHandler with a report to send whenever one is added."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, bytes]] = []

    def pending(self, after: int) -> list[tuple[int, bytes]]:
        return [(s, p) for s, p in self.reports if s > after]


async def test_no_keepalive_ping_while_reports_are_acked(mosquitto, monkeypatch) -> None:
    """Issue 16's quiet link: paho 2.x pings every keepalive however often the agent
    publishes (its last-sent time never moves; eclipse-paho/paho.mqtt.python#813). A
    QoS 1 report the broker acked counts as the packet sent: no PINGREQ while reports
    flow, and pings again once they stop (the keepalive still watches an idle link)."""
    import paho.mqtt.client as paho

    from edgecore.link import Link

    pings: list[float] = []
    real_ping = paho.Client._send_pingreq

    def counted(self: paho.Client) -> Any:
        pings.append(time.monotonic())
        return real_ping(self)

    monkeypatch.setattr(paho.Client, "_send_pingreq", counted)
    handler = _Reporting()
    link = Link(node=NODE, host="127.0.0.1", port=mosquitto.port, handler=handler,
                keepalive_s=2)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.wait_connected(), 5)
        for seq in range(1, 13):  # a report every 0.5 s for 6 s: three keepalives
            handler.reports.append((seq, encode(Report(node=NODE, seq=seq))))
            link.kick()
            await asyncio.sleep(0.5)
        assert link.stats.reports_sent == 12
        assert pings == []
        quiet_from = time.monotonic()
        await asyncio.sleep(3.5)  # nothing sent: paho pings within a keepalive or so
        assert pings and pings[0] >= quiet_from
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
