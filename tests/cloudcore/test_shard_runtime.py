"""`cloudcore.cluster.shard.Shard` against the real fleet core and sync hub, in one event
loop (the leases themselves are tested in test_cluster_member_logic.py and against a
real nats-server; the whole shard in tests/integration/test_shards.py).

Checked here: the order of a change (an acquisition opens the hub's gate before it
subscribes; a loss closes it before it unsubscribes), the takeover from the previous
owner's liveness summary (Ready stays Ready, its NotReady deadline counted from the
summary's last_seen; a node missing from it starts Unknown with a full window), a new
epoch per taken node (the first message is a snapshot), nothing sent to or accepted
from a node of a partition not held, and the global work stopped before a global loss
returns."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cloudcore_fakes import FakeStore, add_node, daemonset, make_fleet

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.leases import Change, LeaseSettings
from cloudcore.cluster.shard import GatedNodes, Shard, partition_filters
from cloudcore.config import SyncSettings
from cloudcore.metrics import Metrics
from cloudcore.synchub.hub import SyncHub
from shared import topics
from shared.codec import Ack, Desired, Report, decode, encode
from shared.models import parse_object

DROPPED = "cloudcore_messages_dropped_total"


def names() -> tuple[str, str, str, int, int]:
    """a1, a2 in one partition, b1 in another; and the two partitions."""
    by: dict[int, list[str]] = {}
    i = 0
    while True:
        n = f"node-{i}"
        i += 1
        by.setdefault(topics.partition_of(n), []).append(n)
        two = [p for p, ns in by.items() if len(ns) >= 2]
        if two:
            pa = two[0]
            pb = next((p for p in by if p != pa), None)
            if pb is not None:
                return by[pa][0], by[pa][1], by[pb][0], pa, pb


class FakeStatus:
    def __init__(self, docs: dict[str, dict[str, Any]]) -> None:
        self.docs = docs
        self.puts: dict[str, bytes] = {}

    async def get(self, key: str) -> Entry | None:
        doc = self.docs.get(key)
        return None if doc is None else Entry(key, json.dumps(doc).encode(), 1)

    async def put(self, key: str, value: bytes) -> int:
        self.puts[key] = value
        return 1


class World:
    def __init__(self) -> None:
        self.a1, self.a2, self.b1, self.pa, self.pb = names()
        self.fleet = make_fleet()
        for n in (self.a1, self.a2, self.b1):
            add_node(self.fleet, n)  # heartbeat 10 s: NotReady after 30 s
        self.now = [100.0]
        self.wall = [1000.0]
        self.metrics = Metrics()
        self.shard: Shard | None = None
        self.hub = SyncHub(nodes=GatedNodes(self.fleet, is_global=lambda: False),
                           desired=self.fleet.desired_sets, store=FakeStore(),  # type: ignore[arg-type]
                           settings=SyncSettings(), metrics=self.metrics,
                           clock=lambda: self.now[0], insecure=True)
        self.sent: list[tuple[str, Any]] = []
        self.hub.attach(lambda p, t, payload, b: self.sent.append(
            (topics.parse(t)[0], decode(payload))))  # type: ignore[index]
        self.calls: list[tuple[str, list[str], dict[int, bool]]] = []

        async def sub(filters: list[str]) -> None:
            self.calls.append(("sub", filters, self.gate()))

        async def unsub(filters: list[str]) -> None:
            self.calls.append(("unsub", filters, self.gate()))

        self.shard = Shard(name="S1", fleet=self.fleet, hub=self.hub, subscribe=sub,
                           unsubscribe=unsub, lease=LeaseSettings(name="S1"),
                           status_interval=3.0, clock=lambda: self.now[0],
                           wall=lambda: self.wall[0])
        self.shard.forget_all()
        self.status = FakeStatus({f"liveness.{topics.pp(self.pa)}": {
            "shard": "S0", "at": 998.0, "nodes": {self.a1: ["Ready", 990.0]}}})
        self.shard._status = self.status  # type: ignore[assignment]

    def gate(self) -> dict[int, bool]:
        assert self.shard is not None
        return {self.pa: self.shard.owns(self.pa), self.pb: self.shard.owns(self.pb)}

    def report(self, node: str, seq: int) -> None:
        self.hub.handle(topics.topic(node, "up"),
                        encode(Report(node=node, seq=seq, epoch=None, gen=0)))


def change(acquired: set[int] = frozenset(), lost: set[int] = frozenset(),  # type: ignore[assignment]
           owned: set[int] = frozenset(), **kw: Any) -> Change:  # type: ignore[assignment]
    return Change(acquired=frozenset(acquired), lost=frozenset(lost), owned=frozenset(owned),
                  **kw)


def test_acquire_then_lose_a_partition() -> None:
    w = World()
    assert w.shard is not None
    nodes, liveness = w.fleet.nodes, w.fleet.liveness

    # before any lease: nothing accepted, no deadline armed
    w.report(w.a1, 1)
    assert w.metrics.value(DROPPED, reason="not_owned") == 1
    assert liveness.expired(10_000.0) == []

    asyncio.run(w.shard.on_change(change({w.pa, w.pb}, owned={w.pa, w.pb})))
    assert w.calls == [("sub", partition_filters([w.pa, w.pb]), {w.pa: True, w.pb: True})]
    assert (nodes[w.a1].status.ready, nodes[w.a1].status.reason) == ("Ready", "ShardTakeover")
    assert nodes[w.a1].status.last_seen == 990.0
    assert nodes[w.a2].status.ready == "Unknown" and nodes[w.b1].status.ready == "Unknown"
    # a1 was last heard 10 s before (wall 990 vs 1000): 20 s of its 30 s window are left
    assert liveness.expired(100.0 + 19.5) == []
    assert liveness.expired(100.0 + 20.5) == [w.a1]
    assert sorted(liveness.expired(100.0 + 30.5)) == sorted([w.a2, w.b1])
    liveness.heard(w.a1, 130.0)
    liveness.heard(w.a2, 130.0)
    liveness.heard(w.b1, 130.0)

    # the first message to a taken node is a snapshot under a new epoch
    w.fleet.apply([parse_object(daemonset("ds1"))])
    first = {n: m for n, m in w.sent if isinstance(m, Desired)}
    assert set(first) == {w.a1, w.a2, w.b1}
    epochs = {m.epoch for m in first.values()}
    assert all(m.snapshot for m in first.values()) and "e1" not in epochs
    assert len(epochs) == 3  # one new epoch per node
    for n, m in first.items():  # the edges ack: the next change goes as a delta
        w.hub.handle(topics.topic(n, "up"), encode(Ack(node=n, epoch=m.epoch, gen=m.gen)))
    assert w.fleet.nodes[w.b1].status.acked_gen == first[w.b1].gen

    # its summary as this shard writes it
    doc = json.loads(w.shard.summary([w.a1, w.a2]))
    assert doc["shard"] == "S1" and doc["at"] == 1000.0
    assert doc["nodes"][w.a1] == ["Ready", 990.0] and doc["nodes"][w.a2][0] == "Unknown"

    # the summaries the shard writes every status_interval, one key per held partition
    async def write_for_a_moment() -> None:
        w.shard.status_interval = 0.01
        task = asyncio.create_task(w.shard._write_status())
        await asyncio.sleep(0.1)
        task.cancel()
    asyncio.run(write_for_a_moment())
    put_a = json.loads(w.status.puts[f"liveness.{topics.pp(w.pa)}"])
    put_b = json.loads(w.status.puts[f"liveness.{topics.pp(w.pb)}"])
    assert set(put_a["nodes"]) == {w.a1, w.a2} and set(put_b["nodes"]) == {w.b1}

    # losing pa: the gate is closed before the unsubscription, nothing more goes there
    w.calls.clear()
    w.sent.clear()
    asyncio.run(w.shard.on_change(change(lost={w.pa}, owned={w.pb})))
    assert w.calls == [("unsub", partition_filters([w.pa]), {w.pa: False, w.pb: True})]
    assert (nodes[w.a1].status.ready, nodes[w.a1].status.reason) == (
        "Unknown", "OwnedByAnotherShard")
    w.fleet.apply([parse_object(daemonset("ds2"))])
    after = [(n, m) for n, m in w.sent if isinstance(m, Desired)]
    assert [n for n, _ in after] == [w.b1] and not after[0][1].snapshot
    dropped = w.metrics.value(DROPPED, reason="not_owned")
    w.report(w.a1, 5)
    assert w.metrics.value(DROPPED, reason="not_owned") == dropped + 1
    assert liveness.expired(10_000.0) == [w.b1]  # a1 and a2 have no deadline here


def test_a_taken_node_shows_this_shards_desired_gen_not_the_previous_owners() -> None:
    """While another shard owned it, the node's status showed that owner's gens (its
    summary); taking it over, the status shows this shard's set: the gen it sends and
    that the edge's ack will be compared with, and nothing acked yet."""
    w = World()
    assert w.shard is not None
    w.fleet.apply([parse_object(daemonset("ds1"))])
    ours = w.fleet.desired_sets.desired_for(w.a1).gen
    st = w.fleet.nodes[w.a1].status
    st.desired_gen, st.acked_gen = ours + 7, ours + 7  # as a foreign summary showed it
    asyncio.run(w.shard.on_change(change({w.pa}, owned={w.pa})))
    assert (st.desired_gen, st.acked_gen) == (ours, 0)
    # the snapshot goes out at the takeover (cluster.shard pushes taken nodes) or, as
    # here, at the edge's next message (an ack in the previous owner's epoch); its ack
    # completes it
    w.hub.handle(topics.topic(w.a1, "up"), encode(Ack(node=w.a1, epoch="prev", gen=1)))
    snap = next(m for n, m in w.sent if n == w.a1 and isinstance(m, Desired))
    assert snap.snapshot and snap.gen == ours
    w.hub.handle(topics.topic(w.a1, "up"), encode(Ack(node=w.a1, epoch=snap.epoch,
                                                      gen=snap.gen)))
    assert st.acked_gen == st.desired_gen == ours


def test_global_work_stops_before_the_loss_returns() -> None:
    w = World()
    assert w.shard is not None
    state: list[str] = []

    async def work() -> None:
        state.append("started")
        try:
            await asyncio.Event().wait()
        finally:
            state.append("stopped")

    w.shard.gated("test.global-work", work)

    async def scenario() -> None:
        async with asyncio.TaskGroup() as tg:
            w.shard._tg = tg  # as Shard.run sets it
            await w.shard.on_change(change(global_acquired=True, holds_global=True))
            await asyncio.sleep(0.01)
            assert state == ["started"] and w.shard.holds_global
            await w.shard.on_change(change(global_lost=True))
            assert state == ["started", "stopped"] and not w.shard.holds_global
            w.shard._tg = None

    asyncio.run(scenario())
