"""Where pods run: the bind index, fits, and pending pods with their retries.

`Placement` owns which node's desired set holds each pod (`bound`, and its inverse
per node), the pods waiting for a node (`pending`) and the scheduler's reasons
written on them. It binds by the scheduler's decision or by `spec.nodeName`, checks
that an updated pod still fits where it is, and retries every pending pod whenever
a caller says room may have appeared (a node joined or changed, a pod left).

Inter-pod affinity needs the labels of the pods bound per node, but only for a pod
that has inter-pod terms or that a bound pod's required anti-affinity may select:
`topology` builds the scheduler's `PodTopology` for such a pod in one pass over the
bound pods (as Kubernetes' scheduler does), and returns None (no cost at all) for the
others while no bound pod has required anti-affinity (`_anti_host`, `_anti_wide`: the
few that have). A check on one node (a DaemonSet pod, a pod bound by name, an updated
pod on its node) looks only at that node's pods when every term is per hostname, so a
DaemonSet with hostname anti-affinity costs what a plain one does per node, not a pass
over the fleet per pod.

It does not build desired sets: every node whose set of bound pods changed is
remembered until `DesiredSets.commit` takes them (`take_changed`), so the desired
part sits above this one and never the other way round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from cloudcore.fleet import naming
from cloudcore.fleet.events import EventLog
from cloudcore.fleet.forecast import forecast_of
from cloudcore.fleet.objects import Key, Objects, is_daemon
from cloudcore.fleet.template import with_annotation
from cloudcore.scheduler import NodeView, Scheduler
from cloudcore.scheduler.affinity import Placed, PodTopology, topology_of
from cloudcore.scheduler.core import requests_of, unschedulable_message
from shared.models import PodStatus
from shared.pods import HOSTNAME_KEY


class Placement:
    """The bind index and the pending pods of one fleet."""

    def __init__(self, *, objects: Objects, scheduler: Scheduler, events: EventLog) -> None:
        self.objects = objects
        self.scheduler = scheduler
        self.events = events
        self._bound: dict[Key, str] = {}  # pod -> node whose desired set holds it
        self._on_node: dict[str, set[Key]] = {}
        self._pending: set[Key] = set()
        self._changed: set[str] = set()  # nodes whose bound pods changed since taken
        # bound pods with required pod anti-affinity: per node when all their terms are
        # per hostname (a one-node check reads only that node's), else in `_anti_wide`
        self._anti_host: dict[str, set[Key]] = {}
        self._anti_wide: set[Key] = set()
        self._scheduled: dict[str, PodStatus] = {}
        """node -> the Scheduled status last written for a pod bound there: the pods
        bound to one node by one reason (each DaemonSet's pod on it) share one status
        object and message (statuses are replaced, never edited in place)."""

    # -- reads --------------------------------------------------------------------------

    @property
    def bound(self) -> dict[Key, str]:
        """Pod -> the node whose desired set holds it (read only)."""
        return self._bound

    def node_of(self, key: Key) -> str | None:
        return self._bound.get(key)

    def on_node(self, node: str) -> set[Key]:
        """The pods bound to `node` (read only)."""
        return self._on_node.get(node, _EMPTY)

    def nodes_with_pods(self) -> Iterable[tuple[str, set[Key]]]:
        """(node, its bound pods) for every node with any (read only)."""
        return self._on_node.items()

    def is_pending(self, key: Key) -> bool:
        return key in self._pending

    def take_changed(self) -> set[str]:
        """The nodes whose set of bound pods changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    # -- the index ----------------------------------------------------------------------

    def restore(self, key: Key, node: str) -> None:
        """Record a binding loaded from the store (the desired set already holds it)."""
        self._bound[key] = node
        self._on_node.setdefault(node, set()).add(key)
        self._track(key)

    def restore_pending(self) -> None:
        """After loading: every pod not bound waits for a node."""
        self._pending = {k for k in self.objects.pods if k not in self._bound}

    def queue(self, key: Key) -> None:
        """The pod waits for a node (the next `retry_pending` places it)."""
        self._pending.add(key)

    def forget(self, key: Key) -> None:
        """The pod is gone: off its node, out of the pending set."""
        self.unbind(key)
        self._pending.discard(key)

    def bind(self, key: Key, node: str, message: str) -> None:
        pod = self.objects.pods[key]
        self._pending.discard(key)
        self._bound[key] = node
        self._on_node.setdefault(node, set()).add(key)
        self._track(key)
        status = self._scheduled.get(node)
        if status is None or status.message != message:
            if len(self._scheduled) > 2 * len(self.objects.nodes) + 1000:
                self._scheduled.clear()  # deleted nodes' entries go now and then
            status = self._scheduled[node] = pending_status(
                reason="Scheduled", message=message, node_name=node)
        with_annotation(pod, naming.SCHEDULED, status.message or message)
        pod.status = status
        self._changed.add(node)
        self.objects.save("Pod", key)
        self.events.add(type="Normal", reason="Scheduled", obj=f"Pod/{key[0]}/{key[1]}",
                        message=message)

    def unbind(self, key: Key) -> None:
        node = self._bound.pop(key, None)
        if node is not None:
            self._on_node.get(node, set()).discard(key)
            self._changed.add(node)
            self._untrack(key, node)

    def _track(self, key: Key) -> None:
        """Remember a bound pod whose required anti-affinity other pods must respect."""
        node = self._bound.get(key)
        if node is None:
            return
        self._untrack(key, node)
        pod = self.objects.pods.get(key)
        terms = pod.spec.affinity.required_anti() if (
            pod is not None and pod.spec.affinity is not None) else []
        if not terms:
            return
        if all(t.topology_key == HOSTNAME_KEY for t in terms):
            self._anti_host.setdefault(node, set()).add(key)
        else:
            self._anti_wide.add(key)

    def _untrack(self, key: Key, node: str) -> None:
        self._anti_wide.discard(key)
        on = self._anti_host.get(node)
        if on is not None and key in on:
            on.discard(key)
            if not on:
                del self._anti_host[node]

    def move(self, key: Key, node: str, message: str) -> None:
        """Rebind a pod to another node (eviction)."""
        self.unbind(key)
        self.bind(key, node, message)

    def replaced(self, key: Key) -> None:
        """A pod's spec changed: it stays where it is if it still fits there (its node's
        desired set is marked changed), else it is unbound and waits for a node."""
        pod = self.objects.pods[key]
        node = self._bound.get(key)
        if node is not None:
            target = pod.spec.node_name
            if (target is None or target == node) and self.fits(key, node,
                                                                daemon=is_daemon(pod)):
                self._changed.add(node)
                self._track(key)
                return
            self.unbind(key)
        self._pending.add(key)

    def mark(self, node: str) -> None:
        """`node`'s desired set may differ although its bound pods did not change."""
        self._changed.add(node)

    # -- scheduling ---------------------------------------------------------------------

    def view(self, name: str, *, exclude: Key | None = None,
             topology: PodTopology | None = None) -> NodeView:
        """What the scheduler sees of node `name`: labels, taints, readiness, room, and
        the `topology` of the pod being placed (`topology()`)."""
        node = self.objects.nodes[name]
        pods = self.objects.pods
        requested: dict[str, int] = {}
        ports: frozenset[tuple[str, int]] = frozenset()
        for pk in self._on_node.get(name, ()):
            if pk == exclude or pk not in pods:
                continue
            spec = pods[pk].spec
            for res, amount in requests_of(spec).items():
                requested[res] = requested.get(res, 0) + amount
            if taken := spec.host_ports():
                ports |= taken
        return NodeView(name=name, labels=node.metadata.labels, taints=node.spec.taints,
                        unschedulable=node.spec.unschedulable, ready=node.status.ready,
                        allocatable=node.status.allocatable, requested=requested,
                        host_ports=ports, forecast=forecast_of(node.status.usage),
                        pod_topology=topology)

    def topology(self, key: Key, *, node: str | None = None) -> PodTopology | None:
        """What pod `key`'s inter-pod terms find among the bound pods (itself left
        out), and the bound pods' anti-affinity that selects it; None when neither
        exists (the scheduler then skips inter-pod affinity). With `node`, only good
        for judging that one node (fewer pods are read where the terms allow)."""
        pod = self.objects.pods[key]
        affinity = pod.spec.affinity
        own = affinity is not None and affinity.has_pod_terms()
        if not own and not self._anti_host and not self._anti_wide:
            return None
        pods, nodes = self.objects.pods, self.objects.nodes
        anti: Iterable[Key]
        if node is not None:
            anti = [*self._anti_host.get(node, ()), *self._anti_wide]
        else:
            anti = [k for keys in self._anti_host.values() for k in keys]
            anti += self._anti_wide
        if not own and not anti:
            return None
        bound: Iterable[Key] = self._bound
        if node is not None and affinity is not None and all(
                t.topology_key == HOSTNAME_KEY for t in affinity.pod_terms()) and not (
                affinity.pod_affinity is not None
                and affinity.pod_affinity.required_during_scheduling_ignored_during_execution):
            # the node's own pods decide (not with required affinity: whether a selected
            # pod exists anywhere decides the first-pod-of-a-group rule)
            bound = self._on_node.get(node, _EMPTY)

        def placed(keys: Iterable[Key]) -> Iterable[Placed]:
            for pk in keys:
                p = pods.get(pk)
                node = self._bound.get(pk)
                if p is not None and node is not None:
                    yield Placed(namespace=pk[0], name=pk[1], labels=p.metadata.labels,
                                 node=node, affinity=p.spec.affinity)

        def node_labels(name: str) -> dict[str, str] | None:
            node = nodes.get(name)
            return None if node is None else node.metadata.labels

        return topology_of(
            namespace=key[0], name=key[1], labels=pod.metadata.labels, affinity=affinity,
            placed=lambda: placed(bound), anti_placed=placed(anti),
            node_labels=node_labels,
            namespace_labels=lambda: {n: ns.metadata.labels
                                      for n, ns in self.objects.namespaces.items()})

    def placeable(self, spec: Any, node: str) -> bool:
        """Whether a DaemonSet template admits `node` (selector, arch, required node
        affinity, tolerations): judged on the node's name, labels and taints alone."""
        n = self.objects.nodes[node]
        return bool(self.scheduler.placeable(
            spec, NodeView(name=node, labels=n.metadata.labels, taints=n.spec.taints)))

    def fits(self, key: Key, node: str, *, daemon: bool) -> bool:
        """Whether the (updated) pod still fits on its node, not counting itself."""
        pod = self.objects.pods[key]
        view = self.view(node, exclude=key, topology=self.topology(key, node=node))
        return self.scheduler.check(pod.spec, view, daemon=daemon) is None

    def retry_pending(self) -> None:
        """Try to place every pending pod: higher `spec.priority` first (when capacity is
        scarce the higher ones get it, as Kubernetes' scheduling queue orders pods), then
        in name order."""
        nodes, pods = self.objects.nodes, self.objects.pods
        if not nodes:
            for key in self._pending:
                self._explain_pending(key, unschedulable_message(0, Counter()))
            return
        for key in by_priority(self._pending, pods):
            pod = pods.get(key)
            if pod is None:
                self._pending.discard(key)
                continue
            target = pod.spec.node_name
            if target is not None:
                daemon = is_daemon(pod)
                if target not in nodes:
                    self._explain_pending(key, f"0/1 nodes available: node {target} not found")
                    continue
                reason = self.scheduler.check(
                    pod.spec, self.view(target, topology=self.topology(key, node=target)),
                    daemon=daemon)
                if reason is None:
                    self.bind(key, target, f"scheduled on {target}: bound by spec.nodeName")
                else:
                    self._explain_pending(
                        key, f"0/1 nodes available: 1 {reason} (pod is bound to {target})")
                continue
            topology = self.topology(key)
            decision = self.scheduler.schedule(pod.spec, (self.view(n, topology=topology)
                                                          for n in nodes))
            if decision.node is None:
                self._explain_pending(key, decision.message)
            else:
                self.bind(key, decision.node, decision.message)

    def drain(self, name: str) -> tuple[list[Key], list[dict[str, str]]]:
        """Unbind the pods of `name` that may run elsewhere (they wait for a node);
        DaemonSet pods and pods pinned by `spec.nodeName` stay. Returns (moved keys,
        kept pods with the reason)."""
        moved: list[Key] = []
        kept: list[dict[str, str]] = []
        for key in sorted(self._on_node.get(name, ())):
            pod = self.objects.pods[key]
            ref = f"{key[0]}/{key[1]}"
            if is_daemon(pod):
                kept.append({"pod": ref, "reason": "DaemonSet pod"})
            elif pod.spec.node_name == name:
                kept.append({"pod": ref, "reason": "bound to the node by spec.nodeName"})
            else:
                self.unbind(key)
                self._pending.add(key)
                moved.append(key)
                self.events.add(type="Normal", reason="Evicted", obj=f"Pod/{ref}",
                                message=f"evicted from {name} by drain")
        return moved, kept

    def _explain_pending(self, key: Key, message: str) -> None:
        pod = self.objects.pods.get(key)
        if pod is None:
            return
        st = pod.status
        if st.phase == "Pending" and st.reason == "Unschedulable" and st.message == message:
            return
        pod.status = pending_status(reason="Unschedulable", message=message)
        with_annotation(pod, naming.SCHEDULED, f"not scheduled: {message}")
        self.objects.save("Pod", key)
        self.events.add(type="Warning", reason="FailedScheduling",
                        obj=f"Pod/{key[0]}/{key[1]}", message=message)


def by_priority(keys: Iterable[Key], pods: Mapping[Key, Any]) -> list[Key]:
    """`keys` with higher pod priority (`spec.priority`, None counting as 0) first, then
    in name order; a key without a pod sorts as priority 0."""
    def order(key: Key) -> tuple[int, Key]:
        pod = pods.get(key)
        return (-(pod.spec.priority or 0) if pod is not None else 0, key)

    return sorted(keys, key=order)


_EMPTY: set[Key] = set()
_NO_CONTAINERS: list[Any] = []
"""The container statuses of every Pending status the cloud writes: one empty list for
all of them (statuses are replaced, never edited in place; 56 bytes a pod)."""


def pending_status(*, reason: str, message: str, node_name: str | None = None) -> PodStatus:
    """A Pending status the cloud writes (no container has been reported)."""
    status = PodStatus(phase="Pending", reason=reason, message=message, node_name=node_name)
    status.__dict__["container_statuses"] = _NO_CONTAINERS
    return status
