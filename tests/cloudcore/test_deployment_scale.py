"""Big Deployments are scaled in the background, a bounded slice at a time, their
pending pods cost one scheduling attempt per retry, not one per pod, and their pods are
compact records (issue 16 part 4: `replicas: 100000` timed the apply out, stalled the
API for two minutes and grew cloudcore by 0.5 GB)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from cloudcore_fakes import FakeStore, add_node, deployment, make_fleet

from cloudcore.fleet import Fleet, Liveness, workloads
from cloudcore.fleet.objects import dump_object, is_daemon
from cloudcore.fleet.template import DaemonPod, Template
from cloudcore.fleet.workloads import Workloads
from cloudcore.scheduler import Scheduler
from shared.models import Pod, parse_object

NODES = 3
FIT = 110 * NODES  # add_node's nodes take 110 pods each


def fleet_of(*, background: bool) -> Fleet:
    fleet = Fleet(store=FakeStore(), scheduler=Scheduler(), background=background,
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    for i in range(NODES):
        add_node(fleet, f"n{i}")
    return fleet


@contextlib.asynccontextmanager
async def running(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fleet]:
    """A background fleet whose slices run, tiny (a few pods each)."""
    monkeypatch.setattr(workloads, "SYNC_PODS", 10)
    monkeypatch.setattr(workloads, "STEP", 3)
    fleet = fleet_of(background=True)
    task = asyncio.create_task(fleet.workloads.run_expansions(fleet.commit, budget=1e-6))
    try:
        yield fleet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def web(fleet: Fleet) -> set[str]:
    return {k[1] for k in fleet.owned_set("Deployment/default/web")}


def apply(fleet: Fleet, replicas: int) -> str:
    [res] = fleet.apply([parse_object(deployment("web", replicas=replicas))])
    return res.action


async def test_scale_up_answers_first_and_the_pods_follow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(monkeypatch) as fleet:
        assert apply(fleet, 500) == "created"
        assert len(web(fleet)) < 500  # the apply did not make them all
        assert fleet.workloads.is_scaling("Deployment/default/web")
        fleet.expire(0.0)  # a status tick while scaling
        status = fleet.get("Deployment", "default", "web")["status"]
        assert status["rollout"]["phase"] == "Progressing"
        assert "scaling" in status["rollout"]["message"]
        await asyncio.sleep(0.01)  # more slices
        fleet.expire(0.0)  # the next tick counts the pods made by now
        status = fleet.get("Deployment", "default", "web")["status"]
        assert fleet.workloads.is_scaling("Deployment/default/web")  # 3 pods a slice
        assert status["replicas"] == len(web(fleet))
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Progressing"]["status"] == "True"
        assert conditions["Progressing"]["reason"] == "ScalingReplicaSet"
        assert conditions["Available"]["status"] == "False"  # nothing reported Running
        assert f"scaling up: {len(web(fleet))} pods, 500 wanted" in (
            status["rollout"]["message"])
        await asyncio.wait_for(fleet.expanded(), 20)
        assert web(fleet) == {f"web-{i}" for i in range(500)}
        assert not fleet.workloads.is_scaling("Deployment/default/web")
        assert len(fleet.bound) == FIT
        pending = [fleet.pods[("default", f"web-{i}")] for i in range(500)
                   if ("default", f"web-{i}") not in fleet.bound]
        assert len(pending) == 500 - FIT
        assert {(p.status.phase, p.status.reason) for p in pending} == {
            ("Pending", "Unschedulable")}
        assert {p.status.message for p in pending} == {
            f"0/{NODES} nodes available: {NODES} insufficient pods"}
        fleet.expire(0.0)
        status = fleet.get("Deployment", "default", "web")["status"]
        assert status["replicas"] == 500
        assert "scaling" not in status["rollout"]["message"]
        conditions = {c["type"]: c for c in status["conditions"]}
        assert conditions["Progressing"]["reason"] == "ReplicaSetUpdated"  # not available
        assert conditions["Available"]["reason"] == "MinimumReplicasUnavailable"


async def test_a_second_apply_while_scaling_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(monkeypatch) as fleet:
        apply(fleet, 500)
        await asyncio.sleep(0.01)  # some slices run
        assert 0 < len(web(fleet)) < 500
        assert apply(fleet, 3) == "configured"
        await asyncio.wait_for(fleet.expanded(), 20)
        assert web(fleet) == {"web-0", "web-1", "web-2"}
        assert set(fleet.pods) == {("default", f"web-{i}") for i in range(3)}
        assert len(fleet.bound) == 3
        assert not fleet.placement.pending_count()


async def test_scale_down_and_delete_go_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(monkeypatch) as fleet:
        apply(fleet, 400)
        await asyncio.wait_for(fleet.expanded(), 20)
        apply(fleet, 50)
        assert len(web(fleet)) > 50  # not all removed in the call
        await asyncio.wait_for(fleet.expanded(), 20)
        assert web(fleet) == {f"web-{i}" for i in range(50)}
        apply(fleet, 400)
        await asyncio.wait_for(fleet.expanded(), 20)
        fleet.delete("Deployment", "default", "web")
        with pytest.raises(Exception, match="not found"):
            fleet.get("Deployment", "default", "web")
        assert len(web(fleet)) > 0  # the answer came before every pod was gone
        await asyncio.wait_for(fleet.expanded(), 20)
        assert not fleet.pods and not fleet.bound
        assert not fleet.placement.pending_count()


async def test_a_scale_down_removes_unplaced_pods_first(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(monkeypatch) as fleet:
        apply(fleet, 600)
        await asyncio.wait_for(fleet.expanded(), 20)
        seen = len(fleet.events.list())
        apply(fleet, 100)  # web-0..329 placed (made and placed slice by slice), 270 wait
        await asyncio.wait_for(fleet.expanded(), 20)
        assert web(fleet) == {f"web-{i}" for i in range(100)}
        placed = {e["object"] for e in fleet.events.list()[seen:]
                  if e["reason"] == "Scheduled"}
        # room freed by a placed pod that went is never taken by a pod placed only to
        # go next (the pending ones go first)
        assert {f"Pod/default/{name}" for name in web(fleet)} >= placed
        assert len(fleet.bound) == 100


async def test_made_again_while_its_pods_go(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(monkeypatch) as fleet:
        apply(fleet, 400)
        await asyncio.wait_for(fleet.expanded(), 20)
        fleet.delete("Deployment", "default", "web")
        apply(fleet, 20)  # the same name again: its pods are kept, the rest go
        await asyncio.wait_for(fleet.expanded(), 20)
        assert web(fleet) == {f"web-{i}" for i in range(20)}


def test_pending_pods_of_one_template_cost_one_attempt_per_retry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = fleet_of(background=False)
    apply(fleet, 2000)
    assert len(fleet.bound) == FIT
    calls: list[Any] = []
    schedule = fleet.scheduler.schedule
    monkeypatch.setattr(fleet.scheduler, "schedule",
                        lambda *a, **k: calls.append(a) or schedule(*a, **k))
    fleet.commit()
    fleet.commit()
    assert len(calls) == 2  # one attempt per retry for 2000 - FIT pending pods
    # room appears: the queue is placed in name order until it is full again
    pending = sorted(k for k in fleet.pods if k not in fleet.bound)
    for key in sorted(fleet.bound)[:5]:
        fleet.workloads.delete_pod(key)
    fleet.commit()
    assert len(fleet.bound) == FIT
    assert [k for k in pending if k in fleet.bound] == pending[:5]
    events = [e for e in fleet.events.list() if e["reason"] == "FailedScheduling"]
    assert len(events) < 10  # the pod tried gets one, not every pod


def test_a_retry_with_a_budget_goes_on_where_it_stopped() -> None:
    fleet = fleet_of(background=False)
    fleet.placement.retry_pending(budget=0.0)  # nothing pending: done at once
    for i in range(30):
        fleet.objects.put(parse_object({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"bare-{i}"},
            "spec": {"containers": [{"name": "m", "image": "busybox",
                                     "args": [str(i)]}]}}))
        fleet.placement.queue(("default", f"bare-{i}"))
    calls = 1
    while fleet.placement.retry_pending(budget=0.0, more=calls > 1) and calls < 1000:
        calls += 1
    assert calls > 2  # it stopped and went on
    assert all(("default", f"bare-{i}") in fleet.bound for i in range(30))
    assert not fleet.placement.pending_count()


def full_pod(self: Template, *, ns: str, name: str, owner: str, node: str | None) -> Pod:
    """What `Template.pod` made for a controller's pod before the compact records."""
    pod = Pod.model_validate({"metadata": {"name": name, "namespace": ns, "labels": {},
                                           "annotations": {}},
                              "spec": self.spec_on(node)})
    pod.metadata.__dict__.update(labels=self.labels, annotations=self.annotations(owner))
    return pod


