"""A pod deleted and created again under the same name is a new pod (a new uid), and
its node runs a new container for it, as Kubernetes' kubelet does; a pod that comes
back to a node that still runs it is reported again. Real mosquitto, cloudcore, two
agents in network namespaces, real crun.

The bug (found on a fleet): the agent saw the same name and the same revision, kept
the old container and reported nothing new, while the cloud's new pod object stayed
Pending (or, after the node had been NotReady, took the old pod's status back)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_fleet import real_fleet

from testbed.chaos import Chaos
from testbed.fleet import Fleet, FleetSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # No forecast during the module: the agents report the host's CPU as their nodes',
    # and on a busy test machine a forecast over capacity would keep a pod Pending for
    # a reason these tests are not about.
    with real_fleet(FleetSettings(nodes=2, workdir=tmp_path_factory.mktemp("fleet"),
                                  heartbeat_s=1.0,
                                  cloud_args=("--forecast-interval", "3600"))) as f:
        yield f


@pytest.fixture
def chaos(fleet: Fleet) -> Iterator[Chaos]:
    with Chaos(fleet, seed=3) as c:
        yield c
    fleet.wait_nodes_ready(timeout=60)


def _spec(image: str, node: str | None = None, *, grace: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace,
        "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"],
                        "resources": {"limits": {"memory": "16Mi"}}}]}
    if node is not None:
        spec["nodeName"] = node
    return spec


def bare_pod(name: str, image: str, node: str, *, grace: int = 0) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": _spec(image, node, grace=grace)}


def daemonset(name: str, image: str) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": _spec(image)}}}


def get_pod(fleet: Fleet, name: str) -> dict[str, Any]:
    return dict(fleet.get(f"/api/v1/pods/default/{name}"))


def started(pod: dict[str, Any]) -> float | None:
    """When the pod's container last started, as its node reported it."""
    st = pod.get("status") or {}
    if st.get("phase") != "Running":
        return None
    cs = st.get("containerStatuses") or []
    return cs[0].get("startedAt") if cs and cs[0].get("state") == "running" else None


def wait_running(fleet: Fleet, name: str, *, node: str, after: float = 0.0,
                 timeout: float = 90) -> dict[str, Any]:
    """The pod once its node reports it Running with a container started after `after`."""
    def check() -> dict[str, Any] | None:
        pod = get_pod(fleet, name)
        at = started(pod)
        ok = (at is not None and at > after
              and (pod.get("status") or {}).get("nodeName") == node)
        return pod if ok else None

    try:
        return dict(fleet.wait(check, timeout=timeout, what=f"pod {name} Running on {node} "
                               f"with a container started after {after:.3f}"))
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; status now {get_pod(fleet, name).get('status')}") \
            from None


def delete_and_recreate(fleet: Fleet, path: str, doc: dict[str, Any]) -> float:
    """DELETE then apply again at once; returns the wall time just before."""
    t = time.time()
    fleet.delete(path)
    fleet.apply([doc])
    return t


def test_pod_deleted_and_recreated_at_once_runs_a_new_container(fleet: Fleet) -> None:
    node = fleet.agents[0].name
    doc = bare_pod("again", fleet.image, node)
    fleet.apply([doc])
    first = wait_running(fleet, "again", node=node)
    t = delete_and_recreate(fleet, "/api/v1/pods/default/again", doc)
    second = wait_running(fleet, "again", node=node, after=t)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert second["status"]["containerStatuses"][0]["restartCount"] == 0
    fleet.delete("/api/v1/pods/default/again")


def test_pod_recreated_while_its_agent_is_down_runs_a_new_container(
        fleet: Fleet, chaos: Chaos) -> None:
    """The agent is down (kill -9, its container keeps running) while the pod is deleted
    and created again: it comes back to one delta with the same name and spec. The node
    went NotReady meanwhile, so the cloud also kept the old pod's last status aside:
    it must not be given to the new pod."""
    node = fleet.agents[1].name
    doc = bare_pod("offline", fleet.image, node)
    fleet.apply([doc])
    first = wait_running(fleet, "offline", node=node)
    chaos.kill_agent(node)
    fleet.wait(lambda: next(n for n in fleet.nodes() if n["metadata"]["name"] == node)
               ["status"].get("ready") == "NotReady", timeout=30, what=f"{node} NotReady")
    t = delete_and_recreate(fleet, "/api/v1/pods/default/offline", doc)
    chaos.start_agent(node)
    fleet.wait_nodes_ready(timeout=60)
    second = wait_running(fleet, "offline", node=node, after=t)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert second["status"]["containerStatuses"][0]["restartCount"] == 0
    fleet.delete("/api/v1/pods/default/offline")


def test_daemonset_recreated_while_its_agents_are_down_runs_new_containers(
        fleet: Fleet, chaos: Chaos) -> None:
    fleet.apply([daemonset("everywhere", fleet.image)])
    names = {a.name: f"everywhere-{a.name}" for a in fleet.agents}
    for node, pod in names.items():
        wait_running(fleet, pod, node=node)
    for node in names:
        chaos.kill_agent(node)
    t = delete_and_recreate(fleet, "/api/v1/daemonsets/default/everywhere",
                            daemonset("everywhere", fleet.image))
    for node in names:
        chaos.start_agent(node)
    fleet.wait_nodes_ready(timeout=60)
    for node, pod in names.items():
        again = wait_running(fleet, pod, node=node, after=t)
        assert again["status"]["containerStatuses"][0]["restartCount"] == 0
    fleet.delete("/api/v1/daemonsets/default/everywhere")


def test_pod_moved_away_and_back_is_reported_by_its_node(
        fleet: Fleet, chaos: Chaos) -> None:
    """Same pod object (same uid) moved to another node and back while its first node's
    agent is down: that node gets the removal and the return in one delta, keeps the
    container, and must report it again, since the cloud set the pod's status to
    Pending when it bound it there again."""
    a, b = fleet.agents[0].name, fleet.agents[1].name
    fleet.apply([bare_pod("mover", fleet.image, a, grace=60)])
    first = wait_running(fleet, "mover", node=a)
    chaos.kill_agent(a)
    t = time.time()
    fleet.apply([bare_pod("mover", fleet.image, b, grace=60)])
    wait_running(fleet, "mover", node=b, after=t)
    # A restarted cloud holds its nodes Unknown, not NotReady, until they report: the
    # pod is bound to `a` again at once, while its agent is still down.
    fleet.restart_cloud()
    fleet.apply([bare_pod("mover", fleet.image, a, grace=60)])
    status = get_pod(fleet, "mover")["status"]
    assert (status.get("reason"), status.get("nodeName")) == ("Scheduled", a), status
    chaos.start_agent(a)
    fleet.wait_nodes_ready(timeout=60)
    back = wait_running(fleet, "mover", node=a)
    assert back["metadata"]["uid"] == first["metadata"]["uid"]
    assert started(back) == started(first)  # the same container
    fleet.delete("/api/v1/pods/default/mover")
