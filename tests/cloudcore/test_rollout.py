"""Health-gated DaemonSet rollouts: batches, health gate, failure threshold, automatic
rollback, nodes that are not Ready, pause, restarts (the fleet with a fake clock)."""

from __future__ import annotations

from typing import Any

from cloudcore_fakes import FakeStore, add_node, daemonset, make_fleet

from cloudcore.fleet.naming import REVISION, TEMPLATE_HASH
from shared.entries import pod_key, split_key
from shared.models import parse_object


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def staged(args: list[str], *, batch: int | str = 2, threshold: int | str = 0,
           min_ready: int = 0, deadline: int = 600, auto: bool = True,
           paused: bool = False) -> dict[str, Any]:
    doc = daemonset(args=args)
    doc["spec"].update({
        "minReadySeconds": min_ready, "progressDeadlineSeconds": deadline, "paused": paused,
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": batch},
                           "failureThreshold": threshold, "autoRollback": auto}})
    return doc


class World:
    def __init__(self, nodes: int, store: FakeStore | None = None) -> None:
        self.store = store or FakeStore()
        self.fleet = make_fleet(self.store)
        self.clock = Clock()
        self.fleet.rollouts.clock = self.clock
        self.names = [f"n{i:02d}" for i in range(1, nodes + 1)]
        for n in self.names:
            add_node(self.fleet, n)

    def restarted(self) -> World:
        """A new cloudcore loading what this one stored; its nodes report again (Ready)
        and it ticks once."""
        records: dict[str, dict[str, Any]] = {}
        for (db, key), value in self.store.data.items():
            records.setdefault(db, {})[key] = value
        again = World(0)
        again.fleet.load(records)
        again.names = self.names
        for n in self.names:
            again.fleet.mark_ready(n)
        again.tick()
        return again

    def apply(self, doc: dict[str, Any]) -> None:
        self.fleet.apply([parse_object(doc)])

    def tick(self, seconds: float = 1.0) -> None:
        self.clock.t += seconds
        self.fleet.expire(0.0)  # the liveness tick: eviction, then rollouts

    def pods(self) -> dict[str, Any]:
        return {p.spec.node_name: p for p in self.fleet.pods.values()}

    def revision_of(self, node: str) -> str:
        return self.pods()[node].metadata.annotations[REVISION]

    def desired_revision(self, node: str) -> str:
        (value, _), = self.fleet.desired[node].items.values()
        return value["revision"]

    def report(self, node: str, *, ready: bool = True, waiting: str | None = None) -> None:
        """The node's agent reports its pod at the revision its desired set holds."""
        pod = self.pods()[node]
        key = (pod.metadata.namespace, pod.metadata.name)
        rev = self.desired_revision(node)
        container: dict[str, Any] = {"name": "main", "state": "running", "ready": ready}
        if waiting:
            container = {"name": "main", "state": "waiting", "reason": waiting,
                         "restartCount": 1}
        self.fleet.pod_statuses(node, {pod_key(*key): {
            "phase": "Running", "revision": rev, "ready": ready and not waiting,
            "containerStatuses": [container]}})

    def report_all(self) -> None:
        for n in self.names:
            if self.fleet.nodes[n].status.ready == "Ready":
                self.report(n)

    def status(self) -> Any:
        return self.fleet.daemonsets[("default", "agent")].status

    def updated(self, rev: str) -> set[str]:
        return {n for n, p in self.pods().items() if p.metadata.annotations[REVISION] == rev}


def rev_of(w: World, doc: dict[str, Any]) -> str:
    from cloudcore.fleet.template import Template

    return Template(parse_object(doc).spec.template).revision


def test_a_staged_rollout_goes_batch_by_batch_after_each_is_healthy() -> None:
    w = World(7)
    v1, v2 = staged(["v1"], batch=3, min_ready=5), staged(["v2"], batch=3, min_ready=5)
    r1, r2 = rev_of(w, v1), rev_of(w, v2)
    w.apply(v1)  # a create is not staged
    assert w.updated(r1) == set(w.names)
    w.report_all()
    w.tick()
    st = w.status()  # Ready, not yet for minReadySeconds: not available, not Complete
    assert (st.desired_number_scheduled, st.number_ready, st.number_available) == (7, 7, 0)
    assert st.rollout.phase == "Progressing"
    assert "0 of 7 pods available" in st.rollout.message
    assert "minReadySeconds 5 s" in st.rollout.message
    w.tick(5)  # no report needed: the time passing makes them available
    st = w.status()
    assert (st.number_available, st.rollout.phase) == (7, "Complete")

    w.apply(v2)
    first = w.updated(r2)
    assert len(first) == 3 and st is not w.status()
    assert w.status().rollout.phase == "Progressing"
    assert w.status().updated_number_scheduled == 3
    assert all(w.desired_revision(n) == (r2 if n in first else r1) for n in w.names)
    w.tick(10)
    assert w.updated(r2) == first  # not healthy yet: no new batch
    for n in first:
        w.report(n)
    w.tick(1)
    assert w.updated(r2) == first  # Ready, but not for minReadySeconds yet
    w.tick(5)
    second = w.updated(r2) - first
    assert len(second) == 3
    for n in second:
        w.report(n)
    w.tick(6)
    assert len(w.updated(r2)) == 7
    for n in set(w.names) - first - second:
        w.report(n)
    w.tick(6)
    st = w.status()
    assert (st.rollout.phase, st.current_revision, st.update_revision) == ("Complete", r2, r2)
    assert st.updated_number_scheduled == st.number_available == 7
    reasons = [e["reason"] for e in w.fleet.events.list()]
    assert "RolloutComplete" in reasons


