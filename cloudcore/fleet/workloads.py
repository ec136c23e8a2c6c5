"""Workload controllers: DaemonSets and Deployments turned into pods.

`Workloads` owns the owner index (workload `Kind/namespace/name` -> its pods) and the
pod writes every controller shares (`put_pod`, `delete_pod`): a pod is stored, its
cached desired value dropped (`DesiredSets.invalidate`) and it is (re)placed
(`Placement.replaced`). Which template a pod is made from comes from the rollout
plans (`plans.py`); the rollout tick (`rollout.py`) sits above this part and calls
`put_pod` / `sync` for its batches.

- a DaemonSet owns one pod per node that its template's selector, required node
  affinity, arch and tolerations admit (named `{ds}-{node}`), as Kubernetes'
  DaemonSet controller decides; the pod is bound to that node if it fits
  there, else Pending with the reason;
- a Deployment owns `replicas` pods named `{dep}-{i}`, placed by the scheduler;
- a bare Pod is placed by the scheduler, or bound to `spec.nodeName` if given.

A DaemonSet over a big fleet is expanded in the background when the fleet runs with
`background` (the service does): the apply stores the DaemonSet and returns, and
`run_expansions` makes its pods a bounded slice at a time (`SLICE_S` of work, then the
caller's commit, then the event loop runs), so MQTT, the API and liveness never wait
behind 100,000 pods. Meanwhile lists, gets and watches show the pods made so far and
the rollout status counts them; a later apply, a template change or a delete of the
same DaemonSet restarts or ends its expansion. Expanding is idempotent (a node whose
pod is already at its target is skipped), so a node that joins meanwhile, or a
restart in the middle (every DaemonSet is expanded again after `load`), is harmless.

A Deployment is scaled the same way (issue 16): with `background`, a Deployment of
more than `SYNC_PODS` pods (before or after) is not synced in the apply: the apply
stores it and answers, and the same slices make or remove its pods (`_Scaling`), as
Kubernetes' Deployment controller does after the API has answered. Meanwhile its
status counts the pods made so far and its rollout message says it is scaling. A
scale-down removes the pods above the new count's indexes (a full pass over a copy
of its pod keys, so never more than it must); a scale-up makes the missing ones at the
lowest free indexes; the pods that stay get the template the rollout plan says. The
delete of such a Deployment removes its pods in the same slices. A later apply (back
to 3, say) replaces the job under way: the last apply wins, whatever the slices had
done. After a restart every Deployment whose pod count is not its replicas is scaled
again, and the pods left of a Deployment deleted in the middle go.

Shards (proposal 0008, `shared`, `cloudcore.cluster.rollouts.SharedSteps`): while a
Deployment's maxSurge rollout is under way, only the holder of the global lease changes
its pod count (a scale, an apply changing replicas), and it names the pods it made or
removed (`SharedScale.resized`) so that their pod sets reach the other shards, which
make and remove the same pods from those sets and never scale such a Deployment on
their own (their pod set may be behind the holder's: they would pick other indexes).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Protocol

from cloudcore.fleet import naming
from cloudcore.fleet.desired import DesiredSets
from cloudcore.fleet.objects import Key, Objects, is_daemon, stamp
from cloudcore.fleet.placement import Placement
from cloudcore.fleet.plans import Plan, RolloutPlans
from cloudcore.fleet.template import with_annotation
from shared.entries import pod_revision
from shared.models import DaemonSet, Deployment, Pod, resolve_count


def replica_index(depname: str, name: str) -> int:
    """The index of a Deployment's pod `{dep}-{i}` (a very long name hashed by
    `naming.child_name` sorts last)."""
    tail = name.removeprefix(f"{depname}-")
    return int(tail) if tail.isdigit() and tail != name else 1 << 62


def surge_allowed(dep: Deployment, plan: Plan) -> int:
    """Pods a Deployment may have over `replicas` now: its `maxSurge` (rounded up, as
    Kubernetes does) while a rollout is under way and not rolled back, else none."""
    strategy = dep.spec.strategy
    if strategy is None or plan.hold is None or plan.rolled_back:
        return 0
    return resolve_count(strategy.rolling_update.max_surge, dep.spec.replicas,
                         round_up=True)


SYNC_NODES = 256
"""A DaemonSet over at most this many nodes is expanded at once, in the call."""
SLICE_S = 0.012
"""Seconds the event loop is held by one slice of expansion and its commit together
(the slice's own share is adapted to what its commit took last time)."""
YIELD_S = 0.001
"""How long an expansion that overran its slice gives the loop before its commit."""
STEP = 32
"""Nodes expanded (pods made or removed) between two looks at the clock."""
SYNC_PODS = 256
"""A Deployment with at most this many pods, before and after, is synced in the call."""

DEFAULT_YOUNG_THRESHOLD = 700
"""CPython's default young-generation threshold (`gc.get_threshold()[0]`)."""


def between_slices() -> None:
    """The collector's turn between two expansion slices (issue 13 part 3), so that
    its threshold does not trip inside a slice (a young collection there held the loop
    up to 75 ms at 100,000 nodes).

    In a process tuned for a big heap (its young threshold raised above CPython's
    default, as `cloudcore.service.tune_gc` does in the cloudcore binary, which then
    keeps its long-lived objects frozen with `gc.freeze`), what the slice made is
    frozen too: a freeze is a constant-time move of the collector's lists,
    where the young collection that ran here before took about 1 us per object the
    slice made and still held the loop up to 29 ms at 100,000 nodes with ten
    DaemonSets. What a slice makes is long-lived (pods, desired entries, index
    entries); the young collections between slices found 0.6 unreachable objects each
    (10,000 nodes, three DaemonSets), which a freeze keeps instead of freeing. A
    process with the default collector settings (tests, an embedding program) gets
    the young collection, as before. (`gc.get_freeze_count` would tell whether the
    process froze anything, but it counts the frozen objects one by one.)"""
    if gc.get_threshold()[0] > DEFAULT_YOUNG_THRESHOLD:
        gc.freeze()
    else:
        gc.collect(0)


class SharedScale(Protocol):
    """Who changes the pod count of a Deployment under a maxSurge rollout across shards
    (`cloudcore.cluster.rollouts.SharedSteps`; module docstring)."""

    def decides(self) -> bool:
        """Whether this shard decides (it holds the global lease)."""
        ...

    def resized(self, owner: str, thash: str, keys: Collection[Key]) -> None:
        """The holder made or removed these pods of a Deployment whose maxSurge rollout
        of `thash` is under way (a scale): their pod sets go to the other shards."""
        ...


@dataclass
class _Expansion:
    ds: DaemonSet  # the object this expansion is for (a new apply makes a new one)
    names: list[str]  # the nodes at the time it started
    done: int = 0


@dataclass
class _Scaling:
    """A Deployment whose pods are being made or removed in the background."""

    key: Key
    dep: Deployment | None  # the object it was queued for (None: deleted, its pods go);
    # each step works toward what the table holds then
    keys: list[Key] | None = None  # a copy of its pods' keys, for the trim/update pass
    at: int = 0  # how far that pass got
    unplaced_first: bool = True  # the first pass removes only pods bound to no node
    index: int = 0  # the next replica index a new pod may take


class Workloads:
    """The DaemonSet and Deployment controllers and the owner index."""

    def __init__(self, *, objects: Objects, placement: Placement, desired: DesiredSets,
                 plans: RolloutPlans, background: bool = False) -> None:
        """With `background`, DaemonSets over more than `SYNC_NODES` nodes are expanded
        by `run_expansions`, which the owner must run."""
        self.objects = objects
        self.placement = placement
        self.desired = desired
        self.plans = plans
        self.background = background
        self._owners: dict[str, set[Key]] = {}  # workload ("Kind/ns/name") -> its pods
        self._expanding: dict[Key, _Expansion] = {}
        self._scaling: dict[str, _Scaling] = {}  # owner "Deployment/ns/name" -> its job
        self.shared: SharedScale | None = None
        """Shards: the holder alone scales a Deployment under a maxSurge rollout."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    # -- the owner index ----------------------------------------------------------------

    def load(self) -> None:
        """Index the owners of the pods loaded from the store; in the background, expand
        every DaemonSet again and scale every Deployment whose pod count is not its
        replicas (a restart may have cut either short), and remove the pods of a
        Deployment that was deleted while they went in the background."""
        for key, pod in self.objects.pods.items():
            self._index_owner(key, pod)
        if self.background:
            for ds in self.objects.daemonsets.values():
                self._expand_later(ds)
            for (ns, name), dep in self.objects.deployments.items():
                if len(self.owned_set(f"Deployment/{ns}/{name}")) != dep.spec.replicas:
                    self._scale_later(dep)
            deployments = self.objects.deployments
            for owner in list(self._owners):
                kind, _, rest = owner.partition("/")
                ns, _, name = rest.partition("/")
                if kind == "Deployment" and (ns, name) not in deployments:
                    # deleted while its pods went in the background: the rest go now
                    self._scaling[owner] = _Scaling(key=(ns, name), dep=None)
                    self._work_later()

    def compact(self) -> int:
        """After loading (and the rollout plans): keep each DaemonSet pod that is
        exactly its template on its node, and each Deployment pod that is exactly its
        template (no nodeName), the plan's update or stable template with only a uid
        for identity, as the compact `DaemonPod` the controllers make; the store holds
        full pods. Returns how many were compacted."""
        pods = self.objects.pods
        done = 0
        workloads: list[tuple[str, Key, DaemonSet | Deployment]] = [
            *(("DaemonSet", k, ds) for k, ds in self.objects.daemonsets.items()),
            *(("Deployment", k, dep) for k, dep in self.objects.deployments.items())]
        for kind, (ns, wname), obj in workloads:
            owner = f"{kind}/{ns}/{wname}"
            templates = {t.thash: t for t in self.plans.plan(obj).pair if t is not None}
            for key in self._owners.get(owner, ()):
                pod = pods.get(key)
                if not isinstance(pod, Pod):
                    continue
                meta, node = pod.metadata, pod.spec.node_name
                tpl = templates.get(meta.annotations.get(naming.TEMPLATE_HASH))
                if (tpl is None or (node is None) != (kind == "Deployment")
                        or meta.generation is not None
                        or meta.creation_timestamp is not None or meta.namespace != ns
                        or meta.labels != tpl.labels or pod.spec != tpl.spec_on(node)):
                    continue
                rec = tpl.daemon_pod(ns=ns, name=key[1], owner=owner, node=node)
                rec.status, rec.uid, rec.annotations = pod.status, meta.uid, meta.annotations
                pods[key] = rec
                done += 1
        return done

    def owned_keys(self, owner: str) -> list[Key]:
        """The pods of a workload (`Kind/namespace/name`), sorted."""
        return sorted(self._owners.get(owner, ()))

    def owned_set(self, owner: str) -> set[Key]:
        """The pods of a workload, unsorted (do not change it)."""
        return self._owners.get(owner, set())

    def _index_owner(self, key: Key, pod: Pod, old: Pod | None = None) -> None:
        before = old.metadata.annotations.get(naming.OWNER) if old is not None else None
        owner = pod.metadata.annotations.get(naming.OWNER)
        if before is not None and before != owner:
            self._owners.get(before, set()).discard(key)
        if owner is not None:
            self._owners.setdefault(owner, set()).add(key)
        self.plans.touch(owner)

    # -- pods ---------------------------------------------------------------------------

    def put_pod(self, key: Key, pod: Pod, old: Pod | None, *,
                revision: str | None = None) -> None:
        """Store a new or updated pod and (re)place it. Its status stays the old one
        until the agent reports; the REVISION annotation (`revision`, else hashed from
        the spec, never the user's value) tells the two apart. A pod a controller makes
        gets a uid of its own, kept across its updates: one deleted and made again is a
        new pod on its node too (`shared.entries.pod_entry`)."""
        with_annotation(pod, naming.REVISION,
                        revision if revision is not None else pod_revision(pod.spec.dump()))
        if pod.metadata.uid is None:
            pod.metadata.uid = (old.metadata.uid if old is not None and old.metadata.uid
                                else str(uuid.uuid4()))
        if old is not None:
            pod.status = old.status
            scheduled = old.metadata.annotations.get(naming.SCHEDULED)
            if scheduled is not None and naming.SCHEDULED not in pod.metadata.annotations:
                with_annotation(pod, naming.SCHEDULED, scheduled)
        self.objects.pods[key] = pod
        self._index_owner(key, pod, old)
        self.desired.invalidate(key)
        self.placement.replaced(key)
        self.objects.save("Pod", key)

    def apply_bare_pod(self, obj: Pod) -> None:
        key = (obj.metadata.namespace, obj.metadata.name)
        old = self.objects.pods.get(key)
        stamp(obj, old)
        if old is not None:
            obj.metadata.annotations = {**old.metadata.annotations, **obj.metadata.annotations}
        self.put_pod(key, obj, old)

    def delete_pod(self, key: Key) -> None:
        pod = self.objects.pods.get(key)
        if pod is None:
            return
        owner = pod.metadata.annotations.get(naming.OWNER)
        if owner is not None:
            self._owners.get(owner, set()).discard(key)
            self.plans.touch(owner)
        self.objects.remove("Pod", key)
        self.placement.forget(key)
        self.desired.invalidate(key)

    def delete_owned(self, owner: str) -> None:
        """Delete every pod of a workload (it was deleted): in the call, or, for a
        Deployment of more than SYNC_PODS pods with `background`, in the background
        slices (`is_scaling` says so until they are gone)."""
        kind, _, rest = owner.partition("/")
        if kind == "Deployment" and self.background and len(
                self.owned_set(owner)) > SYNC_PODS:
            ns, _, name = rest.partition("/")
            self._scaling.pop(owner, None)
            self._scaling[owner] = _Scaling(key=(ns, name), dep=None)
            self._work_later()
            return
        self._scaling.pop(owner, None)
        for pk in self.owned_keys(owner):
            self.delete_pod(pk)

    # -- controllers --------------------------------------------------------------------

    def apply(self, obj: DaemonSet | Deployment) -> None:
        """A workload was created or changed: store it and sync its pods."""
        table = self.objects.daemonsets if isinstance(obj, DaemonSet) else self.objects.deployments
        self.plans.applied(obj, table.get((obj.metadata.namespace, obj.metadata.name)))
        self.objects.put(obj)
        self.sync(obj)

    def sync(self, obj: DaemonSet | Deployment) -> None:
        """Make the workload's pods what its spec and rollout plan say: a Deployment
        at once; a DaemonSet at once over a small fleet, else in the background."""
        if isinstance(obj, Deployment):
            self.sync_deployment(obj)
        elif self.background and len(self.objects.nodes) > SYNC_NODES:
            self._expand_later(obj)
        else:
            self._expanding.pop((obj.metadata.namespace, obj.metadata.name), None)
            self.sync_daemonset(obj, self.objects.nodes)

    # -- background expansion of DaemonSets ---------------------------------------------

    def expanding(self) -> int:
        """DaemonSets whose expansion is under way."""
        return len(self._expanding)

    def scaling(self) -> int:
        """Deployments whose pods are being made or removed in the background."""
        return len(self._scaling)

    def is_scaling(self, owner: str) -> bool:
        """Whether a Deployment's (`Deployment/ns/name`) pods are being made or
        removed in the background (its pod count is not final yet)."""
        return owner in self._scaling

    def wake(self) -> None:
        """There is background work (`run_expansions` calls the commit again)."""
        self._work_later()

    def _work_later(self) -> None:
        self._idle.clear()
        self._wake.set()

    def is_expanding(self, ds: DaemonSet) -> bool:
        """Whether `ds`'s pods are still being made (its rollout cannot be complete)."""
        return (ds.metadata.namespace, ds.metadata.name) in self._expanding

    async def expanded(self) -> None:
        """Wait until no DaemonSet expansion or Deployment scaling is under way and the
        retries of pending pods have caught up (`run_expansions` must run)."""
        await self._idle.wait()

    def _expand_later(self, ds: DaemonSet) -> None:
        key = (ds.metadata.namespace, ds.metadata.name)
        self._expanding.pop(key, None)  # a new one goes last; starts over the fleet
        self._expanding[key] = _Expansion(ds=ds, names=list(self.objects.nodes))
        self._work_later()

    def expand_slice(self, budget: float = SLICE_S) -> bool:
        """Expand DaemonSets, then scale Deployments, for about `budget` seconds; True
        if work remains."""
        end = time.perf_counter() + budget
        daemonsets = self.objects.daemonsets
        while self._expanding:
            key, job = next(iter(self._expanding.items()))
            if daemonsets.get(key) is not job.ds:  # deleted, or applied again (queued anew)
                del self._expanding[key]
                continue
            step = job.names[job.done:job.done + STEP]
            job.done += len(step)
            self.sync_daemonset(job.ds, step)
            if job.done >= len(job.names):
                del self._expanding[key]
                self.plans.touch(f"DaemonSet/{key[0]}/{key[1]}")  # its status: complete?
            if time.perf_counter() >= end:
                break
        if self._expanding and time.perf_counter() >= end:
            return True
        while self._scaling:  # at least one step, as for a DaemonSet
            owner, scaling = next(iter(self._scaling.items()))
            if self._scale_step(owner, scaling, end):
                del self._scaling[owner]
                self.plans.touch(owner)  # its status: the count is final
            if time.perf_counter() >= end:
                break
        return bool(self._expanding or self._scaling)

    async def run_expansions(self, commit: Callable[..., bool | None], *,
                             settle: Callable[[], Awaitable[None]] | None = None,
                             budget: float = SLICE_S) -> None:
        """Work until cancelled: expand queued DaemonSets and scale Deployments a slice
        at a time, calling `commit` (pending retry and desired-set commit) after each
        slice and letting the event loop run between slices; a commit that returns
        True (its pending retry ran out of time) is called again, as `commit(True)` (go
        on where it stopped) when no slice work came between.
        `settle` (the store's flush) is awaited after each slice, so what a slice wrote
        is serialised in a batch of its own and no store batch grows with the fleet."""
        share = budget / 2  # of the slice's time spent expanding (the rest: the commit)
        while True:
            await self._wake.wait()
            self._wake.clear()
            more = True
            while self._expanding or self._scaling or more:
                start = time.perf_counter()
                worked = bool(self._expanding or self._scaling)
                if worked:
                    self.expand_slice(share)
                mid = time.perf_counter()
                if mid - start >= budget:
                    # The expansion alone took the slice's time (a table of every pod
                    # grew: a dict of 700,000 entries rehashed in ~40 ms at 100,000
                    # nodes x seven DaemonSets, and placement's index right after, in
                    # the commit): the loop gets a turn before the commit. A timer, not
                    # sleep(0): a task woken by a timer or I/O meanwhile would be queued
                    # behind this one's next step and still wait for the commit.
                    await asyncio.sleep(YIELD_S)
                    start += time.perf_counter() - mid  # the turn is not the slice's
                    mid = time.perf_counter()
                more = bool(commit() if worked else commit(True))
                took = time.perf_counter() - start
                if took > 0 and mid > start:  # aim the next slice at `budget` in all
                    share = min(budget, max(budget / 20, (mid - start) * budget / took))
                if settle is not None:
                    await settle()
                else:
                    await asyncio.sleep(0)
                between_slices()
                await asyncio.sleep(0)
            if not self._wake.is_set():
                self._idle.set()

    def _scale_step(self, owner: str, job: _Scaling, end: float) -> bool:
        """Work on a Deployment's scaling until `end` (perf_counter); True when its pods
        are what its spec says. First a pass over a copy of its pod keys: a pod above
        the count goes (index at or above replicas, + maxSurge during such a rollout),
        one that stays gets its plan's template; then the missing pods are made at the
        lowest free indexes. When pods must go, a first pass removes only those placed
        on no node (Kubernetes' ReplicaSet removes unscheduled pods first): removing
        placed ones first freed room that the pending retry filled with pods that went
        next."""
        dep = self.objects.deployments.get(job.key)  # level-triggered: what it is now
        plan = self.plans.plan(dep) if dep is not None else None
        if dep is None or plan is None:
            return self._scale_work(owner, job, end, dep=None, plan=None, changed=[])
        if self._held_elsewhere(dep, plan):
            return True  # the holder's pod sets make and remove its pods here
        changed: list[Key] = []
        try:
            return self._scale_work(owner, job, end, dep=dep, plan=plan, changed=changed)
        finally:
            self._resized(owner, dep, plan, changed)

    def _scale_work(self, owner: str, job: _Scaling, end: float, *, dep: Deployment | None,
                    plan: Plan | None, changed: list[Key]) -> bool:
        """`_scale_step`'s work; the pods it made or removed added to `changed`."""
        ns, name = job.key
        replicas = dep.spec.replicas if dep is not None else 0
        allowed = replicas + (surge_allowed(dep, plan) if dep is not None and plan else 0)
        owned = self._owners.setdefault(owner, set())
        pods = self.objects.pods
        if job.keys is None:
            job.keys = list(owned)
        keys = job.keys
        node_of = self.placement.node_of
        if job.unplaced_first and len(owned) > allowed:
            while job.at < len(keys) and len(owned) > allowed:
                for key in keys[job.at:job.at + STEP]:
                    if (key in owned and len(owned) > allowed and node_of(key) is None
                            and replica_index(name, key[1]) >= allowed):
                        self.delete_pod(key)
                        changed.append(key)
                job.at += STEP
                if time.perf_counter() >= end:
                    return False
            job.at = 0
        job.unplaced_first = False
        while job.at < len(keys):
            for key in keys[job.at:job.at + STEP]:
                if key not in owned:
                    continue
                if len(owned) > allowed and replica_index(name, key[1]) >= allowed:
                    self.delete_pod(key)
                    changed.append(key)
                    continue
                if plan is not None:
                    pod = pods.get(key)
                    target = plan.target_for(pod)
                    if target is not None:
                        self.put_pod(key, target.pod(ns=ns, name=key[1], owner=owner,
                                                     node=None), pod,
                                     revision=target.revision)
            job.at += STEP
            if time.perf_counter() >= end:
                return False
        if plan is None:
            if not owned:
                self._owners.pop(owner, None)
            return True
        target = plan.target_for(None)
        while len(owned) < replicas and target is not None:
            for _ in range(STEP):
                if len(owned) >= replicas:
                    break
                key = (ns, naming.child_name(name, str(job.index)))
                job.index += 1
                if key in owned or key in pods:
                    continue
                self.put_pod(key, target.pod(ns=ns, name=key[1], owner=owner, node=None),
                             None, revision=target.revision)
                changed.append(key)
            if time.perf_counter() >= end:
                return len(owned) >= replicas
        return True

    def _scale_later(self, dep: Deployment) -> None:
        owner = f"Deployment/{dep.metadata.namespace}/{dep.metadata.name}"
        self._scaling.pop(owner, None)  # a new one goes last and starts over
        self._scaling[owner] = _Scaling(key=(dep.metadata.namespace, dep.metadata.name),
                                        dep=dep)
        self.plans.touch(owner)
        self._work_later()

    def sync_daemonset(self, ds: DaemonSet, nodes: Iterable[str]) -> None:
        """One pod per admitting node. During a rollout (`rollout.py`) a pod gets the
        update only once its batch comes: until then (and after a rollback) it keeps
        or gets the stable template, `hold`."""
        ns, dsname = ds.metadata.namespace, ds.metadata.name
        owner = f"DaemonSet/{ns}/{dsname}"
        plan = self.plans.plan(ds)
        all_nodes, pods = self.objects.nodes, self.objects.pods
        for name in list(nodes):
            if name not in all_nodes:
                continue
            key = (ns, naming.child_name(dsname, name))
            pod = pods.get(key)
            if not self.placement.placeable(ds.spec.template.spec, name):
                if pod is not None and pod.metadata.annotations.get(naming.OWNER) == owner:
                    self.delete_pod(key)
                continue
            target = plan.target_for(pod)
            if target is not None:
                self.put_pod(key, target.pod(ns=ns, name=key[1], owner=owner, node=name),
                             pod, revision=target.revision)

    def sync_deployment(self, dep: Deployment) -> None:
        """`replicas` pods named `{dep}-{i}`, missing ones made at the lowest free
        indexes; during a rollout, as for a DaemonSet, a replica gets the update only in
        its batch (new replicas get the stable template, `hold`). A rollout with
        `maxSurge` (`rollout.py`) adds up to that many pods of the update at the next
        free indexes and removes old ones, so the indexes of a Deployment's pods need not
        stay 0..replicas-1. Pods over `replicas` (over replicas + maxSurge while such a
        rollout is under way) go: those not at their target template first (after a
        rollback, the update's), then the highest indexes."""
        ns, depname = dep.metadata.namespace, dep.metadata.name
        owner = f"Deployment/{ns}/{depname}"
        if self.background and max(len(self.owned_set(owner)),
                                   dep.spec.replicas) > SYNC_PODS:
            self._scale_later(dep)  # big: in the background slices (`_scale_step`)
            return
        self._scaling.pop(owner, None)  # a small sync now supersedes a job under way
        plan = self.plans.plan(dep)
        if self._held_elsewhere(dep, plan):
            return  # the holder's pod sets make and remove its pods here
        pods = self.objects.pods
        keys = sorted(self.owned_set(owner), key=lambda k: replica_index(depname, k[1]))
        allowed = dep.spec.replicas + surge_allowed(dep, plan)
        resized: list[Key] = []
        if len(keys) > allowed:
            keys.sort(key=lambda k: (plan.target_for(pods.get(k)) is None,
                                     -replica_index(depname, k[1])))
            resized = keys[:len(keys) - allowed]
            for key in resized:
                self.delete_pod(key)
            keys = sorted(keys[len(keys) - allowed:],
                          key=lambda k: replica_index(depname, k[1]))
        if len(keys) < dep.spec.replicas:
            resized = self.free_replica_keys(dep, dep.spec.replicas - len(keys))
            keys += resized
        self._resized(owner, dep, plan, resized)
        for key in keys:
            pod = pods.get(key)
            target = plan.target_for(pod)
            if target is not None:
                self.put_pod(key, target.pod(ns=ns, name=key[1], owner=owner, node=None),
                             pod, revision=target.revision)

    def _held_elsewhere(self, dep: Deployment, plan: Plan) -> bool:
        """Shards: whether the holder of the global lease, not this shard, decides the
        Deployment's pod count now (a maxSurge rollout is under way; module
        docstring)."""
        return (self.shared is not None and surge_allowed(dep, plan) > 0
                and not self.shared.decides())

    def _resized(self, owner: str, dep: Deployment, plan: Plan, keys: Collection[Key]) -> None:
        """Shards: the holder tells which pods of a Deployment under a maxSurge rollout
        a scale made or removed."""
        if keys and self.shared is not None and surge_allowed(dep, plan) > 0:
            self.shared.resized(owner, plan.update.thash, keys)

    def free_replica_keys(self, dep: Deployment, count: int) -> list[Key]:
        """`count` pod keys of the Deployment at the lowest indexes no pod of it uses."""
        ns, depname = dep.metadata.namespace, dep.metadata.name
        used = self.owned_set(f"Deployment/{ns}/{depname}")
        out: list[Key] = []
        i = 0
        while len(out) < count:
            key = (ns, naming.child_name(depname, str(i)))
            if key not in used and key not in self.objects.pods:
                out.append(key)
            i += 1
        return out

    def node_changed(self, name: str) -> None:
        """A node joined or changed labels/taints/capacity: its DaemonSet pods."""
        for ds in list(self.objects.daemonsets.values()):
            self.sync_daemonset(ds, [name])

    def node_deleted(self, name: str) -> None:
        """A node is being deleted: its DaemonSet pods go, its other pods wait for
        another node (pods pinned to it by `spec.nodeName` stay Pending)."""
        pods = self.objects.pods
        for pk in list(self.placement.on_node(name)):
            if is_daemon(pods[pk]):
                self.delete_pod(pk)
            else:
                self.placement.unbind(pk)
                self.placement.queue(pk)
        for pk in [k for k, p in pods.items() if p.spec.node_name == name]:
            if is_daemon(pods[pk]):
                self.delete_pod(pk)
