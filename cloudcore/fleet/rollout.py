"""Health-gated rollouts of workload templates, with fleet-wide automatic rollback.

A DaemonSet with `spec.updateStrategy`, or a Deployment with `spec.strategy`
(Kubernetes' `RollingUpdate`, plus edgefed's `failureThreshold` and `autoRollback`),
does not hand a new template to every pod at once. cloudcore keeps, per workload, the
**stable** template: the last one that rolled out everywhere (persisted in the
store's `rollouts` database). While `spec.template` differs from it, a rollout is
under way:

- pods not yet given the update keep the stable template, and so do pods made
  meanwhile (a node that joins, a replica added); a pod at an earlier update that had
  not completed keeps it until its batch (`Plan.target_for`);
- every tick (the liveness tick, 1 s, and right after an apply) the next batch of
  pods on **Ready** nodes gets the update, so that at most `maxUnavailable` updated
  pods are in progress (given the update, not yet healthy, not failed);
- an updated pod is **healthy** once its node reports it Running and Ready at the
  update's revision for `minReadySeconds`; it **failed** if it reports Failed, a
  container waits in CrashLoopBackOff or an image or configuration error, or it is
  not healthy `progressDeadlineSeconds` after the update (counted only while its node
  is Ready). Only reports made after the update count. A pod that failed once stays
  failed for this rollout;
- more failed pods than `failureThreshold` **aborts** the rollout: with
  `autoRollback` (the default) every updated pod goes back to the stable template, on
  every node, at once (status RolledBack); without it the updated pods stay and no
  new batch starts (Aborted). Either way an event says which pods failed and why. A
  new template (another apply) starts a new rollout;
- pods on nodes that are not Ready (and Deployment replicas not placed on any node)
  neither block the batches nor count as failed;
- the rollout is **complete** in the sense of `kubectl rollout status`: every pod
  that should run (on a Ready node, or a replica on no node) has the update and is
  available (Ready for `minReadySeconds`, reported since the update), at least one
  of them. A failed pod that was tolerated (`failureThreshold`) or a replica on no
  node therefore holds completion until it is available. Only then the update
  becomes the stable template (what a rollback returns to) and the pods of nodes
  that are not Ready get it too (agents apply it when they reconnect);
- `spec.paused` stops new batches (pods in progress go on);
- a Deployment with `rollingUpdate.maxSurge` is not updated in place: new pods of the
  update are made above `replicas` (at most maxSurge more) and old ones removed while
  `replicas - maxUnavailable` stay available (`Rollouts._surge`, Kubernetes' rule).
  A DaemonSet refuses maxSurge (one pod per node, named after it).

Without a strategy a template change goes to every pod at once, as before.

The status phase is `Complete` under the same rule, with or without a strategy, on a
first create as on an update: until every pod is available it is `Progressing`, and
its message names a few pods it waits for and why ("waiting for web-1
(ContainerCreating)"). The `RolloutComplete` event is written once per template, when
the status first says Complete (issues 16, 17, 18).

The workload's `status` (Kubernetes' names: a DaemonSet's desiredNumberScheduled,
updatedNumberScheduled, numberReady, numberAvailable; a Deployment's replicas,
updatedReplicas, readyReplicas, availableReplicas; both with currentRevision,
updateRevision and `rollout`) is recomputed when its pods or their nodes change, at
most every tick (1 s), or every pods / 20,000 s for bigger workloads.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Literal, Protocol

from cloudcore.fleet import naming
from cloudcore.fleet.events import EventLog
from cloudcore.fleet.objects import Objects
from cloudcore.fleet.placement import Placement
from cloudcore.fleet.plans import (
    Plan,
    RolloutPlans,
    RolloutState,
    Workload,
    owner_of,
    ready_at,
    strategy_of,
)
from cloudcore.fleet.template import Template
from cloudcore.fleet.workloads import Workloads, replica_index, surge_allowed
from shared.models import (
    DaemonSet,
    Deployment,
    DeploymentCondition,
    DeploymentStatus,
    Pod,
    RolloutStatus,
    WorkloadStatus,
    resolve_count,
)

log = logging.getLogger("cloudcore.fleet.rollout")

Key = tuple[str, str]
FAILURE_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
    "CreateContainerError", "CreateContainerConfigError", "RunContainerError",
    "InsufficientDevices",
})
"""Container waiting reasons that fail an updated pod at once."""
POD_FAILURE_REASONS = frozenset({"InvalidSpec"})
STATUS_PODS_PER_SECOND = 20_000.0
"""A workload's status is recomputed at most every pods / this seconds (and tick)."""
MAX_MESSAGE = 400
WAITING_SHOWN = 3
"""Pods a status message names as what the rollout waits for."""
SCAN_CHUNK = 5000
"""Pods of workloads with no rollout moving looked at per tick, in all: a bigger
workload's status is counted over several ticks (a pass over 100,000 pods held the
event loop for about 0.45 s), and the passes of several such workloads share one
chunk a tick, one after another (ten DaemonSets over 100,000 nodes, each with a pass
under way, made ticks of 50,000 pods)."""
SCAN_BUDGET_S = 0.025
"""...and for at most about this long a tick: the chunk is looked at SCAN_STEP pods at a
time and the rest waits for the next tick once this is spent (5,000 pods took 45-60 ms
on a shared 2-core machine)."""
SCAN_STEP = 500
CALL_SCAN_BUDGET_S = 0.005
"""SCAN_BUDGET_S of a tick run inside an API call (apply, `Fleet._write`): the status
passes under way go on in the periodic ticks, so an apply does not hold the event loop
for 25 ms of other workloads' counting (issue 13 part 3: the apply call held the loop
30-55 ms at 50,000-100,000 nodes with ten DaemonSets)."""



