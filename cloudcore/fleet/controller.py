"""The fleet: objects -> pods -> per-node desired sets, as one facade over its parts.

`Fleet` builds the parts of the fleet core and wires them through their constructors
(docs/architecture.md, "Cloud"; proposal 0004):

    objects.py    Objects        tables per kind, persistence, watches, reads
    placement.py  Placement      the bind index, fits, pending pods and retries
    desired.py    DesiredSets    per-node desired sets, commits, acks, report seqs
    plans.py      RolloutPlans   which template each workload's pods get
    nodes.py      Nodes          node registration, reports, liveness, telemetry
    workloads.py  Workloads      DaemonSet and Deployment controllers, owner index
    rollout.py    Rollouts       the health-gated rollout tick, workload statuses
    eviction.py   Eviction       replicas moved off long-NotReady nodes, NodeLost
    upgrades.py   Upgrades       AgentUpgrades: nodes' agent releases in batches

and keeps the public methods the API, the service, the sync hub (it is the hub's
`NodeSink`) and tests call. Each method here is the sequence of part calls one
operation needs, ending, when pods may have moved, with the pending retry
(`Placement.retry_pending`) and one commit of the desired sets
(`DesiredSets.commit`), which tells the sync hub which nodes changed.

Level-triggered like Kubernetes controllers: every change marks the nodes whose
desired set may differ, and the commit recomputes exactly those. Pending pods are
retried whenever a node joins, changes, or frees capacity. ConfigMaps and Secrets go
into the desired set of exactly the nodes whose placed pods mount them. NotReady
nodes keep their pods (edges run autonomously while offline) until the pods'
toleration runs out; then Deployment replicas move (`eviction.py`). A DaemonSet with
an updateStrategy (a Deployment with a strategy) gets a template change in
health-gated batches, with automatic rollback (`rollout.py`); without one, every pod
gets it at once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cloudcore.errors import Conflict, NotFound
from cloudcore.fleet.admission import Admission
from cloudcore.fleet.desired import DesiredSets
from cloudcore.fleet.events import EventLog
from cloudcore.fleet.eviction import Eviction
from cloudcore.fleet.lifecycle import Liveness, Wave
from cloudcore.fleet.nodes import Nodes
from cloudcore.fleet.objects import (
    Action,
    ApplyResult,
    Key,
    Objects,
    Persister,
    check_selector,
    dump_object,
    ident,
    key_of,
)
from cloudcore.fleet.placement import Placement
from cloudcore.fleet.plans import RolloutPlans
from cloudcore.fleet.rollout import Rollouts
from cloudcore.fleet.upgrades import Upgrades
from cloudcore.fleet.watch import WatchHub
from cloudcore.fleet.workloads import Workloads
from cloudcore.scheduler import Scheduler
from shared.delta import NodeDesired
from shared.entries import CONFIGMAP, SECRET
from shared.errors import ObjectError
from shared.models import (
    CLUSTER_KINDS,
    SYSTEM_PRIORITY_CLASSES,
    AgentUpgrade,
    ConfigMap,
    DaemonSet,
    Deployment,
    Namespace,
    Node,
    Pod,
    PriorityClass,
    Secret,
)

__all__ = ["ApplyResult", "Fleet", "Persister", "Refusal", "dump_object"]

RETRY_BUDGET_S = 0.010
"""With `background`, how long one retry of pending pods may run in a call (the rest
goes on between the background slices)."""

Refusal = ObjectError | NotFound | Conflict
"""Why `Fleet.apply_each` refused one object (HTTP 422, 404 or 409)."""


class Fleet:
    """All objects of the fleet, in memory, and the controller logic over them."""

    def __init__(self, *, store: Persister, scheduler: Scheduler, liveness: Liveness,
                 clock: Callable[[], float] = time.time,
                 admission: Admission | None = None,
                 protected_labels: tuple[str, ...] = (),
                 telemetry_points: int = 120,
                 eviction_timeout: float = 300.0,
                 events: int | None = None,
                 background: bool = False) -> None:
        """`telemetry_points` samples kept per node; `eviction_timeout` is the
        cloud-wide default toleration of a NotReady node in seconds
        (settings.sync.pod_eviction_timeout); `events` the event log's capacity. With
        `background`, DaemonSets over big fleets are expanded in bounded slices by
        `run()`, which the owner must then run (the service does); without it every
        apply expands them at once, in the call."""
        self.store = store
        self.scheduler = scheduler
        self.liveness = liveness
        self.admission = admission or Admission()
        """Pod security admission: every apply and dry run passes through it."""
        self.events = EventLog(clock=clock)
        if events is not None:
            self.events.capacity = events
        self.objects = Objects(store=store, events=self.events, watches=WatchHub())
        self.placement = Placement(objects=self.objects, scheduler=scheduler,
                                   events=self.events)
        self.desired_sets = DesiredSets(objects=self.objects, placement=self.placement,
                                        events=self.events)
        self.plans = RolloutPlans(store=store)
        self.node_ops = Nodes(objects=self.objects, placement=self.placement,
                              desired=self.desired_sets, liveness=liveness,
                              events=self.events, touch=self.plans.touch, clock=clock,
                              protected_labels=protected_labels,
                              telemetry_points=telemetry_points)
        self.workloads = Workloads(objects=self.objects, placement=self.placement,
                                   desired=self.desired_sets, plans=self.plans,
                                   background=background)
        self.rollouts = Rollouts(plans=self.plans, objects=self.objects,
                                 placement=self.placement, workloads=self.workloads,
                                 events=self.events)
        """Health-gated DaemonSet rollouts and workload statuses (`rollout.py`)."""
        self.eviction = Eviction(objects=self.objects, placement=self.placement,
                                 desired=self.desired_sets, nodes=self.node_ops,
                                 scheduler=scheduler, events=self.events,
                                 timeout=eviction_timeout)
        """Moves Deployment replicas off long-NotReady nodes; `timeout` is the
        cloud-wide default toleration (settings.sync.pod_eviction_timeout)."""
        self.upgrades = Upgrades(objects=self.objects, desired=self.desired_sets,
                                 events=self.events, store=store)
        """AgentUpgrades: the nodes' agent release entries in health-gated batches
        (`upgrades.py`)."""
        self._retry_budget = RETRY_BUDGET_S if background else None
        """How long one pending retry may hold the event loop (with `background`; a
        retry cut short goes on in `run`'s slices)."""
        self._back = False
        """A node became Ready since the last liveness tick: the pods that wait for a
        node (one was not ready) are retried at the next tick, once however many came
        back (a cloud restart makes every node Ready again)."""

    # -- views of the parts' state (read only) ------------------------------------------

    @property
    def watches(self) -> WatchHub:
        return self.objects.watches

    @property
    def nodes(self) -> dict[str, Node]:
        return self.objects.nodes

    @property
    def pods(self) -> dict[Key, Pod]:
        return self.objects.pods

    @property
    def daemonsets(self) -> dict[Key, DaemonSet]:
        return self.objects.daemonsets

    @property
    def deployments(self) -> dict[Key, Deployment]:
        return self.objects.deployments

    @property
    def configmaps(self) -> dict[Key, ConfigMap]:
        return self.objects.configmaps

    @property
    def secrets(self) -> dict[Key, Secret]:
        return self.objects.secrets

    @property
    def namespaces(self) -> dict[str, Namespace]:
        return self.objects.namespaces

    @property
    def desired(self) -> Mapping[str, NodeDesired]:
        """node -> its desired set."""
        return self.desired_sets.sets

    @property
    def report_seq(self) -> Mapping[str, int]:
        return self.desired_sets.report_seqs

    @property
    def deleted_nodes(self) -> Mapping[str, float]:
        return self.node_ops.deleted

    @property
    def bound(self) -> dict[Key, str]:
        """Pod -> the node whose desired set holds it (read only)."""
        return self.placement.bound

    @property
    def telemetry(self) -> dict[str, list[dict[str, Any]]]:
        return self.node_ops.telemetry

    @property
    def telemetry_malformed(self) -> int:
        return self.node_ops.telemetry_malformed

    @property
    def clock(self) -> Callable[[], float]:
        """The wall clock of node reports and forecasts."""
        return self.node_ops.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self.node_ops.clock = value

    @property
    def observer(self) -> Callable[[str, int, float, float], None] | None:
        """Gets every valid telemetry point (the forecaster, when it is enabled)."""
        return self.node_ops.observer

    @observer.setter
    def observer(self, value: Callable[[str, int, float, float], None] | None) -> None:
        self.node_ops.observer = value

    # -- loading ------------------------------------------------------------------------

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        """Rebuild memory from the store. Nodes become Unknown until they report."""
        self.node_ops.load(records)
        self.objects.load(records)
        self.workloads.load()
        self.plans.load(records.get("rollouts", {}))
        self.workloads.compact()  # DaemonSet pods as compact records (proposal 0004)
        self.desired_sets.load(records)
        self.upgrades.load(records)
        self.placement.restore_pending()
        self.desired_sets.sync_node_gens()
        self.commit()

    async def run(self, *, settle: Callable[[], Awaitable[None]] | None = None) -> None:
        """Work until cancelled: expand DaemonSets and scale big Deployments in the
        background (with `background`), committing after each bounded slice, and go on
        with pending retries that a call cut short; `settle` (the store's flush) is
        awaited after each, so a store batch holds one slice's writes."""
        await self.workloads.run_expansions(self.commit, settle=settle)

    async def expanded(self) -> None:
        """Wait until every DaemonSet applied so far has its pods (`run` must run)."""
        await self.workloads.expanded()

    def commit(self, more: bool = False) -> bool:
        """Retry pending pods, then recompute the desired sets that may differ. With
        `background` a retry holds the loop at most RETRY_BUDGET_S; True if it was cut
        short (`run` goes on with it: `more` says a call only continues it)."""
        left = self._retry(more=more)
        self.desired_sets.commit()
        return left

    def _retry(self, *, more: bool = False) -> bool:
        left = self.placement.retry_pending(budget=self._retry_budget, more=more)
        if left:
            self.workloads.wake()
        return left

    # -- API: apply / delete / read -----------------------------------------------------

    def plan(self, objs: list[Any], *, create_namespaces: bool = False) -> list[ApplyResult]:
        """What `apply` would do, without doing it (dry run); validates references,
        that namespaces exist (or, with `create_namespaces`, may be created) and the pod
        security policy (which stamps what passes with its level)."""
        return self._plan(objs, create_namespaces=create_namespaces)[0]

    def _plan(self, objs: list[Any], *,
              create_namespaces: bool) -> tuple[list[ApplyResult], list[str]]:
        """(`plan`'s results, the namespaces `apply` must create first)."""
        missing = self.admission.admit(objs, self.objects.namespaces,
                                       create_namespaces=create_namespaces,
                                       classes=self.objects.priorityclasses)
        out = []
        for obj in objs:
            kind, ns, name = ident(obj)
            if kind == "Node":
                if name not in self.objects.nodes:
                    raise ObjectError(f"node {name!r} is not registered; nodes join by "
                                      "connecting their agent", field="metadata.name")
                same = self.node_ops.unchanged(obj)
                out.append(ApplyResult(kind, None, name, "unchanged" if same else "configured"))
                continue
            if isinstance(obj, DaemonSet | Deployment):
                check_selector(obj)
            if isinstance(obj, AgentUpgrade):
                self.upgrades.check(obj)
            unchanged = self.objects.unchanged(obj)
            action: Action = ("created" if unchanged is None
                              else "unchanged" if unchanged else "configured")
            out.append(ApplyResult(kind, ns, name, action))
        return out, missing

    def apply(self, objs: list[Any], *, create_namespaces: bool = False) -> list[ApplyResult]:
        """Create or update objects; validate everything first (all or nothing). With
        `create_namespaces`, a namespace an object names that does not exist is created
        (a Namespace without labels, `Objects.create_namespace`) before the objects."""
        results, missing = self._plan(objs, create_namespaces=create_namespaces)
        return self._write(objs, results, missing)

    def _write(self, objs: list[Any], results: list[ApplyResult],
               missing: list[str]) -> list[ApplyResult]:
        """Apply objects `_plan` passed (its `results` and `missing` namespaces)."""
        for ns in missing:
            self.objects.create_namespace(ns, why="created by an apply with --create-namespace")
        # Namespaces first (kubectl applies a file's Namespace before what goes in it)
        order = sorted(range(len(objs)), key=lambda i: not isinstance(objs[i], Namespace))
        for obj, res in ((objs[i], results[i]) for i in order):
            if res.action == "unchanged":
                continue
            if isinstance(obj, Node):
                self.node_ops.apply(obj)
                self._node_changed(obj.metadata.name)
            elif isinstance(obj, DaemonSet | Deployment):
                self.workloads.apply(obj)
            elif isinstance(obj, Pod):
                self.workloads.apply_bare_pod(obj)
            elif isinstance(obj, ConfigMap):
                self.objects.put(obj)
                self.desired_sets.config_changed(CONFIGMAP, obj.metadata.namespace,
                                                 obj.metadata.name)
            elif isinstance(obj, Secret):
                self.objects.put(obj.normalised())
                self.desired_sets.config_changed(SECRET, obj.metadata.namespace,
                                                 obj.metadata.name)
            elif isinstance(obj, Namespace | PriorityClass):
                self.objects.put(obj)
            elif isinstance(obj, AgentUpgrade):
                self.upgrades.apply(obj)
        # statuses now, and a rollout's first batch (other workloads' status passes go
        # on in the periodic ticks: CALL_SCAN_BUDGET_S)
        self.rollouts.tick(in_call=True)
        self.upgrades.tick()  # and an AgentUpgrade's
        self.commit()
        return results

    def apply_each(self, objs: list[Any], *, dry_run: bool = False,
                   create_namespaces: bool = False
                   ) -> tuple[list[ApplyResult | Refusal], list[str]]:
        """kubectl-style: every object judged on its own (`plan`), the ones that pass
        applied together (or only planned, with `dry_run`). Namespaces and
        PriorityClasses are judged first, so an object may go into a Namespace (or name
        a PriorityClass) of the same call, and one whose Namespace or class was refused
        is refused too. Returns, per object in order, its
        result or the error that refused it (ObjectError, NotFound or Conflict), and
        the namespaces created (with `create_namespaces`)."""
        verdicts: list[ApplyResult | Refusal | None] = [None] * len(objs)
        first = (Namespace, PriorityClass)  # what the other objects may refer to
        order = sorted(range(len(objs)), key=lambda i: not isinstance(objs[i], first))
        context: list[Any] = []
        planned: dict[int, ApplyResult] = {}
        created: list[str] = []
        for i in order:
            obj = objs[i]
            try:
                results, missing = self._plan([*context, obj],
                                              create_namespaces=create_namespaces)
            except (ObjectError, NotFound, Conflict) as exc:
                verdicts[i] = exc
                continue
            planned[i] = results[-1]  # each object is planned once, here, not again
            created += [ns for ns in missing if ns not in created]
            if isinstance(obj, first):
                context.append(obj)
        passed = sorted(planned)
        if passed and not dry_run:
            self._write([objs[i] for i in passed], [planned[i] for i in passed], created)
        for i in passed:
            verdicts[i] = planned[i]
        return [v for v in verdicts if v is not None], created

    def delete(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete an object and what it owns; returns the deleted object."""
        if kind == "Node":
            if name not in self.objects.nodes:
                raise NotFound("Node", name)
            node = self._delete_node(name)
            self.commit()
            return dump_object(node)
        key = key_of(kind, namespace or "default", name)
        obj = self.objects.table(kind).get(key)
        if obj is None:
            raise NotFound(kind, name if kind in CLUSTER_KINDS else f"{key[0]}/{name}")
        if kind == "Namespace":
            self.objects.check_namespace_deletable(name)
        if kind == "PriorityClass" and name in SYSTEM_PRIORITY_CLASSES:
            raise Conflict(f'priorityclasses "{name}" cannot be deleted: it is built in')
        if kind == "Pod":
            # delete_pod removes it from the table, the store and its node's desired set
            self.workloads.delete_pod(key)
        else:
            self.objects.remove(kind, key)
        if kind in ("ConfigMap", "Secret"):
            self.desired_sets.config_changed(CONFIGMAP if kind == "ConfigMap" else SECRET,
                                             *key)
        if kind == "AgentUpgrade":
            self.upgrades.deleted(name, uid=obj.metadata.uid)  # its release entries go
        if kind in ("DaemonSet", "Deployment"):
            owner = f"{kind}/{key[0]}/{name}"
            self.workloads.delete_owned(owner)
            self.plans.forget(owner)
        self.commit()
        return dump_object(obj)

    ROLLOUT_ACTIONS = ("pause", "resume", "undo", "retry")

    def rollout(self, kind: str, namespace: str, name: str, action: str) -> dict[str, Any]:
        """pause / resume (spec.paused), undo (spec.template back to the last template
        that rolled out everywhere: every pod gets it at once) or retry (an aborted
        rollout of the current template starts again) a DaemonSet's or Deployment's
        rollout."""
        key = (namespace, name)
        table = self.objects.daemonsets if kind == "DaemonSet" else self.objects.deployments
        ds = table.get(key)
        if ds is None:
            raise NotFound(kind, f"{namespace}/{name}")
        if action not in self.ROLLOUT_ACTIONS:
            raise ObjectError(f"action: {action!r} is not one of "
                              f"{', '.join(self.ROLLOUT_ACTIONS)}", field="action")
        owner = f"{kind}/{namespace}/{name}"
        if action == "retry":
            if not self.plans.retry(ds):
                raise ObjectError(f"{kind} {namespace}/{name}: no aborted rollout of its "
                                  "template to retry", field="action")
            self.rollouts.tick()
            self.commit()
            return dump_object(ds)
        new = ds.model_copy(deep=True)
        if action in ("pause", "resume"):
            new.spec.paused = action == "pause"
        else:
            stable = self.plans.stable(owner)
            if stable is None or stable.thash == self.plans.plan(ds).update.thash:
                raise ObjectError(f"{kind} {namespace}/{name}: nothing to undo, its "
                                  "template is the one that last rolled out", field="action")
            # the stable template again: no rollout under way, every pod gets it at once
            new.spec.template = stable.tpl.model_copy(deep=True)
        self.apply([new])
        return dump_object(table[key])

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        return self.objects.get(kind, namespace, name)

    def _on_node(self, kind: str, node: str | None) -> Callable[[Any, Any], bool] | None:
        """The `node` filter of lists: pods bound there, or that node itself."""
        if node is None:
            return None
        if kind == "Pod":
            bound = self.placement.bound
            return lambda key, _obj: bound.get(key) == node
        if kind == "Node":
            return lambda key, _obj: bool(key == node)
        return None

    def list(self, kind: str, *, namespace: str | None = None,
             selector: Callable[[dict[str, str]], bool] | None = None,
             node: str | None = None) -> list[dict[str, Any]]:
        return self.objects.list(kind, namespace=namespace, selector=selector,
                                 where=self._on_node(kind, node))

    # -- API: pages and node operations -------------------------------------------------

    def table_of(self, kind: str) -> dict[Any, Any]:
        return self.objects.table(kind)

    def sorted_keys(self, kind: str) -> list[Any]:
        """Every key of a kind in list order; cached until a key is added or removed."""
        return self.objects.sorted_keys(kind)

    def lookup(self, kind: str, key: Any) -> Any | None:
        return self.objects.lookup(kind, key)

    def matches(self, kind: str, key: Any, obj: Any, *, namespace: str | None = None,
                selector: Callable[[dict[str, str]], bool] | None = None,
                node: str | None = None) -> bool:
        """The filters of `list` for one object."""
        return self.objects.matches(kind, key, obj, namespace=namespace, selector=selector,
                                    where=self._on_node(kind, node))

    def page(self, kind: str, *, namespace: str | None = None,
             selector: Callable[[dict[str, str]], bool] | None = None,
             node: str | None = None, limit: int | None = None,
             after: Any = None) -> tuple[list[Any], Any]:
        """Keys of matching objects after `after`, at most `limit`; and the key to
        continue after (None when the list is complete)."""
        return self.objects.page(kind, namespace=namespace, selector=selector,
                                 where=self._on_node(kind, node), limit=limit, after=after)

    def join_node(self, name: str, *, labels: dict[str, str], arch: str | None) -> Node:
        """Register a node that joined with a token (or adopt one its agent registered).
        A join is a new agent identity, whose report seqs start again (a reset cache):
        the seq processed for the name before is forgotten, or its first reports would
        be taken as duplicates if its resync is lost (a report from a cache that was
        kept then shows as a gap, and the cloud asks for everything once)."""
        self.register_node(name, rejoin=True)
        self.desired_sets.forget_report_seq(name)
        node = self.objects.nodes[name]
        status: dict[str, Any] = {"labels": labels}
        if arch:
            status["arch"] = arch
        self.node_status(name, status, trusted=True)
        self.node_ops.joined(name, labels)
        return node

    def patch_node(self, name: str, *, labels: dict[str, str | None] | None = None,
                   unschedulable: bool | None = None) -> dict[str, Any]:
        """Set or remove (value None) node labels and/or (un)cordon. Labels set here are
        API-owned (kept over what the agent reports), as with `apply` of a Node."""
        node = self.node_ops.patch(name, labels=labels, unschedulable=unschedulable)
        self._node_changed(name)
        self.desired_sets.commit()
        return dump_object(node)

    def drain(self, name: str) -> dict[str, Any]:
        """Cordon the node and move its Deployment and bare pods elsewhere: they are
        unbound and rescheduled (Pending with the reason if nothing fits). DaemonSet
        pods stay, and so do pods pinned to the node by `spec.nodeName`."""
        if name not in self.objects.nodes:
            raise NotFound("Node", name)
        self.patch_node(name, unschedulable=True)
        moved, kept = self.placement.drain(name)
        self.commit()
        placed = {f"{k[0]}/{k[1]}": self.placement.node_of(k) for k in moved}
        self.events.add(type="Normal", reason="Drained", obj=f"Node/{name}",
                        message=f"{len(moved)} pods moved, {len(kept)} kept")
        return {"node": name, "evicted": [{"pod": p, "node": n} for p, n in placed.items()],
                "kept": kept}

    # -- hub-facing (NodeSink): node lifecycle and reports --------------------------------

    def known(self, name: str) -> bool:
        return self.node_ops.known(name)

    def is_deleted(self, name: str) -> bool:
        return self.node_ops.is_deleted(name)

    def readiness(self, name: str) -> str | None:
        return self.node_ops.readiness(name)

    def register_node(self, name: str, *, rejoin: bool = False) -> bool:
        """Create an unknown node on first contact; True if it was new. A node deleted
        through the API is not created again by its agent's messages, only by a join
        (`rejoin`)."""
        if not self.node_ops.register(name, rejoin=rejoin):
            return False
        self._node_changed(name)
        self.desired_sets.commit()
        return True

    def node_status(self, name: str, status: dict[str, Any], *, trusted: bool = False) -> int:
        """Apply the node_status of a report (capacity, labels, heartbeat...); returns
        how many labels were refused (`Nodes.status`)."""
        st = self.objects.nodes[name].status
        agent = (st.agent_version, st.agent_upgrade)
        refused, changed = self.node_ops.status(name, status, trusted=trusted)
        if agent != (st.agent_version, st.agent_upgrade):
            self.upgrades.node_changed(name)
        if changed:
            self._node_changed(name)
            self.desired_sets.commit()
        return refused

    def pod_statuses(self, name: str, pods: dict[str, dict[str, Any] | None]) -> int:
        """Apply pod statuses a node reported; returns how many were ignored."""
        ignored, reported = self.node_ops.pod_statuses(name, pods)
        for key, pod in reported:
            self.plans.pod_reported(key, pod)
        return ignored

    def add_telemetry(self, name: str, samples: list[dict[str, Any]]) -> None:
        self.node_ops.add_telemetry(name, samples)

    def undeliverable(self, name: str, key: str, reason: str) -> None:
        self.node_ops.undeliverable(name, key, reason)

    def heard(self, name: str, now: float) -> None:
        """Any valid message from the node restarts its liveness clock (monotonic `now`)."""
        self.node_ops.heard(name, now)

    def deaf(self, select: Callable[[str], bool], now: float, *, deaf_s: float,
             lost: bool, wave: Wave | None = None) -> None:
        """The cloud could not hear these nodes for `deaf_s` s (`Liveness.deaf`)."""
        self.node_ops.deaf(select, now, deaf_s=deaf_s, lost=lost, wave=wave)

    def hold(self, hold: Callable[[str, float], float | None]) -> None:
        """Expiries wait while `hold` says so (`Liveness.hold`)."""
        self.node_ops.liveness.hold(hold)

    def mark_ready(self, name: str) -> None:
        """A report arrived: the node is Ready and last_seen is now (wall clock)."""
        if self.node_ops.mark_ready(name):
            self.eviction.observe(name, "Ready")
            self.upgrades.node_changed(name)
            self._back = True

    def mark_not_ready(self, name: str, *, reason: str, message: str) -> bool:
        if not self.node_ops.mark_not_ready(name, reason=reason, message=message):
            return False
        self.eviction.observe(name, "NotReady")
        self.upgrades.node_changed(name)
        return True

    def expire(self, now: float) -> list[str]:
        """Mark nodes NotReady whose liveness deadline passed; returns them. Then, in
        the same tick, NodeLost, evictions, the rollouts' next steps and, if a node
        became Ready since the last tick, the pending pods (one commit for all)."""
        out = self.node_ops.expire(now)
        for name in out:
            self.eviction.observe(name, "NotReady")
            self.upgrades.node_changed(name)
        self.eviction.mark_lost()
        self.eviction.run()  # same tick: replicas whose toleration ran out move
        moved = self.rollouts.tick()  # and rollouts take their next step
        back, self._back = self._back, False  # pending pods may fit a node that is back
        if self.upgrades.tick() or moved or back:  # and agent upgrades theirs
            self.commit()
        return out

    def readiness_counts(self) -> dict[str, int]:
        return self.node_ops.readiness_counts()

    def apply_forecasts(self, forecasts: dict[str, dict[str, float]]) -> None:
        """Store per-node forecasts, warn about nodes predicted over capacity
        (`Nodes.apply_forecasts`), and retry pending pods against the new forecasts."""
        self.node_ops.apply_forecasts(forecasts)
        self.commit()

    def clear_forecasts(self) -> None:
        self.node_ops.clear_forecasts()

    # -- hub-facing: desired sets (the hub uses `desired_sets`, its DesiredSource) --------

    def record_ack(self, name: str, epoch: str, gen: int) -> bool:
        return self.desired_sets.record_ack(name, epoch, gen)

    def desired_for(self, name: str) -> NodeDesired:
        return self.desired_sets.desired_for(name)

    def restart_epoch(self, name: str, epoch: str, *, why: str) -> NodeDesired:
        return self.desired_sets.restart_epoch(name, epoch, why=why)

    def set_report_seq(self, name: str, seq: int) -> None:
        self.desired_sets.set_report_seq(name, seq)

    # -- workloads ----------------------------------------------------------------------

    def owned_keys(self, owner: str) -> list[Key]:
        """The pods of a workload (`Kind/namespace/name`), sorted."""
        return self.workloads.owned_keys(owner)

    def owned_set(self, owner: str) -> set[Key]:
        """The pods of a workload, unsorted (do not change it)."""
        return self.workloads.owned_set(owner)

    def sync_workload(self, obj: DaemonSet | Deployment) -> None:
        self.workloads.sync(obj)

    # -- internals ----------------------------------------------------------------------

    def _node_changed(self, name: str) -> None:
        """A node joined or changed labels/taints/capacity: DaemonSets and pending pods."""
        self.workloads.node_changed(name)
        self._retry()
        self.upgrades.selection_changed(name)  # labels: which AgentUpgrade selects it

    def _delete_node(self, name: str) -> Node:
        self.workloads.node_deleted(name)
        # The desired set is kept (emptied, not removed) so its gen keeps growing: an
        # agent that comes back under the same name gets a clean delta, never a stale gen.
        self.desired_sets.mark(name)
        self.upgrades.selection_changed(name)
        return self.node_ops.remove(name)
