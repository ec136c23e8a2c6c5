"""Scheduler filters, scores and the reasons it gives."""

from __future__ import annotations

import dataclasses
import math

import pytest

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


def test_right_sizing_admits_by_forecast_on_trusted_nodes_only() -> None:
    full = {"cpu": 3800, "memory": 7 * GI, "pods": 5}  # requests leave 200m
    quiet = {"cpu_p50": 0.3, "cpu_p90": 0.35, "mem_p50": 0.4, "mem_p90": 0.45}
    pod = spec(resources={"requests": {"cpu": "1", "memory": "1Gi"}})
    trusted = node("t", requested=full, forecast={**quiet, "trusted": 1.0})
    untrusted = node("u", requested=full, forecast={**quiet, "trusted": 0.0})
    rs = Scheduler.right_sizing(safety=0.05, overcommit=math.inf, by_usage=False)
    assert Scheduler().check(pod, trusted) == "insufficient cpu"  # requests mode
    assert rs.check(pod, trusted) is None  # 35 % + 5 % + 25 % of the cpu fits
    assert rs.check(pod, untrusted) == "insufficient cpu"  # falls back to requests
    assert rs.check(pod, node("n", requested=full)) == "insufficient cpu"  # no forecast
    # the request-only resources still count on a trusted node
    no_slot = node("p", requested={**full, "pods": 110}, forecast={**quiet, "trusted": 1.0})
    assert rs.check(pod, no_slot) == "insufficient pods"
    hot = node("h", forecast={**quiet, "cpu_p90": 0.75, "trusted": 1.0})
    assert rs.check(pod, hot) == "right-sized over capacity (cpu p90 75% + 5% safety)"
    assert rs.check(pod, hot, daemon=True) is None  # a DaemonSet pod: requests only


def test_right_sizing_counts_pods_placed_since_the_forecast() -> None:
    now = [1000.0]
    rs = Scheduler.right_sizing(safety=0.05, overcommit=math.inf, by_usage=False,
                                clock=lambda: now[0])
    fc = {"cpu_p50": 0.2, "cpu_p90": 0.25, "mem_p50": 0.1, "mem_p90": 0.1, "trusted": 1.0}
    n = node("t", requested={"cpu": 4000, "memory": 0, "pods": 1}, forecast=fc)
    pod = spec(resources={"requests": {"cpu": "1"}})
    placed = [rs.schedule(pod, [n]).node for _ in range(4)]
    assert placed == ["t", "t", None, None]  # 25 % + 5 % + 2 x 25 % fits, a third does not
    rs.forecast_made({"t": now[0] + 60})  # a forecast that has seen them
    assert rs.schedule(pod, [n]).node == "t"
    with pytest.raises(ValueError, match="safety"):
        Scheduler.right_sizing(safety=0.9)


def test_right_sizing_overcommit_caps_a_trusted_nodes_requests() -> None:
    quiet = {"cpu_p50": 0.2, "cpu_p90": 0.25, "mem_p50": 0.2, "mem_p90": 0.25, "trusted": 1.0}
    pod = spec(resources={"requests": {"cpu": "1", "memory": "1Gi"}})
    # requests already at 100 % of the cpu: the forecast has room (25 % + 5 % + 25 %)
    full = node("t", requested={"cpu": 4000, "memory": GI, "pods": 4}, forecast=quiet)
    uncapped = Scheduler.right_sizing(safety=0.05, overcommit=math.inf, by_usage=False)
    assert uncapped.check(pod, full) is None  # no cap
    capped = Scheduler.right_sizing(safety=0.05, overcommit=0.25, by_usage=False)
    assert capped.check(pod, full) is None  # 5 cpu of requests on 4 = 125 %: at the cap
    over = node("o", requested={"cpu": 4001, "memory": GI, "pods": 4}, forecast=quiet)
    assert capped.check(pod, over) == "right-sized over capacity (cpu requests over 125%)"
    # an untrusted node is by requests, whatever the cap
    untrusted = node("u", requested={"cpu": 4000, "memory": GI, "pods": 4},
                     forecast={**quiet, "trusted": 0.0})
    assert capped.check(pod, untrusted) == "insufficient cpu"
    with pytest.raises(ValueError, match="overcommit"):
        Scheduler.right_sizing(overcommit=-0.1)


def test_right_sizing_by_usage_counts_pods_at_what_the_nodes_pods_use() -> None:
    # the node's pods requested 3 cpu and use (p90) 1.2 of its 4: 40 % of their requests
    fc = {"cpu_p50": 0.25, "cpu_p90": 0.3, "mem_p50": 0.1, "mem_p90": 0.1, "trusted": 1.0}
    n = node("t", requested={"cpu": 3000, "memory": GI, "pods": 3}, forecast=fc)
    pod = spec(resources={"requests": {"cpu": "3"}})
    whole = Scheduler.right_sizing(safety=0.05, overcommit=math.inf, by_usage=False)
    assert whole.check(pod, n) == "right-sized over capacity (cpu p90 30% + 5% safety)"
    by_use = Scheduler.right_sizing(safety=0.05, overcommit=math.inf, by_usage=True)
    assert by_use.check(pod, n) is None  # 30 % + 5 % + 0.4 x 75 % fits
    from cloudcore.scheduler.core import usage_per_request
    assert usage_per_request(n, "cpu") == pytest.approx(0.4)
    assert usage_per_request(node("e", forecast=fc), "cpu") == 1.0  # nothing requested
    # never below the floor, never above 1
    busy = node("b", requested={"cpu": 1000, "memory": GI, "pods": 1}, forecast=fc)
    assert usage_per_request(busy, "cpu") == 1.0


