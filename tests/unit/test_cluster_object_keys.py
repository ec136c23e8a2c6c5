"""KV keys of the shards' global objects and node summaries (cloudcore.cluster.objects,
proposal 0008): every name round-trips, and every key is made only of the characters
NATS KV accepts, with exactly the dots that separate kind, namespace and name."""

from __future__ import annotations

import re

import pytest

from cloudcore.cluster.objects import escape, object_key, parse_key, unescape
from cloudcore.cluster.status import node_key

KV_KEY = re.compile(r"^[-_=A-Za-z0-9]+(\.[-_=A-Za-z0-9]+)*$")


@pytest.mark.parametrize("name", ["web", "a.b.c", "x=y", "", "ü-名", "a b/c*>", "=2E"])
def test_escape_round_trips_and_stays_one_token(name: str) -> None:
    token = escape(name)
    assert re.fullmatch(r"[-_=A-Za-z0-9]+", token), token
    assert unescape(token) == name


def test_object_keys() -> None:
    assert object_key("DaemonSet", "default", "web") == "DaemonSet.default.web"
    assert object_key("Namespace", None, "team.a") == "Namespace._.team=2Ea"
    for kind, ns, name in (("ConfigMap", "kube-system", "cfg.v1"), ("Secret", "a", "b=c"),
                           ("PriorityClass", None, "high"), ("Pod", "x.y", "p")):
        key = object_key(kind, ns, name)
        assert KV_KEY.match(key), key
        assert parse_key(key) == (kind, ns, name)
    with pytest.raises(ValueError):
        parse_key("Node._.n1")  # nodes are not global objects
    with pytest.raises(ValueError):
        parse_key("DaemonSet.default")


def test_node_keys() -> None:
    assert node_key("sim-1") == "node.sim-1"
    assert KV_KEY.match(node_key("edge.plant-3"))
    assert node_key("edge.plant-3").count(".") == 1