def test_failures_over_the_threshold_roll_every_node_back() -> None:
    w = World(6)
    v1, v2 = staged(["v1"], threshold=1), staged(["v2"], threshold=1)
    r1, r2 = rev_of(w, v1), rev_of(w, v2)
    w.apply(v1)
    w.report_all()
    w.tick()
    w.apply(v2)
    a, b = sorted(w.updated(r2))
    w.report(a, waiting="CrashLoopBackOff")
    w.tick()  # one failure is tolerated (threshold 1); the other pod is still in progress
    third = w.updated(r2) - {a, b}
    assert len(third) == 1
    assert w.status().rollout.failed == 1
    w.report(b, waiting="ErrImagePull")
    w.tick()  # two failures > 1: abort and roll back every updated pod
    assert w.updated(r2) == set()
    assert all(w.desired_revision(n) == r1 for n in w.names)
    st = w.status()
    assert st.rollout.phase == "RolledBack" and st.current_revision == r1
    assert st.update_revision == r2 and st.rollout.failed == 2
    [ev] = [e for e in w.fleet.events.list() if e["reason"] == "RolloutAborted"]
    assert a in ev["message"] and "CrashLoopBackOff" in ev["message"]
    assert "ErrImagePull" in ev["message"] and r1 in ev["message"]
    w.tick(60)
    assert w.updated(r2) == set()  # stays rolled back
    v3 = staged(["v3"], threshold=1)
    w.apply(v3)  # a fixed template starts a new rollout
    assert len(w.updated(rev_of(w, v3))) == 2
    assert w.status().rollout.phase == "Progressing"


def test_without_rollback_the_failed_pods_stay_and_no_batch_starts() -> None:
    w = World(4)
    w.apply(staged(["v1"], batch=1, auto=False))
    w.report_all()
    v2 = staged(["v2"], batch=1, auto=False)
    w.apply(v2)
    [a] = w.updated(rev_of(w, v2))
    w.report(a, waiting="CrashLoopBackOff")
    w.tick(30)
    assert w.updated(rev_of(w, v2)) == {a}
    assert w.status().rollout.phase == "Aborted"


def test_a_pod_not_ready_by_the_progress_deadline_has_failed() -> None:
    w = World(3)
    w.apply(staged(["v1"], batch=1, deadline=30))
    w.report_all()
    v2 = staged(["v2"], batch=1, deadline=30)
    w.apply(v2)
    [a] = w.updated(rev_of(w, v2))
    w.report(a, ready=False)  # running, never Ready
    w.tick(20)
    assert w.status().rollout.phase == "Progressing"
    w.tick(11)
    assert w.status().rollout.phase == "RolledBack"
    [ev] = [e for e in w.fleet.events.list() if e["reason"] == "RolloutAborted"]
    assert "not Ready 30 s after the update" in ev["message"]


def test_nodes_that_are_not_ready_neither_block_nor_fail_and_get_it_at_the_end() -> None:
    w = World(4)
    w.apply(staged(["v1"], batch=1, deadline=10))
    w.report_all()
    off = w.names[-1]
    w.fleet.mark_not_ready(off, reason="NodeStatusUnknown", message="test")
    v2 = staged(["v2"], batch=1, deadline=10)
    r2 = rev_of(w, v2)
    w.apply(v2)
    for _ in range(3):
        [n] = w.updated(r2) - {off} - {m for m in w.names if w.pods()[m].status.revision == r2}
        w.report(n)
        w.tick(1)
    assert w.status().rollout.phase == "Complete"
    assert off in w.updated(r2) and w.desired_revision(off) == r2  # applied on reconnect
    assert not [e for e in w.fleet.events.list() if e["reason"] == "RolloutAborted"]


def test_paused_stops_new_batches_and_a_new_node_gets_the_stable_template() -> None:
    w = World(4)
    w.apply(staged(["v1"], batch=1))
    w.report_all()
    v2 = staged(["v2"], batch=1, paused=True)
    r1, r2 = rev_of(w, staged(["v1"])), rev_of(w, v2)
    w.apply(v2)
    assert w.updated(r2) == set()
    assert w.status().rollout.phase == "Paused"
    add_node(w.fleet, "n99")
    w.fleet.commit()
    assert w.revision_of("n99") == r1  # joins during the rollout: the stable template
    w.apply(staged(["v2"], batch=1))  # resume
    assert len(w.updated(r2)) == 1


