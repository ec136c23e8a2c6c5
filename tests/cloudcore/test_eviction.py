"""Eviction of Deployment replicas from long-NotReady nodes, with an injected clock."""

from __future__ import annotations

from typing import Any

import pytest
from cloudcore_fakes import add_node, daemonset, deployment, make_fleet

from cloudcore.__main__ import parse_args
from cloudcore.config import Settings
from cloudcore.errors import ConfigError
from cloudcore.fleet import Fleet
from cloudcore.fleet.eviction import NOT_READY, UNREACHABLE, toleration_seconds
from shared.entries import pod_key
from shared.models import Toleration, parse_object


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def fleet_with(nodes: tuple[str, ...] = ("n1", "n2")) -> tuple[Fleet, Clock]:
    fleet = make_fleet()
    clock = Clock()
    fleet.eviction.clock = clock
    for n in nodes:
        add_node(fleet, n)
    return fleet, clock


def apply(fleet: Fleet, *docs: dict[str, Any]) -> None:
    fleet.apply([parse_object(d) for d in docs])


def where(fleet: Fleet, name: str) -> str | None:
    return fleet.bound.get(("default", name))


def cut(fleet: Fleet, node: str) -> None:
    fleet.mark_not_ready(node, reason="NodeLinkLost", message="test")


def with_tolerations(doc: dict[str, Any], tols: list[dict[str, Any]]) -> dict[str, Any]:
    doc["spec"]["template"]["spec"]["tolerations"] = tols
    return doc


def test_replicas_move_only_after_the_default_toleration() -> None:
    fleet, clock = fleet_with()
    apply(fleet, deployment(replicas=2), daemonset())
    on_n1 = sorted(k[1] for k in fleet.placement.on_node("n1") if k[1].startswith("web-"))
    assert on_n1, "the scheduler put no replica on n1"
    gen1 = fleet.desired["n1"].gen
    cut(fleet, "n1")

    clock.t += 299
    assert fleet.eviction.run() == 0
    assert all(where(fleet, p) == "n1" for p in on_n1)

    clock.t += 2
    assert fleet.eviction.run() == len(on_n1)
    for p in on_n1:
        assert where(fleet, p) == "n2"
        assert pod_key("default", p) not in fleet.desired["n1"].items  # n1 will stop it
        assert pod_key("default", p) in fleet.desired["n2"].items
    assert fleet.desired["n1"].gen == gen1 + 1
    assert where(fleet, "agent-n1") == "n1"  # the DaemonSet pod stays
    events = fleet.events.list(obj=f"pod/default/{on_n1[0]}")
    assert any(e["reason"] == "Evicted" and "moved to n2" in e["message"] for e in events)
    assert fleet.eviction.run() == 0  # nothing left to do


def test_the_liveness_tick_drives_eviction() -> None:
    fleet, clock = fleet_with()
    fleet.eviction.timeout = 10
    apply(fleet, deployment(replicas=2))
    moved = list(fleet.placement.on_node("n1"))
    cut(fleet, "n1")
    clock.t += 11
    fleet.expire(0.0)  # the hub calls this every liveness interval
    assert moved and all(fleet.bound[k] == "n2" for k in moved)


def test_node_back_in_time_keeps_its_pods() -> None:
    fleet, clock = fleet_with()
    apply(fleet, deployment(replicas=2))
    before = dict(fleet.bound)
    cut(fleet, "n1")
    clock.t += 200
    fleet.mark_ready("n1")
    clock.t += 200
    assert fleet.eviction.run() == 0
    cut(fleet, "n1")  # a new outage starts a new clock
    clock.t += 299
    assert fleet.eviction.run() == 0
    assert fleet.bound == before


