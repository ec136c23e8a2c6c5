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

Shards (proposal 0008): with `shared` set (`cloudcore.cluster.bindings`), pods the
scheduler places (no `spec.nodeName`: Deployment replicas, bare pods) are placed once
for the whole fleet, by the shard holding the global lease. While `shared.schedules()`
says so, this placement schedules them as usual and tells `shared` every bind and
unbind of such a pod (it writes them to KV); otherwise it never schedules them: a
pending one is bound only where `shared.binding(key)` says the holder bound it.
Pinned pods (DaemonSet pods, `spec.nodeName`) are bound on every shard as before.
A pending pod without a binding yet shows reason `WaitingForPlacement` on such a
shard. A drain through such a shard unbinds its copies and binds them again only where
the holder binds them next, never back on the drained node while it stays cordoned
(`drained_here`; the holder moves them when the cordon reaches it with the drain mark).

It does not build desired sets: every node whose set of bound pods changed is
remembered until `DesiredSets.commit` takes them (`take_changed`), so the desired
part sits above this one and never the other way round.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Protocol

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
        self._pending: dict[Key, _Queue] = {}  # pod waiting for a node -> its queue
        self._queues: dict[Hashable, _Queue] = {}
        self._round: list[_Queue] | None = None  # a retry round cut short: its queues
        self._at = 0  # ... and where it stopped
        self._again = False  # a retry was asked for while a round was under way
        self._loads: dict[tuple[int, int, bool], tuple[Any, Any, dict[str, int],
                                                       frozenset[tuple[str, int]]]] = {}
        """(containers, init containers, hostNetwork) of a spec -> its requests and host
        ports: the pods of one template share their container lists, so `view` sums a
        node's requests without parsing each pod's quantities again."""
        self._sums: dict[str, tuple[dict[str, int], frozenset[tuple[str, int]]]] = {}
        """node -> the summed requests and host ports of its bound pods, until they
        change (bind, unbind, a spec replaced): a pending retry asks every node, and
        most nodes' pods did not change since the last one. At most SUMS_KEPT nodes."""
        self._changed: set[str] = set()  # nodes whose bound pods changed since taken
        # bound pods with required pod anti-affinity: per node when all their terms are
        # per hostname (a one-node check reads only that node's), else in `_anti_wide`
        self._anti_host: dict[str, set[Key]] = {}
        self._anti_wide: set[Key] = set()
        self.shared: SharedPlacement | None = None
        self._drained: set[str] = set()  # nodes drained through this shard (shards)
        """Shards: the fleet-wide placement of unpinned pods (module docstring)."""
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
        self._sums.pop(node, None)
        self._track(key)

    def restore_pending(self) -> None:
        """After loading: every pod not bound waits for a node."""
        for key in self.objects.pods:
            if key not in self._bound:
                self.queue(key)

    def pending_count(self) -> int:
        """Pods waiting for a node."""
        return len(self._pending)

    def queue(self, key: Key) -> None:
        """The pod waits for a node (the next `retry_pending` places it), in the queue
        of the pods the scheduler judges alike (`_Queue`)."""
        pod = self.objects.pods.get(key)
        if pod is None:
            return
        spec = pod.spec
        revision = pod.metadata.annotations.get(naming.REVISION)
        alike: Hashable = (("pod", key) if spec.node_name is not None or revision is None
                           else (key[0], revision, spec.priority or 0))
        q = self._pending.get(key)
        if q is not None:
            if q.alike == alike:
                return
            self._leave(key, q)
        q = self._queues.get(alike)
        if q is None:
            q = self._queues[alike] = _Queue(alike, -(spec.priority or 0))
        heapq.heappush(q.heap, key)
        q.size += 1
        if q.said is not None:
            q.fresh.append(key)
        self._pending[key] = q

    def _leave(self, key: Key, q: _Queue) -> None:
        """`key` is no longer pending (its heap entry goes lazily, `_first`)."""
        del self._pending[key]
        q.size -= 1
        if q.size == 0:
            if self._queues.get(q.alike) is q:
                del self._queues[q.alike]
            q.heap.clear()
            q.fresh.clear()
            q.todo.clear()
        elif len(q.heap) > 64 and len(q.heap) > 4 * q.size:  # mostly stale entries
            pending = self._pending
            q.heap = [k for k in q.heap if pending.get(k) is q]
            heapq.heapify(q.heap)

    def _unqueue(self, key: Key) -> None:
        q = self._pending.get(key)
        if q is not None:
            self._leave(key, q)

    def _first(self, q: _Queue) -> Key | None:
        """The queue's pod that goes first (the least name), stale entries dropped."""
        heap, pending = q.heap, self._pending
        while heap and pending.get(heap[0]) is not q:
            heapq.heappop(heap)
        return heap[0] if heap else None

    def forget(self, key: Key) -> None:
        """The pod is gone: off its node, out of the pending set."""
        self.unbind(key)
        self._unqueue(key)

    def bind(self, key: Key, node: str, message: str) -> None:
        pod = self.objects.pods[key]
        self._unqueue(key)
        self._bound[key] = node
        self._on_node.setdefault(node, set()).add(key)
        self._sums.pop(node, None)
        self._track(key)
        status = self._scheduled.get(node)
        if status is None or status.message != message:
            if len(self._scheduled) >= SCHEDULED_KEPT:
                self._scheduled.clear()  # see SCHEDULED_KEPT
            status = self._scheduled[node] = pending_status(
                reason="Scheduled", message=message, node_name=node)
        with_annotation(pod, naming.SCHEDULED, status.message or message)
        pod.status = status
        self._changed.add(node)
        self.objects.save("Pod", key)
        self.events.add(type="Normal", reason="Scheduled", obj=f"Pod/{key[0]}/{key[1]}",
                        message=message)
        if self.shared is not None and pod.spec.node_name is None:
            self.shared.bound(key, node, message)

    def unbind(self, key: Key) -> None:
        node = self._bound.pop(key, None)
        if node is not None:
            if self.shared is not None:
                pod = self.objects.pods.get(key)
                if pod is None or pod.spec.node_name is None:
                    self.shared.unbound(key)
            self._on_node.get(node, set()).discard(key)
            self._sums.pop(node, None)
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
            self._sums.pop(node, None)  # its requests may have changed
            target = pod.spec.node_name
            if (target is None or target == node) and self.fits(key, node,
                                                                daemon=is_daemon(pod)):
                self._changed.add(node)
                self._track(key)
                return
            self.unbind(key)
        self.queue(key)

    def mark(self, node: str) -> None:
        """`node`'s desired set may differ although its bound pods did not change."""
        self._changed.add(node)

    # -- scheduling ---------------------------------------------------------------------

    def view(self, name: str, *, exclude: Key | None = None,
             topology: PodTopology | None = None) -> NodeView:
        """What the scheduler sees of node `name`: labels, taints, readiness, room, and
        the `topology` of the pod being placed (`topology()`)."""
        node = self.objects.nodes[name]
        sums = self._sums.get(name) if exclude is None else None
        if sums is None:
            sums = self._sum(name, exclude)
            if exclude is None and len(self._sums) < SUMS_KEPT:
                self._sums[name] = sums
        requested, ports = sums
        return NodeView(name=name, labels=node.metadata.labels, taints=node.spec.taints,
                        unschedulable=node.spec.unschedulable, ready=node.status.ready,
                        allocatable=node.status.allocatable, requested=requested,
                        host_ports=ports, forecast=forecast_of(node.status.usage),
                        pod_topology=topology)

    def _sum(self, name: str, exclude: Key | None
             ) -> tuple[dict[str, int], frozenset[tuple[str, int]]]:
        """The summed requests and host ports of the pods bound to `name` (but
        `exclude`). The returned dict is shared: never change it."""
        pods = self.objects.pods
        requested: dict[str, int] = {}
        ports: frozenset[tuple[str, int]] = frozenset()
        loads = self._loads
        for pk in self._on_node.get(name, ()):
            if pk == exclude or pk not in pods:
                continue
            spec = pods[pk].spec
            containers, inits = spec.containers, spec.init_containers
            load = loads.get((id(containers), id(inits), spec.host_network))
            if load is None:
                if len(loads) >= LOADS_KEPT:
                    loads.clear()
                # the lists are kept in the entry, so their ids cannot be reused meanwhile
                load = loads[(id(containers), id(inits), spec.host_network)] = (
                    containers, inits, requests_of(spec), spec.host_ports())
            for res, amount in load[2].items():
                requested[res] = requested.get(res, 0) + amount
            if load[3]:
                ports |= load[3]
        return requested, ports

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

    def retry_pending(self, *, budget: float | None = None, more: bool = False) -> bool:
        """Try to place the pending pods: higher `spec.priority` first (when capacity is
        scarce the higher ones get it, as Kubernetes' scheduling queue orders pods), then
        in name order.

        Pods the scheduler judges alike (one namespace, one revision, so one spec, no
        `nodeName`) wait in one queue (`_Queue`): its pods are tried in name order until
        one does not fit; the others then wait with that pod's reason without being
        tried (no inter-pod term concerns them, so they would fail the same way). A
        Deployment with 100,000 replicas that do not fit costs one scheduling attempt
        per retry, not 100,000. Only the pod tried gets a FailedScheduling event; the
        others get its reason in their status when the reason changes.

        With `budget` (seconds) a retry stops once it is spent and returns True: the
        caller calls again with `more=True` to go on where it stopped (a retry asked for
        with `more=False` while such a round is under way makes another round follow
        it). Without a budget the round is done in the call and False returned."""
        end = None if budget is None else time.perf_counter() + budget
        if self._round is not None and not more:
            self._again = True
        elif more and self._round is None and not self._again:
            return False
        while True:
            if self._round is None:
                self._again = False
                self._round = sorted(self._queues.values(), key=self._order)
                self._at = 0
            first = True  # each call gets somewhere, however small its budget
            while self._at < len(self._round):
                if not first and end is not None and time.perf_counter() >= end:
                    return True
                first = False
                q = self._round[self._at]
                if q.size and not self._retry_queue(q, end):
                    return True
                self._at += 1
            self._round = None
            if not self._again:
                return False
            if end is not None and time.perf_counter() >= end:
                return True

    def _order(self, q: _Queue) -> tuple[int, Key]:
        first = self._first(q)
        return (q.priority, first if first is not None else ("", ""))

    def _retry_queue(self, q: _Queue, end: float | None) -> bool:
        """Place the queue's pods until one does not fit; False if the budget ran out
        first (the round takes this queue up again next time)."""
        if q.todo:  # a failure's reason still to be written to the others
            return self._explain_todo(q, end)
        nodes, pods = self.objects.nodes, self.objects.pods
        while q.size:
            key = self._first(q)
            if key is None:
                break
            pod = pods.get(key)
            if pod is None:
                self._leave(key, q)
                continue
            target = pod.spec.node_name
            if not nodes:
                return self._fail(q, key, unschedulable_message(0, Counter()), end)
            if target is not None:  # a pinned pod has a queue of its own
                if target not in nodes:
                    return self._fail(q, key, f"0/1 nodes available: node {target} not found",
                                      end)
                reason = self.scheduler.check(
                    pod.spec, self.view(target, topology=self.topology(key, node=target)),
                    daemon=is_daemon(pod))
                if reason is not None:
                    return self._fail(q, key, f"0/1 nodes available: 1 {reason} (pod is "
                                              f"bound to {target})", end)
                self.bind(key, target, f"scheduled on {target}: bound by spec.nodeName")
                continue
            if self.shared is not None:
                if not self.shared.schedules():
                    self._follow(q)
                    return True
                got = self.shared.binding(key)  # placed by a previous holder: resume
                if got is not None and got[0] in nodes:
                    self.bind(key, got[0], got[1])
                    continue
            topology = self.topology(key)
            if topology is not None and q.size > 1:
                self._retry_each(q)
                return True
            decision = self.scheduler.schedule(pod.spec, (self.view(n, topology=topology)
                                                          for n in nodes))
            if decision.node is None:
                return self._fail(q, key, decision.message, end)
            self.bind(key, decision.node, decision.message)
            if end is not None and time.perf_counter() >= end:
                return not q.size
        return True

    def _follow(self, q: _Queue) -> None:
        """A shard not holding the global lease: bind the queue's pods where the holder
        bound them (`shared.binding`); the others wait for it, with no reason written."""
        assert self.shared is not None
        nodes, pending, binding = self.objects.nodes, self._pending, self.shared.binding
        for key in list(q.heap):  # a copy: binding one may clear the queue's heap
            if pending.get(key) is not q:
                continue
            got = binding(key)
            if got is not None and got[0] in nodes and not self.drained_here(got[0]):
                self.bind(key, got[0], got[1])
            else:
                self._wait_for_holder(key)

    def _wait_for_holder(self, key: Key) -> None:
        """A pending pod that the shard holding the global lease has not bound (yet)."""
        pod = self.objects.pods.get(key)
        if pod is None or pod.status.reason == WAITING_REASON:
            return
        pod.status = _WAITING
        self.objects.save("Pod", key)

    def drained_here(self, node: str) -> bool:
        """Drained through this shard and still cordoned: the holder's old bindings to
        it are not followed (it moves those pods when the drain reaches it)."""
        if node not in self._drained:
            return False
        rec = self.objects.nodes.get(node)
        if rec is None or not rec.spec.unschedulable:
            self._drained.discard(node)
            return False
        return True

    def _retry_each(self, q: _Queue) -> None:
        """The queue's pods one by one, each with its own reason: an inter-pod term
        concerns them, so their labels may make them differ."""
        nodes, pods = self.objects.nodes, self.objects.pods
        for key in sorted(k for k in q.heap if self._pending.get(k) is q):
            pod = pods.get(key)
            if pod is None:
                self._leave(key, q)
                continue
            topology = self.topology(key)
            decision = self.scheduler.schedule(pod.spec, (self.view(n, topology=topology)
                                                          for n in nodes))
            if decision.node is None:
                self._explain_pending(key, decision.message)
            else:
                self.bind(key, decision.node, decision.message)
        q.said, q.fresh = None, []

    def _fail(self, q: _Queue, key: Key, message: str, end: float | None) -> bool:
        """The queue's first pod does not fit: it gets the reason and an event, the
        others the reason (all of them when it changed, else those queued since it was
        last written); the queue is done for this round. False if the budget ran out
        before every reason was written (`todo` holds the rest)."""
        self._explain_pending(key, message)
        pending = self._pending
        if message != q.said:
            q.said, q.status = message, pending_status(reason="Unschedulable",
                                                       message=message)
            q.todo = [k for k in q.heap if k != key and pending.get(k) is q]
        else:
            q.todo = [k for k in q.fresh if k != key]
        q.fresh = []
        return self._explain_todo(q, end)

    def _explain_todo(self, q: _Queue, end: float | None) -> bool:
        """Write the queue's reason to its `todo` pods, EXPLAIN_STEP at a time until
        `end`; True when none is left."""
        todo, pending, message = q.todo, self._pending, q.said
        while todo:
            for key in todo[-EXPLAIN_STEP:]:
                if pending.get(key) is q and message is not None:
                    self._explain_pending(key, message, status=q.status, event=False)
            del todo[-EXPLAIN_STEP:]
            if todo and end is not None and time.perf_counter() >= end:
                return False
        return True

    def drain(self, name: str) -> tuple[list[Key], list[dict[str, str]]]:
        """Unbind the pods of `name` that may run elsewhere (they wait for a node);
        DaemonSet pods and pods pinned by `spec.nodeName` stay. Returns (moved keys,
        kept pods with the reason)."""
        moved: list[Key] = []
        kept: list[dict[str, str]] = []
        if self.shared is not None and not self.shared.schedules():
            self._drained.add(name)
        for key in sorted(self._on_node.get(name, ())):
            pod = self.objects.pods[key]
            ref = f"{key[0]}/{key[1]}"
            if is_daemon(pod):
                kept.append({"pod": ref, "reason": "DaemonSet pod"})
            elif pod.spec.node_name == name:
                kept.append({"pod": ref, "reason": "bound to the node by spec.nodeName"})
            else:
                self.unbind(key)
                self.queue(key)
                moved.append(key)
                self.events.add(type="Normal", reason="Evicted", obj=f"Pod/{ref}",
                                message=f"evicted from {name} by drain")
        return moved, kept

    def _explain_pending(self, key: Key, message: str, *, status: PodStatus | None = None,
                         event: bool = True) -> None:
        """The pod waits with `message` as its reason (`status`: a Pending status with
        that message, shared by the pods of a queue)."""
        pod = self.objects.pods.get(key)
        if pod is None:
            return
        st = pod.status
        if st.phase == "Pending" and st.reason == "Unschedulable" and st.message == message:
            return
        pod.status = status or pending_status(reason="Unschedulable", message=message)
        with_annotation(pod, naming.SCHEDULED, f"not scheduled: {message}")
        self.objects.save("Pod", key)
        if event:
            self.events.add(type="Warning", reason="FailedScheduling",
                            obj=f"Pod/{key[0]}/{key[1]}", message=message)