def test_a_template_change_without_strategy_goes_everywhere_at_once() -> None:
    w = World(5)
    w.apply(daemonset(args=["v1"]))
    w.apply(daemonset(args=["v2"]))
    assert len({w.desired_revision(n) for n in w.names}) == 1
    st = w.status()  # it went everywhere, but no pod runs it yet: not Complete
    assert st.rollout.phase == "Progressing" and st.number_available == 0
    assert st.rollout.message.startswith("0 of 5 pods available at revision ")
    assert "waiting for agent-n01 (not reported at this revision yet)" in st.rollout.message
    assert "and 2 more" in st.rollout.message
    assert not [e for e in w.fleet.events.list() if e["reason"] == "RolloutComplete"]
    w.report_all()
    w.tick()
    assert (w.status().rollout.phase, w.status().number_available) == ("Complete", 5)
    [ev] = [e for e in w.fleet.events.list() if e["reason"] == "RolloutComplete"]
    assert w.status().update_revision in ev["message"]


def test_a_rollout_survives_a_cloudcore_restart() -> None:
    w = World(4)
    w.apply(staged(["v1"], batch=1))
    w.report_all()
    v2 = staged(["v2"], batch=1)
    r1, r2 = rev_of(w, staged(["v1"])), rev_of(w, v2)
    w.apply(v2)
    [a] = w.updated(r2)
    again = w.restarted()
    # the stable template is known: the other nodes keep it, the updated one keeps the update
    assert again.updated(r2) == {a}
    assert again.updated(r1) == set(w.names) - {a}
    assert again.status().rollout.phase == "Progressing"
    again.report(a)
    again.tick()
    assert len(again.updated(r2)) == 2


def test_status_counts_and_pod_keys() -> None:
    w = World(3)
    w.apply(staged(["v1"], batch="50%"))
    w.report(w.names[0])
    w.tick()
    st = w.status()
    assert (st.desired_number_scheduled, st.number_ready, st.number_available) == (3, 1, 1)
    for p in w.fleet.pods.values():
        assert p.metadata.annotations[TEMPLATE_HASH]
    assert all(split_key(k)[0] == "pod" for n in w.names for k in w.fleet.desired[n].items)


def test_rollout_actions_pause_resume_undo_retry() -> None:
    import pytest

    from cloudcore.errors import NotFound
    from shared.errors import ObjectError

    w = World(4)
    v1, v2 = staged(["v1"], batch=1), staged(["v2"], batch=1)
    r1, r2 = rev_of(w, v1), rev_of(w, v2)
    w.apply(v1)
    w.report_all()
    with pytest.raises(ObjectError, match="nothing to undo"):
        w.fleet.rollout("DaemonSet", "default", "agent", "undo")
    with pytest.raises(ObjectError, match="no aborted rollout"):
        w.fleet.rollout("DaemonSet", "default", "agent", "retry")
    with pytest.raises(ObjectError, match="not one of"):
        w.fleet.rollout("DaemonSet", "default", "agent", "explode")
    with pytest.raises(NotFound):
        w.fleet.rollout("DaemonSet", "default", "nope", "pause")
    w.apply(v2)
    [a] = w.updated(r2)
    out = w.fleet.rollout("DaemonSet", "default", "agent", "pause")
    assert out["spec"]["paused"] is True and out["status"]["rollout"]["phase"] == "Paused"
    w.report(a)
    w.tick()
    assert w.updated(r2) == {a}
    w.fleet.rollout("DaemonSet", "default", "agent", "resume")
    assert len(w.updated(r2)) == 2
    # undo: the stable template everywhere, at once
    out = w.fleet.rollout("DaemonSet", "default", "agent", "undo")
    assert w.updated(r2) == set() and w.updated(r1) == set(w.names)
    # the pod put back after running revision 2 (a) runs revision 1 once its node says
    # so: not Complete before
    assert out["status"]["rollout"]["phase"] == "Progressing"
    assert out["status"]["rollout"]["message"] == (
        f"3 of 4 pods available at revision {r1}; "
        f"waiting for agent-{a} (not reported at this revision yet)")
    w.report_all()
    w.tick()
    assert w.status().rollout.phase == "Complete"
    assert out["metadata"]["generation"] == 5  # create, v2, pause, resume, undo
    # retry: an aborted rollout of the same template starts again
    w.apply(v2)
    [b] = w.updated(r2)
    w.report(b, waiting="CrashLoopBackOff")
    w.tick()
    assert w.status().rollout.phase == "RolledBack" and w.updated(r2) == set()
    out = w.fleet.rollout("DaemonSet", "default", "agent", "retry")
    assert out["status"]["rollout"]["phase"] == "Progressing"
    assert w.updated(r2) == {b}
    w.tick(5)  # b's last report is the failed attempt's: it says nothing about this one
    assert w.status().rollout.phase == "Progressing"
    w.report(b)
    w.tick()
    assert len(w.updated(r2)) == 2


