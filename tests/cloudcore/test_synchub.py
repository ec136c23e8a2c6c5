"""The sync hub against a real mosquitto, driven by a scripted fake edge (aiomqtt).

These tests are about the protocol, so cloudcore runs `insecure` (unsealed messages,
nodes that never joined); sealing and keys are tested in test_hub_security.py and
tests/edgecore/test_edge_security.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Any

import aiomqtt
import httpx
import msgpack
import pytest
from cloudcore_fakes import daemonset

from cloudcore.config import Settings
from shared import seal, topics
from shared.codec import Ack, Desired, Report, ReportAck, Resync, Will, decode, encode
from shared.delta import EdgeDesired
from shared.entries import parse_pod_entry, pod_key

DROPPED = "cloudcore_messages_dropped_total"


class FakeEdge:
    """One edge session: sends up-messages, collects down-messages."""

    def __init__(self, node: str, port: int) -> None:
        self.node = node
        self.port = port
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self.keys: seal.NodeKeys | None = None  # set once joined: the hub seals then

    async def __aenter__(self) -> FakeEdge:
        self._client = aiomqtt.Client("127.0.0.1", self.port, identifier=f"edge-{self.node}",
                                      clean_session=True)
        await self._client.__aenter__()
        await self._client.subscribe(topics.down(self.node), qos=1)
        self._reader = asyncio.create_task(self._read(), name=f"edge[{self.node}].reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None and self._client is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        assert self._client is not None
        async for m in self._client.messages:
            data = bytes(m.payload)  # type: ignore[arg-type]
            if self.keys is not None:
                data = seal.unseal(self.keys.down, m.topic.value, data)
            self.inbox.put_nowait(decode(data))

    async def publish(self, payload: bytes, *, direction: str = "up",
                      node: str | None = None) -> None:
        assert self._client is not None
        topic = topics.topic(node or self.node, direction)  # type: ignore[arg-type]
        if self.keys is not None:
            payload = seal.seal(self.keys.up, topic, payload)
        await self._client.publish(topic, payload, qos=1)

    async def send(self, msg: Any) -> None:
        await self.publish(encode(msg))

    async def recv(self, kind: type, timeout: float = 5.0) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.inbox.get()
                if isinstance(msg, kind):
                    return msg

    async def quiet(self, kind: type, seconds: float) -> None:
        """Assert nothing of `kind` arrives for `seconds`."""
        try:
            msg = await self.recv(kind, seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {msg!r}")


async def until(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_sync_flow_reports_bad_input_will_and_restart(
        mosquitto: int, settings: Settings, service_factory: Any) -> None:
    settings.mqtt.port = mosquitto
    settings.insecure = True
    svc = service_factory()
    run = await svc.start()
    fleet, metrics = run.fleet, run.metrics
    async with httpx.AsyncClient(base_url=run.url) as api:
        r = await api.post("/api/v1/apply", json={"documents": [daemonset()]})
        assert r.status_code == 200
        await until(lambda: run.hub and (asyncio.get_running_loop() is not None))
        async with FakeEdge("e1", mosquitto) as edge:
            # connect: resync from nothing -> snapshot with the DaemonSet pod
            await edge.send(Resync(node="e1", epoch=None, gen=0, seq=0))
            snap = await edge.recv(Desired)
            assert snap.snapshot and snap.epoch == run.store.epoch
            assert list(snap.put) == [pod_key("default", "agent-e1")]
            local = EdgeDesired().applied(snap)
            await edge.send(Ack(node="e1", epoch=snap.epoch, gen=snap.gen))
            await until(lambda: fleet.desired["e1"].acked == snap.gen)

            # first report: Ready, statuses applied, acked after the commit
            await edge.send(Report(node="e1", seq=1, epoch=local.epoch, gen=local.gen,
                                   node_status={"allocatable": {"cpu": 2000, "memory": 2**31},
                                                "arch": "arm64", "agentVersion": "0.1.0",
                                                "heartbeat": 30},
                                   pods={pod_key("default", "agent-e1"): {"phase": "Running"}}))
            assert (await edge.recv(ReportAck)).seq == 1
            node = fleet.nodes["e1"]
            assert node.status.ready == "Ready" and node.status.agent_version == "0.1.0"
            assert node.metadata.labels["kubernetes.io/arch"] == "arm64"
            assert fleet.pods[("default", "agent-e1")].status.phase == "Running"
            assert run.store.load()["reportseq"]["e1"] == 1

            # duplicate: re-acked, not re-applied
            await edge.send(Report(node="e1", seq=1, pods={
                pod_key("default", "agent-e1"): {"phase": "Failed"}}))
            assert (await edge.recv(ReportAck)).seq == 1
            assert fleet.pods[("default", "agent-e1")].status.phase == "Running"

            # bad input is counted and dropped; the hub keeps working
            await edge.publish(b"\xc1garbage")
            await edge.publish(b"\x00" * (4 * 1024 * 1024 + 1))
            await edge.publish(msgpack.packb({"v": 99, "t": "report", "node": "e1", "seq": 5}))
            await edge.publish(encode(Report(node="e2", seq=9)))  # topic says e1
            await edge.publish(encode(ReportAck(node="e1", seq=1)))  # wrong direction
            await edge.send(Report(node="e1", seq=2))
            assert (await edge.recv(ReportAck)).seq == 2
            assert metrics.value(DROPPED, reason="decode_error") == 1
            assert metrics.value(DROPPED, reason="too_large") == 1
            assert metrics.value(DROPPED, reason="unknown_version") == 1
            assert metrics.value(DROPPED, reason="node_mismatch") == 1
            assert metrics.value(DROPPED, reason="unexpected_type") == 1
            text = (await api.get("/metrics")).text
            assert 'cloudcore_messages_dropped_total{reason="too_large"} 1' in text
            assert 'cloudcore_nodes{ready="Ready"} 1' in text

            # template update -> delta from the acked gen; not acked -> resent; then acked
            await api.post("/api/v1/apply", json={"documents": [daemonset(args=["v2"])]})
            delta = await edge.recv(Desired)
            assert not delta.snapshot and delta.base == local.gen
            value = delta.put[pod_key("default", "agent-e1")]
            assert parse_pod_entry("k", value).spec.containers[0].args == ["v2"]
            again = await edge.recv(Desired, timeout=3)  # the ack was "lost"
            assert again.gen == delta.gen and again.base == local.gen
            local = local.applied(again)
            await edge.send(Ack(node="e1", epoch=local.epoch, gen=local.gen))
            await until(lambda: fleet.desired["e1"].acked == local.gen)
            await edge.quiet(Desired, 1.5)  # acked: no more resends
            gen, acked = fleet.desired["e1"].gen, fleet.desired["e1"].acked

            # will -> NotReady at once
            await edge.publish(encode(Will(node="e1")), direction="will")
            await until(lambda: fleet.nodes["e1"].status.ready == "NotReady")
            assert fleet.nodes["e1"].status.reason == "NodeLinkLost"
            # back, but its disk is full: the heartbeat reuses an acked seq (a duplicate),
            # which is proof of life for a NotReady node
            await edge.send(Report(node="e1", seq=2))
            assert (await edge.recv(ReportAck)).seq == 2
            assert fleet.nodes["e1"].status.ready == "Ready"

    # restart on the same state dir: same epoch, desired sets and acks; Unknown
    epoch = run.store.epoch
    await svc.stop()
    svc2 = service_factory()
    run2 = await svc2.start()
    assert run2.store.epoch == epoch
    assert run2.fleet.desired["e1"].gen == gen and run2.fleet.desired["e1"].acked == acked
    assert run2.fleet.nodes["e1"].status.ready == "Unknown"
    assert run2.fleet.report_seq["e1"] == 2
    async with FakeEdge("e1", mosquitto) as edge:
        await edge.send(Resync(node="e1", epoch=local.epoch, gen=local.gen, seq=2))
        await edge.quiet(Desired, 0.5)  # already current: no snapshot after a restart
        await edge.send(Report(node="e1", seq=2))
        assert (await edge.recv(ReportAck)).seq == 2
        assert run2.fleet.nodes["e1"].status.ready == "Unknown"  # a duplicate is no report
        await edge.send(Report(node="e1", seq=3))
        assert (await edge.recv(ReportAck)).seq == 3
        assert run2.fleet.nodes["e1"].status.ready == "Ready"


async def test_missed_heartbeats_make_a_node_not_ready_and_restart_gives_unknown(
        mosquitto: int, settings: Settings, service_factory: Any) -> None:
    settings.mqtt.port = mosquitto
    settings.insecure = True
    run = await service_factory().start()
    async with FakeEdge("e2", mosquitto) as edge:
        await edge.send(Report(node="e2", seq=1, node_status={"heartbeat": 0.2}))
        await edge.recv(ReportAck)
        assert run.fleet.nodes["e2"].status.ready == "Ready"
        await until(lambda: run.fleet.nodes["e2"].status.ready == "NotReady", timeout=3)
        assert run.fleet.nodes["e2"].status.reason == "NodeStatusUnknown"
        await edge.send(Report(node="e2", seq=2))
        await edge.recv(ReportAck)
        assert run.fleet.nodes["e2"].status.ready == "Ready"


async def test_a_deleted_node_is_not_re_registered_by_its_live_agent(
        mosquitto: int, settings: Settings, service_factory: Any) -> None:
    """`fedctl node delete` while the agent is still connected: its next messages are
    dropped and counted instead of creating the node again, also after a restart;
    joining again with a token lifts that."""
    settings.mqtt.port = mosquitto
    settings.insecure = True
    svc = service_factory()
    run = await svc.start()
    async with httpx.AsyncClient(base_url=run.url) as api, FakeEdge("e9", mosquitto) as edge:
        await edge.send(Report(node="e9", seq=1))
        assert (await edge.recv(ReportAck)).seq == 1
        assert (await api.delete("/api/v1/nodes/e9")).status_code == 200
        await edge.send(Report(node="e9", seq=2))
        await edge.send(Resync(node="e9", epoch=None, gen=0, seq=2))
        await until(lambda: run.metrics.value(DROPPED, reason="deleted_node") == 2)
        await edge.quiet(ReportAck, 0.3)
        assert (await api.get("/api/v1/nodes/e9")).status_code == 404
    await svc.stop()
    svc2 = service_factory()
    run2 = await svc2.start()
    async with httpx.AsyncClient(base_url=run2.url) as api, FakeEdge("e9", mosquitto) as edge:
        await edge.send(Report(node="e9", seq=3))
        await until(lambda: run2.metrics.value(DROPPED, reason="deleted_node") == 1)
        assert "e9" not in run2.fleet.nodes
        token = (await api.post("/api/v1/jointokens", json={"ttlSeconds": 600})).json()["token"]
        r = await api.post("/api/v1/join", json={"token": token, "name": "e9"})
        assert r.status_code == 200, r.text
        edge.keys = seal.NodeKeys.derive(base64.b64decode(r.json()["key"]))
        await edge.send(Report(node="e9", seq=4))
        assert (await edge.recv(ReportAck)).seq == 4
        assert run2.fleet.nodes["e9"].status.ready == "Ready"
    await svc2.stop()


async def test_telemetry_reports_are_acked_lazily_and_cumulatively(
        mosquitto: int, settings: Settings, service_factory: Any) -> None:
    """Issue 16: an idle node's telemetry report a minute no longer costs a ReportAck a
    minute; the next other report's ack covers it, and so does the timer."""
    from cloudcore.synchub import hub as hub_module

    settings.mqtt.port = mosquitto
    settings.insecure = True
    run = await service_factory().start()
    point = {"ts": 60, "node": {"cpu": 5, "mem": 7}}
    async with FakeEdge("e3", mosquitto) as edge:
        await edge.send(Report(node="e3", seq=1, node_status={"heartbeat": 30}))
        assert (await edge.recv(ReportAck)).seq == 1
        await edge.send(Report(node="e3", seq=2, telemetry=[point]))
        await edge.send(Report(node="e3", seq=3, telemetry=[point]))
        await edge.quiet(ReportAck, 0.5)
        await until(lambda: run.fleet.report_seq.get("e3") == 3)
        await edge.send(Report(node="e3", seq=4))  # a heartbeat: acked at once, for all
        assert (await edge.recv(ReportAck)).seq == 4
        await edge.send(Report(node="e3", seq=5, telemetry=[point]))
        await until(lambda: run.fleet.report_seq.get("e3") == 5)
        await edge.quiet(ReportAck, 0.3)
        assert run.hub.flush_acks(run.hub.clock() + hub_module.LAZY_RACK_S) == 1
        assert (await edge.recv(ReportAck)).seq == 5
        for seq in range(6, 6 + hub_module.LAZY_RACK_REPORTS):  # or once enough wait
            await edge.send(Report(node="e3", seq=seq, telemetry=[point]))
        assert (await edge.recv(ReportAck)).seq == 5 + hub_module.LAZY_RACK_REPORTS


