"""What pods and nodes share to save memory (issue 13) is never changed in place:
a change to one object leaves its siblings as they were."""

from __future__ import annotations

from typing import Any

from cloudcore_fakes import add_node, daemonset, make_fleet

from cloudcore.fleet.naming import REVISION, SCHEDULED
from cloudcore.fleet.objects import dump_object
from shared.entries import pod_key
from shared.models import parse_object


def apply(fleet: Any, *docs: dict[str, Any]) -> None:
    fleet.apply([parse_object(d) for d in docs])


def test_daemonset_pods_share_labels_and_a_nodes_scheduled_status() -> None:
    fleet = make_fleet()
    for n in ("n1", "n2"):
        add_node(fleet, n)
    apply(fleet, daemonset("a"), daemonset("b"))
    a1, a2 = fleet.pods[("default", "a-n1")], fleet.pods[("default", "a-n2")]
    b1 = fleet.pods[("default", "b-n1")]
    assert a1.metadata.labels is a2.metadata.labels
    # bound: each has its own SCHEDULED annotation, the rest is as before
    assert a1.metadata.annotations[SCHEDULED] != a2.metadata.annotations[SCHEDULED]
    assert a1.metadata.annotations[REVISION] == a2.metadata.annotations[REVISION]
    assert "n1" in a1.metadata.annotations[SCHEDULED]
    # the two DaemonSets' pods on n1 share one Scheduled status
    assert a1.status is b1.status and a1.status.node_name == "n1"
    before_b1, before_a2 = dump_object(b1), dump_object(a2)
    ignored, _ = fleet.node_ops.pod_statuses("n1", {pod_key("default", "a-n1"): {
        "phase": "Running", "containerStatuses": [
            {"name": "main", "state": "running", "ready": True}]}})
    assert ignored == 0
    assert a1.status.phase == "Running" and a1.status.container_statuses
    assert dump_object(b1) == before_b1 and dump_object(a2) == before_a2
    assert b1.status.container_statuses == []


def test_nodes_share_spec_and_annotations_until_one_changes() -> None:
    fleet = make_fleet()
    for n in ("n1", "n2"):
        add_node(fleet, n)
    n1, n2 = fleet.nodes["n1"], fleet.nodes["n2"]
    assert n1.spec is n2.spec and n1.metadata.annotations is n2.metadata.annotations
    assert n1.status.usage is n2.status.usage
    before = dump_object(n2)
    fleet.patch_node("n1", labels={"team": "x"}, unschedulable=True)
    fleet.node_status("n1", {"heartbeat": 20})
    assert n1.spec.unschedulable and not n2.spec.unschedulable
    assert n1.metadata.annotations["edgefed.io/heartbeat"] == "20"
    assert dump_object(n2) == before
    fleet.patch_node("n1", unschedulable=False)
    assert not n1.spec.unschedulable and not n2.spec.unschedulable


def test_scheduled_statuses_are_kept_for_the_nodes_bound_lately_only(
        monkeypatch: Any) -> None:
    """Issue 14: the Scheduled status shared by a node's pods was kept for every node of
    the fleet for good, after the pods reported and replaced it (~450 bytes a node in
    every shard). Now for the last `SCHEDULED_KEPT` nodes bound to (the pods of two
    DaemonSets on one node share one status while the fleet is within it, as in the
    test above; beyond it each pod waiting for its report holds its own)."""
    from cloudcore.fleet import placement
    monkeypatch.setattr(placement, "SCHEDULED_KEPT", 4, raising=False)
    fleet = make_fleet()
    names = [f"n{i}" for i in range(10)]
    for n in names:
        add_node(fleet, n)
    apply(fleet, daemonset("a"), daemonset("b"))
    assert len(fleet.placement._scheduled) <= 4
    last = names[-1]
    a, b = fleet.pods[("default", f"a-{last}")], fleet.pods[("default", f"b-{last}")]
    assert a.status == b.status and a.status.node_name == last
    for n in names:
        assert fleet.pods[("default", f"a-{n}")].status.node_name == n
        assert "scheduled on" in fleet.pods[("default", f"a-{n}")].status.message