def replica_story(store: FakeStore) -> list[Any]:
    """Apply, place (some pending), report, drain, roll out, scale, restart: what is
    shown after each step (pods as the API dumps them, desired sets, events)."""
    fleet = make_fleet(store)
    seen: list[Any] = []

    def shown(f: Fleet) -> Any:
        uids = {key: pod.metadata.uid for key, pod in f.pods.items()}
        pods = {f"{k[0]}/{k[1]}": dump_object(p) for k, p in sorted(f.pods.items())}
        desired = {n: nd.values() for n, nd in sorted(f.desired.items())}
        events = [(e["reason"], e["object"], e["message"]) for e in f.events.list()]
        text = json.dumps([pods, desired, events, f.bound.get(("default", "web-0"))],
                          sort_keys=True)
        for key, uid in uids.items():
            if uid:
                text = text.replace(uid, f"uid-of-{key[1]}")
        return json.loads(text)

    for n in ("n1", "n2"):
        add_node(fleet, n, memory=256 * 2**20)  # four 64Mi replicas each
    doc = deployment("web", replicas=10)
    fleet.apply([parse_object(doc)])
    seen.append(shown(fleet))
    for node in ("n1", "n2"):
        for key, (value, _) in fleet.desired[node].items.items():
            fleet.pod_statuses(node, {key: {
                "phase": "Running", "revision": value["revision"], "ready": True,
                "containerStatuses": [{"name": "main", "state": "running",
                                       "ready": True}]}})
    fleet.expire(0.0)
    seen.append(shown(fleet))
    fleet.drain("n1")
    seen.append(shown(fleet))
    doc["spec"]["template"]["spec"]["containers"][0]["args"] = ["v2"]
    doc["spec"]["replicas"] = 6
    fleet.apply([parse_object(doc)])
    fleet.patch_node("n1", unschedulable=False)
    fleet.commit()
    seen.append(shown(fleet))
    records: dict[str, dict[str, Any]] = {}
    for (db, key), value in store.data.items():
        records.setdefault(db, {})[key] = value
    again = make_fleet(FakeStore())
    again.load(records)
    seen.append(shown(again))
    seen.append(sum(isinstance(p, DaemonPod) for p in again.pods.values()))
    seen.append(sum(is_daemon(p) for p in again.pods.values()))
    return seen


