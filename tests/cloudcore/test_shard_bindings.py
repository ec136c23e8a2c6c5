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
        self.token = 0  # the global lease's revision while held (the fencing token)
        self.b = Bindings(self.fleet, shard=name, holds_global=lambda: self.holds,
                          fence=lambda: self.token if self.holds else None)
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
            node, message = value if value is not None else (None, "")
            out.append(Entry(binding_key(key), json.dumps(
                {"node": node, "message": message, "by": "x", "fence": self.token}
            ).encode(), rev[0]))
        self.b._out.clear()
        return out


def feed(shard: Shard, entries: list[Entry]) -> None:
    for e in entries:
        shard.b.apply_entry(e)
    shard.fleet.commit()


def test_the_holder_places_the_other_binds_where_it_says() -> None:
    rev = [0]
    a, b = Shard("A"), Shard("B")
    a.holds, a.token = True, 5
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
    a.holds, a.token = True, 5
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
    b.holds, b.token = True, 9
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
    a.holds, a.token = True, 5
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
                          json.dumps({"node": "gone", "message": "m", "fence": 5}).encode(),
                          rev[0]))
    b.fleet.commit()
    assert "web-1" not in b.placed()
    assert b.fleet.placement.is_pending(("default", "web-1"))



def test_a_former_holders_late_write_is_refused_and_healed() -> None:
    rev = [0]
    a, b, c = Shard("A"), Shard("B"), Shard("C")
    a.holds, a.token = True, 5
    for s in (a, b, c):
        s.apply(2)
    first = a.written(rev)
    feed(b, first)
    feed(c, first)
    placed = c.placed()
    # B takes the global lease (token 9) and announces it; A, paused past its lease,
    # then writes a binding under its old token
    a.holds = False
    b.holds, b.token = True, 9
    asyncio.run(b.b.global_changed(True))
    rev[0] += 1
    announce = Entry("fence", json.dumps({"fence": 9, "by": "B"}).encode(), rev[0])
    feed(c, [announce])
    feed(b, [announce])
    other = next(n for n in NODES if n not in placed.values())
    rev[0] += 1
    late = Entry(binding_key(("default", "web-0")), json.dumps(
        {"node": other, "message": "late", "by": "A", "fence": 5}).encode(), rev[0])
    feed(c, [late])
    assert c.placed() == placed and c.b.fenced == 1  # refused
    feed(b, [late])  # the holder writes its own binding over it
    assert b.b._out[("default", "web-0")] == (placed["web-0"], b.b.remote[
        ("default", "web-0")][1])
    healed = b.written(rev)
    feed(c, healed)
    assert c.placed() == placed and c.b.fenced == 1  # token 9: taken
    # a late write before the new token was announced: the others take it, the holder
    # (which knows its token) refuses it and writes its own over it
    d = Shard("D")
    d.apply(2)
    feed(d, first)
    rev[0] += 1
    early = Entry(binding_key(("default", "web-1")), json.dumps(
        {"node": other, "message": "late", "by": "A", "fence": 5}).encode(), rev[0])
    feed(d, [early])
    assert d.placed()["web-1"] == other
    feed(b, [early])
    fix = b.written(rev)
    assert len(fix) == 1 and json.loads(fix[0].value)["node"] == placed["web-1"]
    feed(d, fix)
    assert d.placed() == placed
    # a write under the current token is taken as before
    b.fleet.placement.move(("default", "web-0"), other, "moved")
    feed(c, b.written(rev))
    assert c.placed()["web-0"] == other
