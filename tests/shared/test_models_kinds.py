"""Secret and Namespace are registered kinds with their apiVersions."""

from __future__ import annotations

import pytest

from shared.errors import ObjectError, UnsupportedField
from shared.models import API_VERSIONS, CLUSTER_KINDS, KINDS, Namespace, Secret, parse_object


def test_registered() -> None:
    assert KINDS["Secret"] is Secret and KINDS["Namespace"] is Namespace
    assert API_VERSIONS["Secret"] == API_VERSIONS["Namespace"] == "v1"
    assert {"Node", "Namespace", "AgentUpgrade", "PriorityClass"} == CLUSTER_KINDS


def test_secret_parse_and_normalise() -> None:
    s = parse_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                      "data": {"a": "eA=="}, "stringData": {"a": "over", "b": "y"}})
    assert isinstance(s, Secret)
    assert s.decoded() == {"a": b"over", "b": b"y"}
    n = s.normalised()
    assert n.string_data == {} and n.decoded() == {"a": b"over", "b": b"y"}
    with pytest.raises(ObjectError, match=r"data\['a'\] is not valid base64"):
        parse_object({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
                      "data": {"a": "!!"}})
    with pytest.raises(ObjectError, match="apiVersion"):
        parse_object({"apiVersion": "apps/v1", "kind": "Secret", "metadata": {"name": "s"}})


def test_namespace_has_no_namespace_and_a_valid_name() -> None:
    ns = parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}})
    assert ns.dump() == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    with pytest.raises(UnsupportedField, match=r"metadata\.namespace"):
        parse_object({"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": "shop", "namespace": "x"}})
    with pytest.raises(ObjectError, match="DNS-1123"):
        parse_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "Shop"}})


def test_agent_upgrade_parse_defaults_and_refusals() -> None:
    from shared.models import AgentUpgrade

    doc = {"apiVersion": "edgefed.io/v1", "kind": "AgentUpgrade",
           "metadata": {"name": "agent-0.9.1"},
           "spec": {"version": "0.9.1", "image": "reg:5000/edgefed/agent:0.9.1",
                    "selector": {"matchLabels": {"site": "berlin"}},
                    "maxUnavailable": "25%"}}
    au = parse_object(doc)
    assert isinstance(au, AgentUpgrade)
    assert au.spec.max_unavailable == "25%"
    assert au.spec.failure_threshold == 0
    assert au.spec.health_deadline_seconds == 120
    for spec, field in (({"version": "a/b", "image": "x"}, "spec.version"),
                        ({"version": "1", "image": "x y"}, "spec.image"),
                        ({"version": "1", "image": "x", "maxUnavailable": 0},
                         "spec.maxUnavailable"),
                        ({"version": "1", "image": "x", "healthDeadlineSeconds": 0},
                         "spec.healthDeadlineSeconds")):
        with pytest.raises(ObjectError) as err:
            parse_object({**doc, "spec": spec})
        assert err.value.field == field
