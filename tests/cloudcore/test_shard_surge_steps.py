"""A Deployment's maxSurge rollout across shards, against real fleet cores in one event
loop (`cloudcore.cluster.rollouts`, `bindings`, `status`): the holder of the global lease
makes the surge pods and places them on any shard's nodes, removes old ones, and writes
each pp's pod set with its steps; the other shard makes and removes the same pods, so
its nodes run the surge pods the holder bound there. Before, the other shard never made
them: a surge pod bound to its node ran nowhere and the rollout waited for it forever."""

from __future__ import annotations

import json
from typing import Any

from cloudcore_fakes import deployment
from shard_cores import ShardCore, rev_of, share_summaries

from cloudcore.cluster.bindings import Bindings, binding_key
from cloudcore.cluster.kv import Entry
from cloudcore.cluster.rollouts import END, SharedSteps, step_key
from cloudcore.fleet.naming import REVISION
from shared.entries import pod_key

REPLICAS = 6


def surge(args: list[str]) -> dict[str, Any]:
    doc = deployment("web", replicas=REPLICAS)
    spec = doc["spec"]
    spec["template"]["spec"]["containers"][0]["args"] = args
    spec.update({"minReadySeconds": 0, "progressDeadlineSeconds": 600,
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0},
                              "failureThreshold": 0, "autoRollback": True}})
    return doc


class Shard(ShardCore):
    def __init__(self, name: str, *, holds: bool) -> None:
        super().__init__(name, holds=holds)
        self.fleet.rollouts.clock = self.clock
        self.b = Bindings(self.fleet, shard=name, holds_global=self.holding,
                          fence=self.fence)
        self.b.caught_up = True
        self.steps = SharedSteps(self.fleet, shard=name, holds_global=self.holding,
                                 fence=self.fence)
        self.steps.caught_up = True
        self.bad = ""

    def running(self) -> dict[str, tuple[str, str]]:
        """What this shard's own nodes' desired sets hold: pod -> (node, revision)."""
        out = {}
        for node in self.own():
            nd = self.fleet.desired.get(node)
            for key, (value, _) in (nd.items.items() if nd is not None else ()):
                if key.startswith("pod/default/web-"):
                    out[key.rsplit("/", 1)[1]] = (node, str(value["revision"]))
        return out

    def report(self) -> None:
        """Each own node reports every pod its set holds, Running (failing at `bad`)."""
        for name, (node, rev) in self.running().items():
            ok = rev != self.bad
            container: dict[str, Any] = (
                {"name": "main", "state": "running", "ready": True} if ok else
                {"name": "main", "state": "waiting", "reason": "CrashLoopBackOff",
                 "restartCount": 3})
            self.fleet.pod_statuses(node, {pod_key("default", name): {
                "phase": "Running", "revision": rev, "ready": ok,
                "containerStatuses": [container]}})


def exchange(a: Shard, b: Shard) -> None:
    """The holder's bindings and steps to the other shard (steps before ends, as its
    writer puts them), then the status summaries both ways."""
    for key, value in list(a.b._out.items()):
        b.rev += 1
        node, message = value if value is not None else (None, "")
        b.b.apply_entry(Entry(binding_key(key), json.dumps(
            {"node": node, "message": message, "by": a.name, "fence": 7}).encode(), b.rev))
    a.b._out.clear()
    for k in sorted(a.steps._out, key=lambda k: (k[1] == END, k)):
        b.rev += 1
        b.steps.apply_entry(Entry(step_key(*k), a.steps.value(k, 7), b.rev))
    a.steps._out.clear()
    b.fleet.commit()
    share_summaries(a, b)


def status(s: Shard) -> Any:
    return s.fleet.deployments[("default", "web")].status


def settle(a: Shard, b: Shard, rounds: int, until: Any) -> list[dict[str, tuple[str, str]]]:
    """Rounds of exchange, reports, the holder's tick; what ran fleet-wide each round."""
    seen = []
    for _ in range(rounds):
        exchange(a, b)
        for s in (a, b):
            s.report()
        exchange(a, b)
        a.tick()
        seen.append({**a.running(), **b.running()})
        if until():
            break
    exchange(a, b)
    return seen


