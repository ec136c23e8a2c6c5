"""A simulated node given a snapshot under a new epoch (a shard took it over) reports its
whole status once, as the agent does (edgecore.sync.reporter, issue 14); a snapshot of
the same owner does not. No broker: the node's publishes are captured."""

from __future__ import annotations

from typing import Any

from shared.codec import Ack, Desired, Report, decode
from shared.entries import agent_release_entry, pod_entry, pod_key
from shared.models import Pod
from testbed.simulator import SimSettings, Simulator

WEB = pod_key("default", "web")


class Client:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def publish(self, topic: str, data: bytes, qos: int) -> None:
        self.sent.append(decode(data))


def _set() -> dict[str, Any]:
    pod = Pod.model_validate({"metadata": {"name": "web", "namespace": "default"},
                              "spec": {"containers": [{"name": "c", "image": "x"}]}})
    return {WEB: pod_entry(pod),
            "agent/-/release": agent_release_entry(version="1.2.3", image="reg/a:1.2.3",
                                                   upgrade="agent-1.2.3")}


def test_a_new_owner_gets_one_full_report() -> None:
    sim = Simulator(SimSettings(names=("sim-0",), report_pods=True))
    node = sim.nodes[0]
    client = node.client = Client()  # type: ignore[assignment]
    node.connected = True
    node.on_desired(Desired(node="sim-0", epoch="EA", base=0, gen=1, snapshot=True,
                            put=_set()))
    client.sent.clear()
    node.on_desired(Desired(node="sim-0", epoch="EB", base=0, gen=1, snapshot=True,
                            put=_set()))
    ack, report = client.sent
    assert ack == Ack(node="sim-0", epoch="EB", gen=1)
    assert isinstance(report, Report) and (report.epoch, report.gen) == ("EB", 1)
    assert report.node_status is not None and report.node_status["agentVersion"] == "1.2.3"
    assert report.node_status["agentUpgrade"]["phase"] == "Healthy"
    assert set(report.pods) == {WEB}
    assert sim.full_reports == 1 and sim.full_report_bytes > 0
    assert sim.stats()["full_reports"] == 1
    client.sent.clear()
    node.on_desired(Desired(node="sim-0", epoch="EB", base=0, gen=2, snapshot=True,
                            put=_set()))
    assert client.sent == [Ack(node="sim-0", epoch="EB", gen=2)]
    assert sim.full_reports == 1
