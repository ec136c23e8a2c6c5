"""Which template each pod of a workload gets, and the memory of rollouts under way.

`RolloutPlans` keeps, per DaemonSet or Deployment, the **stable** template (the last
one that rolled out everywhere, persisted in the store's `rollouts` database), an
aborted update, and the per-rollout memory (updated pods, failures, readiness
clocks). `plan(workload)` answers the one question the workloads controller asks for
every pod it makes: the update (`spec.template`) or, while a rollout is under way,
the stable template (`hold`). The rollout tick (`rollout.py`) sits above the
workloads controller and moves rollouts forward; this part sits below it, so neither
imports the other. The rules are in `rollout.py`'s docstring.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloudcore.fleet import naming
from cloudcore.fleet.template import Template
from shared.models import DaemonSet, Deployment, Pod, PodTemplate, UpdateStrategy

if TYPE_CHECKING:
    from cloudcore.fleet.objects import Persister

Key = tuple[str, str]
Workload = DaemonSet | Deployment


def owner_of(obj: Workload) -> str:
    return f"{obj.kind}/{obj.metadata.namespace}/{obj.metadata.name}"


def strategy_of(obj: Workload) -> UpdateStrategy | None:
    """A DaemonSet's `updateStrategy`, a Deployment's `strategy` (Kubernetes' names)."""
    return obj.spec.update_strategy if isinstance(obj, DaemonSet) else obj.spec.strategy

@dataclass(frozen=True)
class Plan:
    """Which template a workload's pods get: the `update` (spec.template), or, while a
    rollout is under way, `hold` (the stable template) for pods not yet in a batch,
    and after a rollback (`rolled_back`) for the updated ones too."""

    update: Template
    hold: Template | None = None
    rolled_back: bool = False

    @property
    def pair(self) -> tuple[Template, Template | None]:
        return self.update, self.hold

    def target_for(self, pod: Pod | None) -> Template | None:
        """The template `pod` (None: not made yet) should be made from; None if it
        already is. During a rollout a pod at a third template (an update that was
        under way, or aborted without rollback, when this one was applied) keeps it
        until its batch: putting it back on the stable template first would restart
        those pods all at once. A rollback puts every pod back on the stable one."""
        have = pod.metadata.annotations.get(naming.TEMPLATE_HASH) if pod is not None else None
        target = self.update
        if self.hold is not None and (have != self.update.thash or self.rolled_back):
            if have is not None and have != self.hold.thash and not self.rolled_back:
                return None  # neither stable nor update: it waits for its batch
            target = self.hold
        return None if have == target.thash else target


@dataclass
class RolloutState:
    stable: Template | None
    aborted: str | None = None  # template hash of an update that was aborted
    target: str | None = None  # template hash the per-rollout memory below is about
    failed: dict[Key, str] = field(default_factory=dict)  # updated pods that failed: why
    updated_at: dict[Key, float] = field(default_factory=dict)
    reported_at: dict[Key, float] = field(default_factory=dict)  # its node's last report
    ready_since: dict[Key, tuple[str, float]] = field(default_factory=dict)
    status_at: float = float("-inf")
    update: tuple[PodTemplate, Template] | None = None  # spec.template, prepared once

    def restart(self, target: str | None) -> None:
        """Forget the per-rollout memory: a new rollout (of `target`), or none."""
        self.target = target
        self.failed.clear()
        self.updated_at.clear()

    def note_ready(self, key: Key, revision: str | None, ready: bool, now: float) -> float:
        """Track since when the pod is Ready at `revision`; returns that time (`now`
        when it just became so), or +inf when it is not Ready."""
        if revision is None or not ready:
            self.ready_since.pop(key, None)
            return float("inf")
        seen, since = self.ready_since.get(key, (None, now))
        if seen != revision:
            since = now
            self.ready_since[key] = (revision, now)
        return since

    def record(self) -> dict[str, Any]:
        """What survives a restart: the stable template, an aborted update, and the
        pods that failed in the rollout under way (so a restart never forgets them)."""
        return {"stable": None if self.stable is None else self.stable.tpl.dump(),
                "aborted": self.aborted, "target": self.target,
                "failed": {f"{ns}/{name}": why for (ns, name), why in self.failed.items()}}

def ready_at(pod: Pod, revision: str | None) -> bool:
    """Running and Ready, and reported for `revision`."""
    s = pod.status
    return (s.revision is not None and s.revision == revision and s.phase == "Running"
            and s.ready is not False
            and all(c.ready for c in s.container_statuses))

class RolloutPlans:
    """Per workload, the stable template and the memory of the rollout under way:
    which template each pod gets (`plan`). Below the workloads controller, which asks
    it for every pod it makes; `Rollouts` (the tick) sits above both."""

    def __init__(self, *, store: Persister, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._states: dict[str, RolloutState] = {}
        self.dirty: set[str] = set()
        """Workloads whose status may have changed: the next tick scans them."""

    # -- state --------------------------------------------------------------------------

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        for owner, rec in records.items():
            raw = rec.get("stable")
            stable = Template(PodTemplate.model_validate(raw)) if raw else None
            failed = {tuple(k.split("/", 1)): str(why)
                      for k, why in (rec.get("failed") or {}).items() if "/" in k}
            self._states[owner] = RolloutState(stable=stable, aborted=rec.get("aborted"),
                                         target=rec.get("target"),
                                         failed=failed)  # type: ignore[arg-type]
        self.dirty.update(self._states)

    def state(self, owner: str) -> RolloutState | None:
        return self._states.get(owner)

    def save(self, owner: str) -> None:
        self.store.put("rollouts", owner, self._states[owner].record())

    def applied(self, ds: Workload, old: Workload | None) -> None:
        """A workload was created or changed (before its pods are synced): keep its
        status, and decide what the stable template is."""
        owner = owner_of(ds)
        if old is not None and old.status is not None:
            ds.status = old.status.model_copy(deep=True)
        st = self._states.get(owner)
        if st is None or st.stable is None:
            base = old.spec.template if old is not None else ds.spec.template
            st = self._states[owner] = RolloutState(stable=Template(base))
        if strategy_of(ds) is None:
            st.stable = Template(ds.spec.template)  # every pod at once
            st.aborted = None
        st.status_at = float("-inf")  # a new spec: its status at once
        self.save(owner)
        self.dirty.add(owner)

    def forget(self, owner: str) -> None:
        if self._states.pop(owner, None) is not None:
            self.store.delete("rollouts", owner)
        self.dirty.discard(owner)

    def touch(self, owner: str | None) -> None:
        """Something about one of its pods changed: refresh its status next tick."""
        if owner is not None and owner in self._states:
            self.dirty.add(owner)

    def stable(self, owner: str) -> Template | None:
        st = self._states.get(owner)
        return None if st is None else st.stable

    def retry(self, ds: Workload) -> bool:
        """Start an aborted rollout of the same template again; False if none was."""
        st = self._states.get(owner_of(ds))
        if st is None or st.aborted != self.plan(ds).update.thash:
            return False
        st.aborted = None
        st.restart(None)
        st.status_at = float("-inf")
        self.save(owner_of(ds))
        self.dirty.add(owner_of(ds))
        return True

    def pod_reported(self, key: Key, pod: Pod) -> None:
        """Its node reported the pod's status: note when it became Ready at its
        revision (minReadySeconds counts from here), and refresh the status."""
        owner = pod.metadata.annotations.get(naming.OWNER)
        st = self._states.get(owner) if owner is not None else None
        if st is None:
            return
        self.dirty.add(owner)
        now = self.clock()
        st.reported_at[key] = now
        rev = pod.metadata.annotations.get(naming.REVISION)
        st.note_ready(key, rev, rev is not None and ready_at(pod, rev), now)

    def plan(self, ds: Workload) -> Plan:
        """Which template the workload's pods get (`Plan.target_for`)."""
        st = self._states.get(owner_of(ds))
        if st is None:
            return Plan(Template(ds.spec.template))
        if st.update is None or st.update[0] is not ds.spec.template:
            st.update = (ds.spec.template, Template(ds.spec.template))  # hashed once
        update = st.update[1]
        strategy = strategy_of(ds)
        if st.stable is None or strategy is None or st.stable.thash == update.thash:
            return Plan(update)
        return Plan(update, st.stable,
                    rolled_back=st.aborted == update.thash and strategy.auto_rollback)
