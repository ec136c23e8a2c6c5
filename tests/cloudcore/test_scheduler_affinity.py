"""Affinity (issue 18): the matching rules of node affinity and label selectors, the
scheduler's filters and scores with their reasons, and a fleet placing pods by them
(Deployment replicas spread by anti-affinity, DaemonSets only on nodes their required
node affinity admits, a placed pod's anti-affinity kept symmetric)."""

from __future__ import annotations

from typing import Any

import pytest
from cloudcore_fakes import GI, add_node, daemonset, deployment, make_fleet

from cloudcore.scheduler import NodeView, Scheduler
from cloudcore.scheduler.affinity import Placed, PodTopology, topology_of
from shared.models import parse_object
from shared.pods import (
    AffinitySelector,
    NodeSelector,
    NodeSelectorRequirement,
    PodAffinityTerm,
    PodSpec,
)


def spec(affinity: dict[str, Any] | None = None, **kw: Any) -> PodSpec:
    base: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}], **kw}
    if affinity is not None:
        base["affinity"] = affinity
    return PodSpec.parse(base)


def node(name: str, **labels: str) -> NodeView:
    return NodeView(name=name, labels={"kubernetes.io/hostname": name, **labels},
                    allocatable={"cpu": 4000, "memory": 8 * GI, "pods": 110})


def required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": list(terms)}}}


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": op, "values": list(values)}


# -- matching rules --------------------------------------------------------------------


@pytest.mark.parametrize(("op", "values", "label", "want"), [
    ("In", ["a", "b"], "a", True), ("In", ["a"], "c", False), ("In", ["a"], None, False),
    ("NotIn", ["a"], "b", True), ("NotIn", ["a"], "a", False), ("NotIn", ["a"], None, True),
    ("Exists", [], "", True), ("Exists", [], None, False),
    ("DoesNotExist", [], None, True), ("DoesNotExist", [], "x", False),
    ("Gt", ["4"], "8", True), ("Gt", ["4"], "4", False), ("Gt", ["4"], "x", False),
    ("Gt", ["4"], None, False), ("Lt", ["4"], "-1", True), ("Lt", ["4"], "10", False),
])
def test_node_selector_requirement_operators(op: str, values: list[str], label: str | None,
                                             want: bool) -> None:
    assert NodeSelectorRequirement(key="k", operator=op,  # type: ignore[arg-type]
                                   values=values).matches(label) is want


def test_terms_are_ored_expressions_anded_fields_match_the_node_name() -> None:
    sel = NodeSelector.parse({"nodeSelectorTerms": [
        {"matchExpressions": [expr("zone", "In", "a"), expr("gpu", "Exists")]},
        {"matchFields": [expr("metadata.name", "In", "n9")]}]})
    assert sel.matches({"zone": "a", "gpu": "1"}, "n1")
    assert not sel.matches({"zone": "a"}, "n1")  # the first term's AND fails
    assert sel.matches({}, "n9")  # the second term: by name
    assert sel.describe() == "zone In [a], gpu Exists or metadata.name In [n9]"
    # an empty term matches no node, as in Kubernetes
    assert not NodeSelector.parse({"nodeSelectorTerms": [{}]}).matches({"a": "b"}, "n")


def test_label_selector_and_its_description() -> None:
    sel = AffinitySelector.parse({"matchLabels": {"app": "web"}, "matchExpressions": [
        expr("tier", "NotIn", "db")]})
    assert sel.matches({"app": "web"}) and sel.matches({"app": "web", "tier": "fe"})
    assert not sel.matches({"app": "web", "tier": "db"}) and not sel.matches({})
    assert sel.describe() == "app=web, tier NotIn [db]"
    assert AffinitySelector().matches({"any": "thing"})
    # a term without a label selector selects no pod
    assert not PodAffinityTerm(topology_key="kubernetes.io/hostname").selects({"a": "b"})


