"""While cloudcore cannot listen to a broker, silence is no evidence (issue 14's storm).

A node's liveness deadline is its last report plus 3 heartbeats. When the cloud's
subscriber loses its broker (a broker restarted empty: the nodes' sessions are gone
too, and they must reconnect), the nodes reached there get their deadlines moved
(`Liveness.deaf`) once the subscriber is back, so a restart shorter than the window
flaps no node NotReady while it reconnects; a node that stays silent still goes
NotReady, a window after the broker's return.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloudcore.config import Settings
from cloudcore.fleet.lifecycle import Liveness
from shared import topics
from shared.codec import Report, encode
from testbed.broker import Mosquitto


def test_deaf_moves_live_deadlines_only() -> None:
    lv = Liveness(default_heartbeat=60.0, missed=3, now=0.0)
    lv.heard("a", 0.0)  # due at 180
    lv.heard("b", 100.0)  # due at 280
    lv.heard("c", -500.0)
    lv.heard("other", 0.0)  # on another broker
    assert lv.expired(1.0) == ["c"]  # already NotReady: stays so until heard
    lv.deaf(lambda n: n in {"a", "b", "c"}, 150.0, deaf_s=20.0, lost=False)
    assert lv.expired(180.0) == ["other"]
    assert lv.expired(199.9) == []
    assert lv.expired(200.0) == ["a"]  # 180 + 20 s deaf
    assert lv.expired(299.9) == [] and lv.expired(300.0) == ["b"]
    assert lv.expired(10_000.0) == []  # c stays expired, nothing else was tracked
    # sessions lost with the broker: a whole window from the return, as at start
    lv.heard("a", 400.0)
    lv.heard("b", 540.0)  # due at 720: later than 550 + 180 - ... keeps the later one
    lv.heard("d", 600.0)  # heard after the return: the deaf time before it is no excuse
    lv.deaf(lambda n: n in {"a", "b", "d"}, 550.0, deaf_s=20.0, lost=True)
    lv.heard("d", 600.0)
    assert lv.expired(729.9) == []  # a: 550 + 180 = 730
    assert lv.expired(740.0) == ["a", "b"]  # b: 720 + 20
    assert lv.expired(779.9) == [] and lv.expired(780.0) == ["d"]  # 600 + 180, unmoved


def test_deaf_costs_nothing_until_deadlines_come() -> None:
    """A return records one entry, whatever the fleet's size; the shift is folded into
    each deadline when it comes, so only the nodes due in a tick are looked at."""
    lv = Liveness(default_heartbeat=60.0, missed=3, now=0.0)
    for i in range(20_000):
        lv.heard(f"n{i}", i * 0.009)  # due 180 .. 360
    looked: list[str] = []

    def select(node: str) -> bool:
        looked.append(node)
        return True

    lv.deaf(select, 10.0, deaf_s=5.0, lost=True)
    assert looked == []
    assert lv.expired(189.99) == []  # 10 + 180
    assert 1_100 < len(looked) < 1_120 and len(set(looked)) == len(looked)  # due by then
    assert len(lv.expired(10_000.0)) == 20_000


async def _report(port: int, node: str, heartbeat: float) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"edge-{node}",
                              clean_session=True) as c:
        await c.publish(topics.topic(node, "up"),
                        encode(Report(node=node, seq=1, node_status={"heartbeat": heartbeat})),
                        qos=1)


async def _ready_node(run: Any, port: int) -> Callable[[], str]:
    """Node e1 reports (heartbeat 2 s: a 6 s window) and is Ready; its readiness getter."""

    def ready() -> str:
        return str(run.fleet.objects.nodes["e1"].status.ready)

    await _report(port, "e1", 2.0)
    async with asyncio.timeout(5):
        while "e1" not in run.fleet.objects.nodes or ready() != "Ready":
            await asyncio.sleep(0.02)
    assert run.fleet.node_ops.liveness.window("e1") == 6.0
    return ready


async def test_a_broker_restart_counts_nothing_against_its_nodes(
        tmp_path: Path, settings: Settings, service_factory: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudcore.synchub import hub as hub_module

    monkeypatch.setattr(hub_module, "WAVE_QUIET_S", 1.0)  # no node comes back: over soon
    with Mosquitto(workdir=tmp_path / "mq", insecure=True) as broker:
        settings.mqtt.port = broker.port
        settings.mqtt.keepalive = 2  # the subscriber hears the broker's pong every second
        run = await service_factory().start()
        ready = await _ready_node(run, broker.port)
        t0 = time.monotonic()
        window = 6.0
        broker.kill()
        broker.stop()
        await asyncio.sleep(window / 2)
        await asyncio.to_thread(broker.start)
        # The subscriber is back within its reconnect cap (0.5 s); the node's old
        # deadline (t0 + 6) passes, yet it is Ready: its clock restarted at the return.
        await asyncio.sleep(t0 + window + 1.0 - time.monotonic())
        assert ready() == "Ready"
        # Silent still: NotReady a window after the broker came back, not never.
        async with asyncio.timeout(window + 2.0):
            while ready() != "NotReady":
                await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        assert took > window + 1.0


async def test_a_silent_node_stays_ready_while_its_broker_s_nodes_come_back(
        tmp_path: Path, settings: Settings, service_factory: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The real service and broker: after the broker restarted empty, other nodes keep
    reconnecting through it (their resyncs) for longer than the window; the silent node
    stays Ready until no resync came for WAVE_QUIET_S, then goes NotReady."""
    from cloudcore.synchub import hub as hub_module
    from shared.codec import Resync

    monkeypatch.setattr(hub_module, "WAVE_QUIET_S", 3.0)
    with Mosquitto(workdir=tmp_path / "mq", insecure=True) as broker:
        settings.mqtt.port = broker.port
        settings.mqtt.keepalive = 2
        run = await service_factory().start()

        ready = await _ready_node(run, broker.port)
        broker.kill()
        broker.stop()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(broker.start)
        back = time.monotonic()
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="edge-w",
                                  clean_session=True) as c:
            # the wave: a node of the broker comes back every second, for 2 windows
            for i in range(12):
                await c.publish(topics.topic(f"w{i}", "up"),
                                encode(Resync(node=f"w{i}", gen=0)), qos=1)
                await asyncio.sleep(1.0)
                assert ready() == "Ready", f"NotReady {time.monotonic() - back:.1f} s " \
                                           "after the return, while the wave went on"
        stopped = time.monotonic()
        async with asyncio.timeout(10):
            while ready() != "NotReady":
                await asyncio.sleep(0.05)
        quiet = time.monotonic() - stopped
        assert 1.5 < quiet < 6.0, quiet  # WAVE_QUIET_S after the last resync (+ a tick)


