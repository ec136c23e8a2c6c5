"""The fleet simulator against a real mosquitto, with the test playing the cloud (paho)."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from shared import topics
from shared.codec import Ack, Report, Resync, decode, encode
from shared.delta import NodeDesired
from shared.entries import pod_entry, pod_key
from shared.models import Pod, parse_object
from testbed.broker import Mosquitto
from testbed.simulator import run_simulator

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto"),
]

N = 50


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A private mosquitto on a free port; yields the port."""
    with Mosquitto(workdir=tmp_path / "mosquitto", insecure=True) as b:
        yield b.port


class Cloud:
    """The cloud's side of the protocol, just enough to drive the simulator."""

    def __init__(self, port: int) -> None:
        self.received: list[Any] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="cloud-test", protocol=mqtt.MQTTv311
        )
        self.client.on_message = lambda c, u, m: self._got(m.payload)
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(f, 1) for f in topics.all_up_filters()]
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(5):
            raise RuntimeError("cloud test client did not subscribe")

    def _got(self, payload: bytes) -> None:
        msg = decode(payload)
        with self.lock:
            self.received.append(msg)

    def messages(self, kind: type, pred: Callable[[Any], bool] = lambda m: True) -> list[Any]:
        with self.lock:
            return [m for m in self.received if isinstance(m, kind) and pred(m)]

    def send(self, node: str, msg: Any) -> None:
        self.client.publish(topics.down(node), encode(msg), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def until(cond: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _pod(node: str) -> Pod:
    obj = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"web-{node}", "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "web", "image": "busybox"}]},
        }
    )
    assert isinstance(obj, Pod)
    return obj


async def test_fifty_nodes_ack_snapshots_and_reack_duplicates(broker: int, tmp_path: Path) -> None:
    names = [f"sim-{i}" for i in range(N)]
    stats_path = tmp_path / "stats.json"
    cloud = Cloud(broker)
    sim = asyncio.create_task(
        run_simulator(
            host="127.0.0.1",
            port=broker,
            names=names,
            labels={"zone": "lab"},
            heartbeat=0.5,
            connect_rate_per_s=500,
            report_pods=True,
            stats_path=stats_path,
            per_node_stats=True,
        )
    )
    try:

        def stats() -> dict[str, Any]:
            try:
                return dict(json.loads(stats_path.read_text()))
            except (OSError, ValueError):
                return {}

        await until(lambda: stats().get("connected") == N, "all sessions connected")
        # The opening of every session: a Resync from gen 0, then Report seq 1 with node status.
        await until(lambda: len(cloud.messages(Resync)) >= N, "a resync from every node")
        await until(lambda: len(cloud.messages(Report, lambda m: m.seq == 1)) >= N, "first reports")
        first = cloud.messages(Report, lambda m: m.node == "sim-7" and m.seq == 1)[0]
        assert first.node_status["labels"] == {"zone": "lab"}
        assert first.node_status["capacity"] == {"cpu": 4000, "memory": 8589934592, "pods": 110}
        assert {m.gen for m in cloud.messages(Resync)} == {0}

        desired = {}
        for name in names:
            nd = NodeDesired(node=name, epoch="e1")
            pod = _pod(name)
            nd.put(pod_key("default", pod.metadata.name), pod_entry(pod))
            desired[name] = nd
            cloud.send(name, nd.snapshot())

        await until(lambda: len({m.node for m in cloud.messages(Ack)}) == N, "an ack from all 50")
        acks = cloud.messages(Ack)
        assert {(m.epoch, m.gen) for m in acks} == {("e1", 1)}
        assert {m.node for m in acks} == set(names)

        # Each applied pod is reported Running.
        await until(lambda: len(cloud.messages(Report, lambda m: bool(m.pods))) >= N, "pod reports")
        rep = cloud.messages(Report, lambda m: m.node == "sim-3" and bool(m.pods))[0]
        assert rep.pods == {
            "pod/default/web-sim-3": {**rep.pods["pod/default/web-sim-3"], "phase": "Running"}
        }
        assert rep.pods["pod/default/web-sim-3"]["nodeName"] == "sim-3"

        # A duplicate is re-acked with the gen the node holds.
        cloud.send("sim-0", desired["sim-0"].snapshot())
        await until(lambda: len(cloud.messages(Ack, lambda m: m.node == "sim-0")) == 2, "re-ack")
        assert [m.gen for m in cloud.messages(Ack, lambda m: m.node == "sim-0")] == [1, 1]

        # A delta whose base is ahead of the node is a gap: the node asks for a resync.
        nd = desired["sim-1"]
        nd.put("configmap/default/x", {"a": "1"})
        nd.put("configmap/default/y", {"b": "2"})
        gap = nd.delta(2, "e1")
        assert (gap.base, gap.gen) == (2, 3)
        cloud.send("sim-1", gap)
        await until(lambda: bool(cloud.messages(Resync, lambda m: m.reason == "gap")), "gap resync")
        resync = cloud.messages(Resync, lambda m: m.reason == "gap")[0]
        assert (resync.node, resync.epoch, resync.gen) == ("sim-1", "e1", 1)
        cloud.send("sim-1", nd.delta(resync.gen, resync.epoch))
        await until(
            lambda: bool(cloud.messages(Ack, lambda m: m.node == "sim-1" and m.gen == 3)),
            "ack of the resynced delta",
        )
        # the per-gen counts the benches read, kept as gens move, agree with every node's
        await until(lambda: stats().get("at_gen") == {"1": N - 1, "3": 1}, "at_gen counted")
        st = stats()
        gens = [n["gen"] for n in st["per_node"].values()]
        assert {str(g): gens.count(g) for g in set(gens)} == st["at_gen"]
        assert st["first_desired"] == N and st["not_connected_sample"] == []

        # Heartbeats are empty reports with a growing seq.
        await until(
            lambda: bool(
                cloud.messages(
                    Report,
                    lambda m: m.node == "sim-9" and m.seq >= 3 and not m.pods and not m.node_status,
                )
            ),
            "a heartbeat",
        )

        await until(
            lambda: stats().get("acks", {}).get("1") == N and "3" in stats()["acks"],
            "stats file with per-gen acks",
        )
        s = stats()
        assert s["acks"] == s["gens"] == {"1": N, "3": 1}
        assert s["reacks"] == 1 and s["gaps"] == 1 and s["first_desired"] == N
        assert s["msgs_in"] >= N + 3 and s["bytes_out"] > 0
        node0 = s["per_node"]["sim-0"]
        assert node0["applied_at"].keys() == {"1"} and node0["first_desired_at"] is not None
    finally:
        sim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sim
        cloud.close()
    assert json.loads(stats_path.read_text())["connected"] == 0
