"""The resource kinds fedctl knows, and the names a user may type for them.

kubectl users type `po`, `ds`, `deploy`; accept the same short names so muscle
memory works. `workloads` is fedctl's own: daemonsets and deployments together.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedctl.errors import UsageError


@dataclass(frozen=True)
class Kind:
    kind: str  # the object's `kind`, e.g. "DaemonSet"
    plural: str  # path segment of the API, e.g. "daemonsets"
    namespaced: bool

    @property
    def singular(self) -> str:
        """Lowercase name used in output lines such as `daemonset/web created`."""
        return self.kind.lower()


NODE = Kind("Node", "nodes", namespaced=False)
POD = Kind("Pod", "pods", namespaced=True)
DAEMONSET = Kind("DaemonSet", "daemonsets", namespaced=True)
DEPLOYMENT = Kind("Deployment", "deployments", namespaced=True)
CONFIGMAP = Kind("ConfigMap", "configmaps", namespaced=True)
SECRET = Kind("Secret", "secrets", namespaced=True)
NAMESPACE = Kind("Namespace", "namespaces", namespaced=False)

ALL = (NODE, POD, DAEMONSET, DEPLOYMENT, CONFIGMAP, SECRET, NAMESPACE)
BY_KIND = {k.kind: k for k in ALL}

_ALIASES: dict[str, tuple[Kind, ...]] = {}
for _k, _names in (
    (NODE, ("node", "nodes", "no")),
    (POD, ("pod", "pods", "po")),
    (DAEMONSET, ("daemonset", "daemonsets", "ds")),
    (DEPLOYMENT, ("deployment", "deployments", "deploy")),
    (CONFIGMAP, ("configmap", "configmaps", "cm")),
    (SECRET, ("secret", "secrets")),
    (NAMESPACE, ("namespace", "namespaces", "ns")),
):
    for _n in _names:
        _ALIASES[_n] = (_k,)
WORKLOAD_NAMES = ("workload", "workloads", "wl")
for _n in WORKLOAD_NAMES:
    _ALIASES[_n] = (DAEMONSET, DEPLOYMENT)

KNOWN = "nodes, pods, workloads, daemonsets, deployments, configmaps, secrets, namespaces"


def resolve(name: str, *, allow_group: bool = True) -> tuple[Kind, ...]:
    """The kind(s) a typed resource name stands for; a UsageError lists the valid ones."""
    kinds = _ALIASES.get(name.lower())
    if kinds is None or (len(kinds) > 1 and not allow_group):
        valid = KNOWN if allow_group else KNOWN.replace("workloads, ", "")
        raise UsageError(f"unknown resource type {name!r}; use one of: {valid}")
    return kinds