def test_a_hold_keeps_a_node_from_expiring_while_its_broker_cannot_be_heard() -> None:
    lv = Liveness(default_heartbeat=60.0, missed=3, now=0.0)
    lv.heard("behind", 0.0)
    lv.heard("other", 0.0)
    deaf_until = 400.0  # the cloud hears nothing from "behind"'s broker until then
    asked: list[float] = []

    def hold(node: str, now: float) -> float | None:
        asked.append(now)
        return now + 5.0 if node == "behind" and now < deaf_until else None

    lv.hold(hold)
    expired = {}
    for second in range(1, 601):
        for node in lv.expired(float(second)):
            expired[node] = second
    assert expired == {"other": 180, "behind": 400}  # looked at every 5 s from 180
    assert 40 < len(asked) < 50


async def test_a_stalled_broker_flaps_no_node_not_ready(
        tmp_path: Path, settings: Settings, service_factory: Any) -> None:
    """A broker that answers nothing (SIGSTOP: a broker busy with a reconnect storm
    answered nothing for 47-58 s at 100,000 nodes) for two windows: the cloud cannot
    hear any node behind it, so none goes NotReady meanwhile; once it answers again, a
    node that stays silent goes NotReady (its deadline moved by the deaf time)."""
    import os
    import signal as sig

    with Mosquitto(workdir=tmp_path / "mq", insecure=True) as broker:
        settings.mqtt.port = broker.port
        settings.mqtt.keepalive = 2  # pings every second; silence for 3 s drops it
        run = await service_factory().start()

        ready = await _ready_node(run, broker.port)
        window = 6.0
        assert broker.proc is not None
        os.kill(broker.proc.pid, sig.SIGSTOP)
        try:
            stopped = time.monotonic()
            while time.monotonic() - stopped < 2 * window:
                assert ready() == "Ready", \
                    f"NotReady {time.monotonic() - stopped:.1f} s into the broker's stall"
                await asyncio.sleep(0.2)
        finally:
            os.kill(broker.proc.pid, sig.SIGCONT)
        async with asyncio.timeout(60):  # the subscriber's reconnect, then a window
            while ready() != "NotReady":
                await asyncio.sleep(0.1)