async def test_a_gap_in_report_seqs_asks_the_node_for_everything_once(
        mosquitto: int, settings: Settings, service_factory: Any) -> None:
    """Issue 14: reports published while nothing was subscribed (a broker back before the
    cloud's subscriber; a partition between shards) are dropped by the broker, and the
    next report's cumulative ack would bury them. The cloud sees the gap in the seqs and
    asks the node, on that ack, to report everything again; a `full` report ends it."""
    settings.mqtt.port = mosquitto
    settings.insecure = True
    run = await service_factory().start()
    point = {"ts": 60, "node": {"cpu": 5, "mem": 7}}
    async with FakeEdge("e4", mosquitto) as edge:
        await edge.send(Report(node="e4", seq=1, node_status={"heartbeat": 30}))
        first = await edge.recv(ReportAck)
        assert (first.seq, first.again) == (1, False)
        await edge.send(Report(node="e4", seq=2))
        assert (await edge.recv(ReportAck)).again is False
        # 3 and 4 went to nobody; 5 is telemetry only, yet its ack goes at once
        await edge.send(Report(node="e4", seq=5, telemetry=[point]))
        asked = await edge.recv(ReportAck, timeout=2.0)
        assert (asked.seq, asked.again) == (5, True)
        assert run.metrics.value("cloudcore_report_gaps_total") == 1
        # the node's full report: acked plainly, and a gap before a full report is moot
        await edge.send(Report(node="e4", seq=6, node_status={"heartbeat": 30},
                               pods={}, full=True))
        assert (await edge.recv(ReportAck)).again is False
        await edge.send(Report(node="e4", seq=9, node_status={"heartbeat": 30}, full=True))
        done = await edge.recv(ReportAck)
        assert (done.seq, done.again) == (9, False)
        await edge.send(Report(node="e4", seq=10))
        assert (await edge.recv(ReportAck)).again is False
        assert run.metrics.value("cloudcore_report_gaps_total") == 1


