"""Scheduler filters, scores and the reasons it gives."""

from __future__ import annotations

from cloudcore.scheduler import NodeView, Scheduler
from shared.models import PodSpec, Taint


def spec(**kw: object) -> PodSpec:
    base: dict[str, object] = {"containers": [{"name": "c", "image": "busybox",
                                               "resources": kw.pop("resources", {})}]}
    base.update(kw)
    return PodSpec.model_validate(base)


GI = 2**30


def node(name: str, **kw: object) -> NodeView:
    kw.setdefault("allocatable", {"cpu": 4000, "memory": 8 * GI, "pods": 110})
    kw.setdefault("labels", {"kubernetes.io/arch": "amd64"})
    return NodeView(name=name, **kw)  # type: ignore[arg-type]


def test_picks_node_with_most_headroom() -> None:
    nodes = [node("a", requested={"cpu": 3000, "memory": 6 * GI}),
             node("b", requested={"cpu": 500, "memory": GI}),
             node("c", requested={"cpu": 2000, "memory": 2 * GI})]
    d = Scheduler().schedule(spec(resources={"requests": {"cpu": "100m"}}), nodes)
    assert d.node == "b"
    assert d.reason == "Scheduled"
    assert d.message.startswith("scheduled on b:")


def test_unschedulable_message_counts_reasons() -> None:
    nodes = [node("a", labels={"zone": "x"}), node("b", labels={"zone": "x"}),
             node("c", labels={"zone": "y"}, allocatable={"cpu": 4000, "memory": GI})]
    d = Scheduler().schedule(
        spec(nodeSelector={"zone": "y"}, resources={"requests": {"memory": "2Gi"}}), nodes)
    assert d.node is None
    assert d.reason == "Unschedulable"
    assert d.message == "0/3 nodes available: 2 node selector mismatch, 1 insufficient memory"


def test_taints_tolerations_unschedulable_arch_and_gpu() -> None:
    s = Scheduler()
    tainted = node("t", taints=[Taint(key="dedicated", value="db", effect="NoSchedule")])
    assert s.check(spec(), tainted) == "untolerated taint"
    tol = spec(tolerations=[{"key": "dedicated", "operator": "Equal", "value": "db",
                             "effect": "NoSchedule"}])
    assert s.check(tol, tainted) is None
    assert s.check(spec(tolerations=[{"operator": "Exists"}]), tainted) is None
    assert s.check(spec(), node("u", unschedulable=True)) == "node unschedulable"
    assert s.check(spec(), node("u", unschedulable=True), daemon=True) is None
    arm = spec(nodeSelector={"kubernetes.io/arch": "arm64"})
    assert s.check(arm, node("x")) == "arch mismatch"
    gpu = spec(resources={"limits": {"nvidia.com/gpu": 1}})
    assert s.check(gpu, node("x")) == "insufficient nvidia.com/gpu"
    with_gpu = node("g", allocatable={"cpu": 1000, "memory": GI, "nvidia.com/gpu": 1})
    assert s.check(gpu, with_gpu) is None
    used = node("g", allocatable={"nvidia.com/gpu": 1}, requested={"nvidia.com/gpu": 1})
    assert s.check(gpu, used) == "insufficient nvidia.com/gpu"
    assert s.check(spec(), node("n", ready="NotReady")) == "node not ready"
    assert s.check(spec(), node("n", ready="Unknown")) is None


def test_pod_count_capacity_and_unknown_allocatable() -> None:
    s = Scheduler()
    full = node("f", allocatable={"pods": 2}, requested={"pods": 2})
    assert s.check(spec(), full) == "insufficient pods"
    # A node that has not reported capacity is not constrained on basic resources.
    assert s.check(spec(resources={"requests": {"cpu": "8"}}), NodeView(name="n")) is None


def test_no_nodes() -> None:
    d = Scheduler().schedule(spec(), [])
    assert d.node is None
    assert "no nodes" in d.message


def test_prefer_no_schedule_is_a_score_not_a_filter() -> None:
    soft = node("a", taints=[Taint(key="k", effect="PreferNoSchedule")])
    d = Scheduler().schedule(spec(), [soft, node("b")])
    assert d.node == "b"
    assert Scheduler().schedule(spec(), [soft]).node == "a"