async def test_nodes_not_heard_after_a_lost_session_are_asked_for_everything(
        tmp_path: Path, settings: Settings, service_factory: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that reconnected before the cloud's subscriber did sent its resync into
    the void. Shortly after the return of a broker that restarted (it lost our kept
    session) the hub asks every node there that it has not heard since (and that
    reported before) for its whole status; a node heard meanwhile is not asked, and a
    shard's clean session coming back asks nobody."""
    from cloudcore.synchub import hub as hub_module
    from shared.codec import ReportAck, decode

    with Mosquitto(workdir=tmp_path / "mq", insecure=True) as broker:
        settings.mqtt.port = broker.port
        run = await service_factory().start()
        got: dict[str, list[ReportAck]] = {"quiet": [], "talker": []}

        async def edge(node: str, ready: asyncio.Event, talk: asyncio.Event) -> None:
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"edge-{node}",
                                      clean_session=True) as c:
                await c.subscribe(topics.topic(node, "down"), qos=1)
                up = topics.topic(node, "up")
                await c.publish(up, encode(Report(node=node, seq=1)), qos=1)
                ready.set()

                async def talker() -> None:
                    await talk.wait()
                    await c.publish(up, encode(Report(node=node, seq=2)), qos=1)

                t = asyncio.create_task(talker())
                try:
                    async for m in c.messages:
                        msg = decode(bytes(m.payload))  # type: ignore[arg-type]
                        if isinstance(msg, ReportAck):
                            got[node].append(msg)
                finally:
                    t.cancel()

        ready = {n: asyncio.Event() for n in got}
        talk = asyncio.Event()
        never = asyncio.Event()
        tasks = [asyncio.create_task(edge("quiet", ready["quiet"], never)),
                 asyncio.create_task(edge("talker", ready["talker"], talk))]
        try:
            async with asyncio.timeout(10):
                for n in got:
                    await ready[n].wait()
                while run.fleet.report_seq.get("quiet") != 1 or \
                        run.fleet.report_seq.get("talker") != 1:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
            for acks in got.values():
                assert acks and not any(a.again for a in acks)
            # a shard's clean session back (the broker may not have restarted): no probe
            run.hub.broker_back("mq-0", 3.0, True, restarted=False)
            await asyncio.sleep(hub_module.PROBE_QUIET_S + 0.5)
            assert not any(a.again for acks in got.values() for a in acks)
            # a wave that has not passed by the longest wait: no probe at all (at 100,000
            # nodes the ones not heard by then are mostly not connected yet)
            monkeypatch.setattr(hub_module, "PROBE_MAX_WAIT_S", 1.0)
            monkeypatch.setattr(hub_module, "PROBE_MIN_INTERVAL_S", 0.0)
            run.hub.broker_back("mq-0", 3.0, True, restarted=True)
            async with asyncio.timeout(15):  # that round gives up after its 1 s
                while any(t.get_name().startswith("cloudcore.synchub.probe")
                          and not t.done() for t in asyncio.all_tasks()):
                    await asyncio.sleep(0.1)
            assert not any(a.again for acks in got.values() for a in acks)
            assert run.metrics.value(hub_module.REPORT_PROBES) == 0
            monkeypatch.setattr(hub_module, "PROBE_MAX_WAIT_S", 60.0)
            # as the subscriber does when it is back on a broker that lost its session
            run.hub.broker_back("mq-0", 3.0, True, restarted=True)
            talk.set()  # heard within the window: not asked
            # quiet, but half of the nodes to ask heard: the wave may not have come yet
            await asyncio.sleep(hub_module.PROBE_QUIET_S + 1.0)
            assert not any(a.again for acks in got.values() for a in acks)
            monkeypatch.setattr(hub_module, "PROBE_HEARD_SHARE", 0.5)
            await asyncio.sleep(1.5)
            assert [(a.seq, a.again) for a in got["quiet"] if a.again] == [(1, True)]
            assert not any(a.again for a in got["talker"])
            assert run.metrics.value(hub_module.REPORT_PROBES) == 1
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_probe_waiting_when_the_service_stops_ends_with_it(
        tmp_path: Path, settings: Settings, service_factory: Any) -> None:
    """The probe round a broker's return starts belongs to the service: stopping the
    service ends it, rather than leaving it to ask nodes through a closed store."""
    with Mosquitto(workdir=tmp_path / "mq", insecure=True) as broker:
        settings.mqtt.port = broker.port
        svc = service_factory()
        run = await svc.start()
        run.hub.broker_back("mq-0", 1.0, True, restarted=True)

        def probes() -> list[str]:
            return [t.get_name() for t in asyncio.all_tasks()
                    if t.get_name().startswith("cloudcore.synchub.probe") and not t.done()]

        assert probes() == ["cloudcore.synchub.probe[mq-0]"]
        await svc.stop()
        await asyncio.sleep(0.1)
        assert probes() == []


class _Wave:
    """A reconnect wave as the hub keeps it: over `quiet` s after the last node came back."""

    def __init__(self, at: float, quiet: float) -> None:
        self.last_back, self.quiet = at, quiet

    def holds_until(self, now: float) -> float | None:
        end = self.last_back + self.quiet
        return end if end > now else None


