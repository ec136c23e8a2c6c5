"""Fleet-wide work of the holder of the global lease over other shards' nodes, against
real fleet cores in one event loop (cloudcore.cluster.status, bindings, objects):

- eviction: a replica on another shard's node that stays NotReady is moved by the
  holder, through the bindings, which the owner follows; not while the node's owner
  is dead or its partition is being taken over (its NotReady clock starts again from
  the new owner's word);
- drain through a shard that does not hold the lease: the holder moves the replicas
  when the shared NodeSpec (with the drain mark) reaches it, and the draining shard
  does not put them back on the drained node meanwhile;
- pods waiting for the holder show reason WaitingForPlacement on the other shards.
"""

from __future__ import annotations

import asyncio
import json

from cloudcore_fakes import add_node, deployment, make_fleet

from cloudcore.cluster.bindings import Bindings, binding_key
from cloudcore.cluster.kv import Entry
from cloudcore.cluster.objects import NODE_SPEC, ClusterObjects, object_key
from cloudcore.cluster.status import NodeStatuses, node_key
from cloudcore.fleet.controller import Fleet
from shared import topics
from shared.models import parse_object

NODES = [f"n{i}" for i in range(8)]
OWNER = {n: ("A" if i % 2 == 0 else "B") for i, n in enumerate(NODES)}
assert len({topics.partition_of(n) for n in NODES}) == len(NODES)  # one partition each
PART_OWNER = {topics.partition_of(n): s for n, s in OWNER.items()}


class Shard:
    """A shard's fleet core with its bindings and node status summaries."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fleet: Fleet = make_fleet()
        for n in NODES:
            add_node(self.fleet, n)
        self.t = [1000.0]
        self.fleet.eviction.clock = lambda: self.t[0]
        self.holds = False
        self.token = 0
        self.holders = dict(PART_OWNER)  # partition -> the live lease holder (None: dead)
        self.b = Bindings(self.fleet, shard=name, holds_global=lambda: self.holds,
                          fence=lambda: self.token if self.holds else None)
        self.b.caught_up = True
        self.st = NodeStatuses(self.fleet, shard=name,
                               owns=lambda p: PART_OWNER[p] == name,
                               holder=self.holders.get)
        self.objects = ClusterObjects(self.fleet, shard=name)
        self.rev = 0

    def apply(self, replicas: int) -> None:
        self.fleet.apply([parse_object(deployment("web", replicas=replicas))])
        self.fleet.commit()

    def placed(self) -> dict[str, str]:
        return {k[1]: n for k, n in self.fleet.placement.bound.items()
                if k[1].startswith("web-")}

    def summary(self, node: str, ready: str, *, by: str | None = None) -> None:
        """Another shard's status summary of `node` arrives."""
        self.rev += 1
        doc = {"shard": by or OWNER[node], "ready": ready, "reason": None,
               "lastSeen": 1.0, "agentVersion": "1", "desiredGen": 1, "ackedGen": 1}
        self.st.show(Entry(node_key(node), json.dumps(doc).encode(), self.rev))

    def tick(self, dt: float) -> int:
        """The global part of the liveness tick, `dt` seconds on."""
        self.t[0] += dt
        self.fleet.eviction.mark_lost()
        moved = self.fleet.eviction.run()
        self.fleet.commit()
        return moved

    def written(self) -> list[Entry]:
        out = []
        for key, value in self.b._out.items():
            self.rev += 1
            node, message = value if value is not None else (None, "")
            out.append(Entry(binding_key(key), json.dumps(
                {"node": node, "message": message, "by": self.name, "fence": self.token}
            ).encode(), self.rev))
        self.b._out.clear()
        return out


def feed(shard: Shard, entries: list[Entry]) -> None:
    for e in entries:
        shard.b.apply_entry(e)
    shard.fleet.commit()


def pair(replicas: int = 8) -> tuple[Shard, Shard]:
    a, b = Shard("A"), Shard("B")
    a.holds, a.token = True, 5
    a.apply(replicas)
    b.apply(replicas)
    feed(b, a.written())
    assert b.placed() == a.placed() and len(a.placed()) == replicas
    return a, b


def on_b_node(a: Shard) -> tuple[str, list[str]]:
    """A node of shard B holding replicas, and those replicas."""
    by_node: dict[str, list[str]] = {}
    for pod, node in a.placed().items():
        by_node.setdefault(node, []).append(pod)
    node = next(n for n in sorted(by_node) if OWNER[n] == "B")
    return node, by_node[node]


