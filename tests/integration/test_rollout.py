"""Health-gated rollouts end to end: real mosquitto, real crun containers, 3 agents.

A DaemonSet with `updateStrategy` rolls one node at a time. An update whose container
crashes is stopped at the first node and rolled back everywhere; the nodes after it
never run it. A good update goes node by node, each batch only after the previous one
is Running and Ready for `minReadySeconds` (10 s here: a crash must be seen within it).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import pytest

from testbed.fleet import Agent, Fleet

pytestmark = pytest.mark.integration

NAME = "canary"


def canary(image: str, text: str, *, crash: bool = False) -> dict[str, Any]:
    script = ("echo starting; exit 3" if crash else
              f"mkdir -p /tmp/www && echo '{text}' > /tmp/www/index.html"
              " && exec httpd -f -p 8081 -h /tmp/www")
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": NAME},
        "spec": {
            "selector": {"matchLabels": {"app": NAME}},
            "minReadySeconds": 10,  # above the agent's reconcile interval (5 s) + a report
            "updateStrategy": {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": 1},
                               "failureThreshold": 0, "autoRollback": True},
            "template": {"metadata": {"labels": {"app": NAME}},
                         "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                             "name": "httpd", "image": image, "command": ["sh", "-c", script],
                             "env": [{"name": "VERSION", "value": text}],
                             "resources": {"limits": {"memory": "32Mi"}}}]}}},
    }


def page(fleet: Fleet, agent: Agent) -> str | None:
    try:
        return fleet.pod_page(f"{NAME}-{agent.name}", port=8081, timeout=2)
    except OSError:
        return None


def pages(fleet: Fleet) -> list[str | None]:
    return [page(fleet, a) for a in fleet.agents]


def status(fleet: Fleet) -> dict[str, Any]:
    ds = fleet.get(f"/api/v1/daemonsets/default/{NAME}")
    st = dict(ds.get("status") or {})
    st["generation"] = ds["metadata"]["generation"]
    return st


def phase(fleet: Fleet) -> str:
    st = status(fleet)
    if (st.get("observedGeneration") or 0) < st["generation"]:
        return "Stale"
    return str((st.get("rollout") or {}).get("phase", "Complete"))


def revisions_on_nodes(fleet: Fleet) -> dict[str, str | None]:
    """The revision each node's desired set holds for the canary pod."""
    return {p["spec"]["nodeName"]: p["metadata"]["annotations"].get("edgefed.io/revision")
            for p in fleet.pods(f"app={NAME}")}


def figure(name: str, value: Any) -> None:
    print(f"\nFIGURE {name} = {value}", file=sys.stderr)


def test_a_crashing_update_stops_at_the_first_node_and_rolls_back(fleet: Fleet) -> None:
    fleet.apply([canary(fleet.image, "v1")])
    fleet.wait(lambda: pages(fleet) == ["v1"] * 3 and phase(fleet) == "Complete",
               timeout=120, what="v1 everywhere")
    v1 = status(fleet)["currentRevision"]

    t = time.monotonic()
    fleet.apply([canary(fleet.image, "v2", crash=True)])
    seen: set[str] = set()  # nodes whose desired set ever held the bad revision
    bad = status(fleet)["updateRevision"]

    def rolled_back() -> bool:
        seen.update(n for n, r in revisions_on_nodes(fleet).items() if r == bad)
        return phase(fleet) == "RolledBack"

    fleet.wait(rolled_back, timeout=90, interval=0.2, what="the bad update rolled back")
    figure("rollout.rolled_back_after_s", round(time.monotonic() - t, 2))
    assert len(seen) == 1, f"the bad revision reached {sorted(seen)}"
    assert set(revisions_on_nodes(fleet).values()) == {v1}
    [ev] = [e for e in fleet.get(f"/api/v1/events?object=DaemonSet/default/{NAME}")["items"]
            if e["reason"] == "RolloutAborted"]
    assert "CrashLoopBackOff" in ev["message"] and next(iter(seen)) in ev["message"]
    fleet.wait(lambda: pages(fleet) == ["v1"] * 3, timeout=60, what="v1 served again")
    st = status(fleet)
    assert (st["currentRevision"], st["updateRevision"]) == (v1, bad)
    assert st["rollout"]["failed"] == 1


