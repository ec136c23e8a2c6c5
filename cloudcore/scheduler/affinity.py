"""Inter-pod affinity: what a pod's terms find among the pods already placed.

A `podAffinity` / `podAntiAffinity` term selects pods (label selector, namespaces) and
names a topology key: the nodes sharing a value of that node label form one domain
(`kubernetes.io/hostname`: each node its own). Before the scheduler looks at the
nodes, `topology_of` walks the placed pods once and records, per term, the domains
that hold a selected pod; each node is then judged by a dictionary lookup of its own
domain (`PodTopology.refuses`, `PodTopology.score`), so the cost is one pass over the
placed pods per pod that has terms, not one per node.

Kubernetes' rules kept: required terms are ANDed; a pod whose required affinity
selects no placed pod anywhere may still go where it likes if it matches its own
terms (the first pod of a group); the required anti-affinity of a placed pod is
symmetric (a pod that it selects is kept out of its domain). Not kept: the preferred
terms of placed pods do not score the incoming pod (only its own preferences do).

Any node label may be a topology key; a node without the label is in no domain
(required affinity fails there, anti-affinity does not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from shared.pods import HOSTNAME_KEY, Affinity, PodAffinityTerm

NodeLabels = Callable[[str], Mapping[str, str] | None]
"""The labels of a node by name (None: no such node)."""
NamespaceLabels = Callable[[], Mapping[str, Mapping[str, str]]]
"""Every namespace's labels by name (called only for a `namespaceSelector`)."""


@dataclass(frozen=True, slots=True)
class Placed:
    """A pod bound to `node`, as affinity sees it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    node: str
    affinity: Affinity | None = None


@dataclass(frozen=True)
class TermHits:
    """One term and the topology domains that hold a pod it selects."""

    key: str
    """The topology key (a node label)."""
    what: str
    """The selector in words (`app=web`)."""
    domains: Mapping[str, str] = field(default_factory=dict)
    """Topology value -> a selected pod there (`namespace/name`)."""
    weight: int = 0
    """Preferred terms: +weight (affinity) or -weight (anti-affinity)."""
    owner: str = ""
    """A placed pod's anti-affinity: that pod (`namespace/name`)."""


def domain_of(name: str, labels: Mapping[str, str], key: str) -> str | None:
    """The node's value of topology key `key` (hostname: its name if unlabelled)."""
    value = labels.get(key)
    if value is None and key == HOSTNAME_KEY:
        return name
    return value


def _where(key: str, value: str) -> str:
    return "on the node" if key == HOSTNAME_KEY else f"in {key}={value}"


@dataclass(frozen=True)
class PodTopology:
    """What the pod being placed must know of the placed pods (see the module doc)."""

    affinity: tuple[TermHits, ...] = ()
    """Required podAffinity: the node's domain must hold a selected pod, for each."""
    anti: tuple[TermHits, ...] = ()
    """Required podAntiAffinity: the node's domain must hold no selected pod."""
    placed_anti: tuple[TermHits, ...] = ()
    """Placed pods' required anti-affinity terms that select this pod."""
    preferred: tuple[TermHits, ...] = ()
    """Preferred terms (signed weights) for the score."""

    def refuses(self, name: str, labels: Mapping[str, str]) -> str | None:
        """Why node `name` (with `labels`) breaks a required term, or None."""
        for h in self.anti:
            d = domain_of(name, labels, h.key)
            if d is not None and d in h.domains:
                return f"pod anti-affinity: {h.what} already {_where(h.key, d)}"
        for h in self.placed_anti:
            d = domain_of(name, labels, h.key)
            if d is not None and d in h.domains:
                return f"pod anti-affinity: a pod {_where(h.key, d)} refuses {h.what}"
        for h in self.affinity:
            d = domain_of(name, labels, h.key)
            if d is None:
                return f"pod affinity: node has no {h.key} label"
            if d not in h.domains:
                return f"pod affinity: no {h.what} {_where(h.key, d)}"
        return None

    def score(self, name: str, labels: Mapping[str, str]) -> float:
        """0..100 by the preferred terms: 50 plus half the share of their weight that
        the node satisfies (affinity matched, anti-affinity avoided) minus the share it
        breaks; 0 without preferred terms."""
        total = sum(abs(h.weight) for h in self.preferred)
        if not total:
            return 0.0
        got = 0
        for h in self.preferred:
            d = domain_of(name, labels, h.key)
            if d is not None and d in h.domains:
                got += h.weight
        return 50.0 + 50.0 * got / total


