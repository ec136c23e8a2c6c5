"""Property tests of the delta algebra: under any loss, duplication and reordering
of desired messages the edge either converges on the cloud's set or asks for a
resync, and after resyncs it always converges."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.codec import Desired, decode, encode
from shared.delta import EdgeDesired, NodeDesired, Outcome

KEYS = [f"pod/default/p{i}" for i in range(6)]

op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.integers(0, 3)),
    st.tuples(st.just("del"), st.sampled_from(KEYS), st.just(0)),
    st.tuples(st.just("replace"), st.sets(st.sampled_from(KEYS)), st.integers(0, 3)),
    st.tuples(st.just("collect"), st.just(""), st.just(0)),
)


def _mutate(cloud: NodeDesired, action: tuple[str, object, int]) -> None:
    kind, key, value = action
    if kind == "put":
        cloud.put(str(key), {"v": value})
    elif kind == "del":
        cloud.delete(str(key))
    elif kind == "replace":
        cloud.replace({k: {"v": value} for k in key})  # type: ignore[union-attr]
    else:
        cloud.collect()


def _deliver(edge: EdgeDesired, msg: Desired, cloud: NodeDesired) -> EdgeDesired:
    """The edge's handling, including the ack it sends back to the cloud."""
    msg = decode(encode(msg))  # every message crosses the wire format
    outcome = edge.classify(msg)
    if outcome is Outcome.APPLIED:
        edge = edge.applied(msg)
        cloud.ack(edge.epoch or "", edge.gen)
    elif outcome is Outcome.DUPLICATE:
        cloud.ack(edge.epoch or "", edge.gen)
    return edge


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(op, min_size=1, max_size=25),
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0, 0.6),
    dup=st.floats(0, 0.6),
)
def test_converges_under_loss_duplication_reordering(ops, seed, loss, dup):
    rng = random.Random(seed)
    cloud = NodeDesired(node="n1", epoch="e1")
    edge = EdgeDesired()
    in_flight: list[Desired] = []
    for action in ops:
        _mutate(cloud, action)
        # the cloud sends a delta from what it believes acked (or a stale base)
        base = rng.choice([cloud.acked, max(0, cloud.acked - 1), edge.gen])
        in_flight.append(cloud.delta(base, edge.epoch if rng.random() < 0.9 else None))
        if rng.random() < dup and in_flight:
            in_flight.append(rng.choice(in_flight))
        rng.shuffle(in_flight)
        while in_flight and rng.random() < 0.7:
            msg = in_flight.pop()
            if rng.random() < loss:
                continue
            before = (edge.epoch, edge.gen, dict(edge.items))
            outcome = edge.classify(decode(encode(msg)))
            edge = _deliver(edge, msg, cloud)
            if outcome is not Outcome.APPLIED:
                assert (edge.epoch, edge.gen, edge.items) == before
            # safety: whatever the edge holds at gen g is exactly what the cloud had at g
            if outcome is Outcome.APPLIED and edge.gen == cloud.gen:
                assert edge.items == cloud.values()
    # heal: the edge asks for a resync from its gen until it is current
    for _ in range(3):
        if edge.gen == cloud.gen and edge.epoch == cloud.epoch:
            break
        edge = _deliver(edge, cloud.delta(edge.gen, edge.epoch), cloud)
    assert edge.epoch == cloud.epoch
    assert edge.gen == cloud.gen
    assert edge.items == cloud.values()
    assert cloud.acked == cloud.gen


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(op, min_size=1, max_size=20), base=st.integers(0, 25))
def test_delta_from_any_valid_base_equals_cloud_state(ops, base):
    """apply(delta(b), state_at(b)) == state_at(gen): replay history to get state_at(b)."""
    cloud = NodeDesired(node="n1", epoch="e1")
    history: dict[int, dict] = {0: {}}
    for action in ops:
        if action[0] == "collect":
            continue  # collection is exercised above; here every base stays valid
        _mutate(cloud, action)
        history[cloud.gen] = cloud.values()
    base = min(base, cloud.gen)
    # the state at `base` is the last recorded state at or before it
    at_base = history[max(g for g in history if g <= base)]
    edge = EdgeDesired(epoch="e1", gen=base, items=dict(at_base))
    msg = cloud.delta(base, "e1")
    if cloud.gen == base:
        assert edge.classify(msg) is Outcome.DUPLICATE
    else:
        assert not msg.snapshot
        assert edge.classify(msg) is Outcome.APPLIED
        assert edge.applied(msg).items == cloud.values()


def test_collected_tombstones_force_snapshot():
    cloud = NodeDesired(node="n", epoch="e")
    cloud.put("pod/a/x", 1)
    cloud.put("pod/a/y", 2)
    cloud.delete("pod/a/x")
    assert cloud.ack("e", 3)
    assert cloud.collect() == 1
    assert cloud.delta(1, "e").snapshot  # base older than the collected tombstone
    assert not cloud.delta(3, "e").snapshot


def test_new_epoch_forces_snapshot_and_edge_takes_it():
    cloud = NodeDesired(node="n", epoch="e2")
    cloud.put("pod/a/x", 1)
    edge = EdgeDesired(epoch="e1", gen=50, items={"pod/a/old": 1})
    msg = cloud.delta(50, "e1")
    assert msg.snapshot
    assert edge.classify(msg) is Outcome.APPLIED
    assert edge.applied(msg).items == {"pod/a/x": 1}


def test_gap_is_detected():
    cloud = NodeDesired(node="n", epoch="e")
    for i in range(5):
        cloud.put(f"pod/a/p{i}", i)
    edge = EdgeDesired(epoch="e", gen=1, items={"pod/a/p0": 0})
    late = cloud.delta(3, "e")
    assert edge.classify(late) is Outcome.GAP


def test_replace_is_one_gen():
    cloud = NodeDesired(node="n", epoch="e")
    assert cloud.replace({"a": 1, "b": 2})
    assert cloud.gen == 1
    assert not cloud.replace({"a": 1, "b": 2})
    assert cloud.gen == 1


def test_record_roundtrip():
    cloud = NodeDesired(node="n", epoch="e")
    cloud.put("a", {"x": [1, 2]})
    cloud.delete("a")
    cloud.put("b", 3)
    again = NodeDesired.from_record(decode_record(cloud.to_record()))
    assert again == cloud


def decode_record(r):
    import msgpack

    return msgpack.unpackb(msgpack.packb(r), raw=False, strict_map_key=False)
