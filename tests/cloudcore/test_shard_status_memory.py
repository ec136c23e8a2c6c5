"""Issue 14 (cloud RSS at 100,000 nodes): what a shard keeps of another shard's node
summary. A shard reads every other shard's summaries (two thirds of the fleet with 3
shards) and kept each decoded, with its pods' statuses, for good: ~2.6 KB a node
(`python -m testbed.bench_shard_memory`). Now it keeps the writer, the readiness and the
summary's bytes; pods' statuses are compared as compact JSON; nodes of one shape share
one allocatable dict; a deleted summary leaves nothing behind. What a summary shows
stays as it was.

cloudcore.cluster.status.NodeStatuses against a real fleet core."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cloudcore_fakes import add_node, daemonset, make_fleet

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.status import AWAY_REASON, NodeStatuses, node_key
from cloudcore.fleet.naming import REVISION
from shared.models import parse_object

NODES = ["n1", "n2", "n3"]


def others_nodes() -> tuple[NodeStatuses, dict[str, tuple[str, str]]]:
    """A shard owning none of NODES, each running one DaemonSet pod: (its statuses,
    node -> its pod's key)."""
    fleet = make_fleet()
    for n in NODES:
        add_node(fleet, n)
    fleet.apply([parse_object(daemonset())])
    pods = {pod.spec.node_name: key for key, pod in fleet.pods.items()}
    assert set(pods) == set(NODES)
    return NodeStatuses(fleet, shard="S2", owns=lambda p: False), pods


def summary(node: str, pod: tuple[str, str], *, phase: str = "Running",
            ready: str = "Ready", revision: str | None = None) -> bytes:
    doc: dict[str, Any] = {
        "shard": "S1", "ready": ready, "reason": "NodeReported", "lastSeen": 7.0,
        "agentVersion": "1.2", "desiredGen": 4, "ackedGen": 4,
        "allocatable": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
        "pods": {f"{pod[0]}/{pod[1]}": {
            "phase": phase, "revision": revision,
            "containerStatuses": [{"name": "main", "state": "running", "ready": True}]}}}
    return json.dumps(doc, separators=(",", ":")).encode()


def test_a_summary_is_kept_as_read_and_shown_as_before() -> None:
    st, pods = others_nodes()
    values = {n: summary(n, pods[n]) for n in NODES}
    for i, n in enumerate(NODES, 1):
        st.show(Entry(node_key(n), values[n], i))
    for n in NODES:
        kept = st.foreign[n]
        assert kept.value is values[n], "the summary is kept as the bytes read"
        assert (kept.writer, kept.ready) == ("S1", "Ready")
        assert not any(isinstance(v, dict) for v in kept), "no decoded document kept"
        status = st.fleet.objects.nodes[n].status
        assert (status.ready, status.reason, status.last_seen, status.agent_version,
                status.acked_gen) == ("Ready", f"{AWAY_REASON} (NodeReported)", 7.0, "1.2", 4)
        assert st.fleet.objects.pods[pods[n]].status.phase == "Running"
        assert st.trusted(n)
    # one object for the equal allocatables and reasons of other shards' nodes
    a, b = (st.fleet.objects.nodes[n].status for n in NODES[:2])
    assert a.allocatable == {"cpu": 4000, "memory": 8 << 30, "pods": 110}
    assert a.allocatable is b.allocatable
    assert a.reason is b.reason


def test_pod_statuses_compared_compact_applied_only_on_change() -> None:
    st, pods = others_nodes()
    n, key = NODES[0], pods[NODES[0]]
    st.show(Entry(node_key(n), summary(n, key), 1))
    assert st.pods_shown == 1
    seen = st._pod_seen[n]
    assert all(isinstance(v, str) for v in seen.values()), "no decoded status kept"
    st.show(Entry(node_key(n), summary(n, key, ready="NotReady"), 2))
    assert st.pods_shown == 1, "an unchanged pod status was applied again"
    rev = st.fleet.objects.pods[key].metadata.annotations.get(REVISION)
    st.show(Entry(node_key(n), summary(n, key, phase="Failed", revision=rev), 3))
    assert st.pods_shown == 2
    assert st.fleet.objects.pods[key].status.phase == "Failed"


def test_a_deleted_summary_leaves_nothing_behind() -> None:
    st, pods = others_nodes()
    n = NODES[0]
    st.show(Entry(node_key(n), summary(n, pods[n]), 1))
    assert n in st.foreign and n in st._pod_seen
    st.show(Entry(node_key(n), b"", 2, operation="delete"))
    assert n not in st.foreign and n not in st._pod_seen
    assert not st.trusted(n)


def test_a_node_just_lost_reads_its_owner_summary_again() -> None:
    """From the kept bytes: the node this shard gave up (Unknown, OwnedByAnotherShard)
    shows the owner's word at the next pass, as it did from the decoded document."""
    st, pods = others_nodes()
    n = NODES[1]
    st.show(Entry(node_key(n), summary(n, pods[n], ready="NotReady"), 1))
    status = st.fleet.objects.nodes[n].status
    status.ready, status.reason = "Unknown", AWAY_REASON
    assert asyncio.run(st.changed_summaries()) == {}
    assert (status.ready, status.reason) == ("NotReady", f"{AWAY_REASON} (NodeReported)")


def test_own_summary_state_refers_to_the_allocatable_and_sees_its_change() -> None:
    """The owner's memory of what it wrote holds the node's allocatable dict itself (no
    sorted copy per node); a new allocatable is still written again."""
    fleet = make_fleet()
    add_node(fleet, "n1")
    st = NodeStatuses(fleet, shard="S1", owns=lambda p: True)
    assert set(asyncio.run(st.changed_summaries())) == {"n1"}
    status = fleet.objects.nodes["n1"].status
    assert any(v is status.allocatable for v in st._written["n1"])
    assert asyncio.run(st.changed_summaries()) == {}
    fleet.node_status("n1", {"allocatable": {"cpu": 2000, "memory": 1 << 30, "pods": 10}})
    again = asyncio.run(st.changed_summaries())
    assert json.loads(again["n1"])["allocatable"] == {"cpu": 2000, "memory": 1 << 30,
                                                      "pods": 10}


def test_a_shown_pod_status_shares_its_class_fields_set() -> None:
    """A pod status shown from another shard's summary holds its class's one fields set,
    as a status its own node reported does (`Objects.save`), not a set of its own
    (~670 bytes a pod)."""
    st, pods = others_nodes()
    n, key = NODES[0], pods[NODES[0]]
    st.show(Entry(node_key(n), summary(n, key), 1))
    status = st.fleet.objects.pods[key].status
    other = st.fleet.objects.pods[pods[NODES[1]]]
    st.show(Entry(node_key(NODES[1]), summary(NODES[1], pods[NODES[1]]), 2))
    assert status.__pydantic_fields_set__ is other.status.__pydantic_fields_set__
    assert status.container_statuses[0].__pydantic_fields_set__ is \
        other.status.container_statuses[0].__pydantic_fields_set__
    assert status.node_name == n and status.phase == "Running"
