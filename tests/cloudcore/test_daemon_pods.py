"""DaemonSet pods kept as compact records (`DaemonPod`, proposal 0004, issue 13): what
the API, the store, the desired sets and the events show is what full `Pod` objects
gave, through applies, placement, reports, rollouts, NotReady nodes and a restart."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cloudcore_fakes import FakeStore, add_node, daemonset, make_fleet

from cloudcore.api.listcache import ListCache
from cloudcore.fleet import Fleet, rollout
from cloudcore.fleet.naming import SCHEDULED
from cloudcore.fleet.objects import dump_object, include_fields, record_of
from cloudcore.fleet.template import DaemonPod, Template, with_annotation
from cloudcore.fleet.workloads import Workloads
from shared.entries import pod_key
from shared.models import Pod, parse_object


def full_pod(self: Template, *, ns: str, name: str, owner: str, node: str) -> Pod:
    """What `Template.pod` made for a DaemonSet's pod before the compact records."""
    pod = Pod.model_validate({"metadata": {"name": name, "namespace": ns, "labels": {},
                                           "annotations": {}},
                              "spec": self.spec_on(node)})
    pod.metadata.__dict__.update(labels=self.labels, annotations=self.annotations(owner))
    return pod


def staged(args: list[str], *, selector: dict[str, str] | None = None) -> dict[str, Any]:
    doc = daemonset(args=args, node_selector=selector)
    doc["spec"]["updateStrategy"] = {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxUnavailable": 1},
                                     "failureThreshold": 0, "autoRollback": True}
    return doc


def report(fleet: Fleet, node: str, *, ready: bool = True) -> None:
    """The node's agent reports its DaemonSet pod at the revision its desired set holds."""
    for key, (value, _) in fleet.desired[node].items.items():
        fleet.pod_statuses(node, {key: {
            "phase": "Running", "revision": value["revision"], "ready": ready,
            "containerStatuses": [{"name": "main", "state": "running", "ready": ready}]}})


def story(fleet: Fleet, store: FakeStore) -> list[Any]:
    """Apply, place, report, relabel, roll out, lose a node, restart: what is shown after
    each step (pods as the API dumps them, the desired sets, the events)."""
    seen: list[Any] = []

    def look(f: Fleet) -> None:
        seen.append(shown(f))

    for n in ("n1", "n2", "n3"):
        add_node(fleet, n, labels={"role": "edge"})
    add_node(fleet, "n4", labels={"role": "core"})
    fleet.apply([parse_object(staged(["v1"], selector={"role": "edge"}))])
    look(fleet)
    for n in ("n1", "n2", "n3"):
        report(fleet, n)
    fleet.expire(0.0)
    look(fleet)
    fleet.node_status("n3", {"labels": {"role": "core"}})  # its pod goes
    fleet.node_status("n4", {"labels": {"role": "edge"}})  # it gets one
    fleet.commit()
    look(fleet)
    fleet.apply([parse_object(staged(["v2"], selector={"role": "edge"}))])  # a rollout
    for _ in range(4):
        for n in ("n1", "n2", "n4"):
            report(fleet, n)
        fleet.expire(0.0)
        look(fleet)
    fleet.mark_not_ready("n2", reason="NodeStatusUnknown", message="no report")
    fleet.expire(0.0)
    look(fleet)
    records: dict[str, dict[str, Any]] = {}
    for (db, key), value in store.data.items():
        records.setdefault(db, {})[key] = value
    again = make_fleet(FakeStore())
    again.load(records)
    seen.append(shown(again))
    seen.append(sum(isinstance(p, DaemonPod) for p in again.pods.values()))
    return seen


def shown(fleet: Fleet) -> dict[str, Any]:
    uids = {key: pod.metadata.uid for key, pod in fleet.pods.items()}

    def same_uids(text: str) -> str:  # uids are random: named by their pod
        for key, uid in uids.items():
            if uid:
                text = text.replace(uid, f"uid-of-{key[1]}")
        return text

    pods = {f"{k[0]}/{k[1]}": dump_object(p) for k, p in sorted(fleet.pods.items())}
    desired = {n: nd.values() for n, nd in sorted(fleet.desired.items())}
    events = [(e["reason"], e["object"], e["message"]) for e in fleet.events.list()]
    status = fleet.get("DaemonSet", "default", "agent").get("status")
    return json.loads(same_uids(json.dumps([pods, desired, events, status], sort_keys=True)))