def test_a_settled_daemonset_is_not_scanned_until_something_changes() -> None:
    w = World(3)
    v1, v2 = staged(["v1"], batch=1), staged(["v2"], batch=1)
    w.apply(v1)
    w.report_all()
    w.tick()
    scans: list[str] = []
    real = w.fleet.rollouts._scan

    def counting(*args: Any, **kw: Any) -> Any:
        scans.append("scan")
        return real(*args, **kw)

    w.fleet.rollouts._scan = counting  # type: ignore[method-assign]
    w.tick(5)
    w.tick(5)
    assert scans == []  # Complete and nothing reported: no pass over its pods
    w.report(w.names[0])
    w.tick()
    assert len(scans) == 1
    w.apply(v2)
    [a] = w.updated(rev_of(w, v2))
    w.report(a, waiting="CrashLoopBackOff")
    w.tick()
    assert w.status().rollout.phase == "RolledBack"
    w.tick()  # the status after the rollback's changes
    scans.clear()
    w.tick(5)
    w.tick(5)
    assert scans == []  # rolled back and quiet: no pass either


def staged_deployment(args: list[str], *, replicas: int = 4, batch: int | str = 1,
                      memory: str = "64Mi") -> dict[str, Any]:
    from cloudcore_fakes import deployment

    doc = deployment("web", replicas=replicas, memory=memory)
    doc["spec"]["template"]["spec"]["containers"][0]["args"] = args
    doc["spec"]["strategy"] = {"type": "RollingUpdate",
                               "rollingUpdate": {"maxUnavailable": batch}}
    return doc


class DeploymentWorld(World):
    """Reports by the node each replica is bound to (replicas have no spec.nodeName)."""

    def replicas(self) -> dict[Key, Any]:
        return {k: p for k, p in self.fleet.pods.items() if k[1].startswith("web-")}

    def report_replica(self, key: Key, *, waiting: str | None = None) -> None:
        node = self.fleet.bound[key]
        (value, _), = [(v, g) for k, (v, g) in self.fleet.desired[node].items.items()
                       if k == pod_key(*key)]
        container: dict[str, Any] = {"name": "main", "state": "running", "ready": True}
        if waiting:
            container = {"name": "main", "state": "waiting", "reason": waiting}
        self.fleet.pod_statuses(node, {pod_key(*key): {
            "phase": "Running", "revision": value["revision"], "ready": not waiting,
            "containerStatuses": [container]}})

    def dep_status(self) -> Any:
        return self.fleet.deployments[("default", "web")].status

    def at(self, rev: str) -> set[Key]:
        return {k for k, p in self.replicas().items()
                if p.metadata.annotations[REVISION] == rev}


Key = tuple[str, str]


def test_a_deployment_rolls_replica_by_replica_and_back() -> None:
    w = DeploymentWorld(4)
    v1, v2 = staged_deployment(["v1"]), staged_deployment(["v2"])
    r1, r2 = rev_of(w, v1), rev_of(w, v2)
    w.apply(v1)
    for k in w.replicas():
        w.report_replica(k)
    w.tick()
    st = w.dep_status()
    assert (st.replicas, st.ready_replicas, st.available_replicas) == (4, 4, 4)
    assert st.rollout.phase == "Complete"

    w.apply(v2)
    [a] = w.at(r2)
    w.report_replica(a)
    w.tick()
    assert len(w.at(r2)) == 2 and w.dep_status().rollout.phase == "Progressing"
    [b] = w.at(r2) - {a}
    w.report_replica(b, waiting="CrashLoopBackOff")
    w.tick()
    assert w.at(r2) == set() and w.at(r1) == set(w.replicas())
    assert w.dep_status().rollout.phase == "RolledBack"
    [ev] = [e for e in w.fleet.events.list() if e["reason"] == "RolloutAborted"]
    assert ev["object"] == "Deployment/default/web" and b[1] in ev["message"]