def test_holder_evicts_replicas_off_another_shards_long_notready_node() -> None:
    a, b = pair()
    node, pods = on_b_node(a)
    timeout = a.fleet.eviction.timeout
    a.summary(node, "NotReady")  # B says its node is NotReady
    assert a.tick(timeout - 10) == 0  # within the toleration: nothing moves
    assert all(a.placed()[p] == node for p in pods)
    assert a.tick(20) == len(pods)
    moved = a.placed()
    assert all(moved[p] != node for p in pods)
    assert all(OWNER[moved[p]] in ("A", "B") and moved[p] != node for p in pods)
    # through the bindings: B, which owns the node, takes them off its desired set
    feed(b, a.written())
    assert b.placed() == moved
    assert not set(b.fleet.placement.on_node(node)) & {("default", p) for p in pods}


def test_no_eviction_while_the_owner_is_dead_or_being_taken_over() -> None:
    a, _ = pair()
    node, pods = on_b_node(a)
    p = topics.partition_of(node)
    timeout = a.fleet.eviction.timeout
    a.summary(node, "NotReady")
    assert a.tick(timeout - 60) == 0
    # B dies: its lease expires (nobody holds the partition) ...
    a.holders[p] = None
    assert a.tick(120) == 0
    # ... then C takes the partition over; B's summary is an old word
    a.holders[p] = "C"
    assert a.tick(timeout + 10) == 0
    assert all(a.placed()[q] == node for q in pods)
    # C's first summary keeps the node NotReady: the clock counts from now
    a.summary(node, "NotReady", by="C")
    assert a.tick(timeout - 10) == 0
    assert a.tick(20) == len(pods)
    assert all(a.placed()[q] != node for q in pods)


def test_a_node_back_to_ready_stops_its_clock() -> None:
    a, _ = pair()
    node, pods = on_b_node(a)
    timeout = a.fleet.eviction.timeout
    a.summary(node, "NotReady")
    assert a.tick(timeout - 10) == 0
    a.summary(node, "Ready")
    assert a.tick(timeout) == 0
    assert all(a.placed()[q] == node for q in pods)


def spec_entry(shard: Shard, node: str, *, drain: bool) -> Entry:
    shard.rev += 1
    doc = {"labels": {}, "spec": {"unschedulable": True}, "by": "B",
           **({"drain": True} if drain else {})}
    return Entry(object_key(NODE_SPEC, None, node), json.dumps(doc).encode(), shard.rev)


def test_drain_through_a_shard_not_holding_the_lease_moves_replicas_fleet_wide() -> None:
    a, b = pair()
    node, pods = on_b_node(a)
    keys = {("default", p) for p in pods}
    result = b.fleet.drain(node)  # through B's API
    assert {f"default/{p}" for p in pods} == {e["pod"] for e in result["evicted"]}
    # B does not put them back on the drained node from the holder's old bindings
    b.fleet.commit()
    assert not keys & set(b.fleet.placement.on_node(node))
    for k in keys:
        assert b.fleet.pods[k].status.reason == "WaitingForPlacement"
    # the shared NodeSpec with the drain mark reaches the holder: it moves them
    a.objects.apply_entry(spec_entry(a, node, drain=True))
    asyncio.run(asyncio.sleep(0))
    a.fleet.commit()
    moved = a.placed()
    assert all(moved[p] != node for p in pods)
    assert a.fleet.nodes[node].spec.unschedulable
    feed(b, a.written())
    assert b.placed() == moved
    # a plain cordon (no drain mark) moves nothing
    c, _ = pair()
    node2, pods2 = on_b_node(c)
    c.objects.apply_entry(spec_entry(c, node2, drain=False))
    c.fleet.commit()
    assert all(c.placed()[p] == node2 for p in pods2)


def test_a_later_holder_honours_a_drain_mark() -> None:
    a, b = pair()
    node, pods = on_b_node(a)
    a.holds = False  # no holder when the drain arrives
    asyncio.run(a.b.global_changed(False))
    b.objects.apply_entry(spec_entry(b, node, drain=True))
    b.fleet.commit()
    assert all(b.placed()[p] == node for p in pods)  # nobody moved them yet
    b.holds, b.token = True, 9
    asyncio.run(b.b.global_changed(True))
    b.fleet.commit()
    assert all(b.placed()[p] != node for p in pods)


def test_pods_waiting_for_the_holder_say_so() -> None:
    a, b = Shard("A"), Shard("B")
    a.holds, a.token = True, 5
    b.apply(3)  # B got the Deployment before the holder bound anything
    for i in range(3):
        st = b.fleet.pods[("default", f"web-{i}")].status
        assert (st.phase, st.reason) == ("Pending", "WaitingForPlacement")
    a.apply(3)
    feed(b, a.written())
    assert len(b.placed()) == 3
    assert all(b.fleet.pods[("default", f"web-{i}")].status.reason == "Scheduled"
               for i in range(3))
