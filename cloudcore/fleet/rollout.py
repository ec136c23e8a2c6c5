"""Health-gated rollouts of DaemonSet templates, with fleet-wide automatic rollback.

A DaemonSet with `spec.updateStrategy` (Kubernetes' `RollingUpdate`, plus edgefed's
`failureThreshold` and `autoRollback`) does not hand a new template to every node at
once. cloudcore keeps, per DaemonSet, the **stable** template: the last one that rolled
out everywhere (persisted in the store's `rollouts` database). While `spec.template`
differs from it, a rollout is under way:

- pods not yet given the update keep the stable template, and so do pods of nodes
  that join meanwhile;
- every tick (the liveness tick, 1 s, and right after an apply) the next batch of
  pods on **Ready** nodes gets the update, so that at most `maxUnavailable` updated
  pods are in progress (given the update, not yet healthy, not failed);
- an updated pod is **healthy** once its node reports it Running and Ready at the
  update's revision for `minReadySeconds`; it **failed** if it reports Failed, a
  container waits in CrashLoopBackOff or an image or configuration error, or it is
  not healthy `progressDeadlineSeconds` after the update (counted only while its node
  is Ready). A pod that failed once stays failed for this rollout;
- more failed pods than `failureThreshold` **aborts** the rollout: with
  `autoRollback` (the default) every updated pod goes back to the stable template, on
  every node, at once (status RolledBack); without it the updated pods stay and no
  new batch starts (Aborted). Either way an event says which pods failed and why. A
  new template (another apply) starts a new rollout;
- pods on nodes that are not Ready neither block the rollout nor count as failed:
  when every pod on a Ready node is updated and healthy (at least one), the rollout
  is complete, the update becomes the stable template, and the pods of offline
  nodes get it too (their agents apply it when they reconnect);
- `spec.paused` stops new batches (pods in progress go on).

Without `updateStrategy` a template change goes to every node at once, as before.
Deployments update their replicas at once (not staged yet).

The DaemonSet's `status` (Kubernetes' names: desiredNumberScheduled,
updatedNumberScheduled, numberReady, numberAvailable, currentRevision,
updateRevision, plus `rollout`) is recomputed when its pods or their nodes change,
at most every `max(1 s, pods / 20,000 s)`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudcore.fleet import naming
from cloudcore.fleet.template import Template
from shared.models import (
    DaemonSet,
    Pod,
    PodTemplate,
    RolloutStatus,
    WorkloadStatus,
    resolve_count,
)

if TYPE_CHECKING:
    from cloudcore.fleet.controller import Fleet

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
"""A DaemonSet's status is recomputed at most every max(1, pods / this) seconds."""
MAX_MESSAGE = 400


def owner_of(ds: DaemonSet) -> str:
    return f"DaemonSet/{ds.metadata.namespace}/{ds.metadata.name}"


@dataclass
class _State:
    stable: Template | None
    aborted: str | None = None  # template hash of an update that was aborted
    target: str | None = None  # template hash the per-rollout memory below is about
    failed: dict[Key, str] = field(default_factory=dict)  # updated pods that failed: why
    updated_at: dict[Key, float] = field(default_factory=dict)
    reported_at: dict[Key, float] = field(default_factory=dict)  # its node's last report
    ready_since: dict[Key, tuple[str, float]] = field(default_factory=dict)
    status_at: float = float("-inf")

    def record(self) -> dict[str, Any]:
        return {"stable": None if self.stable is None else self.stable.tpl.dump(),
                "aborted": self.aborted}


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


def ready_at(pod: Pod, revision: str | None) -> bool:
    """Running and Ready, and reported for `revision`."""
    s = pod.status
    return (s.revision is not None and s.revision == revision and s.phase == "Running"
            and s.ready is not False
            and all(c.ready for c in s.container_statuses))