def test_replicas_placed_nowhere_take_the_update_at_once_and_do_not_block() -> None:
    w = DeploymentWorld(1)  # 8 GiB: room for 2 replicas of 3 GiB, the third is Pending
    v1 = staged_deployment(["v1"], replicas=3, memory="3Gi")
    v2 = staged_deployment(["v2"], replicas=3, memory="3Gi")
    w.apply(v1)
    placed = set(w.fleet.bound)
    assert len(placed) == 2
    for k in placed:
        w.report_replica(k)
    w.tick()
    assert w.dep_status().rollout.offline == 0  # pending is not "on a node not Ready"
    w.apply(v2)
    r2 = rev_of(w, v2)
    pending = set(w.replicas()) - placed
    assert pending <= w.at(r2) and len(w.at(r2)) == 2  # the pending one + one batch
    for k in w.at(r2) & placed:
        w.report_replica(k)
    w.tick()
    for k in w.at(r2) & placed:
        w.report_replica(k)
    w.tick()
    assert w.at(r2) == set(w.replicas())
    # As in Kubernetes, a replica on no node is not available: not Complete, and the
    # update is not the stable template yet (what a rollback would go back to).
    st = w.dep_status()
    [web2] = pending
    assert (st.rollout.phase, st.available_replicas) == ("Progressing", 2)
    assert st.current_revision == rev_of(w, v1)
    assert f"waiting for {web2[1]} (Pending" in st.rollout.message
    add_node(w.fleet, "n99")  # room for it
    w.fleet.commit()
    w.report_replica(web2)
    w.tick()
    st = w.dep_status()
    assert (st.rollout.phase, st.available_replicas, st.current_revision) == ("Complete", 3, r2)


def test_failed_pods_are_remembered_across_a_restart() -> None:
    w = World(4)
    w.apply(staged(["v1"], batch=1, threshold=1))
    w.report_all()
    v2 = staged(["v2"], batch=1, threshold=1)
    r2 = rev_of(w, v2)
    w.apply(v2)
    [a] = w.updated(r2)
    w.report(a, waiting="CrashLoopBackOff")
    w.tick()  # one failure, tolerated: the next batch goes out
    assert w.status().rollout.failed == 1
    again = w.restarted()
    assert again.status().rollout.failed == 1  # not forgotten
    [b] = again.updated(r2) - {a}
    again.report(b, waiting="ErrImagePull")
    again.tick()  # the second failure is over the threshold
    assert again.status().rollout.phase == "RolledBack"
    assert again.updated(r2) == set()


def test_a_daemonset_whose_pods_cannot_pull_is_not_complete() -> None:
    """Issue 16: every pod in ImagePullBackOff made a first apply `Complete`."""
    w = World(3)
    w.apply(daemonset(args=["v1"]))
    for n in w.names:
        pod = w.pods()[n]
        key = (pod.metadata.namespace, pod.metadata.name)
        w.fleet.pod_statuses(n, {pod_key(*key): {
            "phase": "Pending", "reason": "ImagePullBackOff", "revision": w.desired_revision(n),
            "message": "pull x: manifest unknown", "containerStatuses": [
                {"name": "main", "state": "waiting", "reason": "ImagePullBackOff",
                 "message": "pull x: manifest unknown"}]}})
    w.tick()
    st = w.status()
    assert st.rollout.phase == "Progressing" and st.rollout.failed == 3
    assert "3 failing" in st.rollout.message and "manifest unknown" in st.rollout.message
    assert st.number_available == 0
    w.report_all()  # fixed (e.g. the image was pushed): Running everywhere
    w.tick()
    assert (w.status().rollout.phase, w.status().number_available) == ("Complete", 3)


def test_pods_of_a_node_not_ready_are_not_ready_then_node_lost() -> None:
    """Issue 16: pods on a node NotReady for 9 minutes showed `Running 1/1 ready` and
    counted as available. As in Kubernetes: not ready at once, Unknown/NodeLost after
    the eviction timeout, and what the node reported comes back when it reports again."""
    w = World(2)
    w.fleet.eviction.clock = w.clock
    w.apply(daemonset(args=["v1"]))
    w.report_all()
    w.tick()
    assert w.status().number_available == 2
    lost = w.pods()["n01"]
    w.fleet.mark_not_ready("n01", reason="NodeStatusUnknown", message="no report for 90s")
    assert lost.status.ready is False and lost.status.phase == "Running"
    assert not any(c.ready for c in lost.status.container_statuses)
    w.tick()
    assert (w.status().number_ready, w.status().number_available) == (1, 1)
    w.tick(w.fleet.eviction.timeout + 1)
    assert (lost.status.phase, lost.status.reason) == ("Unknown", "NodeLost")
    assert "n01 has been NotReady" in (lost.status.message or "")
    assert "last reported Running" in (lost.status.message or "")
    assert w.pods()["n02"].status.phase == "Running"
    w.fleet.mark_ready("n01")  # it reports again (a heartbeat: no pod statuses)
    assert (lost.status.phase, lost.status.ready, lost.status.reason) == ("Running", True, None)
    w.tick()
    assert w.status().number_available == 2


