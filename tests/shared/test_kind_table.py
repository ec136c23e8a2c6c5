"""The one kind table agrees with the models and what fedctl and the store need."""

from __future__ import annotations

from shared import kinds
from shared.models import KINDS


def test_every_model_kind_is_in_the_table_and_back() -> None:
    assert set(kinds.BY_KIND) == set(KINDS)


def test_scope_store_and_names() -> None:
    assert {"Node", "Namespace", "AgentUpgrade", "PriorityClass"} == kinds.CLUSTER_KINDS
    assert {"Pod", "DaemonSet", "Deployment", "ConfigMap", "Secret"} == kinds.NAMESPACED_KINDS
    assert kinds.KIND_DB["DaemonSet"] == "daemonsets"
    assert kinds.API_VERSIONS["Deployment"] == "apps/v1"
    assert kinds.BY_KIND["DaemonSet"].names == ("daemonset", "daemonsets", "ds")
    names = [n for k in kinds.ALL for n in k.names]
    assert len(names) == len(set(names))  # a typed name means one kind


def test_redacted_is_the_one_marker() -> None:
    assert kinds.REDACTED == "<redacted>"