def test_a_reconnect_wave_holds_the_nodes_not_back_until_it_is_over() -> None:
    """100,000 nodes reconnecting over TLS to a restarted broker on a loaded machine come
    back over minutes, longer than the window (issue 14's storm: 47,711-62,605 NotReady at
    once). While the wave goes on, a node of that broker not back yet is not expired but
    looked at again when the wave may be over; a silent one goes NotReady then. A node on
    another broker, or heard since the return, keeps its own clock."""
    lv = Liveness(default_heartbeat=60.0, missed=3, now=0.0)
    for n in ("slow", "dead", "back", "other"):
        lv.heard(n, 0.0)
    wave = _Wave(10.0, quiet=60.0)
    looked: list[str] = []

    def on_broker(n: str) -> bool:
        looked.append(n)
        return n != "other"

    lv.deaf(on_broker, 10.0, deaf_s=5.0, lost=True, wave=wave)
    lv.heard("back", 50.0)  # came back with the first of the wave: due at 230
    expired: dict[str, float] = {}
    for second in range(1, 1001):
        now = float(second)
        if second <= 400 and second % 7 == 0:
            wave.last_back = now  # nodes of that broker keep coming back until 399
        if second == 390:
            lv.heard("slow", now)  # among the last of the wave
        for node in lv.expired(now):
            expired.setdefault(node, now)
    assert expired["other"] == 180.0  # not that broker's: its clock as before
    assert expired["back"] == 230.0  # heard since the return: a window from then
    # silent: held past its window (10 + 180) until the wave was quiet 60 s (399 + 60)
    assert expired["dead"] == 459.0
    assert expired["slow"] == 570.0  # heard at 390: a window from then
    # looked at when due, and again when the wave may be over: not every tick
    assert looked.count("dead") < 20


def test_a_wave_does_not_hold_without_lost_sessions_nor_a_node_expired_before() -> None:
    lv = Liveness(default_heartbeat=60.0, missed=3, now=0.0)
    lv.heard("kept", 0.0)  # its session kept on the broker: deaf time only
    lv.heard("gone", -500.0)
    assert lv.expired(1.0) == ["gone"]
    forever = _Wave(0.0, quiet=1e9)
    lv.deaf(lambda _n: True, 10.0, deaf_s=5.0, lost=False, wave=forever)
    assert lv.expired(184.9) == [] and lv.expired(185.0) == ["kept"]
    lv.deaf(lambda _n: True, 200.0, deaf_s=5.0, lost=True, wave=forever)
    assert lv.expired(10_000.0) == []  # "gone" stays expired, no clock to hold


def test_a_flapping_subscriber_does_not_keep_a_silent_node_ready() -> None:
    """A shard's subscriber that drops and comes back again and again (a clean session
    each time, so `lost`) gives a node one window from the first return; after that,
    each return moves its deadline by the deaf time only, so a node that says nothing
    while the cloud listens still goes NotReady. Heard again, it gets a window anew."""
    lv = Liveness(default_heartbeat=30.0, missed=3, now=0.0)
    lv.heard("dead", 0.0)  # due at 90
    lv.heard("live", 0.0)
    expired: dict[str, float] = {}
    for second in range(1, 601):  # the liveness tick, every second
        now = float(second)
        if second % 80 == 60:  # the subscriber is back after 5 s deaf, every 80 s
            lv.deaf(lambda _n: True, now, deaf_s=5.0, lost=True)
        if second % 20 == 0:
            lv.heard("live", now)  # the live node beats while the cloud listens
        for node in lv.expired(now):
            expired.setdefault(node, now)
    # a window from the first return (60 + 90), then 5 s deaf at the return at 140
    assert expired == {"dead": 155.0}
    lv.heard("dead", 600.0)  # heard again: the next return gives it a window anew
    lv.deaf(lambda n: n == "dead", 610.0, deaf_s=5.0, lost=True)
    assert "dead" not in lv.expired(610.0 + 90.0 - 0.1)


def test_a_join_forgets_the_report_seq_of_the_name() -> None:
    """A node wiped and joined again numbers its reports from 1; if its resync is lost
    (a broker back before the cloud), the cloud must not take them for duplicates of
    the old stream and ack them away (the review of issue 14's report-gap work)."""
    from cloudcore_fakes import make_fleet

    fleet = make_fleet()
    fleet.join_node("n1", labels={}, arch="amd64")
    fleet.set_report_seq("n1", 40)
    assert fleet.report_seq.get("n1") == 40
    fleet.join_node("n1", labels={}, arch="amd64")
    assert fleet.report_seq.get("n1") is None