def test_a_node_back_gets_its_own_pods_back_and_no_other_nodes() -> None:
    """Several nodes lost at once (a region-wide outage): each one reporting again gets
    back only its own pods' statuses (the lost pods are kept per node, so recovery does not
    scan the whole fleet's lost pods per node); a pod reported afresh while its node was
    lost keeps the fresh status."""
    w = World(3)
    w.fleet.eviction.clock = w.clock
    w.apply(daemonset(args=["v1"]))
    w.report_all()
    w.tick()
    pods = w.pods()
    for name in ("n01", "n02", "n03"):
        w.fleet.mark_not_ready(name, reason="NodeStatusUnknown", message="no report")
    w.tick(w.fleet.eviction.timeout + 1)
    assert all(p.status.reason == "NodeLost" for p in pods.values())
    w.fleet.mark_ready("n02")
    assert (pods["n02"].status.phase, pods["n02"].status.ready) == ("Running", True)
    assert pods["n01"].status.reason == "NodeLost" and pods["n03"].status.reason == "NodeLost"
    w.fleet.mark_ready("n01")
    assert (pods["n01"].status.phase, pods["n01"].status.ready) == ("Running", True)
    assert pods["n03"].status.reason == "NodeLost"
    w.fleet.mark_ready("n03")
    assert all(p.status.phase == "Running" and p.status.ready for p in pods.values())
    assert w.fleet.node_ops._lost == {} and w.fleet.node_ops._lost_on == {}


def test_a_big_workloads_status_is_counted_over_several_ticks(monkeypatch: Any) -> None:
    """Without a rollout moving, a workload of more than SCAN_CHUNK pods is counted a
    chunk per tick (no tick holds the event loop for a whole 100k-pod pass); the status
    comes when the pass ends and counts every pod."""
    from cloudcore.fleet import rollout

    monkeypatch.setattr(rollout, "SCAN_CHUNK", 3)
    w = World(7)
    w.apply(daemonset())  # its tick counts 3 pods
    w.tick()  # 6
    assert w.status() is None
    w.tick()  # 7: done
    assert w.status().desired_number_scheduled == 7
    w.report_all()  # the pods are Ready now: the next passes count them
    scans = []
    real = w.fleet.rollouts._scan

    def counting(*a: Any, **kw: Any) -> Any:
        scans.append(len(a[3]))
        return real(*a, **kw)

    w.fleet.rollouts._scan = counting  # type: ignore[method-assign]
    w.tick()
    w.tick()
    assert w.status().number_ready == 0 and max(scans) <= 3  # not yet: 6 of 7 counted
    w.tick()
    status = w.status()
    assert status.number_ready == 7 and status.desired_number_scheduled == 7
    assert sum(scans) == 7


# -- Complete means what `kubectl rollout status` means (issues 16, 17, 18) ---------------


def test_a_daemonset_with_no_pod_ready_is_not_complete() -> None:
    """0/2 ready said Complete: the template had gone everywhere. Now it is Progressing,
    saying what it waits for, until every pod is available; then Complete, once."""
    w = World(2)
    w.apply(daemonset(args=["v1"]))
    for n in w.names:
        w.report(n, ready=False)  # Running, its container not Ready
    w.tick()
    st = w.status()
    assert (st.number_ready, st.number_available, st.rollout.phase) == (0, 0, "Progressing")
    assert st.rollout.message == (
        f"0 of 2 pods available at revision {st.update_revision}; waiting for "
        "agent-n01 (container main not Ready), agent-n02 (container main not Ready)")
    w.report("n01")
    w.tick()
    assert (w.status().number_available, w.status().rollout.phase) == (1, "Progressing")
    w.report("n02")
    w.tick()
    assert (w.status().number_available, w.status().rollout.phase) == (2, "Complete")
    w.report("n02", ready=False)  # it fails later: not Complete while it is not available
    w.tick()
    assert w.status().rollout.phase == "Progressing"
    w.report("n02")
    w.tick()
    assert w.status().rollout.phase == "Complete"
    completes = [e for e in w.fleet.events.list() if e["reason"] == "RolloutComplete"]
    assert len(completes) == 1  # announced once per template, not on each recovery


def test_min_ready_seconds_holds_complete_until_the_pods_are_available() -> None:
    w = World(2)
    doc = daemonset(args=["v1"])
    doc["spec"]["minReadySeconds"] = 10
    w.apply(doc)
    w.report_all()
    w.tick()
    st = w.status()
    assert (st.number_ready, st.number_available, st.rollout.phase) == (2, 0, "Progressing")
    assert "agent-n01 (Ready for 1 of minReadySeconds 10 s)" in st.rollout.message
    w.tick(5)
    assert w.status().rollout.phase == "Progressing"
    w.tick(5)  # 10 s Ready, with no new report: the tick looks again by itself
    st = w.status()
    assert (st.number_available, st.rollout.phase) == (2, "Complete")


def test_pods_on_nodes_not_ready_do_not_hold_complete_and_none_at_all_is_not_complete() -> None:
    w = World(2)
    w.apply(daemonset(args=["v1"]))
    w.fleet.mark_not_ready("n02", reason="NodeStatusUnknown", message="test")
    w.report("n01")
    w.tick()
    st = w.status()
    assert (st.rollout.phase, st.rollout.offline, st.number_available) == ("Complete", 1, 1)
    w.fleet.mark_not_ready("n01", reason="NodeStatusUnknown", message="test")
    w.tick()
    st = w.status()  # nothing runs it anywhere that can be seen
    assert (st.rollout.phase, st.rollout.offline) == ("Progressing", 2)
    assert "waiting for a pod on a Ready node" in st.rollout.message