def test_a_good_update_goes_one_node_at_a_time(fleet: Fleet) -> None:
    t = time.monotonic()
    fleet.apply([canary(fleet.image, "v3")])
    target = status(fleet)["updateRevision"]
    most_in_progress = 0
    counts: list[int] = []

    def done() -> bool:
        nonlocal most_in_progress
        revs = revisions_on_nodes(fleet)
        served = pages(fleet)
        updated = sum(1 for r in revs.values() if r == target)
        healthy = served.count("v3")
        most_in_progress = max(most_in_progress, updated - healthy)
        if not counts or counts[-1] != updated:
            counts.append(updated)
        return phase(fleet) == "Complete" and served == ["v3"] * 3

    fleet.wait(done, timeout=180, interval=0.2, what="v3 rolled out")
    figure("rollout.three_nodes_one_at_a_time_s", round(time.monotonic() - t, 2))
    assert counts == [1, 2, 3], counts  # one batch of one node at a time
    assert most_in_progress <= 1
    st = status(fleet)
    assert st["currentRevision"] == st["updateRevision"] == target
    assert st["numberAvailable"] == st["updatedNumberScheduled"] == 3
    fleet.delete(f"/api/v1/daemonsets/default/{NAME}")


SURGE = "surge-web"


def surge_web(image: str, text: str) -> dict[str, Any]:
    """Two replicas, maxSurge 1 and maxUnavailable 0: no replica is lost in an update."""
    script = (f"mkdir -p /tmp/www && echo '{text}' > /tmp/www/index.html"
              " && exec httpd -f -p 8082 -h /tmp/www")
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": SURGE},
        "spec": {
            "replicas": 2, "selector": {"matchLabels": {"app": SURGE}},
            "minReadySeconds": 5,
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": {"app": SURGE}},
                         "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                             "name": "httpd", "image": image, "command": ["sh", "-c", script],
                             "env": [{"name": "VERSION", "value": text}],
                             "resources": {"limits": {"memory": "32Mi"}}}]}}},
    }


def deployment_phase(fleet: Fleet) -> str:
    dep = fleet.get(f"/api/v1/deployments/default/{SURGE}")
    st = dep.get("status") or {}
    if (st.get("observedGeneration") or 0) < dep["metadata"]["generation"]:
        return "Stale"
    return str((st.get("rollout") or {}).get("phase", "Complete"))


def test_a_deployment_with_max_surge_keeps_every_replica_serving(fleet: Fleet) -> None:
    """Issue 18: with maxSurge 1 and maxUnavailable 0 a third pod of the update starts
    before an old one goes, and the agents report at least two replicas Running and
    Ready at every look during the update; it ends with two pods serving v2."""
    fleet.apply([surge_web(fleet.image, "v1")])

    seen: list[str] = []  # what the last look found, for the failure message

    def serving(text: str) -> list[str] | None:
        names = sorted(p["metadata"]["name"] for p in fleet.pods(f"app={SURGE}"))
        phase = deployment_phase(fleet)
        seen[:] = [f"pods {names}, rollout {phase}"]
        if len(names) != 2 or phase != "Complete":
            return None
        pages = [fleet.pod_page(n, port=8082, timeout=3).strip() for n in names]
        seen.append(f"pages {pages}")
        return names if pages == [text, text] else None

    try:
        fleet.wait(lambda: serving("v1"), timeout=120, what="v1 on two replicas")
    except TimeoutError as e:
        raise AssertionError(f"{e}; last seen: {seen}") from None
    t = time.monotonic()
    fleet.apply([surge_web(fleet.image, "v2")])
    most, least = 0, 2
    # Stale first: the apply's own status comes with the next tick
    while time.monotonic() - t < 180 and deployment_phase(fleet) != "Complete":
        pods = fleet.pods(f"app={SURGE}")
        up = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running"
                 and (p.get("status") or {}).get("ready"))
        most, least = max(most, len(pods)), min(least, up)
        time.sleep(0.2)
    names = fleet.wait(lambda: serving("v2"), timeout=60, what="v2 on two replicas")
    figure("rollout.deployment_surge_two_replicas_s", round(time.monotonic() - t, 2))
    assert most == 3, most  # the surge pod ran beside both old ones
    assert least >= 2, least  # never fewer than two replicas Running and Ready
    st = fleet.get(f"/api/v1/deployments/default/{SURGE}")["status"]
    assert (st["replicas"], st["updatedReplicas"], st["availableReplicas"]) == (2, 2, 2)
    assert len(names) == 2
    fleet.delete(f"/api/v1/deployments/default/{SURGE}")
