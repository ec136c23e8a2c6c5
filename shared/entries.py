"""Keys and values of a node's desired set, and the pod status a report carries.

The desired set maps keys such as `pod/{namespace}/{name}` to plain JSON-able
values; both sides build and read them only through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.models import Pod, PodSpec, PodStatus, spec_hash

POD = "pod"
CONFIGMAP = "configmap"


def key(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}"


def split_key(k: str) -> tuple[str, str, str]:
    kind, namespace, name = k.split("/", 2)
    return kind, namespace, name


def pod_key(namespace: str, name: str) -> str:
    return key(POD, namespace, name)


def pod_entry(pod: Pod) -> dict[str, Any]:
    """The desired-set value for a pod placed on a node."""
    spec = pod.spec.dump()
    return {
        "name": pod.metadata.name,
        "namespace": pod.metadata.namespace,
        "labels": pod.metadata.labels,
        "spec": spec,
        "revision": spec_hash(spec),
    }


@dataclass(frozen=True)
class PodEntry:
    key: str
    name: str
    namespace: str
    labels: dict[str, str]
    spec: PodSpec
    revision: str


def parse_pod_entry(k: str, value: dict[str, Any]) -> PodEntry:
    """Raises shared.errors.ObjectError (via pydantic) if the value is not a pod."""
    return PodEntry(
        key=k,
        name=value["name"],
        namespace=value["namespace"],
        labels=dict(value.get("labels") or {}),
        spec=PodSpec.model_validate(value["spec"]),
        revision=value["revision"],
    )


def status_value(status: PodStatus) -> dict[str, Any]:
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_status(value: dict[str, Any]) -> PodStatus:
    return PodStatus.model_validate(value)