@pytest.mark.parametrize(("affinity", "error"), [
    (required({"matchExpressions": [expr("zone", "In")]}),
     "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution."
     "nodeSelectorTerms[0].matchExpressions[0].values: operator In needs at least one value"),
    (required({"matchExpressions": [expr("cores", "Lt", "many")]}),
     "matchExpressions[0].values: operator Lt compares integers, 'many' is not one"),
    (required({"matchFields": [expr("metadata.labels", "In", "x")]}),
     "matchFields[0].key: only metadata.name is a node field to match, not "
     "'metadata.labels'"),
    ({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 5, "preference": {}}]}},
     "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution: must be "
     "null or a mapping, not list"),
    ({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 101, "preference": {}}]}},
     "preferredDuringSchedulingIgnoredDuringExecution[0].weight: must be within 1..100"),
    ({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}}]}},
     "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0]."
     "topologyKey: field required"),
    ({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "zone", "matchLabelKeys": ["pod-template-hash"]}]}},
     "[0].matchLabelKeys: not supported by edgefed: not implemented"),
    ({"podAffinty": {}}, "spec.affinity.podAffinty: field is not supported by edgefed "
                         "(did you mean 'podAffinity'?)"),
])
def test_bad_affinity_names_the_dotted_field(affinity: dict[str, Any], error: str) -> None:
    raw = {"containers": [{"name": "c", "image": "busybox"}], "affinity": affinity}
    with pytest.raises(Exception, match=None) as info:
        PodSpec.parse(raw, "spec")
    assert error in str(info.value)


def test_affinity_round_trips_through_dump() -> None:
    s = spec(required({"matchExpressions": [expr("zone", "In", "a")]}))
    assert PodSpec.parse(s.dump()) == s
    assert s.dump()["affinity"] == required({"matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["a"]}]})


# -- node affinity in the scheduler ---------------------------------------------------


def test_required_node_affinity_filters_with_its_reason() -> None:
    s = Scheduler()
    pod = spec(required({"matchExpressions": [expr("zone", "In", "a", "b")]}))
    nodes = [node("n1", zone="c"), node("n2", zone="b"), node("n3")]
    assert s.schedule(pod, nodes).node == "n2"
    d = s.schedule(pod, [nodes[0], nodes[2]])
    assert d.node is None
    assert d.message == "0/2 nodes available: 2 node affinity mismatch (zone In [a, b])"
    assert s.check(pod, nodes[0]) == "node affinity mismatch (zone In [a, b])"
    # a DaemonSet pod belongs only where its required node affinity admits it
    assert not s.placeable(pod, nodes[0]) and s.placeable(pod, nodes[1])


def test_preferred_node_affinity_outweighs_headroom() -> None:
    pod = spec({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 10, "preference": {"matchExpressions": [expr("disk", "In", "ssd")]}},
        {"weight": 90, "preference": {"matchExpressions": [expr("zone", "In", "x")]}}]}})
    busy = NodeView(name="busy", labels={"zone": "x"},
                    allocatable={"cpu": 4000, "memory": 8 * GI, "pods": 110},
                    requested={"cpu": 3000, "memory": 6 * GI})
    assert Scheduler().schedule(pod, [node("idle", disk="ssd"), busy]).node == "busy"


def test_pods_without_affinity_skip_the_affinity_parts() -> None:
    s = Scheduler()
    from cloudcore.scheduler.core import node_affinity, pod_affinity
    assert node_affinity in s.filters and pod_affinity in s.filters
    assert node_affinity not in s._plain_filters and pod_affinity not in s._plain_filters
    # and their decision and message are what they were
    d = s.schedule(spec(), [node("a"), node("b")])
    assert d.node == "a" and "highest score 250.0" in d.message


# -- inter-pod affinity ----------------------------------------------------------------


def anti(selector: dict[str, str], key: str = "kubernetes.io/hostname") -> dict[str, Any]:
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": selector}, "topologyKey": key}]}}


def near(selector: dict[str, str], key: str = "kubernetes.io/hostname") -> dict[str, Any]:
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": selector}, "topologyKey": key}]}}


NODES = {"a": {"kubernetes.io/hostname": "a", "zone": "z1"},
         "b": {"kubernetes.io/hostname": "b", "zone": "z1"},
         "c": {"kubernetes.io/hostname": "c", "zone": "z2"}}


