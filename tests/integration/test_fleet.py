"""The working core end to end: real mosquitto, real crun containers, real LMDB.

Three agents (each its own host in a network namespace) converge on a DaemonSet; an
update rolls to every node; delete removes the containers; an agent killed -9
adopts its running containers; cloudcore killed -9 loses nothing and flaps no node;
duplicated, out-of-order, garbled and oversized messages change nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiomqtt
import pytest

from edgecore.runtime import ContainerState, CrunRuntime
from shared import codec, topics
from testbed.fleet import Agent, Fleet

pytestmark = pytest.mark.integration


def web_ds(image: str, text: str) -> dict[str, Any]:
    script = (f"mkdir -p /tmp/www && echo '{text}' > /tmp/www/index.html"
              " && exec httpd -f -p 8080 -h /tmp/www")
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{
                                  "name": "httpd", "image": image,
                                  "command": ["sh", "-c", script],
                                  "resources": {"limits": {"memory": "32Mi"}}}]}}},
    }


def containers(agent: Agent) -> list[ContainerState]:
    async def go() -> list[ContainerState]:
        return await CrunRuntime(agent.state_dir / "runtime").list()

    return asyncio.run(go())


def running(agent: Agent) -> dict[str, ContainerState]:
    return {c.id: c for c in containers(agent) if c.status == "running"}


def page(fleet: Fleet, agent: Agent) -> str:
    return fleet.pod_page(f"web-{agent.name}", port=8080)


def all_running(fleet: Fleet, n: int, selector: str = "app=web") -> bool:
    pods = fleet.pods(selector)
    return len(pods) == n and all(p["status"].get("phase") == "Running" for p in pods)


def pages_are(fleet: Fleet, text: str) -> bool:
    try:
        return all(page(fleet, a) == text for a in fleet.agents)
    except OSError:
        return False


def test_daemonset_converges_then_update_rolls(fleet: Fleet) -> None:
    fleet.apply([web_ds(fleet.image, "v1")])
    fleet.wait(lambda: all_running(fleet, 3), timeout=90, what="3 web pods Running")
    fleet.wait(lambda: pages_are(fleet, "v1"), timeout=20, what="every node serves v1")
    nodes = {p["spec"]["nodeName"] for p in fleet.pods("app=web")}
    assert nodes == {a.name for a in fleet.agents}
    gens = {n["metadata"]["name"]: n["status"]["desiredGen"] for n in fleet.nodes()}

    fleet.apply([web_ds(fleet.image, "v2")])
    fleet.wait(lambda: pages_are(fleet, "v2"), timeout=60, what="every node serves v2")
    fleet.wait(lambda: all_running(fleet, 3), timeout=30, what="3 web pods Running after update")
    for n in fleet.nodes():
        assert n["status"]["desiredGen"] == gens[n["metadata"]["name"]] + 1
        fleet.wait(lambda name=n["metadata"]["name"]: _acked(fleet, name), timeout=20,
                   what="acked == desired")
    for a in fleet.agents:
        assert len(running(a)) == 1  # the old revision's container is gone


def _acked(fleet: Fleet, name: str) -> bool:
    s = fleet.get(f"/api/v1/nodes/{name}")["status"]
    return bool(s["ackedGen"] == s["desiredGen"])


def test_agent_killed_adopts_its_containers(fleet: Fleet) -> None:
    agent = fleet.agents[0]
    before = running(agent)
    assert before, "the DaemonSet pod should be running"
    fleet.restart_agent(agent.name, kill=True)
    time.sleep(3)  # long enough for a fresh agent to have reconciled
    fleet.wait_nodes_ready(timeout=30)
    after = running(agent)
    assert {c: s.pid for c, s in after.items()} == {c: s.pid for c, s in before.items()}
    assert page(fleet, agent) == "v2"


def test_cloud_killed_loses_nothing_and_flaps_nothing(fleet: Fleet) -> None:
    before = {n["metadata"]["name"]: n["status"] for n in fleet.nodes()}
    pods_before = {p["metadata"]["name"] for p in fleet.pods()}
    fleet.restart_cloud(kill=True)
    seen_not_ready: set[str] = set()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        for n in fleet.nodes():
            if n["status"]["ready"] == "NotReady":
                seen_not_ready.add(n["metadata"]["name"])
        time.sleep(0.2)
    assert not seen_not_ready
    fleet.wait_nodes_ready(timeout=30)
    after = {n["metadata"]["name"]: n["status"] for n in fleet.nodes()}
    for name, s in before.items():
        assert after[name]["desiredGen"] == s["desiredGen"]
        assert after[name]["ackedGen"] == s["ackedGen"]
    assert {p["metadata"]["name"] for p in fleet.pods()} == pods_before
    assert pages_are(fleet, "v2")


def _publish(fleet: Fleet, topic: str, payloads: list[bytes]) -> None:
    """Publish as a client with broker access (the fleet's test probe): the agent and the
    cloud must still refuse whatever is not sealed with the node's key."""
    async def go() -> None:
        async with aiomqtt.Client(**fleet.probe_mqtt(), timeout=10) as c:
            for p in payloads:
                await c.publish(topic, p, qos=1)
    asyncio.run(go())


def _metric(fleet: Fleet, name: str) -> float:
    with fleet.urlopen("/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_bad_and_replayed_messages_change_nothing(fleet: Fleet) -> None:
    agent = fleet.agents[1]
    before = running(agent)
    status = fleet.get(f"/api/v1/nodes/{agent.name}")["status"]
    # to the agent: garbage, an unknown version, an oversized message, and a stale
    # snapshot (an old gen of an unknown epoch is a snapshot the edge must take, so
    # use a duplicate: same node, a gen it already holds, empty set)
    stale = codec.Desired(node=agent.name, epoch="not-the-epoch", base=0, gen=1, put={})
    replay = codec.Desired(node=agent.name, epoch=_epoch(agent), base=0,
                           gen=status["ackedGen"], snapshot=True, put={})
    other = codec.Desired(node="someone-else", epoch=_epoch(agent), base=0,
                          gen=status["ackedGen"] + 5, snapshot=True, put={})
    _publish(fleet, topics.down(agent.name), [
        b"\xc1garbage", b"\x81\xa1v\x63", b"x" * (5 * 1024 * 1024),
        codec.encode(stale), codec.encode(replay), codec.encode(other)])
    # to the cloud: garbage and a report for another node on this node's topic
    dropped0 = _metric(fleet, "cloudcore_messages_dropped_total")
    forged = codec.Report(node="edge-9", seq=10**9, pods={})
    _publish(fleet, topics.up(agent.name), [b"\xc1", codec.encode(forged)])
    fleet.wait(lambda: _metric(fleet, "cloudcore_messages_dropped_total") >= dropped0 + 2,
               timeout=10, what="cloud counted 2 dropped messages")
    time.sleep(3)
    assert {c: s.pid for c, s in running(agent).items()} == \
        {c: s.pid for c, s in before.items()}
    assert fleet.get(f"/api/v1/nodes/{agent.name}")["status"]["ready"] == "Ready"
    assert page(fleet, agent) == "v2"
    assert agent.proc.alive()


def _epoch(agent: Agent) -> str:
    """The epoch the agent holds, read from its LMDB cache (LMDB allows a second
    process to open the same environment while the agent runs)."""
    from edgecore.cache import Cache

    with Cache(agent.state_dir / "cache") as cache:
        return cache.get_desired().epoch or ""


def test_delete_removes_containers(fleet: Fleet) -> None:
    fleet.delete("/api/v1/daemonsets/default/web")
    fleet.wait(lambda: not fleet.pods("app=web"), timeout=30, what="web pods deleted")
    for a in fleet.agents:
        fleet.wait(lambda a=a: not containers(a), timeout=60, what=f"{a.name} has no containers")