def test_deployment_pods_are_compact_and_show_what_full_pods_showed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    compact = replica_story(FakeStore())
    with monkeypatch.context() as m:
        m.setattr(Template, "daemon_pod", full_pod)
        m.setattr(Workloads, "compact", lambda self: 0)
        full = replica_story(FakeStore())
    assert compact[:-2] == full[:-2]
    assert full[-2] == 0 and compact[-2] == 6  # a restart compacts the loaded pods again
    assert compact[-1] == 0  # none of them counts as a DaemonSet's
    pods = compact[-3][0]  # the story moved: rolled out to v2, 6 replicas, none pinned
    assert len(pods) == 6
    assert all(p["spec"]["containers"][0]["args"] == ["v2"] for p in pods.values())
    assert all("nodeName" not in p["spec"] for p in pods.values())
    assert sum(p["status"].get("reason") == "Unschedulable" for p in pods.values()) == 0


def test_a_node_s_summed_requests_follow_its_pods() -> None:
    """`Placement.view` keeps each node's sums between changes: a spec replaced on its
    node, a pod gone and a pod bound all show in the next decision."""
    fleet = make_fleet()
    add_node(fleet, "n1", memory=256 * 2**20)
    fleet.apply([parse_object(deployment("web", replicas=2, memory="64Mi"))])
    fleet.apply([parse_object(deployment("big", replicas=1, memory="200Mi"))])
    assert len(fleet.bound) == 2  # big waits: its attempt read (and kept) n1's sums
    fleet.apply([parse_object(deployment("web", replicas=2, memory="128Mi"))])
    assert len(fleet.bound) == 2  # 2 x 128Mi fill the node
    fleet.apply([parse_object(deployment("db", replicas=1, memory="64Mi"))])
    assert ("default", "db-0") not in fleet.bound  # the sums saw the bigger spec
    fleet.apply([parse_object(deployment("web", replicas=1, memory="128Mi"))])
    assert fleet.bound.get(("default", "db-0")) == "n1"  # ... and the pod that went
    fleet.apply([parse_object(deployment("db", replicas=3, memory="64Mi"))])
    assert sum(k[1].startswith("db-") for k in fleet.bound) == 2  # 128 + 64 + 64


