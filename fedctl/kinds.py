"""The resource kinds fedctl knows, and the names a user may type for them.

The kinds themselves (API path, scope, kubectl's short names such as `po`, `ds`,
`deploy`) come from the one kind table, `shared/kinds.py`, so muscle memory works
and a new kind needs no edit here. `workloads` is fedctl's own: daemonsets and
deployments together.
"""

from __future__ import annotations

from fedctl.errors import UsageError
from shared.kinds import ALL, BY_KIND, KindInfo

Kind = KindInfo
"""One kind as fedctl uses it: `kind`, `plural` (the API path), `namespaced`, `singular`."""

NODE = BY_KIND["Node"]
POD = BY_KIND["Pod"]
DAEMONSET = BY_KIND["DaemonSet"]
DEPLOYMENT = BY_KIND["Deployment"]
CONFIGMAP = BY_KIND["ConfigMap"]
SECRET = BY_KIND["Secret"]
NAMESPACE = BY_KIND["Namespace"]

__all__ = ["ALL", "BY_KIND", "CONFIGMAP", "DAEMONSET", "DEPLOYMENT", "KNOWN", "NAMESPACE",
           "NODE", "POD", "SECRET", "WORKLOAD_NAMES", "Kind", "resolve"]

_ALIASES: dict[str, tuple[Kind, ...]] = {n: (k,) for k in ALL for n in k.names}
WORKLOAD_NAMES = ("workload", "workloads", "wl")
for _n in WORKLOAD_NAMES:
    _ALIASES[_n] = (DAEMONSET, DEPLOYMENT)

KNOWN = ", ".join(
    name for k in ALL
    for name in ((k.plural, "workloads") if k is POD else (k.plural,)))
"""The names an error message offers: every kind's plural, workloads after pods."""


def resolve(name: str, *, allow_group: bool = True) -> tuple[Kind, ...]:
    """The kind(s) a typed resource name stands for; a UsageError lists the valid ones."""
    kinds = _ALIASES.get(name.lower())
    if kinds is None or (len(kinds) > 1 and not allow_group):
        valid = KNOWN if allow_group else KNOWN.replace("workloads, ", "")
        raise UsageError(f"unknown resource type {name!r}; use one of: {valid}")
    return kinds
