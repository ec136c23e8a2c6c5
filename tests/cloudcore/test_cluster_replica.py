"""A shard's replica of the global objects and its node status summaries (issue 14 part
2, proposal 0008 steps 2 and 5) against the real fleet core, fed KV entries directly
(the real NATS side is tests/integration/test_shard_objects.py)."""

from __future__ import annotations

import asyncio
import json

import pytest
from cloudcore_fakes import add_node, daemonset, make_fleet

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.objects import ClusterObjects, object_key
from cloudcore.cluster.status import AWAY_REASON, NodeStatuses, node_key
from cloudcore.store.encryption import KeyRing
from shared import topics


def record(doc: dict, uid: str = "u-1") -> bytes:
    return json.dumps({"object": doc, "uid": uid, "creationTimestamp": "2026-01-01T00:00:00Z",
                       "by": "A"}).encode()


def test_entries_apply_like_a_local_apply_with_one_identity() -> None:
    fleet = make_fleet()
    for n in ("n1", "n2"):
        add_node(fleet, n)
    rep = ClusterObjects(fleet, shard="B", keys=KeyRing.generate())
    key = object_key("DaemonSet", "default", "agent")
    rep.apply_entry(Entry(key=key, value=record(daemonset()), revision=7))
    ds = fleet.objects.lookup("DaemonSet", ("default", "agent"))
    assert ds is not None and ds.metadata.uid == "u-1"
    assert ds.metadata.creation_timestamp == "2026-01-01T00:00:00Z"
    assert {k[1].split("-")[0] for k in fleet.objects.pods} == {"agent"}
    assert {fleet.placement.node_of(k) for k in fleet.objects.pods} == {"n1", "n2"}
    assert rep.revision == 7 and rep.version_of("DaemonSet", "default", "agent") == 7
    assert rep.version_by_key("DaemonSet", ("default", "agent")) == 7
    # the same value again (a restart's replay) changes nothing
    rep.apply_entry(Entry(key=key, value=record(daemonset()), revision=7))
    assert fleet.objects.lookup("DaemonSet", ("default", "agent")).metadata.generation == 1
    # a deletion removes it and what it owns
    rep.apply_entry(Entry(key=key, value=b"", revision=9, operation="delete"))
    assert fleet.objects.lookup("DaemonSet", ("default", "agent")) is None
    assert not [k for k in fleet.objects.pods if k[1].startswith("agent-")]
    assert rep.revision == 9 and rep.version_of("DaemonSet", "default", "agent") is None
    # what cannot be applied here is counted and skipped, the revision still advances
    bad = object_key("ConfigMap", "nowhere", "c")
    rep.apply_entry(Entry(key=bad, value=record({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "nowhere"}, "data": {}}), revision=10))
    assert rep.failed == 1 and rep.revision == 10


def test_secret_values_are_encrypted_in_kv_and_read_back() -> None:
    fleet = make_fleet()
    keys = KeyRing.generate()
    rep = ClusterObjects(fleet, shard="A", keys=keys)
    from shared.models import parse_object

    secret = parse_object({"apiVersion": "v1", "kind": "Secret",
                           "metadata": {"name": "s", "namespace": "default"},
                           "stringData": {"password": "hunter2"}})
    key = object_key("Secret", "default", "s")
    raw = rep._encode(key, secret, uid="u-2", created=None)
    assert b"hunter2" not in raw and b"aHVudGVyMg" not in raw
    other = ClusterObjects(make_fleet(), shard="B", keys=keys)
    other.apply_entry(Entry(key=key, value=raw, revision=3))
    got = other.fleet.objects.lookup("Secret", ("default", "s"))
    assert got is not None and got.decoded()["password"] == b"hunter2"
    # under another key the value does not decrypt: refused, not applied
    third = ClusterObjects(make_fleet(), shard="C", keys=KeyRing.generate())
    third.apply_entry(Entry(key=key, value=raw, revision=3))
    assert third.failed == 1 and third.fleet.objects.lookup("Secret", ("default", "s")) is None


def test_status_summaries_only_changes_and_never_over_own_nodes() -> None:
    fleet = make_fleet()
    for n in ("n1", "n2", "n3", "n4"):
        add_node(fleet, n)
    mine = {topics.partition_of("n1"), topics.partition_of("n2")}
    others = ["n3", "n4"]
    assert not {topics.partition_of(n) for n in others} & mine
    st = NodeStatuses(fleet, shard="A", owns=lambda p: p in mine, seen_every=15.0)
    first = asyncio.run(st.changed_summaries())
    assert set(first) == {"n1", "n2"}
    assert json.loads(first["n1"])["ready"] == "Ready"
    assert asyncio.run(st.changed_summaries()) == {}  # nothing changed: nothing written
    fleet.objects.nodes["n1"].status.ready = "NotReady"
    assert set(asyncio.run(st.changed_summaries())) == {"n1"}
    # another shard's summary: shown for its node, ignored for ours
    for name in ("n1", *others):
        doc = {"shard": "B", "ready": "Ready", "reason": None, "lastSeen": 123.0,
               "agentVersion": "9.9", "desiredGen": 5, "ackedGen": 5}
        st.show(Entry(key=node_key(name), value=json.dumps(doc).encode(), revision=1))
    for name in others:
        s = fleet.objects.nodes[name].status
        assert (s.ready, s.reason, s.last_seen, s.acked_gen) == ("Ready", AWAY_REASON,
                                                                 123.0, 5)
    assert fleet.objects.nodes["n1"].status.ready == "NotReady"
    # a node this shard just lost (Unknown, OwnedByAnotherShard) reads the owner's view
    # again at the next pass
    fleet.objects.nodes["n3"].status.ready = "Unknown"
    fleet.objects.nodes["n3"].status.reason = AWAY_REASON
    asyncio.run(st.changed_summaries())
    assert fleet.objects.nodes["n3"].status.ready == "Ready"


def test_changes_since_a_revision_and_forgotten_deletions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudcore.cluster.objects as objects_mod

    fleet = make_fleet()
    rep = ClusterObjects(fleet, shard="B")

    def cm(name: str) -> bytes:
        return record({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": name, "namespace": "default",
                                    "labels": {"app": "x"}}, "data": {"k": name}})

    for rev, name in enumerate(("a", "b", "c"), 1):
        rep.apply_entry(Entry(object_key("ConfigMap", "default", name), cm(name), rev))
    rep.apply_entry(Entry(object_key("ConfigMap", "default", "b"), b"", 4,
                          operation="delete"))
    rep.apply_entry(Entry(object_key("ConfigMap", "default", "c"), cm("c"), 5))
    got = rep.changes_since("ConfigMap", 2)
    assert got is not None
    changed, deleted = got
    assert changed == [("default", "c")]
    assert [(k, body["metadata"]["resourceVersion"], body["metadata"]["labels"])
            for k, body in deleted] == [(("default", "b"), "4", {"app": "x"})]
    assert rep.changes_since("ConfigMap", 5) == ([], [])
    assert rep.changes_since("DaemonSet", 0) == ([], [])
    # only TOMBSTONES_KEPT deletions are remembered: older resumes are refused (None)
    monkeypatch.setattr(objects_mod, "TOMBSTONES_KEPT", 1)
    rep.apply_entry(Entry(object_key("ConfigMap", "default", "a"), b"", 6,
                          operation="delete"))
    assert rep.forgotten == 4
    assert rep.changes_since("ConfigMap", 3) is None
    assert rep.changes_since("ConfigMap", 4) == ([("default", "c")],
                                                 [(("default", "a"), rep.tombstones[
                                                     ("ConfigMap", ("default", "a"))][1])])