async def test_a_restart_in_the_middle_scales_again(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FakeStore()
    monkeypatch.setattr(workloads, "SYNC_PODS", 10)
    monkeypatch.setattr(workloads, "STEP", 3)
    first = Fleet(store=store, scheduler=Scheduler(), background=True,  # runner not run
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    for i in range(NODES):
        add_node(first, f"n{i}")
    apply(first, 500)
    first.workloads.expand_slice(0.0)  # one slice, then the process is gone
    first.commit()
    made = len(web(first))
    assert 0 < made < 500
    records: dict[str, dict[str, Any]] = {}
    for (db, key), value in store.data.items():
        records.setdefault(db, {})[key] = value
    again = Fleet(store=FakeStore(), scheduler=Scheduler(), background=True,
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    again.load(records)
    assert len(web(again)) == made
    assert again.workloads.is_scaling("Deployment/default/web")
    task = asyncio.create_task(again.workloads.run_expansions(again.commit, budget=1e-6))
    try:
        await asyncio.wait_for(again.expanded(), 20)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert web(again) == {f"web-{i}" for i in range(500)}
    assert all(isinstance(again.pods[k], DaemonPod) for k in again.pods)


def test_a_deployment_s_conditions_say_what_kubectl_would() -> None:
    fleet = make_fleet()
    add_node(fleet, "n1")
    fleet.apply([parse_object(deployment("web", replicas=2))])
    for key, (value, _) in fleet.desired["n1"].items.items():
        fleet.pod_statuses("n1", {key: {
            "phase": "Running", "revision": value["revision"], "ready": True,
            "containerStatuses": [{"name": "main", "state": "running", "ready": True}]}})
    fleet.expire(0.0)
    status = fleet.get("Deployment", "default", "web")["status"]
    assert status["rollout"]["phase"] == "Complete"
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Available", "True", "MinimumReplicasAvailable"),
        ("Progressing", "True", "NewReplicaSetAvailable")]
    fleet.rollout("Deployment", "default", "web", "pause")
    fleet.expire(0.0)
    status = fleet.get("Deployment", "default", "web")["status"]
    assert ("Progressing", "Unknown", "DeploymentPaused") in [
        (c["type"], c["status"], c["reason"]) for c in status["conditions"]]


async def test_a_restart_in_the_middle_of_a_delete_removes_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The delete answers (the Deployment is gone from the store) before its pods are;
    # a restart then loaded pods whose Deployment no longer exists, and nothing removed
    # them: they stayed bound and kept running on their nodes.
    store = FakeStore()
    monkeypatch.setattr(workloads, "SYNC_PODS", 10)
    monkeypatch.setattr(workloads, "STEP", 3)
    first = Fleet(store=store, scheduler=Scheduler(), background=True,  # runner not run
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    for i in range(NODES):
        add_node(first, f"n{i}")
    apply(first, 60)
    while first.workloads.expand_slice(1.0):
        pass
    first.commit()
    assert len(web(first)) == 60
    first.delete("Deployment", "default", "web")
    while len(web(first)) == 60:  # slices of the delete, then the process is gone
        first.workloads.expand_slice(0.0)
    first.commit()
    assert 0 < len(web(first)) < 60
    records: dict[str, dict[str, Any]] = {}
    for (db, key), value in store.data.items():
        records.setdefault(db, {})[key] = value
    again = Fleet(store=FakeStore(), scheduler=Scheduler(), background=True,
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    again.load(records)
    assert ("default", "web") not in again.objects.deployments
    assert again.workloads.is_scaling("Deployment/default/web")
    task = asyncio.create_task(again.workloads.run_expansions(again.commit, budget=1e-6))
    try:
        await asyncio.wait_for(again.expanded(), 20)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not web(again) and not again.pods and not again.bound
