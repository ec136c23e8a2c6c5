"""The fleet controller: workloads -> pods -> per-node desired sets and gens."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudcore_fakes import GI, FakeStore, add_node, daemonset, deployment, make_fleet

from cloudcore.api.listcache import ListCache
from cloudcore.errors import NotFound
from cloudcore.fleet.naming import OWNER, child_name
from shared.delta import EdgeDesired
from shared.entries import parse_pod_entry, pod_key
from shared.errors import ObjectError
from shared.models import parse_object


def apply(fleet: Any, *docs: dict[str, Any]) -> list[str]:
    return [r.action for r in fleet.apply([parse_object(d) for d in docs])]


def test_daemonset_on_three_nodes_update_and_delete() -> None:
    fleet = make_fleet()
    changed: list[set[str]] = []
    fleet.desired_sets.add_listener(changed.append)
    for n in ("n1", "n2", "n3"):
        add_node(fleet, n)
    assert apply(fleet, daemonset()) == ["created"]
    assert changed[-1] == {"n1", "n2", "n3"}
    gens = {}
    for n in ("n1", "n2", "n3"):
        nd = fleet.desired[n]
        key = pod_key("default", f"agent-{n}")
        assert list(nd.items) == [key]
        pod = fleet.pods[("default", f"agent-{n}")]
        assert pod.metadata.annotations[OWNER] == "DaemonSet/default/agent"
        assert pod.status.node_name == n
        gens[n] = nd.gen

    # the edge follows along through deltas
    edge = EdgeDesired()
    edge = edge.applied(fleet.desired["n1"].delta(0, None))

    assert apply(fleet, daemonset(args=["sleep", "2d"])) == ["configured"]
    for n in ("n1", "n2", "n3"):
        nd = fleet.desired[n]
        assert nd.gen == gens[n] + 1
        (key, (_, kgen)), = nd.items.items()
        assert kgen == nd.gen
        value = nd.values()[key]  # the entry as sent
        assert parse_pod_entry("k", value).spec.containers[0].args == ["sleep", "2d"]
    delta = fleet.desired["n1"].delta(edge.gen, edge.epoch)
    assert list(delta.put) == [pod_key("default", "agent-n1")] and not delta.snapshot

    assert apply(fleet, daemonset(args=["sleep", "2d"])) == ["unchanged"]
    assert fleet.desired["n1"].gen == gens["n1"] + 1

    fleet.delete("DaemonSet", "default", "agent")
    for n in ("n1", "n2", "n3"):
        nd = fleet.desired[n]
        assert nd.items == {}
        assert nd.tombs == {pod_key("default", f"agent-{n}"): gens[n] + 2}
    assert fleet.pods == {}


def test_new_node_gets_daemonset_pod_and_selector_is_respected() -> None:
    fleet = make_fleet()
    add_node(fleet, "a", labels={"role": "cam"})
    apply(fleet, daemonset(node_selector={"role": "cam"}))
    add_node(fleet, "b", labels={"role": "cam"})
    add_node(fleet, "c", labels={"role": "other"})
    assert set(fleet.desired["b"].items) == {pod_key("default", "agent-b")}
    assert fleet.desired.get("c") is None or fleet.desired["c"].items == {}
    # relabel c through the API: it gets the pod; relabel b away: its pod goes
    node_doc = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "c",
                                                                "labels": {"role": "cam"}}}
    assert apply(fleet, node_doc) == ["configured"]
    assert set(fleet.desired["c"].items) == {pod_key("default", "agent-c")}
    node_doc["metadata"] = {"name": "b", "labels": {"role": "gone"}}
    apply(fleet, node_doc)
    assert fleet.desired["b"].items == {}
    assert pod_key("default", "agent-b") in fleet.desired["b"].tombs


def test_deployment_spreads_by_headroom_and_pending_is_explained() -> None:
    fleet = make_fleet()
    add_node(fleet, "small", memory=GI)
    add_node(fleet, "big", memory=4 * GI)
    apply(fleet, deployment(replicas=5, memory="1Gi"))
    placed = [p.status.node_name for p in fleet.pods.values()]
    assert sorted(placed, key=str) == ["big"] * 4 + ["small"]  # most headroom first
    apply(fleet, deployment(replicas=6, memory="1Gi"))
    pending = [p for p in fleet.pods.values() if p.status.reason == "Unschedulable"]
    assert len(pending) == 1
    assert pending[0].status.message == "0/2 nodes available: 2 insufficient memory"
    # capacity freed -> retried
    apply(fleet, deployment(replicas=5, memory="1Gi"))
    assert all(p.status.reason == "Scheduled" for p in fleet.pods.values())
    # a new node makes room for more
    apply(fleet, deployment(replicas=6, memory="1Gi"))
    add_node(fleet, "late", memory=2 * GI)
    assert all(p.status.reason == "Scheduled" for p in fleet.pods.values())
    assert fleet.pods[("default", "web-5")].status.node_name == "late"


def test_bare_pod_no_nodes_then_node_joins() -> None:
    fleet = make_fleet()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    apply(fleet, pod)
    assert fleet.pods[("default", "p")].status.reason == "Unschedulable"
    assert "no nodes" in (fleet.pods[("default", "p")].status.message or "")
    add_node(fleet, "n1")
    assert fleet.pods[("default", "p")].status.node_name == "n1"
    assert pod_key("default", "p") in fleet.desired["n1"].items
    assert apply(fleet, pod) == ["unchanged"]


def test_pod_status_from_report_and_delete_errors() -> None:
    fleet = make_fleet()
    add_node(fleet, "n1")
    apply(fleet, daemonset())
    ignored = fleet.pod_statuses("n1", {
        pod_key("default", "agent-n1"): {"phase": "Running", "containerStatuses": [
            {"name": "main", "state": "running", "ready": True}]},
        pod_key("default", "nope"): {"phase": "Running"},
        "garbage": {"phase": "Running"},
    })
    assert ignored == 2
    st = fleet.pods[("default", "agent-n1")].status
    assert st.phase == "Running" and st.container_statuses[0].ready
    with pytest.raises(NotFound):
        fleet.delete("Deployment", "default", "missing")
    bad = deployment()
    bad["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(ObjectError):
        apply(fleet, bad)


def test_ack_collects_tombstones_and_persists() -> None:
    store = FakeStore()
    fleet = make_fleet(store)
    add_node(fleet, "n1")
    apply(fleet, daemonset())
    fleet.delete("DaemonSet", "default", "agent")
    nd = fleet.desired["n1"]
    assert nd.tombs
    assert fleet.record_ack("n1", "e1", nd.gen)
    assert nd.tombs == {} and nd.acked == nd.gen
    assert store.data[("desired", "n1")]["acked"] == nd.gen
    assert fleet.nodes["n1"].status.acked_gen == nd.gen


def test_reload_from_records_rebuilds_bindings() -> None:
    store = FakeStore()
    fleet = make_fleet(store)
    add_node(fleet, "n1")
    apply(fleet, daemonset(), deployment(replicas=1))
    records: dict[str, dict[str, Any]] = {}
    for (db, key), value in store.data.items():
        records.setdefault(db, {})[key] = value
    again = make_fleet(FakeStore())
    again.load(records)
    assert again.nodes["n1"].status.ready == "Unknown"
    assert again.desired["n1"].gen == fleet.desired["n1"].gen
    assert again.list("Pod", node="n1") == fleet.list("Pod", node="n1")


def test_long_names_are_hashed() -> None:
    name = child_name("d" * 200, "n" * 100)
    assert len(name) <= 253 and name[-11] == "-"
    assert child_name("a", "b") == "a-b"


def test_an_updated_pod_says_which_revision_it_should_run() -> None:
    """After a template update the pod keeps its old status until the agent reports;
    its REVISION annotation (what its desired entry carries) tells them apart."""
    from cloudcore.fleet.naming import REVISION
    from fedctl.render import TABLE_FIELDS, _pod_reason, pod_up_to_date

    fleet = make_fleet()
    add_node(fleet, "n1")
    apply(fleet, daemonset())
    key = ("default", "agent-n1")
    (value, _), = fleet.desired["n1"].items.values()
    rev1 = fleet.pods[key].metadata.annotations[REVISION]
    assert value["revision"] == rev1
    fleet.pod_statuses("n1", {pod_key(*key): {"phase": "Running", "revision": rev1}})
    assert pod_up_to_date(fleet.get("Pod", "default", "agent-n1"))

    apply(fleet, daemonset(args=["sleep", "2d"]))
    (value, _), = fleet.desired["n1"].items.values()
    pod = fleet.pods[key]
    rev2 = pod.metadata.annotations[REVISION]
    assert rev2 != rev1 and value["revision"] == rev2
    assert pod.status.phase == "Running" and pod.status.revision == rev1  # still the old
    assert not pod_up_to_date(fleet.get("Pod", "default", "agent-n1"))
    # `fedctl get pods` asks for its table fields only; they carry what it needs to say so
    fields = tuple(sorted(set(TABLE_FIELDS["Pod"])))
    lists = ListCache(fleet.objects)
    row = json.loads(lists.encoded("Pod", key, fields))
    assert _pod_reason(row) == "Updating" and not pod_up_to_date(row)
    fleet.pod_statuses("n1", {pod_key(*key): {"phase": "Running", "revision": rev2}})
    assert pod_up_to_date(fleet.get("Pod", "default", "agent-n1"))
    row = json.loads(lists.encoded("Pod", key, fields))
    assert _pod_reason(row) == "-" and pod_up_to_date(row)

    # a user's own value of the annotation is not taken
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "solo", "annotations": {REVISION: "forged"}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}}
    apply(fleet, bare)
    assert fleet.pods[("default", "solo")].metadata.annotations[REVISION] != "forged"
    assert apply(fleet, bare) == ["unchanged"]  # and it does not make apply see a change


def test_daemonset_entries_are_shared_per_revision_and_equal_fresh_ones() -> None:
    """Each node's entry of a DaemonSet pod is what pod_entry makes for that pod, while
    the pods and entries of one template share the spec's parts (issue 13: memory)."""
    from cloudcore.fleet.desired import pod_value

    fleet = make_fleet()
    for n in ("n1", "n2", "n3"):
        add_node(fleet, n)
    apply(fleet, daemonset())
    entries = []
    for n in ("n1", "n2", "n3"):
        key = ("default", f"agent-{n}")
        (value, _), = fleet.desired[n].items.values()
        assert value == pod_value(fleet.pods[key])
        assert value["name"] == f"agent-{n}" and value["spec"]["nodeName"] == n
        entries.append(value)
    assert entries[1]["spec"]["containers"] is entries[2]["spec"]["containers"]
    specs = [fleet.pods[("default", f"agent-{n}")].spec for n in ("n1", "n2", "n3")]
    assert specs[0].containers is specs[1].containers is specs[2].containers
    apply(fleet, daemonset(args=["sleep", "2d"]))  # a new revision: new entries
    for n in ("n1", "n2", "n3"):
        (value, _), = fleet.desired[n].items.values()
        assert value == pod_value(fleet.pods[("default", f"agent-{n}")])
        assert value["spec"]["containers"][0]["args"] == ["sleep", "2d"]


