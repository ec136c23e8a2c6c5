"""The cloud's half of "a pod deleted and created again is a new pod": every pod has a
uid (bare ones from apply, those of DaemonSets and Deployments from their controller),
kept across its updates, new when it is made again; its desired entry carries it, so
the node's delta changes although the name and spec do not; and a NotReady node's
last status of the old pod is not given to the new one when the node comes back."""

from __future__ import annotations

from typing import Any

from cloudcore_fakes import add_node, daemonset, deployment, make_fleet

from shared.delta import EdgeDesired
from shared.entries import parse_pod_entry, pod_key
from shared.models import parse_object


def apply(fleet: Any, *docs: dict[str, Any]) -> None:
    fleet.apply([parse_object(d) for d in docs])


def bare(name: str = "web", node: str = "n1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]}}


def entry_uid(fleet: Any, node: str, name: str) -> str | None:
    value = fleet.desired[node].values()[pod_key("default", name)]  # as sent
    return parse_pod_entry(pod_key("default", name), value).uid


def test_a_bare_pod_made_again_reaches_its_node_with_a_new_uid() -> None:
    fleet = make_fleet()
    add_node(fleet, "n1")
    apply(fleet, bare())
    first = fleet.pods[("default", "web")].metadata.uid
    assert first and entry_uid(fleet, "n1", "web") == first
    edge = EdgeDesired().applied(fleet.desired["n1"].delta(0, None))
    apply(fleet, bare())  # the same again: unchanged, same uid, no new gen
    assert fleet.desired["n1"].gen == edge.gen
    fleet.delete("Pod", "default", "web")
    apply(fleet, bare())
    second = fleet.pods[("default", "web")].metadata.uid
    assert second and second != first
    # The edge that saw neither change gets one delta that puts the pod, new uid.
    delta = fleet.desired["n1"].delta(edge.gen, edge.epoch)
    assert not delta.snapshot and list(delta.put) == [pod_key("default", "web")]
    assert parse_pod_entry("k", delta.put[pod_key("default", "web")]).uid == second


def test_controller_pods_get_uids_kept_across_updates_and_new_when_made_again() -> None:
    fleet = make_fleet()
    for n in ("n1", "n2"):
        add_node(fleet, n)
    apply(fleet, daemonset(), deployment(replicas=2))
    pods = fleet.pods
    uids = {k: p.metadata.uid for k, p in pods.items()}
    assert len(uids) == 4 and all(uids.values()) and len(set(uids.values())) == 4
    for (ns, name), uid in uids.items():
        node = fleet.bound[(ns, name)]
        assert entry_uid(fleet, node, name) == uid  # shared DaemonSet entries too
    apply(fleet, daemonset(args=["sleep", "2d"]))  # an update: the same pods
    assert {k: pods[k].metadata.uid for k in uids} == uids
    edges = {n: EdgeDesired().applied(fleet.desired[n].delta(0, None)) for n in ("n1", "n2")}
    fleet.delete("DaemonSet", "default", "agent")
    fleet.delete("Deployment", "default", "web")
    apply(fleet, daemonset(args=["sleep", "2d"]), deployment(replicas=2))
    assert set(pods) == set(uids)
    for k, old in uids.items():  # each comes down to its node again, with its new uid
        uid = pods[k].metadata.uid
        assert uid not in (None, old)
        edge = edges[fleet.bound[k]]
        delta = fleet.desired[fleet.bound[k]].delta(edge.gen, edge.epoch)
        assert parse_pod_entry("k", delta.put[pod_key(*k)]).uid == uid


def test_a_node_back_from_not_ready_gives_no_old_status_to_a_new_pod() -> None:
    fleet = make_fleet()
    add_node(fleet, "n1")
    apply(fleet, bare())
    fleet.pod_statuses("n1", {pod_key("default", "web"): {
        "phase": "Running", "ready": True, "nodeName": "n1",
        "containerStatuses": [{"name": "main", "state": "running", "ready": True,
                               "restartCount": 4}]}})
    fleet.mark_not_ready("n1", reason="NodeLinkLost", message="test")
    fleet.delete("Pod", "default", "web")
    apply(fleet, bare())
    assert fleet.pods[("default", "web")].status.phase == "Pending"
    fleet.mark_ready("n1")
    st = fleet.pods[("default", "web")].status
    assert (st.phase, st.container_statuses) == ("Pending", [])


def test_a_node_back_from_not_ready_gives_its_pods_their_status_back() -> None:
    """The same pod object (no delete): what the node last reported comes back."""
    fleet = make_fleet()
    add_node(fleet, "n1")
    apply(fleet, bare())
    fleet.pod_statuses("n1", {pod_key("default", "web"): {
        "phase": "Running", "ready": True,
        "containerStatuses": [{"name": "main", "state": "running", "ready": True}]}})
    fleet.mark_not_ready("n1", reason="NodeLinkLost", message="test")
    assert fleet.pods[("default", "web")].status.ready is False
    fleet.mark_ready("n1")
    st = fleet.pods[("default", "web")].status
    assert (st.phase, st.ready) == ("Running", True)


def test_a_pod_made_for_a_not_ready_node_is_placed_once_the_node_is_back() -> None:
    """Made again while its node's agent was offline: it waits (node not ready) and is
    bound at the first liveness tick after the node reports again, not at the next
    unrelated change."""
    fleet = make_fleet()
    add_node(fleet, "n1")
    fleet.mark_not_ready("n1", reason="NodeLinkLost", message="test")
    apply(fleet, bare())
    st = fleet.pods[("default", "web")].status
    assert (st.reason, "node not ready" in (st.message or "")) == ("Unschedulable", True)
    fleet.mark_ready("n1")
    fleet.expire(0.0)
    assert fleet.bound[("default", "web")] == "n1"
    assert fleet.pods[("default", "web")].status.reason == "Scheduled"
    assert pod_key("default", "web") in fleet.desired["n1"].items