@dataclass
class _Pass:
    """A status-only pass over a big workload's pods, a chunk per tick."""

    keys: list[Key]
    update: str  # the update template's hash the pass counts against
    scan: _Scan
    at: int = 0


@dataclass
class _Scan:
    """What one pass over a workload's pods found."""

    total: int = 0
    updated: int = 0  # pods with the update template
    ready: int = 0  # Running and Ready at their own revision
    available: int = 0  # ... for minReadySeconds
    offline: int = 0  # on nodes that are not Ready
    candidates: list[Key] = field(default_factory=list)  # not yet updated, node Ready
    serving: set[Key] = field(default_factory=set)  # ... of them, available
    unplaced: list[Key] = field(default_factory=list)  # not yet updated, on no node
    in_flight: int = 0  # updated, node Ready, not yet healthy, not failed
    healthy: int = 0  # updated, available, reported since the update
    new_failures: int = 0  # pods found failed in this pass
    # What completion waits for: pods that should run at the update and are not yet
    # available there (on Ready nodes, or on no node), and pods on Ready nodes not yet
    # given the update. `done`: updated and available on a Ready node (with a rollout
    # moving, Ready since the update as reported after it).
    done: int = 0
    waiting: int = 0
    # a few of them by name: (name, key, on a node, Ready since, reported since update);
    # why they wait is put in words only for those a message shows
    waiting_for: list[tuple[str, Key, bool, float, bool]] = field(default_factory=list)
    now: float = 0.0
    old: int = 0  # not yet updated, node Ready
    warming: bool = False  # a pod is Ready, not yet for minReadySeconds: look again

    def wait_for(self, key: Key, *, placed: bool, since: float, fresh: bool) -> None:
        self.waiting += 1
        self.waiting_for.append((key[1], key, placed, since, fresh))
        if len(self.waiting_for) > 64:  # keep the first few by name, cheaply
            self.waiting_for = sorted(self.waiting_for)[:WAITING_SHOWN]
    # No rollout under way: pods on Ready nodes that are not available and whose status
    # says why they will not become so by themselves (ImagePullBackOff, ...).
    stuck: list[tuple[str, str]] = field(default_factory=list)

def failure(pod: Pod, revision: str) -> str | None:
    """Why an updated pod counts as failed from its reported status, or None."""
    s = pod.status
    if s.revision != revision:
        return None
    if s.phase == "Failed":
        return "Failed" + (f": {s.message}" if s.message else "")
    if s.reason in POD_FAILURE_REASONS:
        return s.reason + (f": {s.message}" if s.message else "")
    for c in s.container_statuses:
        if c.state == "waiting" and c.reason in FAILURE_REASONS:
            return f"container {c.name}: {c.reason}" + (f": {c.message}" if c.message else "")
    return None

def waiting_for(pod: Pod, revision: str | None, *, placed: bool, since: float, now: float,
                min_ready: int, fresh: bool) -> str:
    """Why a pod that should run at `revision` is not available there yet, in a few
    words (Kubernetes' reasons where the agent reported one)."""
    s = pod.status
    if not placed:
        return "Pending" + (f": {s.message}" if s.message else " on no node")
    if since <= now and fresh:
        return f"Ready for {now - since:.0f} of minReadySeconds {min_ready} s"
    if s.revision is None and s.phase == "Pending" and s.reason not in (None, "Scheduled"):
        # the cloud's own word: why the pod cannot run there (Unschedulable, ...)
        return f"Pending: {s.reason}" + (f": {s.message}" if s.message else "")
    if s.revision != revision or not fresh:
        return "not reported at this revision yet"
    why = failure(pod, revision) if revision is not None else None
    if why is not None:
        return why
    for c in s.container_statuses:
        if c.state == "waiting" and c.reason:
            return c.reason
    for c in s.container_statuses:
        if not c.ready:
            return f"container {c.name} not Ready"
    return s.reason or s.phase