class SharedPlacement(Protocol):
    """The placement shared by shards (`cloudcore.cluster.bindings.Bindings`)."""

    def schedules(self) -> bool:
        """Whether this shard places unpinned pods now (it holds the global lease)."""
        ...

    def binding(self, key: Key) -> tuple[str, str] | None:
        """(node, message) the placing shard bound the pod to, or None."""
        ...

    def bound(self, key: Key, node: str, message: str) -> None:
        """An unpinned pod was bound here."""
        ...

    def unbound(self, key: Key) -> None:
        """An unpinned pod was unbound here."""
        ...


class _Queue:
    """Pending pods the scheduler judges alike (`Placement.queue`): a heap of their
    keys (entries of pods no longer in the queue are dropped lazily), how many there
    are, the reason last written to them (`said`, its status object `status`), the
    pods queued since (`fresh`) and the pods a failure's reason is still to be written
    to (`todo`)."""

    __slots__ = ("alike", "fresh", "heap", "priority", "said", "size", "status", "todo")

    def __init__(self, alike: Hashable, priority: int) -> None:
        self.alike = alike
        self.priority = priority  # negated: the highest goes first
        self.heap: list[Key] = []
        self.size = 0
        self.said: str | None = None
        self.status: PodStatus | None = None
        self.fresh: list[Key] = []
        self.todo: list[Key] = []


