"""A staged DaemonSet rollout across shards, against real fleet cores in one event loop:
the holder of the global lease sees every shard's pods through the node status
summaries (`cloudcore.cluster.status`) and decides each batch; the other shards give
their copies the update from the shared steps (`cloudcore.cluster.rollouts`), so each
pod's owner delivers it, and the rollout completes everywhere (before, it never went
past the first batch). A rollback decided by the holder reaches the other shard too."""

from __future__ import annotations

import itertools
import json
from typing import Any

from cloudcore_fakes import daemonset
from shard_cores import NODES, ShardCore, rev_of, share_summaries

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.rollouts import SharedSteps, step_key
from cloudcore.fleet.naming import REVISION
from shared import topics
from shared.entries import pod_key


def staged(args: list[str], *, threshold: int = 0) -> dict[str, Any]:
    doc = daemonset(args=args)
    doc["spec"].update({
        "minReadySeconds": 0, "progressDeadlineSeconds": 600,
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2},
                           "failureThreshold": threshold, "autoRollback": True}})
    return doc


class Shard(ShardCore):
    def __init__(self, name: str, *, holds: bool) -> None:
        super().__init__(name, holds=holds)
        self.fleet.rollouts.clock = self.clock
        self.steps = SharedSteps(self.fleet, shard=name, holds_global=self.holding,
                                 fence=self.fence)
        self.steps.caught_up = True

    def desired_revision(self, node: str) -> str:
        (value, _), = self.fleet.desired[node].items.values()
        return str(value["revision"])

    def report(self, *, failing: bool = False) -> None:
        """Each own node's agent reports its pod at the revision its set holds."""
        for node in self.own():
            pod = next(p for p in self.fleet.pods.values() if p.spec.node_name == node)
            rev = self.desired_revision(node)
            container: dict[str, Any] = {"name": "main", "state": "running", "ready": True}
            ready = True
            if failing and rev == self.bad:
                container = {"name": "main", "state": "waiting",
                             "reason": "CrashLoopBackOff", "restartCount": 3}
                ready = False
            self.fleet.pod_statuses(node, {pod_key(pod.metadata.namespace,
                                                   pod.metadata.name): {
                "phase": "Running", "revision": rev, "ready": ready,
                "containerStatuses": [container]}})

    bad = ""


def exchange(a: Shard, b: Shard) -> None:
    """Summaries both ways, the holder's steps to the other."""
    share_summaries(a, b)
    for k in sorted(a.steps._out):
        b.rev += 1
        b.steps.apply_entry(Entry(step_key(*k), a.steps.value(k, 7), b.rev))
    a.steps._out.clear()


def delivered(s: Shard) -> dict[str, str]:
    return {n: s.desired_revision(n) for n in s.own()}


def test_a_staged_daemonset_rollout_completes_across_shards() -> None:
    a, b = Shard("A", holds=True), Shard("B", holds=False)
    v1, v2 = staged(["v1"]), staged(["v2"])
    r2 = rev_of(v2)
    for s in (a, b):
        s.apply(v1)
    for _ in range(3):
        for s in (a, b):
            s.report()
        exchange(a, b)
        a.tick()
    assert a.fleet.daemonsets[("default", "agent")].status.rollout.phase == "Complete"
    for s in (a, b):
        s.apply(v2)
    # the first batch: the holder's two pods in name order; B gave none itself
    assert sum(r == r2 for r in delivered(b).values()) == 0
    seen_batches = []
    for _ in range(30):
        exchange(a, b)
        for s in (a, b):
            s.report()
        exchange(a, b)
        a.tick()
        now = {**delivered(a), **delivered(b)}
        seen_batches.append(sum(r == r2 for r in now.values()))
        if a.fleet.daemonsets[("default", "agent")].status.rollout.phase == "Complete":
            break
    exchange(a, b)
    assert {**delivered(a), **delivered(b)} == dict.fromkeys(NODES, r2)
    assert a.fleet.daemonsets[("default", "agent")].status.rollout.phase == "Complete"
    # never more than maxUnavailable (2) new ones not yet reported healthy per round
    assert all(y - x <= 2 for x, y in itertools.pairwise(seen_batches))
    # B ended the rollout as the holder did: its copies all at r2, v2 its stable
    assert all(p.metadata.annotations[REVISION] == r2 for p in b.fleet.pods.values())
    assert b.steps.given_here > 0
    st = b.fleet.rollouts.plans.state("DaemonSet/default/agent")
    assert st is not None and st.stable is not None and st.stable.revision == r2


def test_a_rollback_decided_by_the_holder_reaches_the_other_shard() -> None:
    a, b = Shard("A", holds=True), Shard("B", holds=False)
    v1, v3 = staged(["v1"]), staged(["v3"])
    r1, r3 = rev_of(v1), rev_of(v3)
    for s in (a, b):
        s.apply(v1)
        s.bad = r3
    for _ in range(3):
        for s in (a, b):
            s.report()
        exchange(a, b)
        a.tick()
    for s in (a, b):
        s.apply(v3)
    b_had_r3 = False
    for _ in range(10):
        exchange(a, b)
        b_had_r3 |= r3 in delivered(b).values()
        for s in (a, b):
            s.report(failing=True)
        exchange(a, b)
        a.tick()
    exchange(a, b)
    assert b_had_r3  # the first batch held a pod of B's, which failed there
    assert a.fleet.daemonsets[("default", "agent")].status.rollout.phase == "RolledBack"
    assert {**delivered(a), **delivered(b)} == dict.fromkeys(NODES, r1)
    assert json.loads(a.steps.value(("DaemonSet/default/agent", "end"), 7))[
        "outcome"] == "RolledBack"


def test_steps_not_written_under_an_earlier_lease_are_dropped() -> None:
    a = Shard("A", holds=True)
    owner = "DaemonSet/default/agent"
    a.steps.given(owner, "h1", [("default", "agent-n0")])
    assert a.steps._out
    a.holds = False  # lost the lease before writing; takes it again later
    a.steps.given(owner, "h1", [("default", "agent-n1")])  # not the holder: nothing
    a.holds, a.token = True, 12
    a.steps.given(owner, "h2", [("default", "agent-n2")])
    part = topics.pp(topics.partition_of("agent-n2"))
    assert part != topics.pp(topics.partition_of("agent-n0"))
    assert a.steps._out == {(owner, part)}
    assert json.loads(a.steps.value((owner, part), 12))["pods"] == ["agent-n2"]