def test_a_tolerated_failure_holds_complete_and_rollback_still_returns_to_the_stable() -> None:
    """With failureThreshold 1 a pod that failed used to let the rollout complete (and
    its template become the stable one). Now the rollout waits for it: the stable
    template stays the old one, so a failure more still rolls every node back; a pod
    that recovers lets it complete."""
    for recovers in (True, False):
        w = World(3)
        v1, v2 = staged(["v1"], batch=1, threshold=1), staged(["v2"], batch=1, threshold=1)
        r1, r2 = rev_of(w, v1), rev_of(w, v2)
        w.apply(v1)
        w.report_all()
        w.tick()
        w.apply(v2)
        [a] = w.updated(r2)
        w.report(a, waiting="CrashLoopBackOff")  # failed: tolerated
        w.tick()
        for _ in range(2):
            [n] = w.updated(r2) - {a} - {m for m in w.names
                                         if w.pods()[m].status.revision == r2}
            w.report(n)
            w.tick()
        assert w.updated(r2) == set(w.names)
        st = w.status()
        assert (st.rollout.phase, st.current_revision, st.rollout.failed) == (
            "Progressing", r1, 1)
        assert f"waiting for agent-{a} (container main: CrashLoopBackOff)" in st.rollout.message
        assert not [e for e in w.fleet.events.list() if e["reason"] == "RolloutComplete"
                    and r2 in e["message"]]
        if recovers:
            w.report(a)
            w.tick()
            st = w.status()
            assert (st.rollout.phase, st.current_revision) == ("Complete", r2)
            assert w.fleet.plans.stable("DaemonSet/default/agent").revision == r2
        else:
            b = sorted(set(w.names) - {a})[0]
            w.report(b, waiting="ErrImagePull")  # a second failure: over the threshold
            w.tick()
            assert w.status().rollout.phase == "RolledBack"
            assert all(w.desired_revision(n) == r1 for n in w.names)


# -- maxSurge (issue 18) --------------------------------------------------------------------


def surge_deployment(args: list[str], *, replicas: int = 3, surge: int | str = 1,
                     unavailable: int | str = 0, threshold: int = 0) -> dict[str, Any]:
    doc = staged_deployment(args, replicas=replicas)
    doc["spec"]["strategy"] = {"type": "RollingUpdate", "failureThreshold": threshold,
                               "rollingUpdate": {"maxSurge": surge,
                                                 "maxUnavailable": unavailable}}
    return doc


def serving(w: DeploymentWorld) -> int:
    """Replicas Running and Ready at the revision their node holds."""
    return sum(1 for p in w.replicas().values()
               if p.status.revision == p.metadata.annotations[REVISION] and p.status.ready)


def report_new(w: DeploymentWorld) -> None:
    """Each placed replica whose node has not reported it at its revision does so."""
    for k, p in w.replicas().items():
        if k in w.fleet.bound and p.status.revision != p.metadata.annotations[REVISION]:
            w.report_replica(k)


def test_max_surge_starts_new_replicas_before_the_old_ones_go() -> None:
    """maxSurge 1, maxUnavailable 0: never fewer than 3 replicas serving, never more than
    4 pods; each old replica goes only once a new one is available."""
    w = DeploymentWorld(3)
    v1, v2 = surge_deployment(["v1"]), surge_deployment(["v2"])
    r1, r2 = rev_of(w, v1), rev_of(w, v2)
    w.apply(v1)
    report_new(w)
    w.tick()
    assert w.dep_status().rollout.phase == "Complete"
    w.apply(v2)
    assert len(w.at(r1)) == 3 and w.at(r2) == {("default", "web-3")}  # one above replicas
    st = w.dep_status()
    w.tick(5)  # the new one is not available yet: no old one goes
    assert len(w.at(r1)) == 3 and len(w.at(r2)) == 1
    most, least = 4, 3
    for _ in range(12):
        report_new(w)
        w.tick()
        most, least = max(most, len(w.replicas())), min(least, serving(w))
        if w.dep_status().rollout.phase == "Complete":
            break
    st = w.dep_status()
    assert (st.rollout.phase, st.replicas, st.updated_replicas, st.available_replicas,
            st.current_revision) == ("Complete", 3, 3, 3, r2)
    assert w.at(r2) == set(w.replicas()) and most == 4 and least == 3