def _scope(term: PodAffinityTerm, own: str,
           namespace_labels: NamespaceLabels) -> frozenset[str] | None:
    """The namespaces a term looks in (None: every namespace)."""
    sel = term.namespace_selector
    if sel is not None:
        if not sel.match_labels and not sel.match_expressions:
            return None
        return frozenset(n for n, labels in namespace_labels().items()
                         if sel.matches(labels)) | frozenset(term.namespaces)
    return frozenset(term.namespaces) if term.namespaces else frozenset((own,))


def _in(scope: frozenset[str] | None, namespace: str) -> bool:
    return scope is None or namespace in scope


def topology_of(*, namespace: str, name: str, labels: Mapping[str, str],
                affinity: Affinity | None, placed: Callable[[], Iterable[Placed]],
                anti_placed: Iterable[Placed], node_labels: NodeLabels,
                namespace_labels: NamespaceLabels) -> PodTopology | None:
    """The `PodTopology` of pod `namespace/name` (with `labels` and `affinity`) among
    the placed pods, or None when nothing concerns it (it has no inter-pod term and no
    placed pod's anti-affinity selects it): the scheduler then skips the check.

    `placed()` yields every placed pod (called only if the pod has terms; the pod itself
    is skipped by name); `anti_placed` the placed pods with required anti-affinity."""
    placed_anti: list[TermHits] = []
    for e in anti_placed:
        if (e.namespace, e.name) == (namespace, name) or e.affinity is None:
            continue
        for term in e.affinity.required_anti():
            if not term.selects(labels) or not _in(
                    _scope(term, e.namespace, namespace_labels), namespace):
                continue
            node = node_labels(e.node)
            d = domain_of(e.node, node, term.topology_key) if node is not None else None
            if d is not None:
                placed_anti.append(TermHits(key=term.topology_key, what=term.describe(),
                                            domains={d: f"{e.namespace}/{e.name}"},
                                            owner=f"{e.namespace}/{e.name}"))
    if affinity is None or not affinity.has_pod_terms():
        return PodTopology(placed_anti=tuple(placed_anti)) if placed_anti else None

    # (term, kind: affinity | anti (required) | preferred, signed weight if preferred)
    terms: list[tuple[PodAffinityTerm, str, int]] = []
    for kind, group in (("affinity", affinity.pod_affinity),
                        ("anti", affinity.pod_anti_affinity)):
        if group is None:
            continue
        terms += [(t, kind, 0) for t in group.required_during_scheduling_ignored_during_execution]
        sign = 1 if kind == "affinity" else -1
        terms += [(w.pod_affinity_term, "preferred", sign * w.weight)
                  for w in group.preferred_during_scheduling_ignored_during_execution]
    scopes = [_scope(t, namespace, namespace_labels) for t, _, _ in terms]
    found: list[dict[str, str]] = [{} for _ in terms]
    for p in placed():
        if (p.namespace, p.name) == (namespace, name):
            continue
        at: Mapping[str, str] | None = None  # the labels of p's node, read once
        for i, (t, _, _) in enumerate(terms):
            if not _in(scopes[i], p.namespace) or not t.selects(p.labels):
                continue
            if at is None:
                at = node_labels(p.node)
                if at is None:
                    break
            d = domain_of(p.node, at, t.topology_key)
            if d is not None:
                found[i].setdefault(d, f"{p.namespace}/{p.name}")
    hits: dict[str, list[TermHits]] = {"affinity": [], "anti": [], "preferred": []}
    for (t, kind, weight), domains in zip(terms, found, strict=True):
        hits[kind].append(TermHits(key=t.topology_key, what=t.describe(), domains=domains,
                                   weight=weight))
    required = [i for i, (_, kind, _) in enumerate(terms) if kind == "affinity"]
    if required and not any(found[i] for i in required) and all(
            terms[i][0].selects(labels) and _in(scopes[i], namespace)
            for i in required):
        hits["affinity"] = []  # the first pod of a group that selects itself goes anywhere
    return PodTopology(affinity=tuple(hits["affinity"]), anti=tuple(hits["anti"]),
                       placed_anti=tuple(placed_anti), preferred=tuple(hits["preferred"]))
