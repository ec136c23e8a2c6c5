"""Pod priority from PriorityClasses, and the one place it counts (issue 18): the order
in which replicas leave a lost node and pending pods are placed when capacity is scarce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from api_fixture import open_api
from cloudcore_fakes import FakeStore, add_node, deployment, make_fleet

from cloudcore.errors import Conflict
from cloudcore.fleet import Fleet
from shared.errors import ObjectError
from shared.models import parse_object

GI = 2**30


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def pclass(name: str, value: int, *, default: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                           "metadata": {"name": name}, "value": value}
    if default:
        doc["globalDefault"] = True
    return doc


def with_class(doc: dict[str, Any], name: str | None) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    if name is not None:
        spec["priorityClassName"] = name
    return doc


def pod(name: str, cls: str | None = None, **spec: Any) -> dict[str, Any]:
    return with_class({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"containers": [{"name": "m", "image": "busybox"}], **spec}},
                      cls)


def apply(fleet: Fleet, *docs: dict[str, Any]) -> None:
    fleet.apply([parse_object(d) for d in docs])


def test_pods_and_templates_get_their_class_value() -> None:
    fleet = make_fleet(FakeStore())
    fleet.load({})
    assert {n: c.value for n, c in fleet.objects.priorityclasses.items()} == {
        "system-node-critical": 2000001000, "system-cluster-critical": 2000000000}
    add_node(fleet, "n1")
    apply(fleet, pclass("edge-high", 1000), pod("p", "edge-high"),
          with_class(deployment("web", replicas=1), "system-node-critical"), pod("plain"))
    assert fleet.pods[("default", "p")].spec.priority == 1000
    assert fleet.deployments[("default", "web")].spec.template.spec.priority == 2000001000
    assert fleet.pods[("default", "web-0")].spec.priority == 2000001000
    assert fleet.pods[("default", "plain")].spec.priority is None
    assert fleet.get("Pod", "default", "p")["spec"]["priority"] == 1000
    # applying what get printed back is unchanged (the value equals the class's)
    again = fleet.get("Pod", "default", "p")
    assert [r.action for r in fleet.apply([parse_object(again)])] == ["unchanged"]


def test_what_admission_refuses() -> None:
    fleet = make_fleet()
    apply(fleet, pclass("low", 10))
    with pytest.raises(ObjectError, match="no PriorityClass with name nope was found") as e:
        apply(fleet, with_class(deployment("web"), "nope"))
    assert e.value.field == "spec.template.spec.priorityClassName"
    with pytest.raises(ObjectError, match=r"spec.priority: 5 differs from the value 10"):
        apply(fleet, pod("p", "low", priority=5))
    with pytest.raises(ObjectError, match="not by hand"):
        apply(fleet, pod("p", priority=5))
    with pytest.raises(ObjectError, match="may not be changed"):
        apply(fleet, pclass("low", 11))
    with pytest.raises(ObjectError, match="reserved"):
        apply(fleet, pclass("system-mine", 11))
    with pytest.raises(ObjectError, match="at most 1000000000"):
        apply(fleet, pclass("huge", 1000000001))
    apply(fleet, pclass("usual", 5, default=True))
    with pytest.raises(ObjectError, match="only one class may be globalDefault"):
        apply(fleet, pclass("other", 6, default=True))
    assert not fleet.pods and not fleet.deployments
    loaded = make_fleet(FakeStore())
    loaded.load({})
    with pytest.raises(Conflict, match="built in"):
        loaded.delete("PriorityClass", None, "system-node-critical")


def test_the_global_default_class_names_itself_on_pods_that_name_none() -> None:
    fleet = make_fleet()
    apply(fleet, pclass("usual", 7, default=True), pod("p"))
    spec = fleet.pods[("default", "p")].spec
    assert (spec.priority_class_name, spec.priority) == ("usual", 7)


def test_replicas_leave_a_lost_node_higher_priority_first() -> None:
    """Three one-replica Deployments on n1 (1 GiB each); n2 has room for one: the
    highest priority moves, whatever its name, and the others stay, blocked."""
    fleet = make_fleet()
    clock = Clock()
    fleet.eviction.clock = clock
    add_node(fleet, "n1")
    add_node(fleet, "n2", memory=int(1.5 * GI))
    fleet.patch_node("n2", unschedulable=True)  # everything starts on n1
    apply(fleet, pclass("high", 1000), pclass("mid", 500),
          with_class(deployment("a-low", replicas=1, memory="1Gi"), None),
          with_class(deployment("b-mid", replicas=1, memory="1Gi"), "mid"),
          with_class(deployment("c-high", replicas=1, memory="1Gi"), "high"))
    assert {fleet.bound[("default", f"{n}-0")] for n in ("a-low", "b-mid", "c-high")} == {"n1"}
    fleet.patch_node("n2", unschedulable=False)
    fleet.mark_not_ready("n1", reason="NodeLinkLost", message="test")
    clock.t += 301
    assert fleet.eviction.run() == 1
    assert fleet.bound[("default", "c-high-0")] == "n2"
    assert fleet.bound[("default", "a-low-0")] == fleet.bound[("default", "b-mid-0")] == "n1"
    blocked = fleet.events.list(obj="pod/default/a-low-0")
    assert any(e["reason"] == "EvictionBlocked" for e in blocked)


def test_pending_pods_are_placed_higher_priority_first() -> None:
    """Three pods wait on a cordoned node with room for one; when it is uncordoned the
    highest priority takes the room although its name sorts last."""
    fleet = make_fleet()
    add_node(fleet, "n1", memory=int(1.5 * GI))
    fleet.patch_node("n1", unschedulable=True)
    apply(fleet, pclass("high", 1000),
          _mem_pod("a", None), _mem_pod("b", None), _mem_pod("z", "high"))
    assert not fleet.bound
    fleet.patch_node("n1", unschedulable=False)
    fleet.commit()
    assert list(fleet.bound) == [("default", "z")]
    assert fleet.pods[("default", "a")].status.reason == "Unschedulable"


def _mem_pod(name: str, cls: str | None) -> dict[str, Any]:
    return pod(name, cls, containers=[{"name": "m", "image": "busybox", "resources": {
        "requests": {"memory": "1Gi"}}}])


async def test_api_serves_priority_classes(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        c = api.client
        names = [o["metadata"]["name"] for o in (await c.get("/api/v1/priorityclasses")).json()[
            "items"]]
        assert names == ["system-cluster-critical", "system-node-critical"]
        r = await c.post("/api/v1/apply", json={"documents": [pclass("edge", 100)]})
        assert r.status_code == 200, r.text
        assert (await c.get("/api/v1/priorityclasses/edge")).json()["value"] == 100
        assert (await c.delete("/api/v1/priorityclasses/system-node-critical")
                ).status_code == 409
        assert (await c.delete("/api/v1/priorityclasses/edge")).status_code == 200
        await api.store.flush()
        assert "system-node-critical" in api.store.load()["priorityclasses"]