async def test_a_lost_ask_is_made_again_when_the_node_resends_what_it_carried(
        mosquitto: int, settings: Settings, service_factory: Any) -> None:
    """The ack that asks `again` can be lost on its way down (the broker restarts again
    before the node has it): the node then keeps that report in its outbox and sends it
    again once reconnected, a duplicate here. Until the node's full report comes, such
    a duplicate's ack asks again, rather than the missed statuses being buried."""
    settings.mqtt.port = mosquitto
    settings.insecure = True
    await service_factory().start()
    async with FakeEdge("e5", mosquitto) as edge:
        await edge.send(Report(node="e5", seq=1, node_status={"heartbeat": 30}))
        assert (await edge.recv(ReportAck)).again is False
        await edge.send(Report(node="e5", seq=4, pods={"pod/default/web": None}))
        asked = await edge.recv(ReportAck)
        assert (asked.seq, asked.again) == (4, True)  # ... taken as lost: never seen
    async with FakeEdge("e5", mosquitto) as edge:  # reconnected: the outbox again
        await edge.send(Report(node="e5", seq=4, pods={"pod/default/web": None}))
        again = await edge.recv(ReportAck)
        assert (again.seq, again.again) == (4, True)
        await edge.send(Report(node="e5", seq=5, node_status={"heartbeat": 30},
                               full=True))
        assert (await edge.recv(ReportAck)).again is False
        await edge.send(Report(node="e5", seq=5, node_status={"heartbeat": 30},
                               full=True))  # a duplicate after the full one: not asked
        assert (await edge.recv(ReportAck)).again is False


async def test_a_probes_ask_is_not_made_again_on_a_duplicate(
        mosquitto: int, settings: Settings, service_factory: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe after a broker's return asks nodes that may not be connected yet; its
    asks are not repeated when they later resend what the cloud had processed (a
    reconnect resends the outbox), or a probe fired before the nodes came back would
    make every one of them send its whole status."""
    from cloudcore.synchub import hub as hub_module

    monkeypatch.setattr(hub_module, "PROBE_HEARD_SHARE", 0.0)  # the one node is not heard
    settings.mqtt.port = mosquitto
    settings.insecure = True
    run = await service_factory().start()
    async with FakeEdge("e6", mosquitto) as edge:
        await edge.send(Report(node="e6", seq=1, node_status={"heartbeat": 30}))
        assert (await edge.recv(ReportAck)).again is False
        run.hub.broker_back("mq-0", 1.0, True, restarted=True)
        probed = await edge.recv(ReportAck, timeout=hub_module.PROBE_QUIET_S + 3.0)
        assert (probed.seq, probed.again) == (1, True)
        await edge.send(Report(node="e6", seq=1, node_status={"heartbeat": 30}))
        assert (await edge.recv(ReportAck)).again is False