def conditions(dep: Deployment, *, available: int, rollout: RolloutStatus,
               scaling: bool) -> list[DeploymentCondition]:
    """A Deployment's conditions as Kubernetes' Deployment controller writes them:
    Available once at least replicas - maxUnavailable pods are available (Kubernetes'
    default maxUnavailable, 25 %, without a strategy); Progressing with the reason of
    what it does (edgefed's rollout message as its message)."""
    replicas = dep.spec.replicas
    strategy = dep.spec.strategy
    unavailable = resolve_count(strategy.rolling_update.max_unavailable if strategy
                                else "25%", replicas, round_up=False)
    minimum = max(0, replicas - unavailable)
    progressing: Literal["True", "False", "Unknown"] = "True"
    reason = ("ScalingReplicaSet" if scaling
              else "NewReplicaSetAvailable" if rollout.phase == "Complete"
              else "ReplicaSetUpdated")
    if dep.spec.paused:
        progressing, reason = "Unknown", "DeploymentPaused"
    elif rollout.phase in ("Aborted", "RolledBack"):  # edgefed's health gate
        progressing, reason = "False", f"Rollout{rollout.phase}"
    return [
        DeploymentCondition(
            type="Available", status="True" if available >= minimum else "False",
            reason=("MinimumReplicasAvailable" if available >= minimum
                    else "MinimumReplicasUnavailable"),
            message=(f"{available} of {replicas} pods available, at least {minimum} "
                     "wanted")),
        DeploymentCondition(type="Progressing", status=progressing, reason=reason,
                            message=rollout.message),
    ]


