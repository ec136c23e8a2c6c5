"""The nesting-depth check where it protects something (issue 14): an over-deep message
from a node is refused before it is unpacked; an over-deep entry in a node's desired
set is never sent (and is reported); an over-deep object is refused by the API at
apply (its schema has no free-form field, so no nesting beyond the schema's passes
admission). What the cloud encodes from a DaemonSet's template is walked once per template
revision, not once per delta: a rollout to many nodes walks its pod entry once."""

from __future__ import annotations

import msgpack
import pytest
from cloudcore_fakes import add_node, daemonset
from test_hub_compact import World

from cloudcore.synchub import hub as hub_module
from cloudcore.synchub.hub import DROPPED, UNDELIVERABLE
from shared import seal, topics
from shared.codec import UP_LIMITS, Ack, Desired, Report
from shared.entries import pod_key
from shared.errors import ObjectError
from shared.models import parse_object


def _nested(depth: int) -> object:
    v: object = 1
    for _ in range(depth):
        v = [v]
    return v


def _walks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the hub's depth walks (the real walk still runs)."""
    calls: list[int] = []
    real = hub_module.check_depth

    def counted(data: bytes, max_depth: int) -> None:
        calls.append(len(data))
        real(data, max_depth)

    monkeypatch.setattr(hub_module, "check_depth", counted)
    return calls


async def test_an_over_deep_message_from_a_node_is_refused() -> None:
    w = World()
    add_node(w.fleet, "n1")
    deep = msgpack.packb({"v": 1, "t": "report", "node": "n1", "seq": 1,
                          "node_status": {"x": _nested(UP_LIMITS.max_depth)}})
    topic = topics.up("n1")
    key = seal.NodeKeys.derive(w.keys["n1"]).up
    w.hub.handle(topic, seal.seal(key, topic, deep), broker="mq-0")
    assert w.metrics.value(DROPPED, reason="decode_error") == 1
    # the same report nested within the limit is taken
    w.up("n1", Report(node="n1", seq=2, node_status={"x": _nested(3)}))
    assert w.metrics.value(DROPPED, reason="decode_error") == 1


async def test_a_rollout_walks_its_pod_entry_once_not_once_per_delta(
        monkeypatch: pytest.MonkeyPatch) -> None:
    w = World()
    nodes = [f"n{i}" for i in range(1, 41)]
    for i, node in enumerate(nodes):
        w.keys[node] = bytes([i]) * 32
        add_node(w.fleet, node)
    walks = _walks(monkeypatch)
    w.fleet.apply([parse_object(daemonset())])
    assert sorted(t for t, _ in w.wire) == sorted(topics.down(n) for n in nodes)
    # one delta per node ...
    assert len(walks) == 1  # ... and one walk of the revision's entry
    # a new revision is walked once more, for all the nodes again
    for node in nodes:
        (delta,) = w.down(node)
        w.up(node, Ack(node=node, epoch=delta.epoch, gen=delta.gen))
    w.fleet.apply([parse_object(daemonset(args=["v2"]))])
    assert len(walks) == 2
    for node in nodes:
        (delta,) = w.down(node)
        assert isinstance(delta, Desired)
        entry = delta.put[pod_key("default", f"agent-{node}")]
        assert entry["spec"]["containers"][0]["args"] == ["v2"]


async def test_an_over_deep_entry_in_a_desired_set_is_never_sent() -> None:
    w = World()
    add_node(w.fleet, "n1")
    w.fleet.apply([parse_object(daemonset())])
    (first,) = w.down("n1")
    w.up("n1", Ack(node="n1", epoch=first.epoch, gen=first.gen))
    nd = w.fleet.desired["n1"]
    # entries that are not pods are walked each time: a deep one stays out
    nd.put("configmap/default/deep", {"data": _nested(40)})
    # a pod entry of a revision walked before is skipped only for that revision: a
    # deep pod entry under a revision never seen is walked and stays out too
    nd.put(pod_key("default", "deep"), {"name": "deep", "revision": "never-seen",
                                        "spec": _nested(40)})
    w.hub.desired_changed({"n1"})
    (delta,) = w.down("n1")
    assert "configmap/default/deep" not in delta.put
    assert pod_key("default", "deep") not in delta.put
    assert w.metrics.value(UNDELIVERABLE) == 2


def test_the_api_refuses_an_over_deep_pod_at_apply() -> None:
    doc = daemonset()
    doc["spec"]["template"]["spec"]["containers"][0]["args"] = _nested(40)
    with pytest.raises(ObjectError):
        parse_object(doc)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "main", "image": "busybox",
                                    "env": [{"name": "X", "value": _nested(40)}]}]}}
    with pytest.raises(ObjectError):
        parse_object(pod)