def start(v1: dict[str, Any]) -> tuple[Shard, Shard]:
    a, b = Shard("A", holds=True), Shard("B", holds=False)
    for s in (a, b):
        s.apply(v1)
    settle(a, b, 5, lambda: status(a).rollout.phase == "Complete")
    assert status(a).rollout.phase == "Complete"
    assert len({**a.running(), **b.running()}) == REPLICAS
    return a, b


def test_a_maxsurge_rollout_makes_its_surge_pods_on_every_shard() -> None:
    v1, v2 = surge(["v1"]), surge(["v2"])
    r2 = rev_of(v2)
    a, b = start(v1)
    for s in (a, b):
        s.apply(v2)
    seen = settle(a, b, 40, lambda: status(a).rollout.phase == "Complete"
                  and status(a).updated_replicas == REPLICAS)
    assert status(a).rollout.phase == "Complete", status(a).rollout
    final = {**a.running(), **b.running()}
    assert len(final) == REPLICAS and {r for _, r in final.values()} == {r2}
    # the surge: never more than replicas + maxSurge pods ran, never fewer than replicas
    # (maxUnavailable 0), and some ran above replicas
    assert all(REPLICAS <= len(s) <= REPLICAS + 2 for s in seen), [len(s) for s in seen]
    assert any(len(s) > REPLICAS for s in seen)
    # B made pods the holder made (surge pods bound to its nodes) and removed old ones
    assert b.steps.made_here > 0 and b.steps.removed_here > 0
    # both shards hold the same pods, bound to the same nodes, all at the update
    for s in (a, b):
        pods = {k[1]: p for k, p in s.fleet.pods.items() if k[1].startswith("web-")}
        assert sorted(pods) == sorted(final)
        assert {p.metadata.annotations[REVISION] for p in pods.values()} == {r2}
        assert {k[1]: n for k, n in s.fleet.placement.bound.items()} == \
            {name: node for name, (node, _) in final.items()}
    st = b.fleet.rollouts.plans.state("Deployment/default/web")
    assert st is not None and st.stable is not None and st.stable.revision == r2


def test_a_maxsurge_rollout_rolled_back_by_the_holder_ends_alike_on_both() -> None:
    v1, v3 = surge(["v1"]), surge(["v3"])
    r1, r3 = rev_of(v1), rev_of(v3)
    a, b = start(v1)
    for s in (a, b):
        s.bad = r3
        s.apply(v3)
    seen = settle(a, b, 20, lambda: status(a).rollout.phase == "RolledBack")
    assert status(a).rollout.phase == "RolledBack"
    assert any(r == r3 for s in seen for _, r in s.values())
    for _ in range(3):
        exchange(a, b)
        a.tick()
    final = {**a.running(), **b.running()}
    assert len(final) == REPLICAS and {r for _, r in final.values()} == {r1}
    assert sorted(k[1] for k in a.fleet.pods if k[1].startswith("web-")) == \
        sorted(k[1] for k in b.fleet.pods if k[1].startswith("web-")) == sorted(final)


def test_an_end_is_not_held_by_an_older_rollouts_step_left_in_the_bucket() -> None:
    a, b = start(surge(["v1"]))
    owner = "Deployment/default/web"
    # a key of a rollout whose template B never had (left in the bucket): it waits
    b.rev += 1
    b.steps.apply_entry(Entry(step_key(owner, "00"), json.dumps(
        {"update": "0ld", "pods": ["web-9"], "by": "A", "fence": 7}).encode(), b.rev))
    assert (owner, "00") in b.steps._todo
    v2 = surge(["v2"])
    r2 = rev_of(v2)
    for s in (a, b):
        s.apply(v2)
    settle(a, b, 40, lambda: status(a).rollout.phase == "Complete"
           and status(a).updated_replicas == REPLICAS)
    assert status(a).rollout.phase == "Complete"
    st = b.fleet.rollouts.plans.state(owner)
    assert st is not None and st.stable is not None and st.stable.revision == r2