class Rollouts:
    def __init__(self, fleet: Fleet, clock: Callable[[], float] = time.monotonic) -> None:
        self.fleet = fleet
        self.clock = clock
        self._states: dict[str, _State] = {}
        self._dirty: set[str] = set()

    # -- state --------------------------------------------------------------------------

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        for owner, rec in records.items():
            raw = rec.get("stable")
            stable = Template(PodTemplate.model_validate(raw)) if raw else None
            self._states[owner] = _State(stable=stable, aborted=rec.get("aborted"))
        self._dirty.update(self._states)

    def _save(self, owner: str) -> None:
        self.fleet.store.put("rollouts", owner, self._states[owner].record())

    def applied(self, ds: DaemonSet, old: DaemonSet | None) -> None:
        """A DaemonSet was created or changed (before its pods are synced): keep its
        status, and decide what the stable template is."""
        owner = owner_of(ds)
        if old is not None and old.status is not None:
            ds.status = old.status.model_copy(deep=True)
        st = self._states.get(owner)
        if st is None or st.stable is None:
            base = old.spec.template if old is not None else ds.spec.template
            st = self._states[owner] = _State(stable=Template(base))
        if ds.spec.update_strategy is None:
            st.stable = Template(ds.spec.template)  # every node at once
            st.aborted = None
        st.status_at = float("-inf")  # a new spec: its status at once
        self._save(owner)
        self._dirty.add(owner)

    def forget(self, owner: str) -> None:
        if self._states.pop(owner, None) is not None:
            self.fleet.store.delete("rollouts", owner)
        self._dirty.discard(owner)

    def touch(self, owner: str | None) -> None:
        """Something about one of its pods changed: refresh its status next tick."""
        if owner is not None and owner.startswith("DaemonSet/"):
            self._dirty.add(owner)

    def stable(self, owner: str) -> Template | None:
        st = self._states.get(owner)
        return None if st is None else st.stable

    def retry(self, ds: DaemonSet) -> bool:
        """Start an aborted rollout of the same template again; False if none was."""
        st = self._states.get(owner_of(ds))
        if st is None or st.aborted != Template(ds.spec.template).thash:
            return False
        st.aborted = st.target = None
        st.failed.clear()
        st.updated_at.clear()
        st.status_at = float("-inf")
        self._save(owner_of(ds))
        self._dirty.add(owner_of(ds))
        return True

    def pod_reported(self, key: Key, pod: Pod) -> None:
        """Its node reported the pod's status: note when it became Ready at its
        revision (minReadySeconds counts from here), and refresh the status."""
        owner = pod.metadata.annotations.get(naming.OWNER)
        st = self._states.get(owner) if owner is not None else None
        if st is None:
            return
        self._dirty.add(owner)
        st.reported_at[key] = self.clock()
        rev = pod.metadata.annotations.get(naming.REVISION)
        if rev is not None and ready_at(pod, rev):
            if st.ready_since.get(key, (None, 0.0))[0] != rev:
                st.ready_since[key] = (rev, self.clock())
        else:
            st.ready_since.pop(key, None)

    def templates(self, ds: DaemonSet) -> tuple[Template, Template | None, bool]:
        """(update, hold, rolled_back) for `_sync_daemonset`: with a rollout under way,
        pods not yet updated keep or get `hold` (the stable template), and with
        `rolled_back` the updated ones go back to it too; `hold` None: every pod gets
        the update."""
        update = Template(ds.spec.template)
        st = self._states.get(owner_of(ds))
        if (st is None or st.stable is None or ds.spec.update_strategy is None
                or st.stable.thash == update.thash):
            return update, None, False
        rolled_back = st.aborted == update.thash and ds.spec.update_strategy.auto_rollback
        return update, st.stable, rolled_back

    # -- the tick -----------------------------------------------------------------------

    def tick(self) -> bool:
        """Advance every rollout under way and refresh the statuses that changed;
        True if pods changed (the caller retries pending pods and commits)."""
        now = self.clock()
        changed = False
        for key, ds in list(self.fleet.daemonsets.items()):
            owner = f"DaemonSet/{key[0]}/{key[1]}"
            st = self._states.get(owner)
            if st is None:
                continue
            update, hold, _ = self.templates(ds)
            if hold is not None:
                changed |= self._advance(ds, owner, st, update, now)
                update, hold, _ = self.templates(ds)  # it may have completed
            elif owner not in self._dirty:
                continue
            if hold is None and st.target is not None:
                st.target = None  # no rollout under way: forget the last one's pods
                st.failed.clear()
                st.updated_at.clear()
            keys = self.fleet.owned_keys(owner)
            every = max(1.0, len(keys) / STATUS_PODS_PER_SECOND)
            if now - st.status_at >= every or changed:
                self._dirty.discard(owner)
                st.status_at = now
                self._status(key, ds, st, update=update, hold=hold, keys=keys, now=now)
        return changed

    def _node_ready(self, key: Key) -> bool:
        node = self.fleet.node_of(key)
        n = self.fleet.nodes.get(node) if node is not None else None
        return n is not None and n.status.ready == "Ready"

    def _healthy(self, st: _State, key: Key, pod: Pod, revision: str, *, now: float,
                 min_ready: float) -> bool:
        if not ready_at(pod, revision):
            st.ready_since.pop(key, None)
            return False
        rev, since = st.ready_since.get(key, (None, now))
        if rev != revision:
            since = now
            st.ready_since[key] = (revision, now)
        return now - since >= min_ready

    def _advance(self, ds: DaemonSet, owner: str, st: _State, update: Template,
                 now: float) -> bool:
        strategy = ds.spec.update_strategy
        assert strategy is not None
        if st.target != update.thash:
            st.target = update.thash
            st.failed.clear()
            st.updated_at.clear()
        if st.aborted == update.thash:
            return False
        pods = self.fleet.pods
        keys = self.fleet.owned_keys(owner)
        candidates: list[Key] = []
        in_flight = healthy = 0
        deadline = float(ds.spec.progress_deadline_seconds)
        for k in keys:
            pod = pods[k]
            if not self._node_ready(k):
                st.updated_at[k] = now  # the deadline counts only while its node is Ready
                continue
            if pod.metadata.annotations.get(naming.TEMPLATE_HASH) != update.thash:
                candidates.append(k)
                continue
            since = st.updated_at.setdefault(k, now)
            # Only a report made after the update says anything about it (after a retry,
            # the node's last report may still be the failed attempt's).
            fresh = st.reported_at.get(k, float("-inf")) >= since
            if k not in st.failed:
                why = failure(pod, update.revision) if fresh else None
                if why is None and not (fresh and ready_at(pod, update.revision)) and (
                        now - since > deadline):
                    why = f"not Ready {deadline:g} s after the update"
                if why is not None:
                    st.failed[k] = why[:MAX_MESSAGE]
                    log.info("rollout of %s: pod %s/%s failed: %s", owner, *k, why)
            if k in st.failed:
                continue
            if fresh and self._healthy(st, k, pod, update.revision, now=now,
                             min_ready=ds.spec.min_ready_seconds):
                healthy += 1
            else:
                in_flight += 1
        threshold = resolve_count(strategy.failure_threshold, len(keys), round_up=False)
        if len(st.failed) > threshold:
            return self._abort(ds, owner, st, update, threshold)
        if ds.spec.paused:
            return False
        if not candidates and in_flight == 0:
            if healthy == 0 and keys:
                return False  # nothing verified yet (no Ready node): wait
            return self._complete(ds, owner, st, update)
        room = max(1, resolve_count(strategy.rolling_update.max_unavailable, len(keys),
                                    round_up=False)) - in_flight
        if room <= 0 or not candidates:
            return False
        ns = ds.metadata.namespace
        for k in candidates[:room]:
            old = pods[k]
            self.fleet.put_pod(k, update.pod(ns=ns, name=k[1], owner=owner,
                                             node=old.spec.node_name),
                               old, revision=update.revision)
            st.updated_at[k] = now
        log.info("rollout of %s: %d more pod(s) get revision %s", owner,
                 min(room, len(candidates)), update.revision)
        return True

    def _abort(self, ds: DaemonSet, owner: str, st: _State, update: Template,
               threshold: int) -> bool:
        st.aborted = update.thash
        self._save(owner)
        worst = "; ".join(f"{k[1]}: {why}" for k, why in sorted(st.failed.items())[:3])
        more = f" (and {len(st.failed) - 3} more)" if len(st.failed) > 3 else ""
        back = ds.spec.update_strategy is not None and ds.spec.update_strategy.auto_rollback
        what = (f"rolling back every node to revision {st.stable.revision}"
                if back and st.stable is not None else "updated pods left as they are")
        self.fleet.events.add(
            type="Warning", reason="RolloutAborted", obj=owner,
            message=(f"revision {update.revision}: {len(st.failed)} updated pod(s) failed "
                     f"(threshold {threshold}): {worst}{more}; {what}")[:1000])
        log.warning("rollout of %s aborted: %d failed pods; %s", owner, len(st.failed), what)
        if back:
            self.fleet.sync_daemonset(ds)
            return True
        return False

    def _complete(self, ds: DaemonSet, owner: str, st: _State, update: Template) -> bool:
        st.stable = update
        st.aborted = None
        self._save(owner)
        self.fleet.events.add(type="Normal", reason="RolloutComplete", obj=owner,
                              message=f"revision {update.revision} runs on every Ready node")
        self.fleet.sync_daemonset(ds)  # the pods of nodes that were not Ready get it too
        return True

    # -- status -------------------------------------------------------------------------

    def _status(self, key: Key, ds: DaemonSet, st: _State, *, update: Template,
                hold: Template | None, keys: list[Key], now: float) -> None:
        pods = self.fleet.pods
        updated = ready = available = 0
        min_ready = ds.spec.min_ready_seconds
        for k in keys:
            pod = pods[k]
            if pod.metadata.annotations.get(naming.TEMPLATE_HASH) == update.thash:
                updated += 1
            rev = pod.metadata.annotations.get(naming.REVISION)
            if rev is not None and self._healthy(st, k, pod, rev, now=now, min_ready=0.0):
                ready += 1
                if now - st.ready_since[k][1] >= min_ready:
                    available += 1
        alive = set(keys)
        for memo in (st.ready_since, st.reported_at):
            for gone in set(memo) - alive:
                del memo[gone]
        strategy = ds.spec.update_strategy
        offline = sum(1 for k in keys if not self._node_ready(k))
        if hold is None:
            rollout = RolloutStatus(
                phase="Complete", offline=offline,
                message=(f"{available} of {len(keys)} pods available at revision "
                         f"{update.revision}"
                         + (f", {offline} on nodes that are not Ready" if offline else "")))
        elif st.aborted == update.thash:
            back = strategy is not None and strategy.auto_rollback
            rollout = RolloutStatus(
                phase="RolledBack" if back else "Aborted", failed=len(st.failed),
                offline=offline,
                message=(f"revision {update.revision} failed on {len(st.failed)} pod(s); "
                         + (f"back to revision {hold.revision}; apply a fixed template"
                            if back else "no new batches; apply a fixed template")))
        else:
            rollout = RolloutStatus(
                phase="Paused" if ds.spec.paused else "Progressing", failed=len(st.failed),
                offline=offline,
                message=(f"{updated} of {len(keys)} pods updated to revision "
                         f"{update.revision}, {len(st.failed)} failed"
                         + (f", {offline} on nodes that are not Ready" if offline else "")))
        status = WorkloadStatus(
            observed_generation=ds.metadata.generation, desired_number_scheduled=len(keys),
            updated_number_scheduled=updated, number_ready=ready, number_available=available,
            current_revision=(hold or update).revision, update_revision=update.revision,
            rollout=rollout)
        if status != ds.status:
            ds.status = status
            self.fleet.save_workload("DaemonSet", key)
