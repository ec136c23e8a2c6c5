"""A Deployment scaled while its maxSurge rollout is under way, over two shards (real
fleet cores in one event loop; `cloudcore.cluster.rollouts`, proposal 0008).

The holder of the global lease alone decides such a Deployment's pods: the other shard
does not scale it on its own (its pod set could be behind the holder's, so it would
pick other indexes), and takes the new pods from the holder's pod sets, which the scale
marks to be written. Before, each shard scaled on its own: a shard whose pod set was
behind made pods the holder never had (and never wrote a set for), and a set written
before the scale, read after it, removed pods the scale had made there.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cloudcore_fakes import deployment
from shard_cores import rev_of
from test_shard_surge_steps import REPLICAS, Shard, exchange, settle, status, surge

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.rollouts import SharedSteps, step_key

OWNER = "Deployment/default/web"


def scaled(doc: dict[str, Any], replicas: int) -> dict[str, Any]:
    doc["spec"]["replicas"] = replicas
    return doc


def web_pods(s: Shard) -> set[str]:
    return {k[1] for k in s.fleet.pods if k[1].startswith("web-")}


class Versioned(Shard):
    """A shard whose steps replica knows the version of its copy of the Deployment (the
    objects bucket revision it applied), as `cloudcore --shard` wires it."""

    def __init__(self, name: str, *, holds: bool) -> None:
        super().__init__(name, holds=holds)
        self.version = 0
        self.steps = SharedSteps(self.fleet, shard=name, holds_global=self.holding,
                                 fence=self.fence, version=lambda kind, key: self.version)
        self.steps.caught_up = True

    def apply(self, doc: dict[str, Any]) -> None:
        super().apply(doc)
        self.version = doc["metadata"].get("resourceVersion", self.version + 1)


def start_rollout(kind: type[Shard] = Shard) -> tuple[Any, Any, dict[str, Any]]:
    """Two shards at v1 (6 replicas), then v2 applied: the holder's rollout under way
    with surge pods made, both shards holding the same pods."""
    v1, v2 = surge(["v1"]), surge(["v2"])
    a, b = kind("A", holds=True), kind("B", holds=False)
    for s in (a, b):
        s.apply(v1)
    settle(a, b, 5, lambda: status(a).rollout.phase == "Complete")
    assert status(a).rollout.phase == "Complete"
    for s in (a, b):
        s.apply(v2)
    a.tick()  # the first surge pods
    exchange(a, b)
    assert len(web_pods(a)) > REPLICAS and web_pods(a) == web_pods(b)
    return a, b, v2


def late_steps(a: Shard) -> list[tuple[str, bytes]]:
    """The holder's next steps as it writes them now, kept back from the other shard
    (a watch that delivers them late)."""
    for s in (a,):
        s.report()
    a.tick()
    out = [(step_key(*k), a.steps.value(k, 7)) for k in sorted(a.steps._out)]
    a.steps._out.clear()
    return out


def deliver(b: Shard, values: list[tuple[str, bytes]]) -> None:
    for key, value in values:
        b.rev += 1
        b.steps.apply_entry(Entry(key, value, b.rev))
    b.fleet.commit()


def finish(a: Shard, b: Shard, replicas: int) -> None:
    r2 = rev_of(surge(["v2"]))
    missing: list[set[str]] = [set()]
    lasting: list[set[str]] = []

    def done() -> bool:
        # every pod the holder bound to the other shard's nodes is there after the
        # exchanges that follow (its owner delivers it): none removed by a late set
        away = {k[1] for k, n in a.fleet.placement.bound.items()
                if n in b.own() and k[1].startswith("web-")}
        now = away - web_pods(b)
        if now & missing[-1]:
            lasting.append(now & missing[-1])
        missing.append(now)
        return (status(a).rollout.phase == "Complete"
                and status(a).updated_replicas == replicas)

    settle(a, b, 60, done)
    assert status(a).rollout.phase == "Complete", status(a).rollout
    for _ in range(3):
        exchange(a, b)
        b.tick()
    final = {**a.running(), **b.running()}
    assert len(final) == replicas, sorted(final)
    assert {r for _, r in final.values()} == {r2}
    # both shards hold the same pods, bound to the same nodes
    assert web_pods(a) == web_pods(b) == set(final), (sorted(web_pods(a)),
                                                      sorted(web_pods(b)))
    for s in (a, b):
        assert {k[1]: n for k, n in s.fleet.placement.bound.items()} == \
            {name: node for name, (node, _) in final.items()}
    assert not lasting, lasting  # bound there by the holder, missing there
    st = b.fleet.rollouts.plans.state(OWNER)
    assert st is not None and st.stable is not None and st.stable.revision == r2


def test_a_scale_up_during_a_maxsurge_rollout_is_decided_by_the_holder() -> None:
    a, b, v2 = start_rollout()
    held = late_steps(a)  # the holder's sets before the scale, delivered after it
    for s in (a, b):
        s.apply(scaled(v2, REPLICAS + 3))
    deliver(b, held)
    exchange(a, b)  # the holder's pod sets of the scale: the same pods on both at once
    assert web_pods(b) == web_pods(a)
    finish(a, b, REPLICAS + 3)


def test_a_scale_down_during_a_maxsurge_rollout_is_decided_by_the_holder() -> None:
    a, b, v2 = start_rollout()
    held = late_steps(a)
    for s in (a, b):
        s.apply(scaled(v2, REPLICAS - 3))
    deliver(b, held)
    exchange(a, b)  # the holder's pod sets of the scale: the same pods on both at once
    assert web_pods(b) == web_pods(a)
    finish(a, b, REPLICAS - 3)


def test_the_other_shard_reads_the_scale_before_the_holder() -> None:
    """The follower's copy of the Deployment changes first (its objects replica is
    ahead): it waits for the holder's pod sets and makes nothing itself."""
    a, b, v2 = start_rollout()
    before = web_pods(b)
    b.apply(scaled(v2, REPLICAS + 4))
    assert web_pods(b) == before  # the holder decides
    held = late_steps(a)
    a.apply(scaled(v2, REPLICAS + 4))
    deliver(b, held)
    finish(a, b, REPLICAS + 4)