def test_max_surge_with_max_unavailable_and_percentages() -> None:
    """maxSurge 50% of 4 (2) and maxUnavailable 1: at most 6 pods, at least 3 serving."""
    w = DeploymentWorld(4)
    v1 = surge_deployment(["v1"], replicas=4, surge="50%", unavailable=1)
    v2 = surge_deployment(["v2"], replicas=4, surge="50%", unavailable=1)
    w.apply(v1)
    report_new(w)
    w.tick()
    w.apply(v2)
    r2 = rev_of(w, v2)
    # two new ones at once (the surge), and one old one goes (maxUnavailable 1)
    assert len(w.replicas()) == 5 and len(w.at(r2)) == 2
    most, least = 5, 3
    for _ in range(12):
        report_new(w)
        w.tick()
        most, least = max(most, len(w.replicas())), min(least, serving(w))
        if w.dep_status().rollout.phase == "Complete":
            break
    assert w.dep_status().rollout.phase == "Complete"
    assert w.at(r2) == set(w.replicas()) and len(w.replicas()) == 4
    assert most <= 6 and least >= 3


def test_a_failing_surge_pod_rolls_back_to_replicas_old_pods() -> None:
    w = DeploymentWorld(3)
    v1, v2 = surge_deployment(["v1"]), surge_deployment(["v2"])
    r1, r2 = rev_of(w, v1), rev_of(w, v2)
    w.apply(v1)
    report_new(w)
    w.tick()
    w.apply(v2)
    [new] = w.at(r2)
    w.report_replica(new, waiting="CrashLoopBackOff")
    w.tick()
    st = w.dep_status()
    assert st.rollout.phase == "RolledBack"
    assert w.at(r2) == set() and len(w.at(r1)) == 3 == len(w.replicas())  # surge pod gone
    report_new(w)
    w.tick()
    assert serving(w) == 3


async def test_a_daemonset_still_being_expanded_is_not_complete(monkeypatch: Any) -> None:
    """Over a big fleet a DaemonSet's pods are made in the background: the pods made so
    far being available is not the rollout being complete."""
    import asyncio

    from cloudcore.fleet import Fleet, Liveness, workloads
    from cloudcore.scheduler import Scheduler

    monkeypatch.setattr(workloads, "SYNC_NODES", 2)
    monkeypatch.setattr(workloads, "STEP", 2)
    fleet = Fleet(store=FakeStore(), scheduler=Scheduler(), background=True,
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    names = [f"n{i:02d}" for i in range(8)]
    for n in names:
        add_node(fleet, n)

    def report_made() -> None:
        for (ns, name), pod in list(fleet.pods.items()):
            node = pod.spec.node_name
            (value, _), = fleet.desired[node].items.values()
            fleet.pod_statuses(node, {pod_key(ns, name): {
                "phase": "Running", "revision": value["revision"], "ready": True,
                "containerStatuses": [{"name": "main", "state": "running", "ready": True}]}})

    fleet.apply([parse_object(daemonset())])
    fleet.workloads.expand_slice(0.0)  # one step of the expansion: 2 more nodes
    fleet.commit()
    made = len(fleet.pods)
    assert 0 < made < len(names) and fleet.workloads.expanding() == 1
    report_made()
    fleet.expire(0.0)
    st = fleet.daemonsets[("default", "agent")].status
    assert (st.number_available, st.rollout.phase) == (made, "Progressing")
    assert f"waiting for the pods of every node to be made ({made} so far)" in (
        st.rollout.message)
    while fleet.workloads.expand_slice(0.0):
        fleet.commit()
    fleet.commit()
    await asyncio.sleep(0)
    report_made()
    fleet.expire(0.0)
    st = fleet.daemonsets[("default", "agent")].status
    assert (st.number_available, st.rollout.phase) == (len(names), "Complete")


def test_a_new_template_while_one_waits_does_not_put_every_pod_back_at_once() -> None:
    """The stable template stays the old one while a rollout waits (here for a pod whose
    failure was tolerated). A fixed template applied then rolls out in batches from
    where the pods are: the pods at the waiting update keep it until their batch, none
    goes back to the stable template first (that would restart every node at once)."""
    w = World(4)
    v1, v2, v3 = (staged([v], batch=1, threshold=1) for v in ("v1", "v2", "v3"))
    r1, r2, r3 = rev_of(w, v1), rev_of(w, v2), rev_of(w, v3)
    w.apply(v1)
    w.report_all()
    w.tick()
    w.apply(v2)
    [a] = w.updated(r2)
    w.report(a, waiting="CrashLoopBackOff")  # tolerated
    w.tick()
    while len(w.updated(r2)) < 4:
        for n in w.updated(r2) - {a}:
            w.report(n)
        w.tick()
    for n in w.updated(r2) - {a}:
        w.report(n)
    w.tick()
    assert w.status().rollout.phase == "Progressing" and w.status().current_revision == r1
    w.apply(v3)
    assert w.updated(r1) == set()  # nobody put back
    assert len(w.updated(r3)) == 1 and len(w.updated(r2)) == 3  # one batch of the fix
    for _ in range(8):
        w.report_all()
        w.tick()
        assert w.updated(r1) == set()
    st = w.status()
    assert (st.rollout.phase, st.current_revision) == ("Complete", r3)
    assert w.updated(r3) == set(w.names)
    assert all(w.desired_revision(n) == r3 for n in w.names)