def topo(pod: PodSpec, placed: list[Placed], *, labels: dict[str, str] | None = None,
         namespace: str = "default",
         namespaces: dict[str, dict[str, str]] | None = None) -> PodTopology | None:
    return topology_of(namespace=namespace, name="new", labels=labels or {"app": "web"},
                       affinity=pod.affinity, placed=lambda: placed,
                       anti_placed=[p for p in placed if p.affinity is not None
                                    and p.affinity.required_anti()],
                       node_labels=NODES.get, namespace_labels=lambda: namespaces or {})


def views(t: PodTopology | None) -> list[NodeView]:
    return [NodeView(name=n, labels=labels, pod_topology=t,
                     allocatable={"cpu": 4000, "memory": 8 * GI, "pods": 110})
            for n, labels in NODES.items()]


def test_anti_affinity_on_the_hostname_keeps_replicas_apart() -> None:
    pod = spec(anti({"app": "web"}))
    placed = [Placed("default", "web-0", {"app": "web"}, "a"),
              Placed("other", "web-x", {"app": "web"}, "b")]  # another namespace: not seen
    t = topo(pod, placed)
    assert t is not None
    assert t.refuses("a", NODES["a"]) == "pod anti-affinity: app=web already on the node"
    assert t.refuses("b", NODES["b"]) is None
    d = Scheduler().schedule(pod, views(t))
    assert d.node == "b"
    full = topo(pod, [*placed, Placed("default", "web-1", {"app": "web"}, "b"),
                      Placed("default", "web-2", {"app": "web"}, "c")])
    d = Scheduler().schedule(pod, views(full))
    assert d.node is None
    assert d.message == ("0/3 nodes available: 3 pod anti-affinity: app=web already on "
                         "the node")


def test_any_node_label_is_a_topology_domain() -> None:
    pod = spec(anti({"app": "web"}, key="zone"))
    t = topo(pod, [Placed("default", "web-0", {"app": "web"}, "a")])
    assert t is not None
    assert t.refuses("b", NODES["b"]) == "pod anti-affinity: app=web already in zone=z1"
    assert Scheduler().schedule(pod, views(t)).node == "c"


def test_required_pod_affinity_and_the_first_pod_of_a_group() -> None:
    pod = spec(near({"app": "db"}))
    t = topo(pod, [Placed("default", "db-0", {"app": "db"}, "c")])
    assert Scheduler().schedule(pod, views(t)).node == "c"
    assert t is not None and t.refuses("a", NODES["a"]) == "pod affinity: no app=db on the node"
    # no db anywhere: a pod that is not a db waits ...
    t = topo(pod, [])
    d = Scheduler().schedule(pod, views(t))
    assert d.node is None and d.message == ("0/3 nodes available: 3 pod affinity: no app=db "
                                            "on the node")
    # ... but the first db of a group that wants to be near dbs goes anywhere
    assert Scheduler().schedule(pod, views(topo(pod, [], labels={"app": "db"}))).node == "a"


def test_a_placed_pods_anti_affinity_is_symmetric() -> None:
    loner = spec(anti({"app": "web"}))
    placed = [Placed("default", "loner", {"app": "solo"}, "a", affinity=loner.affinity)]
    plain = spec()  # no affinity of its own
    t = topo(plain, placed)
    assert t is not None
    assert t.refuses("a", NODES["a"]) == "pod anti-affinity: a pod on the node refuses app=web"
    assert Scheduler().schedule(plain, views(t)).node == "b"
    # a pod it does not select is not concerned at all
    assert topo(plain, placed, labels={"app": "other"}) is None