def test_daemonset_pods_are_compact_and_show_what_full_pods_showed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    compact_store = FakeStore()
    compact = story(make_fleet(compact_store), compact_store)
    with monkeypatch.context() as m:
        m.setattr(Template, "daemon_pod", full_pod)
        m.setattr(Workloads, "compact", lambda self: 0)
        full_store = FakeStore()
        full = story(make_fleet(full_store), full_store)
    assert compact[:-1] == full[:-1]
    assert full[-1] == 0 and compact[-1] == 3  # a restart compacts the loaded pods again
    # the story did move: reported, rolled out to v2, a node lost
    pods = compact[-3][0]
    assert {p["spec"]["nodeName"] for p in pods.values()} == {"n1", "n2", "n4"}
    assert all(p["spec"]["containers"][0]["args"] == ["v2"] for p in pods.values())
    assert pods["default/agent-n2"]["status"]["ready"] is False


def test_a_compact_pod_materialises_as_its_pod_everywhere() -> None:
    fleet = make_fleet()
    add_node(fleet, "n1")
    fleet.apply([parse_object(daemonset())])
    key = ("default", "agent-n1")
    rec = fleet.pods[key]
    assert isinstance(rec, DaemonPod)
    pod = rec.materialise()
    assert isinstance(pod, Pod) and pod == rec and rec == pod
    assert pod.metadata.uid == rec.metadata.uid is not None
    assert pod.metadata.annotations[SCHEDULED] == "scheduled on n1: bound by spec.nodeName"
    assert record_of(rec) == record_of(pod)
    assert Pod.model_validate(record_of(rec)) == pod
    assert fleet.get("Pod", "default", "agent-n1") == dump_object(pod)
    assert fleet.list("Pod") == [dump_object(pod)]
    lists = ListCache(fleet.objects)
    assert json.loads(lists.encoded("Pod", key)) == dump_object(pod)
    fields = ("metadata.name", "status.phase")
    assert lists.encoded("Pod", key, fields) == Pod.__pydantic_serializer__.to_json(
        pod, include=include_fields(Pod, fields), by_alias=True, exclude_none=True)
    assert json.loads(lists.encoded("Pod", key, fields)) == {
        "metadata": {"name": "agent-n1"}, "status": {"phase": "Pending"}}
    pod.metadata.annotations["x"] = "y"  # the materialised pod is a copy
    assert "x" not in rec.metadata.annotations


def test_annotations_of_a_compact_pod_are_replaced_as_on_a_pod() -> None:
    fleet = make_fleet()
    add_node(fleet, "n1")
    fleet.apply([parse_object(daemonset())])
    rec = fleet.pods[("default", "agent-n1")]
    assert isinstance(rec, DaemonPod)
    assert rec.own is None and rec.scheduled is not None  # the template's + SCHEDULED
    with_annotation(rec, SCHEDULED, "elsewhere")
    assert rec.own is None and rec.metadata.annotations[SCHEDULED] == "elsewhere"
    with_annotation(rec, "team", "a")  # one of its own: kept whole
    assert rec.own is not None
    assert rec.metadata.annotations["team"] == "a"
    assert rec.metadata.annotations[SCHEDULED] == "elsewhere"
    assert rec.materialise().metadata.annotations == rec.metadata.annotations