class Rollouts:
    """The rollout tick over every workload: batches, health, abort and rollback,
    completion, and the workloads' statuses. Uses the objects, the bind index and the
    workloads controller only through their public methods."""

    def __init__(self, *, plans: RolloutPlans, objects: Objects, placement: Placement,
                 workloads: Workloads, events: EventLog) -> None:
        self.plans = plans
        self.objects = objects
        self.placement = placement
        self.workloads = workloads
        self.events = events
        self._passes: dict[str, _Pass] = {}  # workload -> its status pass under way
        # workload -> the template hash whose completion its last RolloutComplete event
        # announced (a pod that fails and recovers later does not announce it again)
        self._announced: dict[str, str | None] = {}
        self._scaled: set[str] = set()  # Deployments counted while scaling (`_scaling_status`)
        self.shared: SharedRollouts | None = None
        """Shards (`cloudcore.cluster.rollouts`): only the shard that `decides()` (holds
        the global lease) advances rollouts; it is told every batch, completion and
        abort, and the other shards apply them (`give`, `adopt`)."""

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock of the rollouts (the plans' clock; tests set it)."""
        return self.plans.clock

    @clock.setter
    def clock(self, value: Callable[[], float]) -> None:
        self.plans.clock = value

    def plan(self, ds: Workload) -> Plan:
        return self.plans.plan(ds)

    # -- the tick -----------------------------------------------------------------------

    def tick(self, *, in_call: bool = False) -> bool:
        """Advance every rollout under way and refresh the statuses that changed;
        True if pods changed (the caller retries pending pods and commits). One pass
        over a workload's pods per tick, and only when something may have changed: a
        report or a node's readiness (dirty), a batch, or, while a rollout moves, time
        (`minReadySeconds`, the progress deadline): every tick, or every pods / 20,000
        s for workloads of more than 20,000 pods. A workload that is RolledBack,
        Aborted or Complete costs nothing until one of its pods or nodes changes.
        Status passes look at pods for SCAN_BUDGET_S at most, CALL_SCAN_BUDGET_S in a
        tick run inside an API call (`in_call`)."""
        now = self.clock()
        changed = False
        scan_left = SCAN_CHUNK  # what status passes may look at this tick, in all
        until = time.perf_counter() + (CALL_SCAN_BUDGET_S if in_call
                                       else SCAN_BUDGET_S)  # ... and for how long
        workloads: list[tuple[Key, Workload]] = [*self.objects.daemonsets.items(),
                                                 *self.objects.deployments.items()]
        if self._passes or len(self._announced) > len(workloads):  # workloads deleted
            live = {owner_of(ds) for _, ds in workloads}
            for gone in [o for o in self._passes if o not in live]:
                del self._passes[gone]
            for gone in [o for o in self._announced if o not in live]:
                del self._announced[gone]
            self._scaled &= live
        for key, ds in workloads:
            owner = owner_of(ds)
            st = self.plans.state(owner)
            if st is None:
                self._passes.pop(owner, None)
                continue
            update, hold = self.plan(ds).pair
            moving = hold is not None and st.aborted != update.thash
            keys = self.workloads.owned_set(owner)
            if isinstance(ds, Deployment) and (self.workloads.is_scaling(owner)
                                               or owner in self._scaled):
                self._scaling_status(key, ds, len(keys))
            job = self._passes.get(owner)
            if job is not None:
                if not moving and job.update == update.thash:
                    scan_left -= self._pass_on(key, ds, st, job, update=update, hold=hold,
                                               now=now, limit=scan_left, until=until)
                    continue
                del self._passes[owner]  # a rollout or a new template: count afresh
            every = len(keys) / STATUS_PODS_PER_SECOND  # ticks are >= 1 s apart anyway
            if now - st.status_at < every or not (moving or owner in self.plans.dirty):
                continue
            self.plans.dirty.discard(owner)
            st.status_at = now
            if hold is None and st.target is not None:
                st.restart(None)  # no rollout under way: forget the last one's pods
            if moving and st.target != update.thash:
                st.restart(update.thash)
            if not moving and len(keys) > SCAN_CHUNK:
                job = self._passes[owner] = _Pass(keys=list(keys), update=update.thash,
                                                  scan=_Scan())
                scan_left -= self._pass_on(key, ds, st, job, update=update, hold=hold,
                                           now=now, limit=scan_left, until=until)
                continue
            scan = self._scan(ds, st, update, keys, now, moving=moving)
            if scan.new_failures:
                self.plans.save(owner)
            if moving:
                changed |= self._advance(ds, owner, st, update, scan)
                update, hold = self.plan(ds).pair  # it may have completed
            self._status(key, ds, st, update=update, hold=hold, scan=scan)
        return changed

    def _pass_on(self, key: Key, ds: Workload, st: RolloutState, job: _Pass, *,
                 update: Template, hold: Template | None, now: float, limit: int,
                 until: float) -> int:
        """The next chunk of a status pass: at most `limit` pods, SCAN_STEP at a time
        until `until` (perf_counter) has passed (nothing once it has, or for a limit of
        0: it waits for a later tick); at its end, the status and the memo kept for pods
        that are gone. Returns how many pods it looked at."""
        done = 0
        while done < limit and job.at < len(job.keys) and time.perf_counter() < until:
            chunk = job.keys[job.at:job.at + min(SCAN_STEP, limit - done)]
            job.at += len(chunk)
            done += len(chunk)
            self._scan(ds, st, update, chunk, now, moving=False, into=job.scan, prune=False)
        if job.at < len(job.keys):
            return done
        del self._passes[owner_of(ds)]
        self._prune(st, self.workloads.owned_set(owner_of(ds)))
        self._status(key, ds, st, update=update, hold=hold, scan=job.scan)
        return done

    @staticmethod
    def _prune(st: RolloutState, keys: Collection[Key]) -> None:
        for memo in (st.ready_since, st.reported_at):
            if len(memo) > len(keys):  # pods that are gone
                for gone in [k for k in memo if k not in keys]:
                    del memo[gone]

    def _scan(self, ds: Workload, st: RolloutState, update: Template, keys: Collection[Key],
              now: float, *, moving: bool, into: _Scan | None = None,
              prune: bool = True) -> _Scan:
        """One pass over the workload's pods (or, `into` an earlier scan, over a chunk of
        them): the status counts and, with `moving`, what the rollout needs
        (candidates, pods in progress, healthy, new failures)."""
        pods, nodes, bound = self.objects.pods, self.objects.nodes, self.placement.bound
        min_ready = ds.spec.min_ready_seconds
        deadline = float(ds.spec.progress_deadline_seconds)
        sc = _Scan() if into is None else into
        sc.now = now
        for k in keys:
            pod = pods.get(k)
            if pod is None:  # gone since a chunked pass listed it
                continue
            ann = pod.metadata.annotations
            where = bound.get(k) or pod.spec.node_name
            node = nodes.get(where) if where is not None else None
            node_ready = node is not None and node.status.ready == "Ready"
            sc.total += 1
            offline = where is not None and not node_ready
            if offline:
                sc.offline += 1
            is_update = ann.get(naming.TEMPLATE_HASH) == update.thash
            if is_update:
                sc.updated += 1
            rev = ann.get(naming.REVISION)
            since = st.note_ready(k, rev, rev is not None and ready_at(pod, rev), now)
            available = now - since >= min_ready  # never for +inf: not Ready
            if since <= now:
                sc.ready += 1
                sc.warming |= node_ready and not available
            sc.available += available
            fresh = True  # without a rollout moving, any report at the revision counts
            if moving and is_update and node_ready:
                updated_at = st.updated_at.setdefault(k, now)
                # Only a report made after the update says anything about it (after a
                # retry, the node's last report may still be the failed attempt's).
                fresh = st.reported_at.get(k, float("-inf")) >= updated_at
            if is_update and node_ready and available and fresh:
                sc.done += 1
            elif not offline:  # pods on nodes that are not Ready do not hold completion
                if not is_update and where is not None:
                    sc.old += 1
                else:
                    sc.wait_for(k, placed=where is not None, since=since, fresh=fresh)
            if not moving:
                if not available and node_ready and rev is not None:
                    why = failure(pod, rev)
                    if why is not None:
                        sc.stuck.append((k[1], why))
                continue
            if where is None:  # a replica placed nowhere runs nothing: no risk, no gate
                if not is_update:
                    sc.unplaced.append(k)
                continue
            if not node_ready:
                st.updated_at[k] = now  # the deadline counts only while its node is Ready
                continue
            if not is_update:
                sc.candidates.append(k)
                if available:
                    sc.serving.add(k)
                continue
            if k not in st.failed:
                why = failure(pod, update.revision) if fresh else None
                if why is None and not (fresh and available) and now - updated_at > deadline:
                    why = f"not Ready {deadline:g} s after the update"
                if why is not None:
                    st.failed[k] = why[:MAX_MESSAGE]
                    sc.new_failures += 1
                    log.debug("rollout of %s: pod %s failed: %s", owner_of(ds), k[1], why)
            if k in st.failed:
                continue
            if fresh and available:
                sc.healthy += 1
            else:
                sc.in_flight += 1
        if prune:
            self._prune(st, keys)
        return sc

    def _advance(self, ds: Workload, owner: str, st: RolloutState, update: Template,
                 sc: _Scan) -> bool:
        """The rollout's next step from the scan: abort, complete, or the next batch."""
        if self.shared is not None and not self.shared.decides():
            return False  # the holder of the global lease decides; its steps arrive here
        strategy = strategy_of(ds)
        assert strategy is not None
        threshold = resolve_count(strategy.failure_threshold, sc.total, round_up=False)
        if len(st.failed) > threshold:
            return self._abort(ds, owner, st, update, threshold)
        if ds.spec.paused:
            return False
        moved = self._update(ds, owner, st, update, sc=sc, batch=sc.unplaced)
        if not sc.candidates and sc.in_flight == 0 and self._settled(ds, sc):
            return self._complete(ds, owner, st, update)
        if isinstance(ds, Deployment) and surge_allowed(ds, self.plan(ds)):
            return self._surge(ds, owner, st, update, sc) or moved
        if not sc.candidates and sc.in_flight == 0:
            return moved  # tolerated failures, replicas on no node, no Ready node: wait
        room = max(1, resolve_count(strategy.rolling_update.max_unavailable, sc.total,
                                    round_up=False)) - sc.in_flight
        if room <= 0 or not sc.candidates:
            return moved
        batch = heapq.nsmallest(room, sc.candidates)  # in name order
        self._update(ds, owner, st, update, sc=sc, batch=batch)
        log.info("rollout of %s: %d more pod(s) get revision %s", owner, len(batch),
                 update.revision)
        return True

    def _surge(self, dep: Deployment, owner: str, st: RolloutState, update: Template,
               sc: _Scan) -> bool:
        """A Deployment's rollout with `maxSurge`, as Kubernetes' Deployment controller
        does it: new pods of the update (at free indexes) while the Deployment has fewer
        than replicas + maxSurge, old ones removed while at least replicas -
        maxUnavailable stay available, the unavailable old ones first. Pods on nodes that
        are not Ready are left out of both sides (they get the update on completion)."""
        strategy = dep.spec.strategy
        assert strategy is not None
        replicas = dep.spec.replicas
        surge = resolve_count(strategy.rolling_update.max_surge, replicas, round_up=True)
        unavailable = resolve_count(strategy.rolling_update.max_unavailable, replicas,
                                    round_up=False)
        want = max(0, replicas - sc.offline)
        live = sc.total - sc.offline  # on Ready nodes, or on no node
        old = len(sc.candidates)
        new = live - old
        new_unavailable = new - sc.healthy
        moved = False
        # Old pods go while enough stay available (Kubernetes' maxScaledDown).
        down = min(old, live - (want - unavailable) - new_unavailable)
        if down > 0:
            gone = sorted(sc.candidates, key=lambda k: (k in sc.serving, k[1]))[:down]
            for k in gone:
                self.workloads.delete_pod(k)
            if self.shared is not None:
                self.shared.removed(owner, update.thash, gone)
            log.info("rollout of %s: %d old pod(s) removed", owner, len(gone))
            moved = True
        # New pods while under replicas + maxSurge and short of replicas new ones.
        up = min(want + surge - live, want - new)
        if up > 0:
            now, ns = self.clock(), dep.metadata.namespace
            made = self.workloads.free_replica_keys(dep, up)
            for k in made:
                self.workloads.put_pod(k, update.pod(ns=ns, name=k[1], owner=owner, node=None),
                                       None, revision=update.revision)
                st.updated_at[k] = now
                st.ready_since.pop(k, None)  # a name an old pod had: nothing of it counts
                st.reported_at.pop(k, None)
            if self.shared is not None:  # the other shards make them too
                self.shared.given(owner, update.thash, made)
            log.info("rollout of %s: %d more pod(s) at revision %s (surge)", owner, up,
                     update.revision)
            moved = True
        elif not old and new > want:  # replicas lowered meanwhile: the surplus new ones go
            pods, bound, nodes = self.objects.pods, self.placement.bound, self.objects.nodes

            def live_new(k: Key) -> bool:
                where = bound.get(k) or pods[k].spec.node_name
                node = nodes.get(where) if where is not None else None
                return where is None or (node is not None and node.status.ready == "Ready")

            surplus = [k for k in self.workloads.owned_set(owner) if live_new(k)]
            surplus.sort(key=lambda k: (k in st.ready_since,
                                        -replica_index(dep.metadata.name, k[1])))
            for k in surplus[:new - want]:
                self.workloads.delete_pod(k)
            if self.shared is not None:
                self.shared.removed(owner, update.thash, surplus[:new - want])
            moved = True
        return moved

    def _update(self, ds: Workload, owner: str, st: RolloutState, update: Template, *,
                sc: _Scan, batch: list[Key]) -> bool:
        """Give `batch` the update; True if there was any."""
        pods, ns, now = self.objects.pods, ds.metadata.namespace, self.clock()
        for k in batch:
            old = pods[k]
            node = old.spec.node_name if isinstance(ds, DaemonSet) else None
            self.workloads.put_pod(k, update.pod(ns=ns, name=k[1], owner=owner, node=node),
                               old, revision=update.revision)
            st.updated_at[k] = now
            was = st.ready_since.pop(k, None)  # Ready at the old revision, not the new one
            if was is not None:
                sc.ready -= 1
                sc.available -= now - was[1] >= ds.spec.min_ready_seconds
        sc.updated += len(batch)
        if self.shared is not None and batch:
            self.shared.given(owner, update.thash, batch)
        return bool(batch)

    def give(self, ds: Workload, thash: str, keys: Collection[Key], *,
             make: bool = False) -> int:
        """Shards: the holder of the global lease gave these pods the update `thash`
        (`cloudcore.cluster.rollouts`); those of them here not at it yet get it, and with
        `make` (a Deployment's maxSurge pods) those not here are made at it. Returns how
        many changed (0 while this shard's workload is not at that template yet)."""
        update, hold = self.plan(ds).pair
        owner = owner_of(ds)
        st = self.plans.state(owner)
        if update.thash != thash or hold is None or st is None or st.aborted == thash:
            return 0
        pods, ns, now = self.objects.pods, ds.metadata.namespace, self.clock()
        n = 0
        for k in keys:
            old = pods.get(k)
            if (old is None and not make) or (old is not None and old.metadata.annotations
                                              .get(naming.TEMPLATE_HASH) == thash):
                continue
            node = old.spec.node_name if isinstance(ds, DaemonSet) and old else None
            self.workloads.put_pod(k, update.pod(ns=ns, name=k[1], owner=owner, node=node),
                                   old, revision=update.revision)
            st.updated_at[k] = now
            st.ready_since.pop(k, None)
            st.reported_at.pop(k, None)
            n += 1
        if n:
            self.plans.dirty.add(owner)
        return n

    def adopt(self, ds: Workload, thash: str, outcome: str) -> bool:
        """Shards: the holder's rollout of `thash` ended (`Complete`, `RolledBack`,
        `Aborted`): the same here. False while this shard's workload is not at that
        template (or already there)."""
        update, hold = self.plan(ds).pair
        owner = owner_of(ds)
        st = self.plans.state(owner)
        if update.thash != thash or hold is None or st is None:
            return False
        if outcome == "Complete":
            self._complete(ds, owner, st, update)
        elif st.aborted == thash:
            return False
        else:
            st.aborted = thash
            self.plans.save(owner)
            if outcome == "RolledBack":
                self.workloads.sync(ds)
        self.plans.dirty.add(owner)
        return True

    def _abort(self, ds: Workload, owner: str, st: RolloutState, update: Template,
               threshold: int) -> bool:
        st.aborted = update.thash
        self.plans.save(owner)
        worst = "; ".join(f"{k[1]}: {why}" for k, why in sorted(st.failed.items())[:3])
        more = f" (and {len(st.failed) - 3} more)" if len(st.failed) > 3 else ""
        strategy = strategy_of(ds)
        back = strategy is not None and strategy.auto_rollback
        what = (f"rolling back every node to revision {st.stable.revision}"
                if back and st.stable is not None else "updated pods left as they are")
        self.events.add(
            type="Warning", reason="RolloutAborted", obj=owner,
            message=(f"revision {update.revision}: {len(st.failed)} updated pod(s) failed "
                     f"(threshold {threshold}): {worst}{more}; {what}")[:1000])
        log.warning("rollout of %s aborted: %d failed pods; %s", owner, len(st.failed), what)
        if self.shared is not None:
            self.shared.ended(owner, update.thash, "RolledBack" if back else "Aborted")
        if back:
            self.workloads.sync(ds)
            return True
        return False

    def _complete(self, ds: Workload, owner: str, st: RolloutState, update: Template) -> bool:
        """Every pod that should run is updated and available (`_settled`): the update
        is the stable template from now on (what a later rollback returns to), and the
        pods of nodes that are not Ready get it too. The status of this tick says
        Complete and announces it (`_status`)."""
        st.stable = update
        st.aborted = None
        self.plans.save(owner)
        self.workloads.sync(ds)  # the pods of nodes that were not Ready get it too
        if self.shared is not None:
            self.shared.ended(owner, update.thash, "Complete")
        return True

    def _settled(self, ds: Workload, sc: _Scan) -> bool:
        """Complete in the sense of `kubectl rollout status`: every pod that should run
        has the update and is available (Ready for minReadySeconds, reported since the
        update while a rollout moves), at least one of them when there are pods at all;
        pods on nodes that are not Ready do not hold it (they get the update when their
        node reconnects). Replicas placed on no node do hold it, as in Kubernetes."""
        if sc.waiting or sc.old or (sc.total and not sc.done):
            return False
        if isinstance(ds, DaemonSet):
            return not self.workloads.is_expanding(ds)  # pods yet to be made
        # no surge pod or old replica left, and no pods being made or removed
        return sc.total == ds.spec.replicas and not self.workloads.is_scaling(owner_of(ds))

    # -- status -------------------------------------------------------------------------

    def _waiting(self, ds: Workload, sc: _Scan) -> str:
        """What completion waits for, in a few words."""
        if not isinstance(ds, DaemonSet) and self.workloads.is_scaling(owner_of(ds)):
            way = "up" if sc.total < ds.spec.replicas else "down"
            return (f"scaling {way}: {sc.total} pods, {ds.spec.replicas} wanted (made or "
                    "removed in the background)")
        if sc.waiting:
            shown = sorted(sc.waiting_for)[:WAITING_SHOWN]
            more = f" and {sc.waiting - len(shown)} more" if sc.waiting > len(shown) else ""
            words = []
            for name, key, placed, since, fresh in shown:
                pod = self.objects.pods.get(key)
                why = "gone" if pod is None else waiting_for(
                    pod, pod.metadata.annotations.get(naming.REVISION), placed=placed,
                    since=since, now=sc.now, min_ready=ds.spec.min_ready_seconds, fresh=fresh)
                words.append(f"{name} ({why})")
            return "waiting for " + ", ".join(words) + more
        if sc.old:
            return f"waiting for {sc.old} pod(s) to get the update"
        if isinstance(ds, DaemonSet) and self.workloads.is_expanding(ds):
            return f"waiting for the pods of every node to be made ({sc.total} so far)"
        if not isinstance(ds, DaemonSet) and sc.total != ds.spec.replicas:
            return f"waiting for {sc.total} pods to become {ds.spec.replicas}"
        return "waiting for a pod on a Ready node"

    def _scaling_status(self, key: Key, dep: Deployment, made: int) -> None:
        """While a Deployment's pods are made or removed in the background, its status
        counts them every tick (a status pass over 100,000 pods takes many ticks; the
        other counts are the last pass's)."""
        owner = owner_of(dep)
        scaling = self.workloads.is_scaling(owner)
        if scaling:
            self._scaled.add(owner)
        else:  # the last count, then the status passes take over
            self._scaled.discard(owner)
        status = dep.status
        if status is None or status.replicas == made:
            return
        way = "up" if made < dep.spec.replicas else "down"
        doing = (f"scaling {way}: {made} pods, {dep.spec.replicas} wanted (made or removed "
                 "in the background)" if scaling else
                 f"{made} pods, the other counts follow")
        rollout = RolloutStatus(
            phase="Paused" if dep.spec.paused else "Progressing",
            failed=status.rollout.failed, offline=status.rollout.offline,
            message=f"{status.available_replicas} of {made} pods available; {doing}")
        dep.status = status.model_copy(update={
            "replicas": made, "rollout": rollout,
            "conditions": conditions(dep, available=status.available_replicas,
                                     rollout=rollout, scaling=scaling)})
        self.objects.save(dep.kind, key)

    def _status(self, key: Key, ds: Workload, st: RolloutState, *, update: Template,
                hold: Template | None, scan: _Scan) -> None:
        """The workload's status from this tick's scan (a batch, a rollback or the
        completion made in the same tick shows in the counts on the next one)."""
        strategy = strategy_of(ds)
        owner = owner_of(ds)
        total, offline, failed = scan.total, scan.offline, len(st.failed)
        not_ready = f", {offline} on nodes that are not Ready" if offline else ""
        if owner not in self._announced:  # first look since a start: what was said before
            prev = ds.status.rollout if ds.status is not None else None
            self._announced[owner] = (
                update.thash if prev is not None and prev.phase == "Complete"
                and ds.status is not None and ds.status.update_revision == update.revision
                else None)
        settled = self._settled(ds, scan)
        if hold is None and scan.stuck:
            # The template went everywhere, but pods on Ready nodes report that they
            # cannot run it (issue 16: all in ImagePullBackOff said Complete).
            stuck = sorted(scan.stuck)
            why = "; ".join(f"{name}: {text}" for name, text in stuck[:3])
            more = f" (and {len(stuck) - 3} more)" if len(stuck) > 3 else ""
            rollout = RolloutStatus(
                phase="Progressing", failed=len(stuck), offline=offline,
                message=(f"{scan.available} of {total} pods available at revision "
                         f"{update.revision}{not_ready}; {len(stuck)} failing: {why}{more}")
                [:1000])
        elif hold is None and settled:
            rollout = RolloutStatus(
                phase="Complete", offline=offline,
                message=(f"{scan.done} of {total} pods available at revision "
                         f"{update.revision}{not_ready}"))
        elif hold is None:  # the template went everywhere; pods are not available yet
            rollout = RolloutStatus(
                phase="Progressing", offline=offline,
                message=(f"{scan.done} of {total} pods available at revision "
                         f"{update.revision}{not_ready}; {self._waiting(ds, scan)}")
                [:1000])
        elif st.aborted == update.thash:
            back = strategy is not None and strategy.auto_rollback
            rollout = RolloutStatus(
                phase="RolledBack" if back else "Aborted", failed=failed, offline=offline,
                message=(f"revision {update.revision} failed on {failed} pod(s); "
                         + (f"back to revision {hold.revision}; apply a fixed template"
                            if back else "no new batches; apply a fixed template")))
        else:
            rollout = RolloutStatus(
                phase="Paused" if ds.spec.paused else "Progressing", failed=failed,
                offline=offline,
                message=(f"{scan.updated} of {total} pods updated to revision "
                         f"{update.revision}, {failed} failed{not_ready}"
                         # every batch went out: what completion still waits for
                         + (f"; {self._waiting(ds, scan)}"
                            if scan.waiting and not scan.candidates else ""))[:1000])
        if rollout.phase == "Complete" and self._announced[owner] != update.thash:
            self._announced[owner] = update.thash
            self.events.add(type="Normal", reason="RolloutComplete", obj=owner,
                            message=(f"revision {update.revision} runs on every Ready node "
                                     f"and is available there ({scan.done} pods"
                                     f"{not_ready})"))
        if scan.warming:
            self.plans.dirty.add(owner)  # minReadySeconds passes without a report: look again
        status: WorkloadStatus | DeploymentStatus
        if isinstance(ds, DaemonSet):
            status = WorkloadStatus(
                observed_generation=ds.metadata.generation, desired_number_scheduled=total,
                updated_number_scheduled=scan.updated, number_ready=scan.ready,
                number_available=scan.available, current_revision=(hold or update).revision,
                update_revision=update.revision, rollout=rollout)
        else:
            status = DeploymentStatus(
                observed_generation=ds.metadata.generation, replicas=total,
                updated_replicas=scan.updated, ready_replicas=scan.ready,
                available_replicas=scan.available, current_revision=(hold or update).revision,
                update_revision=update.revision, rollout=rollout,
                conditions=conditions(ds, available=scan.available, rollout=rollout,
                                      scaling=self.workloads.is_scaling(owner)))
        if status != ds.status:
            ds.status = status  # type: ignore[assignment]
            self.objects.save(ds.kind, key)


class SharedRollouts(Protocol):
    """Rollout steps shared by shards (`cloudcore.cluster.rollouts.SharedSteps`)."""

    def decides(self) -> bool:
        """Whether this shard advances rollouts (it holds the global lease)."""
        ...

    def given(self, owner: str, thash: str, keys: Collection[Key]) -> None:
        """These pods were given the update `thash` here."""
        ...

    def ended(self, owner: str, thash: str, outcome: str) -> None:
        """The rollout of `thash` ended here: Complete, RolledBack or Aborted."""
        ...

    def removed(self, owner: str, thash: str, keys: Collection[Key]) -> None:
        """A maxSurge rollout of `thash` removed these pods of a Deployment here."""
        ...