def test_namespaces_and_namespace_selector() -> None:
    term = {"labelSelector": {"matchLabels": {"app": "web"}},
            "topologyKey": "kubernetes.io/hostname"}
    placed = [Placed("blue", "w", {"app": "web"}, "a"), Placed("green", "w", {"app": "web"}, "b")]
    by_name = spec({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {**term, "namespaces": ["blue"]}]}})
    t = topo(by_name, placed)
    assert t is not None and t.refuses("a", NODES["a"]) and not t.refuses("b", NODES["b"])
    by_labels = spec({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {**term, "namespaceSelector": {"matchLabels": {"team": "g"}}}]}})
    t = topo(by_labels, placed, namespaces={"blue": {}, "green": {"team": "g"}})
    assert t is not None and not t.refuses("a", NODES["a"]) and t.refuses("b", NODES["b"])
    everywhere = spec({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {**term, "namespaceSelector": {}}]}})
    t = topo(everywhere, placed)
    assert t is not None and t.refuses("a", NODES["a"]) and t.refuses("b", NODES["b"])


def test_preferred_pod_affinity_and_anti_affinity_score() -> None:
    pod = spec({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"app": "cache"}},
                        "topologyKey": "kubernetes.io/hostname"}}]},
                "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "podAffinityTerm": {
                        "labelSelector": {"matchLabels": {"app": "web"}},
                        "topologyKey": "kubernetes.io/hostname"}}]}})
    t = topo(pod, [Placed("default", "cache", {"app": "cache"}, "b"),
                   Placed("default", "web-0", {"app": "web"}, "a"),
                   Placed("default", "web-1", {"app": "web"}, "b")])
    assert t is not None
    assert (t.score("a", NODES["a"]), t.score("b", NODES["b"]), t.score("c", NODES["c"])) == (
        25.0, 50.0, 50.0)
    # b (cache, web) and c (nothing) tie on affinity; no hard refusal anywhere
    assert Scheduler().schedule(pod, views(t)).node in ("b", "c")


# -- a fleet placing by affinity -------------------------------------------------------


def apply(fleet: Any, *docs: dict[str, Any]) -> None:
    fleet.apply([parse_object(d) for d in docs])


def test_deployment_replicas_spread_by_anti_affinity_and_wait_for_a_node() -> None:
    fleet = make_fleet()
    for n in ("a", "b"):
        add_node(fleet, n, memory=8 * GI)
    dep = deployment(replicas=3)
    dep["spec"]["template"]["spec"]["affinity"] = anti({"app": "web"})
    apply(fleet, dep)
    placed = sorted(str(p.status.node_name) for p in fleet.pods.values()
                    if p.status.reason == "Scheduled")
    assert placed == ["a", "b"]
    (pending,) = [p for p in fleet.pods.values() if p.status.reason == "Unschedulable"]
    assert pending.status.message == ("0/2 nodes available: 2 pod anti-affinity: app=web "
                                      "already on the node")
    add_node(fleet, "c", memory=8 * GI)
    assert sorted(str(p.status.node_name) for p in fleet.pods.values()) == ["a", "b", "c"]
    # a plain pod that the replicas' anti-affinity selects finds no node (symmetry)
    apply(fleet, {"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "intruder", "labels": {"app": "web"}},
                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    msg = fleet.pods[("default", "intruder")].status.message
    assert msg == "0/3 nodes available: 3 pod anti-affinity: a pod on the node refuses app=web"


def test_node_affinity_places_a_bare_pod_and_keeps_one_pending() -> None:
    fleet = make_fleet()
    add_node(fleet, "a", labels={"disk": "hdd"})
    add_node(fleet, "b", labels={"disk": "ssd"})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fast"},
           "spec": {"containers": [{"name": "c", "image": "busybox"}],
                    "affinity": required({"matchExpressions": [expr("disk", "In", "ssd")]})}}
    apply(fleet, pod)
    assert fleet.pods[("default", "fast")].status.node_name == "b"
    pod["metadata"]["name"] = "nvme"
    pod["spec"]["affinity"] = required({"matchExpressions": [expr("disk", "In", "nvme")]})
    apply(fleet, pod)
    st = fleet.pods[("default", "nvme")].status
    assert (st.reason, st.message) == (
        "Unschedulable", "0/2 nodes available: 2 node affinity mismatch (disk In [nvme])")


def test_daemonset_only_on_nodes_its_required_node_affinity_admits() -> None:
    fleet = make_fleet()
    add_node(fleet, "a")
    add_node(fleet, "b")
    # node-role labels are the cloud's to set (a node cannot label itself into a role)
    apply(fleet, {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "a", "labels": {"node-role.kubernetes.io/edge": ""}}})
    ds = daemonset()
    ds["spec"]["template"]["spec"]["affinity"] = required(
        {"matchExpressions": [expr("node-role.kubernetes.io/edge", "Exists")]})
    apply(fleet, ds)
    assert sorted(k[1] for k in fleet.pods) == ["agent-a"]
    # a node labelled into the term gets its pod; labelled out, loses it
    apply(fleet, {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": "b", "labels": {"node-role.kubernetes.io/edge": "yes"}}})
    assert sorted(k[1] for k in fleet.pods) == ["agent-a", "agent-b"]
    apply(fleet, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "a", "labels": {}}})
    assert sorted(k[1] for k in fleet.pods) == ["agent-b"]


