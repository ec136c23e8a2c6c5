"""The one table of object kinds: their store databases, scope and the names users type.

The cloud's store, its API, the pydantic models and fedctl all need to know, per
kind, where it is persisted, whether it lives in a namespace and what it is called
in a URL or on a command line. They read it here, so a new kind is added in one
line. Pure data, no pydantic: the agent may import it too.

`REDACTED` is the value a listed Secret shows instead of each data value; the cloud
writes it and fedctl refuses to apply it back.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

REDACTED = "<redacted>"
"""What a Secret's data values read as in lists (the keys stay visible)."""


@dataclass(frozen=True, slots=True)
class KindInfo:
    """One kind of object and every name it goes by."""

    kind: str
    """The object's `kind`, e.g. "DaemonSet"."""
    api_version: str
    """The `apiVersion` a document of this kind must carry."""
    plural: str
    """The API path segment and the name users type for many, e.g. "daemonsets"."""
    db: str
    """The cloud store's database holding this kind."""
    namespaced: bool
    """False for cluster-scoped kinds, keyed by name alone in the API and the store."""
    short: tuple[str, ...] = ()
    """kubectl's short names, e.g. ("ds",)."""

    @property
    def singular(self) -> str:
        """Lowercase name used in output lines such as `daemonset/web created`."""
        return self.kind.lower()

    @property
    def names(self) -> tuple[str, ...]:
        """Every name a user may type for this kind (singular, plural, short)."""
        return (self.singular, self.plural, *self.short)


ALL: tuple[KindInfo, ...] = (
    KindInfo("Node", "v1", "nodes", "nodes", namespaced=False, short=("no",)),
    KindInfo("Pod", "v1", "pods", "pods", namespaced=True, short=("po",)),
    KindInfo("DaemonSet", "apps/v1", "daemonsets", "daemonsets", namespaced=True,
             short=("ds",)),
    KindInfo("Deployment", "apps/v1", "deployments", "deployments", namespaced=True,
             short=("deploy",)),
    KindInfo("ConfigMap", "v1", "configmaps", "configmaps", namespaced=True, short=("cm",)),
    KindInfo("Secret", "v1", "secrets", "secrets", namespaced=True),
    KindInfo("Namespace", "v1", "namespaces", "namespaces", namespaced=False, short=("ns",)),
    KindInfo("AgentUpgrade", "edgefed.io/v1", "agentupgrades", "agentupgrades",
             namespaced=False, short=("au",)),
    KindInfo("PriorityClass", "scheduling.k8s.io/v1", "priorityclasses", "priorityclasses",
             namespaced=False, short=("pc",)),
)
"""Every kind, in the order fedctl lists them."""

BY_KIND: MappingProxyType[str, KindInfo] = MappingProxyType({k.kind: k for k in ALL})
"""Kind name -> its entry."""

KIND_DB: MappingProxyType[str, str] = MappingProxyType({k.kind: k.db for k in ALL})
"""Kind name -> the store database that persists it."""

API_VERSIONS: MappingProxyType[str, str] = MappingProxyType(
    {k.kind: k.api_version for k in ALL})
"""Kind name -> the apiVersion its documents carry."""

CLUSTER_KINDS: frozenset[str] = frozenset(k.kind for k in ALL if not k.namespaced)
"""Kinds without a namespace: keyed by name alone in the API and the store."""

NAMESPACED_KINDS: frozenset[str] = frozenset(k.kind for k in ALL if k.namespaced)
"""Kinds that live in a namespace: keyed by (namespace, name)."""
