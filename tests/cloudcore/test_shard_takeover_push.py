"""A shard that acquires partitions sends each taken node its desired set at once (a
snapshot under the node's new epoch), not at the node's next report (issue 14, proposal
0008): a change made while the partition had no owner reaches the node within the
takeover. Against the real fleet core and sync hub in one event loop; the nodes'
heartbeat is an hour, and no message from them is handled before the snapshot is
checked, so nothing here can pass by a heartbeat. The sends go through the hub's flow
control: beyond its publish queue limit the nodes wait in its deferred queue."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cloudcore_fakes import add_node, daemonset, hub_and_shard, make_fleet

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.leases import Change
from cloudcore.cluster.status import AWAY_REASON
from cloudcore.synchub.hub import QUEUE_AHEAD
from shared import topics
from shared.codec import Ack, Desired, Report, encode
from shared.models import parse_object

HOUR = 3600  # the nodes' heartbeat: their next report is an hour away


def three_in_one_partition() -> tuple[list[str], int]:
    by: dict[int, list[str]] = {}
    i = 0
    while True:
        n = f"node-{i}"
        i += 1
        p = topics.partition_of(n)
        by.setdefault(p, []).append(n)
        if len(by[p]) == 3:
            return by[p], p


class Summary:
    """The status bucket, holding the previous owner's liveness summary."""

    def __init__(self, key: str, doc: dict[str, Any]) -> None:
        self.key, self.doc = key, doc

    async def get(self, key: str) -> Entry | None:
        return Entry(key, json.dumps(self.doc).encode(), 1) if key == self.key else None

    async def put(self, key: str, value: bytes) -> int:
        return 1


class World:
    def __init__(self) -> None:
        (self.a1, self.a2, self.down), self.p = three_in_one_partition()
        self.fleet = make_fleet()
        for n in (self.a1, self.a2, self.down):
            add_node(self.fleet, n)
            self.fleet.node_status(n, {"heartbeat": HOUR})
        self.now = [100.0]
        self.hub, self.shard, self.sent, self.backlog = hub_and_shard(
            self.fleet, "S2", clock=lambda: self.now[0], wall=lambda: 1000.0)
        # the killed owner's last summary: a1 and a2 Ready, `down` NotReady
        self.shard._status = Summary(  # type: ignore[assignment]
            f"liveness.{topics.pp(self.p)}",
            {"shard": "S1", "at": 998.0, "nodes": {self.a1: ["Ready", 995.0],
                                                   self.a2: ["Ready", 990.0],
                                                   self.down: ["NotReady", 700.0]}})

    def desired(self) -> dict[str, list[Desired]]:
        out: dict[str, list[Desired]] = {}
        for n, m in self.sent:
            if isinstance(m, Desired):
                out.setdefault(n, []).append(m)
        return out

    def take(self) -> None:
        asyncio.run(self.shard.on_change(Change(
            acquired=frozenset({self.p}), lost=frozenset(), owned=frozenset({self.p}))))


def test_a_change_made_during_the_takeover_reaches_the_taken_nodes_at_once() -> None:
    w = World()
    w.fleet.apply([parse_object(daemonset("ds1"))])  # as the killed owner had it
    w.fleet.apply([parse_object(daemonset("ds2"))])  # made while no shard held p
    assert w.desired() == {}  # not this shard's partition yet: nothing sent

    w.take()  # no message from any node is handled: only the takeover sends

    got = w.desired()
    assert set(got) == {w.a1, w.a2}  # `down` is NotReady: it resyncs when it is back
    for n in (w.a1, w.a2):
        nd = w.fleet.desired_sets.desired_for(n)
        [snap] = got[n]
        assert snap.snapshot and snap.epoch == nd.epoch and snap.gen == nd.gen
        assert set(snap.put) == set(nd.items)
        assert any("ds2" in k for k in snap.put)  # the change made during the takeover
        # the edge applies it and acks: acked before its next heartbeat is due
        w.hub.handle(topics.topic(n, "up"), encode(Ack(node=n, epoch=snap.epoch,
                                                       gen=snap.gen)))
        st = w.fleet.nodes[n].status
        assert st.acked_gen == st.desired_gen == nd.gen
    assert w.now[0] == 100.0 and w.fleet.liveness.expired(100.0 + HOUR / 2) == []


