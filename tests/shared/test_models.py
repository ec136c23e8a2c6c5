from __future__ import annotations

from typing import Any

import pytest

from shared.errors import ObjectError, UnsupportedField
from shared.models import DaemonSet, parse_object
from shared.quantity import parse_cpu, parse_memory

DS = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "httpd", "image": "busybox",
                                     "args": ["httpd", "-f"],
                                     "resources": {"limits": {"cpu": "250m", "memory": "32Mi"}}}]},
        },
    },
}


def test_daemonset_parses_and_dumps_back():
    obj = parse_object(DS)
    assert isinstance(obj, DaemonSet)
    assert parse_object(obj.dump()) == obj
    assert obj.spec.template.spec.requests() == {"cpu": 250, "memory": 32 * 2**20}


def test_unsupported_field_is_named():
    doc = {**DS, "spec": {**DS["spec"], "revisionHistoryLimit": 3}}
    with pytest.raises(UnsupportedField) as err:
        parse_object(doc)
    assert err.value.field == "spec.revisionHistoryLimit"
    doc = {**DS, "spec": {**DS["spec"], "updateStrategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}}}}
    with pytest.raises(UnsupportedField) as err:  # a DaemonSet: one pod per node
        parse_object(doc)
    assert err.value.field == "spec.updateStrategy.rollingUpdate.maxSurge"
    assert "one pod per node" in str(err.value)


def test_max_surge_is_a_deployments_and_not_both_zero():
    """Issue 18: a Deployment takes maxSurge (a count or a percentage); maxUnavailable
    may then be 0, never both."""
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
           "spec": {"replicas": 3, "template": DS["spec"]["template"]}}

    def with_rolling(rolling: dict[str, Any]) -> Any:
        return parse_object({**dep, "spec": {**dep["spec"], "strategy": {
            "type": "RollingUpdate", "rollingUpdate": rolling}}})

    got = with_rolling({"maxSurge": "25%", "maxUnavailable": 0})
    assert (got.spec.strategy.rolling_update.max_surge,
            got.spec.strategy.rolling_update.max_unavailable) == ("25%", 0)
    assert parse_object(got.dump()) == got
    assert with_rolling({"maxSurge": 2}).spec.strategy.rolling_update.max_unavailable == 1
    for bad in ({"maxUnavailable": 0}, {"maxSurge": 0, "maxUnavailable": "0%"},
                {"maxSurge": "0%", "maxUnavailable": 0}):
        with pytest.raises(ObjectError, match="maxSurge is 0") as err:
            with_rolling(bad)
        assert err.value.field == "spec.strategy.rollingUpdate.maxUnavailable"
    with pytest.raises(ObjectError) as err:
        with_rolling({"maxSurge": "150%"})
    assert err.value.field == "spec.strategy.rollingUpdate.maxSurge"


def test_update_strategy_counts_and_percentages():
    from shared.models import resolve_count

    doc = {**DS, "spec": {**DS["spec"], "minReadySeconds": 5, "updateStrategy": {
        "rollingUpdate": {"maxUnavailable": "10%"}, "failureThreshold": 2}}}
    ds = parse_object(doc)
    st = ds.spec.update_strategy
    assert (st.type, st.rolling_update.max_unavailable, st.failure_threshold,
            st.auto_rollback) == ("RollingUpdate", "10%", 2, True)
    assert parse_object(ds.dump()) == ds
    assert resolve_count("10%", 95, round_up=False) == 9
    assert resolve_count("10%", 95, round_up=True) == 10
    assert resolve_count(3, 95, round_up=True) == 3
    for bad, field in (({"type": "OnDelete"}, "spec.updateStrategy.type"),
                       ({"rollingUpdate": {"maxUnavailable": 0}},
                        "spec.updateStrategy.rollingUpdate.maxUnavailable"),
                       ({"rollingUpdate": {"maxUnavailable": "150%"}},
                        "spec.updateStrategy.rollingUpdate.maxUnavailable"),
                       ({"failureThreshold": "x%"}, "spec.updateStrategy.failureThreshold")):
        with pytest.raises(ObjectError) as err:
            parse_object({**DS, "spec": {**DS["spec"], "updateStrategy": bad}})
        assert err.value.field == field, bad


def test_bad_values_name_the_field():
    with pytest.raises(ObjectError) as err:
        parse_object({"kind": "Pod", "metadata": {"name": "Bad_Name"},
                      "spec": {"containers": [{"name": "c", "image": "i"}]}})
    assert err.value.field == "metadata.name"
    with pytest.raises(ObjectError, match="unsupported kind"):
        parse_object({"kind": "StatefulSet", "metadata": {"name": "x"}})
    with pytest.raises(ObjectError, match="apiVersion"):
        parse_object({**DS, "apiVersion": "v1"})
    with pytest.raises(ObjectError, match="mapping"):
        parse_object(["not", "a", "map"])


def test_quantities():
    assert parse_cpu("250m") == 250
    assert parse_cpu("2") == 2000
    assert parse_cpu(0.5) == 500
    assert parse_memory("64Mi") == 64 * 2**20
    assert parse_memory("1G") == 10**9
    with pytest.raises(ObjectError):
        parse_memory("12Qi")


def test_revision_is_the_same_on_every_node():
    from shared.entries import pod_entry
    from shared.models import Pod

    def placed(node: str, image: str = "busybox") -> dict:
        return pod_entry(Pod.model_validate({
            "metadata": {"name": f"web-{node}"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": image}]}}))

    assert placed("n1")["revision"] == placed("n2")["revision"]
    assert placed("n1")["revision"] != placed("n1", image="other")["revision"]


@pytest.mark.parametrize(("doc", "field", "hint"), [
    ({"apiVersion": "v1", "kind": "Pod", "metdata": {"name": "x"},
      "spec": {"containers": [{"name": "a", "image": "b"}]}}, "metdata", "metadata"),
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
      "spec": {"containers": [{"name": "a", "imagee": "b"}]}},
     "spec.containers[0].imagee", "image"),
])
def test_a_misspelt_field_is_named_not_the_missing_one(doc: dict, field: str,
                                                         hint: str) -> None:
    """Issue 16: `imagee`/`metdata` said `Field required` about the right name."""
    from shared.errors import UnsupportedField
    from shared.models import parse_object

    with pytest.raises(UnsupportedField) as info:
        parse_object(doc)
    assert info.value.field == field
    assert f"{field!r} is not supported" in str(info.value)
    assert f"did you mean {hint!r}" in str(info.value)
