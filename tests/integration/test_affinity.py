"""Affinity through the whole fleet (issue 18): real mosquitto, cloudcore, three agents in
network namespaces, real crun.

- required node affinity places a pod on the one node labelled for it (its container
  runs there and says where it is), and keeps a pod no node admits Pending with the
  reason, until a node is labelled to match: then it runs there;
- a Deployment with one host port and a required pod anti-affinity on its own labels
  spreads its replicas one per node: each node serves its own replica on the host port,
  the replica too many waits naming the anti-affinity, and takes a node freed for it.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_fleet import real_fleet

from testbed.fleet import Fleet, FleetSettings

pytestmark = pytest.mark.integration

NODES = 3


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with real_fleet(FleetSettings(nodes=NODES, workdir=tmp_path_factory.mktemp("fleet"),
                                  heartbeat_s=1.0)) as f:
        yield f


def label(fleet: Fleet, node: str, labels: dict[str, str | None]) -> None:
    req = urllib.request.Request(
        f"{fleet.api}/api/v1/nodes/{node}", method="PATCH",
        data=json.dumps({"metadata": {"labels": labels}}).encode(),
        headers={"content-type": "application/json"})
    with fleet.urlopen(req, timeout=30) as r:
        assert r.status == 200


def pod(fleet: Fleet, name: str, namespace: str = "default") -> dict[str, Any]:
    return dict(fleet.get(f"/api/v1/pods/{namespace}/{name}"))


def node_affinity(key: str, *values: str) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": key, "operator": "In", "values": list(values)}]}]}}}


def serving_pod(image: str, name: str, affinity: dict[str, Any]) -> dict[str, Any]:
    """A pod that writes the node it runs on (downward API) and idles."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"affinity": affinity, "containers": [{
                "name": "main", "image": image,
                "command": ["sh", "-c", 'echo "$NODE" > /tmp/node && exec sleep 3600'],
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {
                    "fieldPath": "spec.nodeName"}}}],
                "resources": {"limits": {"memory": "16Mi"}}}]}}


def running_on(fleet: Fleet, name: str) -> str | None:
    """The node pod `name` runs on, once its container runs and reads it from inside."""
    st = pod(fleet, name).get("status") or {}
    if st.get("phase") != "Running":
        return None
    r = fleet.fedctl("exec", name, "--", "cat", "/tmp/node", check=False, timeout=40)
    inside = r.stdout.strip()
    return inside if r.returncode == 0 and inside == st.get("nodeName") else None


def test_node_affinity_places_on_the_matching_node_and_refuses_when_none(
        fleet: Fleet) -> None:
    names = sorted(a.name for a in fleet.agents)
    target = names[1]
    label(fleet, target, {"disk": "ssd"})
    fleet.apply([serving_pod(fleet.image, "on-ssd", node_affinity("disk", "ssd")),
                 serving_pod(fleet.image, "on-nvme", node_affinity("disk", "nvme"))])

    assert fleet.wait(lambda: running_on(fleet, "on-ssd"), timeout=120,
                      what="on-ssd running") == target

    def refused() -> dict[str, Any] | None:
        st = pod(fleet, "on-nvme").get("status") or {}
        return st if st.get("reason") == "Unschedulable" else None

    st = fleet.wait(refused, timeout=30, what="on-nvme Pending")
    assert st["phase"] == "Pending" and not st.get("nodeName")
    assert st["message"] == (f"0/{NODES} nodes available: {NODES} node affinity mismatch "
                             "(disk In [nvme])")
    # a node labelled to match takes it, and its container runs there
    label(fleet, names[2], {"disk": "nvme"})
    assert fleet.wait(lambda: running_on(fleet, "on-nvme"), timeout=120,
                      what="on-nvme running after the label") == names[2]
    for p in ("on-ssd", "on-nvme"):
        fleet.delete(f"/api/v1/pods/default/{p}")


HOST_PORT = 18080


def spread(image: str, replicas: int) -> dict[str, Any]:
    script = ('mkdir -p /tmp/www && echo "$NODE" > /tmp/www/index.html '
              "&& exec httpd -f -p 8080 -h /tmp/www")
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "spread", "namespace": "ports"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "spread"}},
                 "template": {"metadata": {"labels": {"app": "spread"}}, "spec": {
                     "affinity": {"podAntiAffinity": {
                         "requiredDuringSchedulingIgnoredDuringExecution": [{
                             "labelSelector": {"matchLabels": {"app": "spread"}},
                             "topologyKey": "kubernetes.io/hostname"}]}},
                     "containers": [{
                         "name": "httpd", "image": image, "command": ["sh", "-c", script],
                         "ports": [{"containerPort": 8080, "hostPort": HOST_PORT}],
                         "env": [{"name": "NODE", "valueFrom": {"fieldRef": {
                             "fieldPath": "spec.nodeName"}}}],
                         "resources": {"limits": {"memory": "16Mi"}}}]}}},
    }


def host_page(fleet: Fleet, node: str) -> str | None:
    address = next(a.address for a in fleet.agents if a.name == node)
    try:
        with urllib.request.urlopen(f"http://{address}:{HOST_PORT}/", timeout=3) as r:
            return str(r.read().decode().strip())
    except OSError:
        return None


def test_anti_affinity_spreads_replicas_with_one_host_port_over_the_nodes(
        fleet: Fleet) -> None:
    # host ports need more than the default (baseline) policy level
    fleet.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {
                     "name": "ports",
                     "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}},
                 spread(fleet.image, NODES + 1)])
    names = sorted(a.name for a in fleet.agents)

    def status(p: dict[str, Any]) -> dict[str, Any]:
        return dict(p.get("status") or {})

    def spread_out() -> list[dict[str, Any]] | None:
        """The replicas once one runs on each node and each node's host port serves the
        replica placed there."""
        pods = fleet.pods("app=spread")
        running = sorted(status(p).get("nodeName") or "" for p in pods
                         if status(p).get("phase") == "Running")
        if running != names or any(host_page(fleet, n) != n for n in names):
            return None
        return pods

    try:
        pods = fleet.wait(spread_out, timeout=180, what="one replica per node, each serving")
    except TimeoutError as exc:
        raise AssertionError(
            f"{exc}; pods {[(p['metadata']['name'], status(p)) for p in fleet.pods('app=spread')]}"
            f"; pages { {n: host_page(fleet, n) for n in names} }") from None
    assert len(pods) == NODES + 1
    [waiting] = [p for p in pods if status(p).get("phase") != "Running"]
    assert status(waiting)["reason"] == "Unschedulable" and not status(waiting).get("nodeName")
    assert status(waiting)["message"] == (
        f"0/{NODES} nodes available: {NODES} pod anti-affinity: app=spread already on the "
        "node")

    # a node freed of its replica takes the waiting one, which runs and serves there
    victim = next(p for p in pods if status(p).get("nodeName") == names[0])
    fleet.delete(f"/api/v1/pods/ports/{victim['metadata']['name']}")
    name = waiting["metadata"]["name"]

    def moved_in() -> bool:
        st = status(pod(fleet, name, "ports"))
        return (st.get("phase"), st.get("nodeName")) == ("Running", names[0]) and bool(
            spread_out())

    fleet.wait(moved_in, timeout=180, what=f"{name} running on {names[0]}")
    fleet.delete("/api/v1/deployments/ports/spread")
