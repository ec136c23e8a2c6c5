"""Secret and Namespace are registered kinds with their apiVersions."""

from __future__ import annotations

import pytest

from shared.errors import ObjectError, UnsupportedField
from shared.models import API_VERSIONS, CLUSTER_KINDS, KINDS, Namespace, Secret, parse_object


def test_registered() -> None:
    assert KINDS["Secret"] is Secret and KINDS["Namespace"] is Namespace
    assert API_VERSIONS["Secret"] == API_VERSIONS["Namespace"] == "v1"
    assert {"Node", "Namespace"} == CLUSTER_KINDS


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
