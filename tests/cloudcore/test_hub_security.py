"""The sync hub under proposal 0002, with fakes (no broker): sealed in and out, unknown
and forged senders dropped and counted, Secret values sealed per node, a node cannot
label itself into a workload, drift ends in a snapshot under a new epoch, and an entry
too big for the wire never blocks a node's other updates."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from cloudcore_fakes import FakeStore, add_node, daemonset, make_fleet

from cloudcore.config import SyncSettings
from cloudcore.metrics import Metrics
from cloudcore.synchub.hub import DRIFT, DROPPED, LABELS_REFUSED, UNDELIVERABLE, SyncHub
from shared import seal, topics
from shared.codec import (
    DOWN_LIMITS,
    Ack,
    Desired,
    Report,
    ReportAck,
    Request,
    Resync,
    decode,
    encode,
)
from shared.delta import LEFT_EPOCH, EdgeDesired
from shared.entries import pod_key
from shared.errors import AuthFailed
from shared.models import parse_object

KEYS = {"n1": bytes(range(32)), "n2": bytes(range(1, 33))}
SECRET_VALUE = b"hunter2-very-secret"


class Store(FakeStore):
    """FakeStore that is always durable (reports are acked at once)."""

    def durable(self) -> asyncio.Future[None]:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class World:
    def __init__(self, *, insecure: bool = False, keys: dict[str, bytes] | None = None) -> None:
        self.keys = dict(KEYS if keys is None else keys)
        self.fleet = make_fleet(Store())
        self.metrics = Metrics()
        self.hub = SyncHub(nodes=self.fleet, desired=self.fleet.desired_sets,
                           store=Store(), settings=SyncSettings(),  # type: ignore[arg-type]
                           metrics=self.metrics, clock=lambda: 0.0, keys=self.keys.get,
                           insecure=insecure)
        self.wire: list[tuple[str, bytes]] = []
        self.hub.attach(lambda part, t, p, broker: self.wire.append((t, p)))

    def k(self, node: str) -> seal.NodeKeys:
        return seal.NodeKeys.derive(self.keys[node])

    def up(self, node: str, msg: Any, *, key: bytes | None = None, raw: bool = False) -> None:
        topic = topics.up(node)
        payload = encode(msg)
        if not raw:
            payload = seal.seal(key or self.k(node).up, topic, payload)
        self.hub.handle(topic, payload)

    def down(self, node: str) -> list[Any]:
        """Messages sent to `node` since the last call, unsealed and decoded."""
        out, rest = [], []
        for topic, payload in self.wire:
            if topic == topics.down(node):
                out.append(decode(seal.unseal(self.k(node).down, topic, payload),
                                  limits=DOWN_LIMITS))
            else:
                rest.append((topic, payload))
        self.wire = rest
        return out

    def dropped(self, reason: str) -> float:
        return self.metrics.value(DROPPED, reason=reason)


async def test_messages_are_sealed_both_ways_and_forgeries_dropped() -> None:
    w = World()
    add_node(w.fleet, "n1")
    w.fleet.apply([parse_object(daemonset())])
    w.down("n1")
    w.up("n1", Resync(node="n1", epoch=None, gen=0))
    (snap,) = w.down("n1")
    assert isinstance(snap, Desired) and snap.snapshot
    # a raw (unsealed) payload on the wire is refused by the node's own check
    with pytest.raises(AuthFailed):
        seal.unseal(w.k("n2").down, topics.down("n1"), encode(snap))
    w.up("n1", Report(node="n1", seq=1))
    assert [type(m) for m in w.down("n1")] == [ReportAck]
    # forged: unsealed, another node's key, the down key, a flipped bit, n2's message
    # moved to n1's topic
    w.up("n1", Report(node="n1", seq=2), raw=True)
    w.up("n1", Report(node="n1", seq=3), key=w.k("n2").up)
    w.up("n1", Report(node="n1", seq=4), key=w.k("n1").down)
    good = seal.seal(w.k("n1").up, topics.up("n1"), encode(Report(node="n1", seq=5)))
    w.hub.handle(topics.up("n1"), good[:-1] + bytes([good[-1] ^ 1]))
    w.hub.handle(topics.up("n1"), seal.seal(w.k("n2").up, topics.up("n2"),
                                            encode(Report(node="n1", seq=6))))
    assert w.dropped("auth_failed") == 5
    assert w.fleet.report_seq["n1"] == 1 and w.down("n1") == []


async def test_a_node_without_a_key_is_never_registered_unless_insecure() -> None:
    w = World()
    w.up("ghost", Report(node="ghost", seq=1, node_status={"capacity": {"cpu": 64000}}),
         raw=True)
    w.up("ghost", Resync(node="ghost", gen=0), key=bytes(32))
    assert w.dropped("unknown_node") == 2
    assert "ghost" not in w.fleet.nodes and w.wire == []
    # a revoked node (its key gone) is dropped too, and nothing is sent to it
    add_node(w.fleet, "n1")
    del w.keys["n1"]
    w.fleet.apply([parse_object(daemonset())])
    assert w.wire == [] and w.metrics.value("cloudcore_messages_unsent_total",
                                            reason="no_key") >= 1
    # insecure: today's behaviour
    w2 = World(insecure=True, keys={})
    w2.up("ghost", Report(node="ghost", seq=1), raw=True)
    assert "ghost" in w2.fleet.nodes
    assert [decode(p).t for _, p in w2.wire] == ["rack"]


def _secret_and_pod() -> list[Any]:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
              "data": {"password": base64.b64encode(SECRET_VALUE).decode()}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {"nodeName": "n1", "volumes": [{"name": "s", "secret": {"secretName": "db"}}],
                    "containers": [{"name": "main", "image": "busybox",
                                    "volumeMounts": [{"name": "s", "mountPath": "/s"}]}]}}
    return [parse_object(secret), parse_object(pod)]


async def test_secret_values_leave_sealed_for_their_node_only() -> None:
    w = World()
    add_node(w.fleet, "n1")
    w.fleet.apply(_secret_and_pod())
    raw = b"".join(p for _, p in w.wire)
    assert raw and SECRET_VALUE not in raw
    assert base64.b64encode(SECRET_VALUE) not in raw
    (delta,) = w.down("n1")
    sealed = delta.put["secret/default/db"]
    assert seal.is_sealed(sealed)
    value = seal.open_secret(w.k("n1").secret, node="n1", entry_key="secret/default/db",
                             sealed=sealed)
    assert base64.b64decode(value["data"]["password"]) == SECRET_VALUE
    with pytest.raises(AuthFailed):
        seal.open_secret(w.k("n2").secret, node="n2", entry_key="secret/default/db",
                         sealed=sealed)
    # the in-memory desired set stays clear (one set, sealed per send)
    assert not seal.is_sealed(w.fleet.desired["n1"].items["secret/default/db"][0])


async def test_a_node_cannot_label_itself_into_a_workload() -> None:
    w = World()
    add_node(w.fleet, "n1")
    w.fleet.apply([parse_object(daemonset("gpu", node_selector={"edgefed.io/gpu": "true"}))])
    w.up("n1", Report(node="n1", seq=1, node_status={"labels": {
        "edgefed.io/gpu": "true", "x.edgefed.io/y": "1", "node-role.kubernetes.io/control": "",
        "kubernetes.io/hostname": "other", "team": "blue"}}))
    labels = w.fleet.nodes["n1"].metadata.labels
    assert labels["team"] == "blue" and labels["kubernetes.io/hostname"] == "n1"
    assert not any(k.endswith("edgefed.io/gpu") or "node-role" in k or k.startswith("x.")
                   for k in labels)
    assert w.metrics.value(LABELS_REFUSED) == 4
    assert ("default", "gpu-n1") not in w.fleet.pods or \
        pod_key("default", "gpu-n1") not in w.fleet.desired["n1"].items
    # the API (an admin) still can
    w.fleet.patch_node("n1", labels={"edgefed.io/gpu": "true"})
    assert pod_key("default", "gpu-n1") in w.fleet.desired["n1"].items


async def test_a_forged_high_gen_ends_in_a_snapshot_under_a_new_epoch() -> None:
    """Issue 11: a forged gen 1000000 cut the node off for good. Now the cloud moves
    the node to a new epoch, sends a snapshot, and the node converges again."""
    w = World()
    add_node(w.fleet, "n1")
    w.fleet.apply([parse_object(daemonset())])
    epoch = w.fleet.desired["n1"].epoch
    # the edge was made to apply a forged desired set at gen 1000000 in our epoch
    edge = EdgeDesired(epoch=epoch, gen=1_000_000, items={"pod/default/evil": {"x": 1}})
    w.down("n1")
    w.up("n1", Ack(node="n1", epoch=epoch, gen=edge.gen))
    assert w.metrics.value(DRIFT) == 1
    nd = w.fleet.desired["n1"]
    assert nd.epoch != epoch
    events = w.fleet.events.list(obj="Node/n1")
    assert any(e["reason"] == "DesiredDrift" and "n1" in e["message"] for e in events)
    (snap,) = w.down("n1")
    assert snap.snapshot and snap.epoch == nd.epoch
    assert edge.classify(snap).value == "applied"
    edge = edge.applied(snap)
    assert "pod/default/evil" not in edge.items and epoch in edge.left
    w.up("n1", Ack(node="n1", epoch=edge.epoch, gen=edge.gen))  # type: ignore[arg-type]
    assert nd.acked == nd.gen
    # later updates flow as deltas again
    w.fleet.apply([parse_object(daemonset(args=["v2"]))])
    (delta,) = w.down("n1")
    assert not delta.snapshot and delta.base == edge.gen
    edge = edge.applied(delta)
    assert edge.items == nd.values()


@pytest.mark.parametrize("via", ["report", "resync"])
async def test_drift_is_found_in_reports_and_resyncs(via: str) -> None:
    w = World()
    add_node(w.fleet, "n1")
    w.fleet.apply([parse_object(daemonset())])
    epoch = w.fleet.desired["n1"].epoch
    w.down("n1")
    if via == "report":
        w.up("n1", Report(node="n1", seq=1, epoch=epoch, gen=999))
    else:
        w.up("n1", Resync(node="n1", epoch=epoch, gen=999))
    assert w.metrics.value(DRIFT) == 1
    snaps = [m for m in w.down("n1") if isinstance(m, Desired)]
    assert len(snaps) == 1 and snaps[0].snapshot and snaps[0].epoch != epoch


async def test_an_edge_refusing_a_left_epoch_gets_a_new_one() -> None:
    """A cloud restored from a backup speaks an epoch the edge left: the edge refuses
    its snapshot and says so; the cloud moves the node to a fresh epoch."""
    w = World()
    add_node(w.fleet, "n1")
    w.fleet.apply([parse_object(daemonset())])
    old = w.fleet.desired["n1"].epoch
    w.down("n1")
    w.up("n1", Resync(node="n1", epoch="newer", gen=3, reason=LEFT_EPOCH))
    assert w.metrics.value(DRIFT) == 1
    (snap,) = [m for m in w.down("n1") if isinstance(m, Desired)]
    assert snap.snapshot and snap.epoch not in (old, "newer")


async def test_an_undeliverable_entry_never_blocks_the_other_updates() -> None:
    w = World()
    add_node(w.fleet, "n1")
    w.fleet.apply([parse_object(daemonset())])
    (first,) = w.down("n1")
    w.up("n1", Ack(node="n1", epoch=first.epoch, gen=first.gen))
    # poison the node's desired set directly with an entry no message can carry
    nd = w.fleet.desired["n1"]
    nd.put("configmap/default/huge", {"data": {"x": "a" * (2 * 1024 * 1024)}})
    w.hub.desired_changed({"n1"})
    (poisoned,) = w.down("n1")
    assert "configmap/default/huge" not in poisoned.put
    w.up("n1", Ack(node="n1", epoch=poisoned.epoch, gen=poisoned.gen))
    assert nd.acked == nd.gen
    assert w.metrics.value(UNDELIVERABLE) == 1
    # a later update still arrives (and the poisoned entry still stays out)
    w.fleet.apply([parse_object(daemonset(args=["v2"]))])
    (later,) = w.down("n1")
    assert pod_key("default", "agent-n1") in later.put
    assert later.put[pod_key("default", "agent-n1")]["spec"]["containers"][0]["args"] == ["v2"]
    assert "configmap/default/huge" not in later.put


async def test_the_pod_is_told_why_its_entry_cannot_be_delivered() -> None:
    w = World()
    add_node(w.fleet, "n1")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
          "data": {"a": "x" * (900 * 1024), "b": "y" * (900 * 1024)}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {"nodeName": "n1", "volumes": [{"name": "c", "configMap": {"name": "big"}}],
                    "containers": [{"name": "main", "image": "busybox"}]}}
    # five such ConfigMaps do not fit one message together, each alone does
    docs = []
    for i in range(5):
        docs.append(parse_object({**cm, "metadata": {"name": f"big{i}"}}))
    pod["spec"]["volumes"] = [{"name": f"c{i}", "configMap": {"name": f"big{i}"}}  # type: ignore[index]
                              for i in range(5)]
    w.fleet.apply([*docs, parse_object(pod)])
    (delta,) = w.down("n1")
    assert pod_key("default", "web") in delta.put
    assert len(encode(delta)) <= 4 * 1024 * 1024
    assert sum(k.startswith("configmap/") for k in delta.put) < 5
    events = w.fleet.events.list(obj="Pod/default/web")
    assert any(e["reason"] == "Undeliverable" and "message limit" in e["message"]
               for e in events)


async def test_requests_carry_an_expiry() -> None:
    w = World()
    add_node(w.fleet, "n1")
    w.down("n1")
    stream = w.hub.requests.stream("n1", kind="exec", pod="pod/default/x", argv=["id"])
    async with stream:
        (req,) = w.down("n1")
        assert isinstance(req, Request) and req.exp is not None