def by_priority(keys: Iterable[Key], pods: Mapping[Key, Any]) -> list[Key]:
    """`keys` with higher pod priority (`spec.priority`, None counting as 0) first, then
    in name order; a key without a pod sorts as priority 0."""
    def order(key: Key) -> tuple[int, Key]:
        pod = pods.get(key)
        return (-(pod.spec.priority or 0) if pod is not None else 0, key)

    return sorted(keys, key=order)


_EMPTY: set[Key] = set()
SUMS_KEPT = 20_000
"""Nodes whose summed requests `Placement.view` keeps between changes (a dict each)."""
SCHEDULED_KEPT = 4096
"""Nodes whose last Scheduled status `Placement.bind` keeps for the next pod bound
there; then it starts over. It was one per node of the fleet, kept after the pods
reported and replaced it (~450 bytes a node, every shard holding every node: issue 14);
what it is for, one status shared by the pods bound to a node in one burst, needs
only the nodes bound lately."""
LOADS_KEPT = 4096
"""Distinct container lists whose requests `Placement.view` remembers."""
EXPLAIN_STEP = 64
"""Pods a queue's reason is written to between two looks at the clock."""
_NO_CONTAINERS: list[Any] = []
"""The container statuses of every Pending status the cloud writes: one empty list for
all of them (statuses are replaced, never edited in place; 56 bytes a pod)."""


def pending_status(*, reason: str, message: str, node_name: str | None = None) -> PodStatus:
    """A Pending status the cloud writes (no container has been reported)."""
    status = PodStatus(phase="Pending", reason=reason, message=message, node_name=node_name)
    status.__dict__["container_statuses"] = _NO_CONTAINERS
    return status


WAITING_REASON = "WaitingForPlacement"
_WAITING = pending_status(reason=WAITING_REASON, message=(
    "placed by the shard holding the global lease; waiting for its binding"))