def test_pod_tolerations_override_the_default() -> None:
    fleet, clock = fleet_with(("n1", "n2", "n3"))
    for n in ("n2", "n3"):
        fleet.patch_node(n, unschedulable=True)  # everything starts on n1
    apply(fleet,
          with_tolerations(deployment("fast", replicas=1), [
              {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
               "tolerationSeconds": 5}]),
          with_tolerations(deployment("notready", replicas=1), [
              {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute",
               "tolerationSeconds": 60}]),
          with_tolerations(deployment("forever", replicas=1), [
              {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]),
          deployment("default", replicas=1))
    assert {where(fleet, p) for p in ("fast-0", "notready-0", "forever-0", "default-0")} == {"n1"}
    for n in ("n2", "n3"):
        fleet.patch_node(n, unschedulable=False)
    cut(fleet, "n1")
    clock.t += 6
    assert fleet.eviction.run() == 1
    assert where(fleet, "fast-0") != "n1"
    clock.t += 60
    fleet.eviction.run()
    assert where(fleet, "notready-0") != "n1" and where(fleet, "default-0") == "n1"
    clock.t += 300
    fleet.eviction.run()
    assert where(fleet, "default-0") != "n1"
    clock.t += 10**6
    fleet.eviction.run()
    assert where(fleet, "forever-0") == "n1"


def test_pinned_and_bare_pods_stay() -> None:
    fleet, clock = fleet_with()
    pinned = deployment("pinned", replicas=1)
    pinned["spec"]["template"]["spec"]["nodeName"] = "n1"
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": "n1"},
                     "containers": [{"name": "main", "image": "nginx"}]}}
    apply(fleet, pinned, bare)
    assert where(fleet, "pinned-0") == "n1" and where(fleet, "bare") == "n1"
    cut(fleet, "n1")
    clock.t += 10_000
    assert fleet.eviction.run() == 0
    assert where(fleet, "pinned-0") == "n1" and where(fleet, "bare") == "n1"


def test_nowhere_to_go_keeps_the_pod_and_retries() -> None:
    fleet, clock = fleet_with(("n1",))
    apply(fleet, deployment(replicas=1))
    cut(fleet, "n1")
    clock.t += 301
    assert fleet.eviction.run() == 0
    assert where(fleet, "web-0") == "n1"  # still running there as far as we know
    blocked = [e for e in fleet.events.list(obj="pod/default/web-0")
               if e["reason"] == "EvictionBlocked"]
    assert blocked and "kept on n1" in blocked[0]["message"]
    add_node(fleet, "n2")
    clock.t += 1
    assert fleet.eviction.run() == 0  # not before retry_s
    clock.t += fleet.eviction.retry_s
    assert fleet.eviction.run() == 1
    assert where(fleet, "web-0") == "n2"


def test_a_cloud_restart_does_not_evict_in_bulk() -> None:
    fleet, clock = fleet_with()
    apply(fleet, deployment(replicas=2))
    # after a restart nodes load as Unknown: no NotReady clock runs
    for n in fleet.nodes.values():
        n.status.ready = "Unknown"
    clock.t += 10_000
    assert fleet.eviction.run() == 0


def test_deleted_node_is_forgotten() -> None:
    fleet, clock = fleet_with()
    apply(fleet, deployment(replicas=2))
    cut(fleet, "n1")
    fleet.delete("Node", None, "n1")
    clock.t += 10_000
    assert fleet.eviction.run() == 0
    assert fleet.eviction.not_ready_since("n1") is None


@pytest.mark.parametrize(("tols", "want"), [
    ([], 300.0),
    ([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
       "tolerationSeconds": 7}], 7.0),
    ([{"key": NOT_READY, "effect": "NoExecute", "tolerationSeconds": 9}], 9.0),
    ([{"key": UNREACHABLE, "effect": "NoExecute", "tolerationSeconds": 7},
      {"key": NOT_READY, "effect": "NoExecute", "tolerationSeconds": 70}], 70.0),
    ([{"key": UNREACHABLE, "effect": "NoSchedule", "tolerationSeconds": 7}], 300.0),
    ([{"key": "other", "operator": "Exists", "effect": "NoExecute",
       "tolerationSeconds": 7}], 300.0),
    ([{"operator": "Exists"}], None),
    ([{"key": UNREACHABLE, "operator": "Exists"}], None),
    ([{"key": UNREACHABLE, "effect": "NoExecute", "tolerationSeconds": -5}], 0.0),
])
def test_toleration_seconds(tols: list[dict[str, Any]], want: float | None) -> None:
    parsed = [Toleration.model_validate(t) for t in tols]
    assert toleration_seconds(parsed, 300.0) == want


def test_setting_and_flag() -> None:
    assert Settings().sync.pod_eviction_timeout == 300.0
    assert parse_args(["--pod-eviction-timeout", "30"]).sync.pod_eviction_timeout == 30.0
    s = Settings()
    s.sync.pod_eviction_timeout = -1
    with pytest.raises(ConfigError, match="pod_eviction_timeout"):
        s.validate()