def test_a_pod_record_loads_back_equal() -> None:
    """The store keeps a pod's spec by its own dump (defaults left out): loading it
    gives the same pod."""
    from cloudcore.fleet.objects import dump_object, record_of
    from shared.models import Pod

    fleet = make_fleet()
    add_node(fleet, "n1")
    apply(fleet, daemonset(args=["sleep", "3d"]), {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"}},
        "spec": {"nodeName": "n1", "restartPolicy": "OnFailure",
                 "containers": [{"name": "c", "image": "busybox", "command": ["sh"],
                                 "env": [{"name": "X", "value": "1"}],
                                 "resources": {"requests": {"cpu": "100m"}}}]}})
    for key in (("default", "p"), ("default", "agent-n1")):
        pod = fleet.pods[key]
        again = Pod.model_validate(record_of(pod))
        assert again == pod and dump_object(again) == dump_object(pod)


def test_shared_fields_sets_change_nothing_visible() -> None:
    """Pods share their classes' pydantic fields sets (memory), and nodes are compact
    records (tests/cloudcore/test_node_record.py): dumps, equality and copies are as
    before, and assigning a field touches no other object."""
    from cloudcore.fleet.objects import dump_object, share_fields_set
    from shared.models import Node

    fleet = make_fleet()
    for n in ("n1", "n2"):
        add_node(fleet, n)
    apply(fleet, daemonset())
    a, b = fleet.nodes["n1"], fleet.nodes["n2"]
    before = dump_object(b)
    a.status.reason = "Changed"
    assert dump_object(b) == before and b.status.reason != "Changed"
    fresh = Node.model_validate(dump_object(a))
    assert fresh == a.materialise() and dump_object(fresh) == dump_object(a)
    share_fields_set(fresh)
    assert fresh == a.materialise()
    copy = fresh.model_copy(update={"kind": "Node"})
    assert copy.__pydantic_fields_set__ is not fresh.__pydantic_fields_set__
    pod = fleet.pods[("default", "agent-n1")]
    assert pod.status.__pydantic_fields_set__ is fleet.pods[
        ("default", "agent-n2")].status.__pydantic_fields_set__