def test_daemonset_pods_respect_pod_anti_affinity_per_node() -> None:
    """A DaemonSet pod is checked on its one node: its hostname anti-affinity reads that
    node's pods; a placed pod's anti-affinity keeps the DaemonSet's pod off its node (and
    its leaving lets it in)."""
    fleet = make_fleet()
    for n in ("a", "b", "c"):
        add_node(fleet, n)
    noisy = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "noisy", "labels": {"app": "noisy"}},
             "spec": {"nodeName": "b", "containers": [{"name": "c", "image": "busybox"}]}}
    apply(fleet, noisy)
    ds = daemonset("quiet")
    ds["spec"]["template"]["spec"]["affinity"] = anti({"app": "noisy"})
    apply(fleet, ds)
    status = {k[1]: (p.status.reason, p.status.message) for k, p in fleet.pods.items()
              if k[1].startswith("quiet-")}
    assert status["quiet-a"][0] == status["quiet-c"][0] == "Scheduled"
    assert status["quiet-b"] == ("Unschedulable", "0/1 nodes available: 1 pod anti-affinity: "
                                 "app=noisy already on the node (pod is bound to b)")
    fleet.delete("Pod", "default", "noisy")
    assert fleet.pods[("default", "quiet-b")].status.reason == "Scheduled"
    # the other way round: a placed pod refuses the DaemonSet's pods on its node only
    loner = {"apiVersion": "v1", "kind": "Pod",
             "metadata": {"name": "loner", "labels": {"app": "loner"}},
             "spec": {"nodeName": "c", "affinity": anti({"app": "agent"}),
                      "containers": [{"name": "c", "image": "busybox"}]}}
    fleet.delete("DaemonSet", "default", "quiet")
    apply(fleet, loner)
    assert fleet.pods[("default", "loner")].status.reason == "Scheduled"
    apply(fleet, daemonset())
    status = {k[1]: p.status.reason for k, p in fleet.pods.items() if k[1].startswith("agent-")}
    assert status == {"agent-a": "Scheduled", "agent-b": "Scheduled",
                      "agent-c": "Unschedulable"}
    msg = fleet.pods[("default", "agent-c")].status.message
    assert msg == ("0/1 nodes available: 1 pod anti-affinity: a pod on the node refuses "
                   "app=agent (pod is bound to c)")


def test_the_published_malformed_node_affinity_example_is_refused_with_the_shape() -> None:
    """kubernetes/website's pod-with-node-affinity.yaml at the corpus' commit gives
    `requiredDuringScheduling...` a list of preferred-style terms: refused (as kubectl
    would), naming the field and the shape it takes."""
    from shared.problems import problems_of

    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "c", "image": "busybox"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 5, "preference": {"matchExpressions": [expr("zone", "In", "a")]}}]}}}}
    (problem,) = problems_of(doc)
    assert problem.field == ("spec.affinity.nodeAffinity."
                             "requiredDuringSchedulingIgnoredDuringExecution")
    assert problem.reason == "must be null or a mapping, not list"
    assert "nodeSelectorTerms" in problem.alternative and not problem.planned