def test_the_end_waits_for_the_scale_on_the_other_shard() -> None:
    """The holder ends the rollout at the new count while the other shard's copy of the
    Deployment still has the old one: the end waits there for the copy (its sync would
    remove the pods above the old count, running ones, and make them again later)."""
    a, b, v2 = start_rollout(Versioned)
    a.apply(scaled(v2, REPLICAS + 3))  # B's objects replica is behind
    settle(a, b, 60, lambda: status(a).rollout.phase == "Complete"
           and status(a).updated_replicas == REPLICAS + 3)
    assert status(a).rollout.phase == "Complete"
    for _ in range(3):
        exchange(a, b)
        b.steps._retry()
    assert len(web_pods(a)) == REPLICAS + 3 and web_pods(b) == web_pods(a)
    uids = {k: p.metadata.uid for k, p in b.fleet.pods.items()}
    st = b.fleet.rollouts.plans.state(OWNER)
    assert st is not None and st.stable is not None
    assert st.stable.revision != rev_of(v2)  # not ended here yet
    b.apply(scaled(surge(["v2"]), REPLICAS + 3))
    b.steps._retry()
    assert st.stable.revision == rev_of(v2)  # now it is, and nothing was made again
    assert {k: p.metadata.uid for k, p in b.fleet.pods.items()} == uids
    finish(a, b, REPLICAS + 3)


def test_a_deployment_with_no_rollout_under_way_is_scaled_by_each_shard() -> None:
    """Without a rollout under way nothing waits for the holder: both scale alike."""
    doc = deployment("web", replicas=REPLICAS)
    a, b = Shard("A", holds=True), Shard("B", holds=False)
    for s in (a, b):
        s.apply(doc)
    exchange(a, b)
    b.apply(scaled(deployment("web", replicas=REPLICAS), REPLICAS + 2))
    assert len(web_pods(b)) == REPLICAS + 2


def test_a_scale_made_while_no_shard_holds_the_lease_is_made_by_the_next_holder() -> None:
    """The scale arrives while the global lease is between holders (the holder died,
    its lease not yet taken): no shard scales a Deployment under a maxSurge rollout on
    its own, so the shard that takes the lease scales it then. Before, the scale waited
    for the next apply of the Deployment (or a restart)."""
    a, b, v2 = start_rollout()
    a.holds = False  # A's lease ran out; nobody holds it
    before = web_pods(a)
    for s in (a, b):
        s.apply(scaled(v2, REPLICAS + 3))
    assert web_pods(a) == web_pods(b) == before  # no shard decides
    b.holds = True
    asyncio.run(b.steps.global_changed(True))  # as `Shard.on_global` calls it
    assert len(web_pods(b)) > len(before)  # the new holder made the scale's pods
    finish(b, a, REPLICAS + 3)