def test_the_takeover_snapshots_wait_for_room_in_the_publish_queue() -> None:
    w = World()
    w.fleet.apply([parse_object(daemonset("ds1"))])
    w.backlog[0] = QUEUE_AHEAD  # our publishers are full
    w.take()
    assert w.desired() == {}  # nothing built or queued while the queue is full
    assert w.hub.drain_deferred() == 0

    w.backlog[0] = 0  # room again: the waiting nodes get their snapshots, in turn
    assert w.hub.drain_deferred() == 2
    got = w.desired()
    assert set(got) == {w.a1, w.a2}
    assert all(len(ms) == 1 and ms[0].snapshot for ms in got.values())


def test_one_snapshot_per_taken_node_across_takeover_update_and_next_report() -> None:
    """The hub's side of the shard kill's two snapshots per moved node (issue 14): one
    acquisition sends each taken node one snapshot, whatever comes after it: a change
    while its ack is on the way, a report the node sent in the previous owner's epoch
    before the snapshot reached it, the ack, then its next heartbeat. (The second
    snapshot came from a second acquisition of the same partitions: the lease churn
    fixed in `Member.live_members`, tests/unit/test_cluster_member_logic.py.)"""
    w = World()
    w.fleet.apply([parse_object(daemonset("ds1"))])
    w.take()
    up = dict.fromkeys((w.a1, w.a2), 0)

    def send(n: str, msg: Any) -> None:
        w.hub.handle(topics.topic(n, "up"), encode(msg))

    def report(n: str, epoch: str, gen: int) -> None:
        up[n] += 1
        send(n, Report(node=n, seq=up[n] + 1000, epoch=epoch, gen=gen, ts=1000.0))

    snap = {n: w.desired()[n][0] for n in up}
    w.fleet.apply([parse_object(daemonset("ds2"))])  # the snapshots' acks are on the way
    for n in up:
        report(n, "the-previous-owners-epoch", 3)  # sent before the snapshot arrived
    for n in up:
        send(n, Ack(node=n, epoch=snap[n].epoch, gen=snap[n].gen))
    got = w.desired()
    for n in up:
        nd = w.fleet.desired_sets.desired_for(n)
        assert [m.snapshot for m in got[n]] == [True, False]  # ds2 followed as a delta
        [delta] = got[n][1:]
        assert delta.epoch == nd.epoch and delta.base == snap[n].gen and delta.gen == nd.gen
        send(n, Ack(node=n, epoch=delta.epoch, gen=delta.gen))
        report(n, nd.epoch, nd.gen)  # its next heartbeat, in this shard's epoch
    assert {n: [m.snapshot for m in ms] for n, ms in w.desired().items()} == \
        {n: [True, False] for n in up}
    for n in up:
        st = w.fleet.nodes[n].status
        assert st.acked_gen == st.desired_gen == w.fleet.desired_sets.desired_for(n).gen


class Lapsed:
    """A member whose lease of every partition lapsed during the takeover (its guard
    dropped them; the "expired" change waits behind the acquisition's)."""

    owned: frozenset[int] = frozenset()

    def partition_revision(self, p: int) -> int | None:
        return None


def test_a_partition_lapsed_during_its_takeover_is_not_opened() -> None:
    """Issue 14: a takeover of tens of thousands of nodes ran longer than a lease period
    on a saturated loop. Before, the partitions whose lease lapsed meanwhile were still
    added to the shard's own, subscribed to and sent snapshots, until the "expired"
    change (waiting behind the takeover) took them away again: two shards acted as the
    nodes' owner at once."""
    w = World()
    w.fleet.apply([parse_object(daemonset("ds1"))])
    subscribed: list[list[str]] = []

    async def subscribe(filters: list[str]) -> None:
        subscribed.append(filters)

    w.shard._subscribe = subscribe
    w.shard.member = Lapsed()  # type: ignore[assignment]
    w.take()
    assert w.p not in w.shard.owned
    assert not w.shard.owns(w.p)
    assert all(f == [] for f in subscribed), f"subscribed a lapsed partition: {subscribed}"
    assert w.desired() == {}, "snapshots sent for a partition no longer held"
    # then the loss is announced: the nodes are another shard's
    asyncio.run(w.shard.on_change(Change(acquired=frozenset(), lost=frozenset({w.p}),
                                         owned=frozenset(), reason="expired")))
    for n in (w.a1, w.a2, w.down):
        assert w.fleet.nodes[n].status.reason == AWAY_REASON