def test_status_passes_of_several_workloads_share_one_chunk_a_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten DaemonSets over 100,000 nodes each with a status pass under way made a tick
    (and so an apply call) of 50,000 pods: the passes now share SCAN_CHUNK pods a tick,
    one after another, and each status still counts every pod."""
    monkeypatch.setattr(rollout, "SCAN_CHUNK", 3)
    fleet = make_fleet()
    for i in range(5):
        add_node(fleet, f"n{i}")
    scans: list[int] = []
    real = fleet.rollouts._scan

    def counting(*a: Any, **kw: Any) -> Any:
        scans.append(len(a[3]))
        return real(*a, **kw)

    monkeypatch.setattr(fleet.rollouts, "_scan", counting)
    fleet.apply([parse_object(daemonset("a")), parse_object(daemonset("b"))])
    assert sum(scans) <= 3  # the apply's own tick too
    ticks = 0
    while any(fleet.daemonsets[("default", n)].status is None
              or fleet.daemonsets[("default", n)].status.desired_number_scheduled != 5
              for n in ("a", "b")):
        before = len(scans)
        fleet.expire(0.0)
        assert sum(scans[before:]) <= 3
        ticks += 1
        assert ticks < 10
    assert sum(scans) == 10  # every pod of both, once


def test_a_node_deleted_takes_its_compact_pods(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = make_fleet()
    for n in ("n1", "n2"):
        add_node(fleet, n)
    fleet.apply([parse_object(daemonset())])
    fleet.delete("Node", None, "n1")
    assert set(fleet.pods) == {("default", "agent-n2")}
    assert pod_key("default", "agent-n2") in fleet.desired["n2"].items


def test_a_status_pass_waits_for_the_next_tick_once_the_time_is_spent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A tick looks at pods for SCAN_BUDGET_S at most (CALL_SCAN_BUDGET_S in an API
    call): with none left, a big workload's pass makes no progress that tick, and it
    completes on later ticks."""
    monkeypatch.setattr(rollout, "SCAN_CHUNK", 3)
    monkeypatch.setattr(rollout, "SCAN_STEP", 1)
    monkeypatch.setattr(rollout, "SCAN_BUDGET_S", -1.0)  # spent before it starts
    monkeypatch.setattr(rollout, "CALL_SCAN_BUDGET_S", -1.0)  # also in the apply
    fleet = make_fleet()
    for i in range(5):
        add_node(fleet, f"n{i}")
    scans: list[int] = []
    real = fleet.rollouts._scan

    def counting(*a: Any, **kw: Any) -> Any:
        scans.append(len(a[3]))
        return real(*a, **kw)

    monkeypatch.setattr(fleet.rollouts, "_scan", counting)
    fleet.apply([parse_object(daemonset("a"))])
    fleet.expire(0.0)
    assert scans == [] and fleet.daemonsets[("default", "a")].status is None
    monkeypatch.setattr(rollout, "SCAN_BUDGET_S", 10.0)
    fleet.expire(0.0)
    assert scans == [1, 1, 1]  # SCAN_STEP at a time, SCAN_CHUNK in all
    fleet.expire(0.0)
    assert fleet.daemonsets[("default", "a")].status.desired_number_scheduled == 5


def test_an_apply_leaves_other_status_passes_to_the_periodic_tick(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The tick inside an apply looks at pods for CALL_SCAN_BUDGET_S only (issue 13
    part 3: it held the loop 30-55 ms at 100,000 nodes); the periodic tick's
    SCAN_BUDGET_S goes on with the pass."""
    monkeypatch.setattr(rollout, "SCAN_CHUNK", 3)
    monkeypatch.setattr(rollout, "SCAN_STEP", 1)
    monkeypatch.setattr(rollout, "SCAN_BUDGET_S", 10.0)
    monkeypatch.setattr(rollout, "CALL_SCAN_BUDGET_S", -1.0)
    fleet = make_fleet()
    for i in range(5):
        add_node(fleet, f"n{i}")
    scans: list[int] = []
    real = fleet.rollouts._scan

    def counting(*a: Any, **kw: Any) -> Any:
        scans.append(len(a[3]))
        return real(*a, **kw)

    monkeypatch.setattr(fleet.rollouts, "_scan", counting)
    fleet.apply([parse_object(daemonset("a"))])
    fleet.apply([parse_object(daemonset("b"))])  # its call's tick: no time for a's pass
    assert scans == []
    fleet.expire(0.0)
    assert scans == [1, 1, 1]  # the periodic tick: SCAN_CHUNK pods
    fleet.expire(0.0)
    assert fleet.daemonsets[("default", "a")].status.desired_number_scheduled == 5