def test_right_sizing_requests_floor_never_refuses_what_requests_admit() -> None:
    # a hot trusted node (p90 75 %) with 2 cpu of its 4 requested: requests admit 1 cpu
    hot = {"cpu_p50": 0.7, "cpu_p90": 0.75, "mem_p50": 0.1, "mem_p90": 0.1, "trusted": 1.0}
    n = node("h", requested={"cpu": 2000, "memory": GI, "pods": 2}, forecast=hot)
    pod = spec(resources={"requests": {"cpu": "1"}})
    plain = Scheduler.right_sizing(safety=0.1, overcommit=0.3, by_usage=False)
    assert plain.check(pod, n) == "right-sized over capacity (cpu p90 75% + 10% safety)"
    floored = Scheduler.right_sizing(safety=0.1, overcommit=0.3, by_usage=False,
                                     requests_floor=True)
    assert floored.check(pod, n) is None  # within requests: admitted as requests would
    # past its requests the forecast still decides, and the cap still applies
    full = node("f", requested={"cpu": 3500, "memory": GI, "pods": 3}, forecast=hot)
    assert floored.check(pod, full) == "right-sized over capacity (cpu p90 75% + 10% safety)"
    quiet = {**hot, "cpu_p50": 0.2, "cpu_p90": 0.25}
    capped = node("c", requested={"cpu": 4800, "memory": GI, "pods": 5}, forecast=quiet)
    assert floored.check(pod, capped) == "right-sized over capacity (cpu requests over 130%)"
    assert floored.check(pod, dataclasses.replace(capped, requested={
        "cpu": 3500, "memory": GI, "pods": 5})) is None  # 25 % + 10 % + 25 % fits
    # an untrusted node: requests, as before
    assert floored.check(pod, dataclasses.replace(full, forecast={**hot, "trusted": 0.0})) \
        == "insufficient cpu"


def test_right_sizing_overcommit_safety_asks_more_room_only_past_requests() -> None:
    # a trusted node at p90 60 %: within its requests the plain p90 check decides,
    # past them the node must be cool by the extra safety too
    fc = {"cpu_p50": 0.55, "cpu_p90": 0.6, "mem_p50": 0.1, "mem_p90": 0.1, "trusted": 1.0}
    pod = spec(resources={"requests": {"cpu": "500m"}})
    within = node("w", requested={"cpu": 3000, "memory": GI, "pods": 3}, forecast=fc)
    past = node("p", requested={"cpu": 3800, "memory": GI, "pods": 3}, forecast=fc)
    plain = Scheduler.right_sizing(safety=0.0, overcommit=0.2, by_usage=False)
    extra = Scheduler.right_sizing(safety=0.0, overcommit=0.2, by_usage=False,
                                   overcommit_safety=0.3)
    assert plain.check(pod, within) is None and extra.check(pod, within) is None
    assert plain.check(pod, past) is None  # 60 % + 12.5 % fits
    assert extra.check(pod, past) == "right-sized over capacity (cpu p90 60% + 30% safety)"
    cool = dataclasses.replace(past, forecast={**fc, "cpu_p90": 0.5})
    assert extra.check(pod, cool) is None  # 50 % + 30 % + 12.5 % fits
    with pytest.raises(ValueError, match="overcommit safety"):
        Scheduler.right_sizing(overcommit_safety=0.8)


def test_host_ports_are_a_constraint_per_node_and_protocol() -> None:
    web = spec(containers=[{"name": "c", "image": "busybox",
                            "ports": [{"containerPort": 80, "hostPort": 5000}]}])
    s = Scheduler()
    assert s.check(web, node("a", host_ports=frozenset({("TCP", 5000)}))) == \
        "host port 5000/TCP in use"
    assert s.check(web, node("a", host_ports=frozenset({("UDP", 5000)}))) is None
    assert s.check(web, node("a", host_ports=frozenset({("TCP", 80)}))) is None
    # with hostNetwork a containerPort is a port of the node
    hn = spec(hostNetwork=True, containers=[{"name": "c", "image": "busybox",
                                             "ports": [{"containerPort": 80}]}])
    assert hn.host_ports() == frozenset({("TCP", 80)})
    d = s.schedule(hn, [node("a", host_ports=frozenset({("TCP", 80)})), node("b")])
    assert d.node == "b"
    d = s.schedule(web, [node("a", host_ports=frozenset({("TCP", 5000)}))])
    assert d.message == "0/1 nodes available: 1 host port 5000/TCP in use"
