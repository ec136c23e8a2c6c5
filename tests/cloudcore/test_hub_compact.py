"""The sync hub's per-node state kept small (issue 14, cloud RSS at 100,000 nodes): a
settled node has no delivery link and still gets deltas from its acked gen in our
epoch; a node in another epoch or with a delta in flight keeps its link until it acks;
the compact key cache follows a changed key; every per-node dict holds one string per
node name however many messages named it; while the publish queue is full a node's
delta is not built, the node waits by name and gets one delta of its latest set, in
turn, when there is room."""

from __future__ import annotations

import asyncio
from typing import Any

from cloudcore_fakes import FakeStore, add_node, daemonset, make_fleet

from cloudcore.config import SyncSettings
from cloudcore.metrics import Metrics
from cloudcore.synchub.hub import DROPPED, QUEUE_AHEAD, RESENT, SyncHub
from shared import seal, topics
from shared.codec import DOWN_LIMITS, Ack, Desired, Report, ReportAck, Resync, decode, encode
from shared.models import parse_object


class Store(FakeStore):
    def durable(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class World:
    def __init__(self) -> None:
        self.backlog = [0]
        self.keys = {"n1": bytes(range(32)), "n2": bytes(range(1, 33))}
        self.fleet = make_fleet(Store())
        self.metrics = Metrics()
        self.now = [0.0]
        self.hub = SyncHub(nodes=self.fleet, desired=self.fleet.desired_sets,
                           store=Store(), settings=SyncSettings(),  # type: ignore[arg-type]
                           metrics=self.metrics, clock=lambda: self.now[0],
                           keys=self.keys.get)
        self.wire: list[tuple[str, bytes]] = []
        self.hub.attach(lambda part, t, p, broker: self.wire.append((t, p)),
                        backlog=lambda: self.backlog[0])

    def up(self, node: str, msg: Any, *, key: bytes | None = None) -> None:
        topic = "/".join(topics.up(node).split("/"))  # a string of its own, as parsed
        k = seal.NodeKeys.derive(key or self.keys[node]).up
        self.hub.handle(topic, seal.seal(k, topic, encode(msg)), broker="mq-0")

    def down(self, node: str, *, key: bytes | None = None) -> list[Any]:
        k = seal.NodeKeys.derive(key or self.keys[node]).down
        out = [decode(seal.unseal(k, t, p), limits=DOWN_LIMITS)
               for t, p in self.wire if t == topics.down(node)]
        self.wire = [(t, p) for t, p in self.wire if t != topics.down(node)]
        return out


def _connected(w: World, node: str) -> Desired:
    """`node` registered, resynced from nothing and acked its snapshot."""
    add_node(w.fleet, node)
    w.up(node, Resync(node=node, epoch=None, gen=0))
    (snap,) = [m for m in w.down(node) if isinstance(m, Desired)]
    assert snap.snapshot
    assert w.hub.link_state(node)["inflight"] == snap.gen
    w.up(node, Ack(node=node, epoch=snap.epoch, gen=snap.gen))
    return snap


async def test_a_settled_node_keeps_no_link_and_gets_deltas_from_its_acked_gen() -> None:
    w = World()
    snap = _connected(w, "n1")
    assert "n1" not in w.hub._links
    assert w.hub.link_state("n1") == {"epoch": snap.epoch, "inflight": None,
                                      "attempts": 0, "broker": "mq-0"}
    w.fleet.apply([parse_object(daemonset(args=["sleep", "2"]))])
    (delta,) = w.down("n1")
    assert isinstance(delta, Desired) and not delta.snapshot
    assert (delta.epoch, delta.base) == (snap.epoch, snap.gen) and delta.gen > snap.gen
    assert w.hub._links["n1"].inflight == delta.gen
    # not acked in time: resent, the same delta, and the link stays until the ack
    w.now[0] += 3600
    assert w.hub.retry_due(w.now[0]) == 1
    (again,) = w.down("n1")
    assert (again.base, again.gen) == (delta.base, delta.gen)
    assert w.metrics.value(RESENT) == 1 and w.hub._links["n1"].attempts == 1
    w.up("n1", Ack(node="n1", epoch=delta.epoch, gen=delta.gen))
    assert "n1" not in w.hub._links and w.hub._in_flight == 0
    # an ack carried by a report settles it too
    w.fleet.apply([parse_object(daemonset(args=["sleep", "3"]))])
    (d3,) = w.down("n1")
    w.up("n1", Report(node="n1", seq=1, epoch=d3.epoch, gen=d3.gen))
    assert [type(m) for m in w.down("n1")] == [ReportAck]
    assert "n1" not in w.hub._links and w.hub._in_flight == 0


async def test_a_node_in_another_epoch_keeps_its_link_until_it_acks_the_snapshot() -> None:
    w = World()
    _connected(w, "n1")
    w.hub.restart_links(["n1"])  # a shard took it over: the edge is not in our epoch
    w.fleet.desired_sets.restart_epoch("n1", "e-new", why="taken over")
    w.fleet.apply([parse_object(daemonset(args=["sleep", "2"]))])
    (snap,) = w.down("n1")
    assert snap.snapshot and snap.epoch == "e-new"
    w.up("n1", Ack(node="n1", epoch=snap.epoch, gen=snap.gen))
    assert "n1" not in w.hub._links
    w.fleet.apply([parse_object(daemonset(args=["sleep", "3"]))])
    (delta,) = w.down("n1")
    assert not delta.snapshot and (delta.epoch, delta.base) == ("e-new", snap.gen)


async def test_the_key_cache_follows_a_changed_key() -> None:
    w = World()
    _connected(w, "n1")
    old, new = w.keys["n1"], bytes(range(100, 132))
    w.keys["n1"] = new
    w.up("n1", Report(node="n1", seq=1), key=old)
    assert w.metrics.value(DROPPED, reason="auth_failed") == 1
    w.up("n1", Report(node="n1", seq=2))
    (rack,) = w.down("n1", key=new)  # sealed with the new key's k_down
    assert isinstance(rack, ReportAck) and rack.seq == 2
    del w.keys["n1"]
    w.up("n1", Report(node="n1", seq=3), key=new)
    assert w.metrics.value(DROPPED, reason="unknown_node") == 1
    assert "n1" not in w.hub._node_keys


async def test_one_string_per_node_name_in_the_per_node_dicts() -> None:
    w = World()
    _connected(w, "n1")
    w.up("n1", Report(node="n1", seq=1, telemetry=[{"cpu": 0.5}]))  # its ack waits
    names = [next(k for k in d if k == "n1")
             for d in (w.hub._node_keys, w.hub.routes._last, w.hub._lazy)]
    assert all(n is names[0] for n in names)


async def test_deltas_wait_by_name_while_the_publish_queue_is_full() -> None:
    w = World()
    names = [f"n{i}" for i in range(1, 3)]
    for i, name in enumerate(names):
        w.keys[name] = bytes(range(10 + i, 42 + i))
        _connected(w, name)
    w.backlog[0] = QUEUE_AHEAD
    w.fleet.apply([parse_object(daemonset(args=["sleep", "2"]))])
    w.fleet.apply([parse_object(daemonset(args=["sleep", "3"]))])
    first, second = w.hub._deferred
    assert w.wire == [] and {first, second} == set(names)
    assert w.hub._in_flight == 0 and not w.hub._links  # nothing built, nothing to retry
    assert w.hub.drain_deferred() == 0  # still full
    w.backlog[0] = QUEUE_AHEAD - 1
    assert w.hub.drain_deferred(limit=1) == 1  # in turn: the first one
    (d1,) = w.down(first)
    assert w.down(second) == [] and list(w.hub._deferred) == [second]
    w.backlog[0] = 0
    assert w.hub.drain_deferred() == 1
    (d2,) = w.down(second)
    for d, name in ((d1, first), (d2, second)):  # one delta of the latest set each
        nd = w.fleet.desired_sets.get(name)
        assert nd is not None and not d.snapshot and d.gen == nd.gen
        assert any("sleep" in str(v) and "3" in str(v) for v in d.put.values())
    # a node's own resync is answered at once, and takes it out of the wait
    w.backlog[0] = QUEUE_AHEAD
    w.up(first, Ack(node=first, epoch=d1.epoch, gen=d1.gen))
    w.up(second, Ack(node=second, epoch=d2.epoch, gen=d2.gen))
    w.fleet.apply([parse_object(daemonset(args=["sleep", "4"]))])
    assert set(w.hub._deferred) == set(names)
    w.up(first, Resync(node=first, epoch=d1.epoch, gen=d1.gen))
    nd = w.fleet.desired_sets.get(first)
    assert nd is not None and [m.gen for m in w.down(first)] == [nd.gen]
    assert list(w.hub._deferred) == [second]


async def test_the_retry_loop_sends_the_waiting_deltas_when_the_queue_drains() -> None:
    w = World()
    _connected(w, "n1")
    loop = asyncio.create_task(w.hub.run_retries())
    try:
        w.backlog[0] = QUEUE_AHEAD
        w.fleet.apply([parse_object(daemonset(args=["sleep", "2"]))])
        await asyncio.sleep(0.1)
        assert w.down("n1") == [] and list(w.hub._deferred) == ["n1"]
        w.backlog[0] = 0
        for _ in range(100):
            await asyncio.sleep(0.01)
            if w.wire:
                break
        (delta,) = w.down("n1")
        assert not w.hub._deferred and delta.gen == w.fleet.desired_sets.get("n1").gen  # type: ignore[union-attr]
    finally:
        loop.cancel()
