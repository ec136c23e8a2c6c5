"""Real agents following the partition -> broker map (issue 14, proposal 0007).

Two secure mosquittos (`a`, the fleet's own, and `b`, reading the same password file,
ACL and TLS files), a real cloudcore started with `--broker a=... --broker b=...`, and
two real agents in network namespaces that joined with their broker lists and run real
crun containers. Both nodes' partitions are homed on `a` (by their names).

1. `fedctl brokers move` puts one node's partition on `b`: that agent moves there
   make-before-break, the node never goes NotReady (its status is watched all along,
   its events checked, and no will appears on `a`), and a workload created after the
   move reaches it.
2. The other node's home broker is killed -9: its agent falls back to the next URL of
   its list and keeps getting updates; when the home returns, the agent goes back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiomqtt
import pytest
from fixtures_fleet import TwoBrokerFleet, real_fleet

from shared import topics
from testbed.fleet import FleetSettings

pytestmark = pytest.mark.integration

MOVED, KILLED = "tier-1", "tier-2"  # partitions 146 and 40: both homed on `a` (even)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoBrokerFleet]:
    settings = FleetSettings(
        nodes=2, workdir=tmp_path_factory.mktemp("brokers"), heartbeat_s=1.0,
        node_prefix="tier", broker_probe=True,
        agent_args=("--broker-move-jitter", "2", "--broker-home-retry", "3"))
    with real_fleet(settings, kind=TwoBrokerFleet) as f:
        assert isinstance(f, TwoBrokerFleet)
        yield f


def sleeper(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{
                                  "name": "main", "image": "", "command": ["sleep", "3600"],
                                  "resources": {"limits": {"memory": "16Mi"}}}]}}},
    }


def running_on(fleet: TwoBrokerFleet, app: str) -> set[str]:
    return {p["status"].get("nodeName") for p in fleet.pods(f"app={app}")
            if p["status"].get("phase") == "Running"}


def agent_log(fleet: TwoBrokerFleet, name: str) -> str:
    return (fleet.workdir / "logs" / f"{name}.log").read_text(errors="replace")


def home_of(fleet: TwoBrokerFleet, node: str) -> str:
    return str(fleet.get("/api/v1/brokermap")["partitions"][topics.partition_of(node)][0])


class Watch:
    """In a thread: every node's readiness polled through the API, and the wills of the
    watched node published on broker `a` (the fleet's test probe listens there)."""

    def __init__(self, fleet: TwoBrokerFleet, node: str) -> None:
        self.fleet, self.node = fleet, node
        self.not_ready: list[tuple[str, str]] = []
        self.wills: list[Any] = []
        self.polls = 0
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._threads = [threading.Thread(target=self._poll, daemon=True),
                         threading.Thread(target=asyncio.run, args=(self._probe(),),
                                          daemon=True)]

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        assert self._subscribed.wait(15), "the probe did not subscribe on broker a"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def _poll(self) -> None:
        while not self._stop.wait(0.1):
            for n in self.fleet.nodes():
                state = n["status"].get("ready")
                if state != "Ready":
                    self.not_ready.append((n["metadata"]["name"], str(state)))
            self.polls += 1

    async def _probe(self) -> None:
        async with aiomqtt.Client(**self.fleet.probe_mqtt(), identifier="probe",
                                  timeout=10) as c:
            await c.subscribe(topics.will(self.node), qos=1)
            self._subscribed.set()
            while not self._stop.is_set():
                try:
                    async with asyncio.timeout(0.2):
                        async for m in c.messages:
                            self.wills.append(m.payload)
                except TimeoutError:
                    pass


def test_partition_moved_with_fedctl_agent_follows_and_stays_ready(
        fleet: TwoBrokerFleet) -> None:
    assert home_of(fleet, MOVED) == "a"
    a, b = fleet.tier["a"], fleet.tier["b"]
    assert f"mqtt link up: {fleet.url(a)} as {MOVED}" in agent_log(fleet, MOVED)
    with Watch(fleet, MOVED) as watch:
        time.sleep(1)
        part = topics.partition_of(MOVED)
        r = fleet.fedctl("brokers", "move", "--partitions", str(part), "--to", "b")
        assert r.returncode == 0
        assert home_of(fleet, MOVED) == "b"
        fleet.wait(lambda: f"mqtt link moved: {fleet.url(a)} -> {fleet.url(b)}"
                   in agent_log(fleet, MOVED), timeout=30, what=f"{MOVED} moved to b")
        fleet.wait(lambda: fleet.get("/api/v1/brokermap")["brokers"]["b"]["sessions"] >= 1,
                   timeout=15, what="the cloud hearing the node on b")
        time.sleep(4)  # > 3 x heartbeat: a node gone silent would be NotReady by now
    assert watch.polls > 20
    assert watch.not_ready == [], f"nodes not Ready during the move: {watch.not_ready}"
    assert watch.wills == [], "the agent left broker a uncleanly (its will fired)"
    events = fleet.get(f"/api/v1/events?object=Node/{MOVED}")["items"]
    assert not [e for e in events if e.get("reason") == "NodeNotReady"]
    # The map's new list reached the agent as a desired entry it acked, and a workload
    # created after the move reaches it through b.
    ds = sleeper("after-move")
    ds["spec"]["template"]["spec"]["containers"][0]["image"] = fleet.image
    fleet.apply([ds])
    fleet.wait(lambda: running_on(fleet, "after-move") == {MOVED, KILLED}, timeout=90,
               what="after-move Running on both nodes")
    node = next(n for n in fleet.nodes() if n["metadata"]["name"] == MOVED)
    assert node["status"]["ackedGen"] == node["status"]["desiredGen"]
    assert "moved" not in agent_log(fleet, KILLED)  # the other partition stayed on a


def test_home_broker_killed_agent_falls_back_and_keeps_updating(
        fleet: TwoBrokerFleet) -> None:
    assert home_of(fleet, KILLED) == "a"
    a, b = fleet.tier["a"], fleet.tier["b"]
    a.kill()
    fleet.wait(lambda: f"mqtt link up: {fleet.url(b)} as {KILLED}" in agent_log(fleet, KILLED),
               timeout=60, what=f"{KILLED} on its fallback b")
    fleet.wait_nodes_ready(timeout=30)
    ds = sleeper("after-kill")
    ds["spec"]["template"]["spec"]["containers"][0]["image"] = fleet.image
    fleet.apply([ds])
    fleet.wait(lambda: running_on(fleet, "after-kill") == {MOVED, KILLED}, timeout=90,
               what="after-kill Running on both nodes with broker a dead")
    # Broker a back: the agent goes home (its retry is 3 s here), make-before-break.
    a.start()
    fleet.wait(lambda: f"mqtt link moved: {fleet.url(b)} -> {fleet.url(a)}"
               in agent_log(fleet, KILLED), timeout=60, what=f"{KILLED} back home on a")
    fleet.delete("/api/v1/daemonsets/default/after-kill")
    fleet.wait(lambda: not fleet.pods("app=after-kill"), timeout=60,
               what="after-kill deleted through broker a")