def test_a_node_status_that_repeats_itself_writes_nothing() -> None:
    """A report that says what the node already said is not a store write, and says
    placement did not change; a changed label is both (issue 13: CPU per report)."""
    store = FakeStore()
    fleet = make_fleet(store)
    add_node(fleet, "n1", labels={"zone": "a"})
    status = {"allocatable": {"cpu": 4000, "memory": 8 * GI, "pods": 110},
              "capacity": {"cpu": 4000, "memory": 8 * GI, "pods": 110},
              "arch": "amd64", "labels": {"zone": "a"}, "heartbeat": 10}
    store.data.clear()
    assert fleet.node_ops.status("n1", status) == (0, False)
    assert store.data == {}
    assert fleet.node_ops.status("n1", {**status, "labels": {"zone": "b"}}) == (0, True)
    assert fleet.nodes["n1"].metadata.labels["zone"] == "b" and ("nodes", "n1") in store.data
    again = {**status, "labels": {"zone": "b"}, "heartbeat": 20}
    assert fleet.node_ops.status("n1", again)[1] is False
    assert fleet.nodes["n1"].metadata.annotations["edgefed.io/heartbeat"] == "20"


def test_replicas_with_one_host_port_spread_over_nodes() -> None:
    # host ports are refused at the baseline level: a namespace that allows them
    fleet = make_fleet()
    apply(fleet, {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "edge", "labels": {"pod-security.kubernetes.io/enforce": "privileged"}}})
    add_node(fleet, "a", memory=8 * GI)
    add_node(fleet, "b", memory=8 * GI)
    dep = deployment(replicas=3)
    dep["metadata"]["namespace"] = "edge"
    dep["spec"]["template"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": 5000, "hostPort": 5000}]
    apply(fleet, dep)
    placed = sorted(str(p.status.node_name) for p in fleet.pods.values()
                    if p.status.reason == "Scheduled")
    assert placed == ["a", "b"]  # not two on one node: the second would fail to bind
    pending = [p for p in fleet.pods.values() if p.status.reason == "Unschedulable"]
    assert [p.status.message for p in pending] == [
        "0/2 nodes available: 2 host port 5000/TCP in use"]
    add_node(fleet, "c", memory=8 * GI)  # room for the third
    assert sorted(str(p.status.node_name) for p in fleet.pods.values()) == ["a", "b", "c"]
