"""`cloudcore.cluster.bindings.Bindings` against two real fleet cores in one event loop:
the holder of the global lease places Deployment replicas and writes them; the other
shard never schedules them and binds where the writes say; a lease loss drops what was
not written; a new holder goes on from the bindings (tests/integration/
test_shard_placement.py has the same with real shards, NATS and a simulated fleet)."""

from __future__ import annotations

import asyncio
import json

from cloudcore_fakes import add_node, deployment, make_fleet

from cloudcore.cluster.bindings import Bindings, binding_key
from cloudcore.cluster.kv import Entry
from cloudcore.fleet.controller import Fleet
from shared.models import parse_object

NODES = [f"n{i}" for i in range(6)]


class Shard:
    def __init__(self, name: str) -> None:
        self.fleet: Fleet = make_fleet()
        for n in NODES:
            add_node(self.fleet, n)
        self.holds = False
        self.b = Bindings(self.fleet, shard=name, holds_global=lambda: self.holds)
        self.b.caught_up = True

    def apply(self, replicas: int) -> None:
        self.fleet.apply([parse_object(deployment("web", replicas=replicas))])
        self.fleet.commit()

    def placed(self) -> dict[str, str]:
        return {k[1]: n for k, n in self.fleet.placement.bound.items()
                if k[1].startswith("web-")}

    def written(self, rev: list[int]) -> list[Entry]:
        """The holder's outbox as the bucket's change entries (what `_flush` writes)."""
        out = []
        for key, value in self.b._out.items():
            rev[0] += 1
            if value is None:
                out.append(Entry(binding_key(key), b"", rev[0], operation="delete"))
            else:
                out.append(Entry(binding_key(key), json.dumps(
                    {"node": value[0], "message": value[1], "by": "x"}).encode(), rev[0]))
        self.b._out.clear()
        return out


def feed(shard: Shard, entries: list[Entry]) -> None:
    for e in entries:
        shard.b.apply_entry(e)
    shard.fleet.commit()


def test_the_holder_places_the_other_binds_where_it_says() -> None:
    rev = [0]
    a, b = Shard("A"), Shard("B")
    a.holds = True
    a.apply(4)
    b.apply(4)
    assert len(a.placed()) == 4
    assert b.placed() == {}  # B never schedules them itself
    assert all(b.fleet.placement.is_pending(("default", f"web-{i}")) for i in range(4))
    feed(b, a.written(rev))
    assert b.placed() == a.placed()
    # a scale down on both: the holder's unbind is a delete; B's copy goes with its pod
    a.apply(2)
    b.apply(2)
    feed(b, a.written(rev))
    assert b.placed() == a.placed() and len(a.placed()) == 2
    # the holder moves a replica (eviction): B follows
    key = ("default", "web-0")
    other = next(n for n in NODES if n not in a.placed().values())
    a.fleet.placement.move(key, other, f"moved to {other}")
    feed(b, a.written(rev))
    assert b.placed()["web-0"] == other


def test_lease_loss_drops_unwritten_and_the_new_holder_resumes() -> None:
    rev = [0]
    a, b = Shard("A"), Shard("B")
    a.holds = True
    a.apply(3)
    b.apply(3)
    feed(b, a.written(rev))
    first = a.placed()
    # A scales up and loses the lease before its writes went out
    a.apply(5)
    b.apply(5)
    assert len(a.placed()) == 5 and a.b._out
    a.holds = False
    asyncio.run(a.b.global_changed(False))
    assert not a.b._out
    assert a.placed() == first  # its own unwritten bindings undone
    assert b.placed() == first  # B never saw them
    # B takes the lease: the 3 written stay where they are, the 2 others are placed
    b.holds = True
    asyncio.run(b.b.global_changed(True))
    b.fleet.commit()
    now = b.placed()
    assert len(now) == 5 and {k: now[k] for k in first} == first
    written = b.written(rev)
    assert {json.loads(e.value)["node"] for e in written} == {now["web-3"], now["web-4"]}
    assert len(written) == 2  # the adopted ones are not written again
    feed(a, written)
    assert a.placed() == now


def test_a_binding_before_its_pod_and_to_an_unknown_node() -> None:
    a, b = Shard("A"), Shard("B")
    a.holds = True
    a.apply(2)
    rev = [0]
    entries = a.written(rev)
    feed(b, entries)  # B has no Deployment yet: remembered
    assert b.placed() == {}
    b.apply(2)  # the pods appear: bound at the retry
    assert b.placed() == a.placed()
    # a binding to a node B does not know leaves the pod waiting, not bound to nothing
    rev[0] += 1
    b.b.apply_entry(Entry(binding_key(("default", "web-1")),
                          json.dumps({"node": "gone", "message": "m"}).encode(), rev[0]))
    b.fleet.commit()
    assert "web-1" not in b.placed()
    assert b.fleet.placement.is_pending(("default", "web-1"))

