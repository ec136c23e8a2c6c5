"""Upgrades of the fleet's agents: the AgentUpgrade controller (proposal 0006).

An `AgentUpgrade` (edgefed.io/v1, cluster-scoped) names a release (`spec.version`,
`spec.image`) and the nodes that should run it (`spec.selector`). This part gives those
nodes the desired entry `agent/-/release` (`shared.entries.agent_release_entry`) in
health-gated batches, as the workload rollouts (`rollout.py`) do for pods:

- **candidates** are selected nodes that are Ready and do not run `spec.version`,
  taken in name order; at most `maxUnavailable` (a number or a percentage of the
  selected nodes, at least 1) are **in progress** at once: told to upgrade, Ready, not
  yet done, not failed. A node **told** to upgrade keeps its entry; this part
  remembers the version it ran before (where a rollback goes) in the store's
  `upgradenodes` database;
- a told node is **done** when it reports `agentVersion == spec.version` and
  `agentUpgrade` {version: spec.version, phase: Healthy}. A selected node that already
  runs the version counts as upgraded and is never told;
- a told node **failed** when it reports `agentUpgrade` phase Failed or RolledBack for
  the version (a report equal to the one it had when it was told says nothing new), or
  when it has been Ready for `healthDeadlineSeconds` + `DEADLINE_MARGIN` since it was
  told without being done (Timeout; the clock counts only while it is Ready: a node
  goes NotReady for a moment when its agent restarts). A node that failed stays failed
  for this AgentUpgrade;
- a selected node that is not Ready is **waiting**: it neither holds a batch nor
  fails; told or not, it upgrades when it is back (a told one keeps its entry);
- more failed nodes than `failureThreshold` **aborts**: no new batches, and every
  told node gets `agent/-/release` = {its previous version, image None} (it holds that
  version in its previous slot; the failed ones went back on their own, the entry
  keeps them there). An event `AgentUpgradeAborted` names the failed nodes and why.
  An aborted AgentUpgrade stays aborted: delete it (or create one under another name)
  to try again;
- `spec.paused` stops new batches (nodes in progress go on);
- **Complete** when no Ready selected node is left to tell and none is in progress;
  waiting nodes are counted in the status and get their turn when they are back
  (level-triggered: a node that joins later and matches is upgraded too).

One node follows one AgentUpgrade: when several select it, the newest (creation time,
then name) owns it, and the older ones leave it out of their counts. Deleting an
AgentUpgrade removes its entries: nodes then keep running what they run.
`spec.version` cannot change (another version is another AgentUpgrade, `agent-V` by
fedctl's naming); the other fields can.

The controller is level-triggered and costs what changed: it keeps where each node
stands (upgraded, waiting, candidate, in progress, failed) and `tick()` (the fleet's
liveness tick, and right after an apply) looks again only at the nodes whose agent
status or readiness changed (`node_changed`) and at those in progress (their
deadlines); which AgentUpgrade selects a node is worked out again for the nodes that
joined, left or changed labels (`selection_changed`). A pass over every node (after an
AgentUpgrade is applied or deleted, an abort, a cloud restart) goes a slice a tick
(`OWNER_SLICE` nodes' owners, then `PASS_SLICE` nodes classified), and the AgentUpgrade
takes no step until it is through. At most `MAX_TELL_PER_TICK` nodes are told per tick.
`python -m testbed.bench_upgrade` prints what a tick costs.

Shards (proposal 0008): with `shared` set (`cloudcore.cluster.upgrades`), only the shard
holding the global lease ticks (`shared.decides()`); it tells `shared` of every node
whose release entry or memory changed (`noted`) and of every status it computed
(`status_changed`), which it writes to KV; the other shards take them over (`adopt`,
`adopt_status`) and a new holder goes on from what it took over (`resync`). Every
shard tells `shared` of a delete (`deleted`), so the AgentUpgrade's values go too.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from cloudcore.fleet.desired import DesiredSets
from cloudcore.fleet.events import EventLog
from cloudcore.fleet.objects import Objects, Persister
from shared.entries import (
    AGENT_RELEASE_KEY,
    UPGRADE_TERMINAL_FAILURES,
    AgentUpgradeReport,
    agent_release_entry,
    parse_agent_upgrade,
)
from shared.errors import ObjectError
from shared.models import (
    AgentUpgrade,
    AgentUpgradeFailure,
    AgentUpgradeStatus,
    Node,
    resolve_count,
)

log = logging.getLogger("cloudcore.fleet.upgrades")

DB = "upgradenodes"
"""Store database of the per-node memory: `{upgrade}/{node}` -> _Told.record()."""
DEADLINE_MARGIN = 60.0
"""Seconds added to healthDeadlineSeconds before the cloud calls a told node failed:
the node's own deadline counts from its restart, after the download and checks."""
MAX_FAILURES_SHOWN = 50
MAX_TELL_PER_TICK = 2000
PASS_SLICE = 10000
"""Nodes classified per tick in a pass over every node of an AgentUpgrade (after it is
applied, an abort, a cloud restart); OWNER_SLICE nodes' owners worked out per tick."""
OWNER_SLICE = 10000
"""Nodes told per tick at most (a bigger batch takes several ticks), so one tick holds the
event loop for tens of milliseconds (testbed/bench_upgrade.py)."""
MAX_MESSAGE = 1000


@dataclass
class _Told:
    """What the controller remembers of a node it told to upgrade."""

    previous: str | None
    """The agentVersion the node reported when it was told (where a rollback goes)."""
    stale: tuple[str, str, str] | None = None
    """Its agentUpgrade report (version, phase, message) when it was told: the same
    report again is not news about this upgrade."""
    failed: tuple[str, str] | None = None
    """(reason, message) once it failed: Failed, RolledBack or Timeout."""
    ready_for: float = 0.0
    """Seconds it has been Ready since it was told (not persisted: a cloud restart gives
    nodes in progress a fresh deadline)."""
    seen: float | None = None
    """When the last scan saw it Ready (the clock of `ready_for`)."""

    def record(self, version: str) -> dict[str, Any]:
        return {"version": version, "previous": self.previous,
                "stale": list(self.stale) if self.stale is not None else None,
                "failed": list(self.failed) if self.failed is not None else None}

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> _Told:
        stale, failed = rec.get("stale"), rec.get("failed")
        return cls(previous=rec.get("previous"),
                   stale=(str(stale[0]), str(stale[1]), str(stale[2]))
                   if isinstance(stale, list) and len(stale) == 3 else None,
                   failed=(str(failed[0]), str(failed[1]))
                   if isinstance(failed, list) and len(failed) == 2 else None)


@dataclass
class _State:
    """One AgentUpgrade's memory: the nodes it told, whether it aborted, and where each
    of its nodes stands (kept up to date node by node, so a tick costs what changed)."""

    version: str
    told: dict[str, _Told] = field(default_factory=dict)
    aborted: bool = False
    completed: bool = False  # the Complete event was sent for the current run
    full: bool = True
    """Classify every node again on the next tick (new spec, selection, abort, load)."""
    cls: dict[str, str] = field(default_factory=dict)
    """node -> upgraded | waiting | candidate | progress | failed; after an abort, told
    (sent back), back (runs its previous version again) or held (never told)."""
    count: Counter[str] = field(default_factory=Counter)
    candidates: set[str] = field(default_factory=set)
    queue: list[str] = field(default_factory=list)
    """A heap of candidates' names, smallest first (stale names are skipped on pop)."""
    progress: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    """Told nodes that failed (their memo says why)."""
    pending: list[str] = field(default_factory=list)
    """A pass over every node of this AgentUpgrade under way, a slice a tick: no batch,
    abort or status until it is through."""
    at: int = 0

    def set_class(self, node: str, cls: str | None) -> bool:
        """Record where `node` stands (None: not this AgentUpgrade's); True if it moved."""
        old = self.cls.get(node)
        if old == cls:
            return False
        if old is not None:
            self.count[old] -= 1
            self.candidates.discard(node)
            self.progress.discard(node)
        if cls is None:
            del self.cls[node]
            return True
        self.cls[node] = cls
        self.count[cls] += 1
        if cls == "candidate":
            self.candidates.add(node)
            heapq.heappush(self.queue, node)
        elif cls == "progress":
            self.progress.add(node)
        return True

    def next_candidates(self, n: int) -> list[str]:
        """The `n` smallest candidates by name (they stay candidates until told)."""
        out: list[str] = []
        while self.queue and len(out) < n:
            node = heapq.heappop(self.queue)
            if node in self.candidates and (not out or out[-1] != node):
                out.append(node)
        for node in out:  # still candidates until the caller tells them
            heapq.heappush(self.queue, node)
        return out

    def reset(self) -> None:
        self.pending = []
        self.at = 0
        self.cls.clear()
        self.count.clear()
        self.candidates.clear()
        self.queue.clear()
        self.progress.clear()


def _key(report: AgentUpgradeReport | None) -> tuple[str, str, str] | None:
    return None if report is None else (report.version, report.phase, report.message)


class Upgrades:
    """The AgentUpgrade controller: batches, health, abort and rollback, statuses.

    Reads nodes and AgentUpgrades through `Objects`, writes the nodes' release entries
    through `DesiredSets.put_entry` (the facade commits), persists its per-node memory
    through the store."""

    def __init__(self, *, objects: Objects, desired: DesiredSets, events: EventLog,
                 store: Persister, clock: Callable[[], float] = time.monotonic) -> None:
        self.objects = objects
        self.desired = desired
        self.events = events
        self.store = store
        self.clock = clock
        """Monotonic seconds: the health deadlines count on it (tests set it)."""
        self._states: dict[str, _State] = {}
        self._owner: dict[str, str] = {}  # node -> the newest AgentUpgrade selecting it
        self._reselect = True  # labels, nodes or AgentUpgrades changed: owners again
        self._changed: set[str] = set()  # nodes whose status or readiness changed
        self._reowner: set[str] = set()  # nodes that joined, left or changed labels
        self._opass: tuple[list[str], int, dict[str, str]] | None = None
        """The owners' pass under way: (every node's name, how far, the owners so far)."""
        self.shared: SharedUpgrades | None = None
        """Shards: the batches decided by the holder of the global lease only, shared
        through KV (`cloudcore.cluster.upgrades`)."""

    # -- loading ------------------------------------------------------------------------

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        """The per-node memory of every AgentUpgrade (after `Objects.load`)."""
        for key, rec in records.get(DB, {}).items():
            name, _, node = key.partition("/")
            au = self.objects.agentupgrades.get(name)
            if au is None or not node or not isinstance(rec, dict):
                self.store.delete(DB, key)
                continue
            st = self._state(au)
            if rec.get("version") != st.version:
                self.store.delete(DB, key)
                continue
            memo = st.told[node] = _Told.from_record(rec)
            if memo.failed is not None:
                st.failed.add(node)
        for au in self.objects.agentupgrades.values():
            st = self._state(au)
            st.aborted = au.status is not None and au.status.phase == "Aborted"
            st.completed = au.status is not None and au.status.phase == "Complete"
        self._reselect = True

    def _state(self, au: AgentUpgrade) -> _State:
        st = self._states.get(au.metadata.name)
        if st is None:
            st = self._states[au.metadata.name] = _State(version=au.spec.version)
        return st

    # -- API ----------------------------------------------------------------------------

    def check(self, au: AgentUpgrade) -> None:
        """Refuse what `apply` cannot do to an AgentUpgrade: change its version."""
        old = self.objects.agentupgrades.get(au.metadata.name)
        if old is not None and old.spec.version != au.spec.version:
            raise ObjectError(
                f"AgentUpgrade {au.metadata.name}: spec.version cannot change "
                f"({old.spec.version!r} -> {au.spec.version!r}); another version is "
                f"another AgentUpgrade (fedctl upgrade nodes --version "
                f"{au.spec.version} makes agent-{au.spec.version})",
                field="spec.version")

    def apply(self, au: AgentUpgrade) -> None:
        """Create or update an AgentUpgrade (checked with `check`); its status is kept
        and recomputed on the next tick."""
        self.check(au)
        old = self.objects.agentupgrades.get(au.metadata.name)
        if old is not None and old.status is not None:
            au.status = old.status.model_copy(deep=True)
        self.objects.put(au)
        self._state(au).full = True
        self._reselect = True

    def deleted(self, name: str, *, uid: str | None = None) -> None:
        """An AgentUpgrade was deleted (the caller removed the object; `uid` its uid):
        its entries go, and its memory."""
        st = self._states.pop(name, None)
        if self.shared is not None:
            self.shared.deleted(name, uid)
        if st is None:
            return
        for node in st.told:
            self.store.delete(DB, f"{name}/{node}")
        for node, value in self.desired.entries_of(AGENT_RELEASE_KEY).items():
            if isinstance(value, dict) and value.get("upgrade") == name:
                self.desired.put_entry(node, AGENT_RELEASE_KEY, None)
        self._reselect = True

    def node_changed(self, name: str) -> None:
        """A node's agent status or readiness changed."""
        if self._states:
            self._changed.add(name)

    def selection_changed(self, name: str | None = None) -> None:
        """Node `name` joined, was deleted or changed labels (None: any node may have):
        which AgentUpgrade selects it is worked out again on the next tick."""
        if name is None:
            self._reselect = True
        elif self._states:
            self._reowner.add(name)

    # -- the tick -----------------------------------------------------------------------

    def tick(self) -> bool:
        """Advance every AgentUpgrade; True if a node's release entry changed (the caller
        commits the desired sets). Costs what changed: the nodes whose status or
        readiness changed and those in progress (their deadlines); a pass over every
        node (after an AgentUpgrade changed, an abort, a restart) goes a slice a tick."""
        if not self._states or (self.shared is not None and not self.shared.decides()):
            self._changed.clear()  # a new holder looks at every node again (`resync`)
            self._reowner.clear()
            self._opass = None
            return False
        moving = any((st.progress and not st.aborted) or st.pending
                     for st in self._states.values())
        if not (self._reselect or self._opass is not None or self._changed or self._reowner
                or moving or any(st.full for st in self._states.values())):
            return False
        now = self.clock()
        ups = sorted(self.objects.agentupgrades.values(),
                     key=lambda a: (a.metadata.creation_timestamp or "", a.metadata.name),
                     reverse=True)
        if self._reselect:  # start (again) the pass that works out every node's owner
            self._reselect = False
            self._opass = (list(self.objects.nodes), 0, {})
        if self._opass is not None:
            names, at, owner = self._opass
            nodes = self.objects.nodes
            for name in names[at:at + OWNER_SLICE]:
                node = nodes.get(name)
                if node is None:
                    continue
                for au in ups:
                    if au.spec.selector.matches(node.metadata.labels):
                        owner[name] = au.metadata.name
                        break
            at += OWNER_SLICE
            if at < len(names):
                self._opass = (names, at, owner)
                return False  # the rest waits for the owners (changes are kept)
            self._opass = None
            self._owner = owner
            for st in self._states.values():
                st.full = True
        changed_nodes, self._changed = self._changed, set()
        if self._reowner:  # only these nodes' owners: the others' did not change
            nodes = self.objects.nodes
            for name in self._reowner:
                node = nodes.get(name)
                found = None if node is None else next(
                    (au.metadata.name for au in ups
                     if au.spec.selector.matches(node.metadata.labels)), None)
                if found is None:
                    self._owner.pop(name, None)
                else:
                    self._owner[name] = found
            changed_nodes |= self._reowner
            self._reowner = set()
        changed = False
        for au in ups:
            changed |= self._work(au, self._state(au), changed_nodes, now)
        return changed

    def _work(self, au: AgentUpgrade, st: _State, changed_nodes: set[str],
              now: float) -> bool:
        """One AgentUpgrade's share of a tick; True if a release entry changed."""
        name = au.metadata.name
        changed = False
        if st.full:  # a pass over every node of it begins
            st.full = False
            st.reset()
            st.pending = [n for n, o in self._owner.items() if o == name]
            st.pending += [n for n in st.told if self._owner.get(n) != name]
        names = sorted({n for n in changed_nodes if n in st.cls or n in st.told
                        or self._owner.get(n) == name} | st.progress)
        moved = False
        for node in names:
            moved |= st.set_class(node, self._classify(au, st, node, now))
        if st.pending:
            part = st.pending[st.at:st.at + PASS_SLICE]
            st.at += len(part)
            for node in part:
                st.set_class(node, self._classify(au, st, node, now))
                memo = st.told.get(node)
                if memo is not None:  # its entry as it should be (new spec, abort, load)
                    changed |= self._put(name, node, self._entry(au, memo, aborted=st.aborted))
            if st.at < len(st.pending):
                return changed
            st.pending, st.at, moved = [], 0, True
        aborted = st.aborted
        changed |= self._advance(au, st)
        if st.aborted and not aborted:  # every told node goes back: a pass over them
            st.full = True
            return self._work(au, st, set(), now) or True
        if moved or names or au.status is None:
            self._status(au, st)
        return changed

    def _owned(self, node: str, name: str) -> bool:
        """Whether `node`'s release entry belongs to another AgentUpgrade than `name`."""
        value = self.desired.entry(node, AGENT_RELEASE_KEY)
        return isinstance(value, dict) and value.get("upgrade") not in (None, name)

    def _classify(self, au: AgentUpgrade, st: _State, name: str, now: float) -> str | None:
        """Where `name` stands in `au` (None: not one of its nodes); notes a told node's
        failure (report or deadline) on the way."""
        node = self.objects.nodes.get(name)
        memo = st.told.get(name)
        if node is None or (memo is not None and self._owned(name, au.metadata.name)):
            if memo is not None:  # deleted, or a newer AgentUpgrade told it meanwhile
                del st.told[name]
                st.failed.discard(name)
                self.store.delete(DB, f"{au.metadata.name}/{name}")
                if node is None:
                    self.desired.put_entry(name, AGENT_RELEASE_KEY, None)
                self._note(au.metadata.name, name)
            return None
        if memo is None and self._owner.get(name) != au.metadata.name:
            return None
        version = au.spec.version
        s = node.status
        ready = s.ready == "Ready"
        if memo is None:
            if s.agent_version == version:
                return "upgraded"
            if st.aborted:
                return "held"  # never told, and no longer will be
            return "candidate" if ready else "waiting"
        if st.aborted:
            return "back" if memo.previous is not None and s.agent_version == memo.previous \
                else "told"
        if memo.failed is not None:
            return "failed"
        report = parse_agent_upgrade(s.agent_upgrade)
        if (s.agent_version == version and report is not None
                and report.version == version and report.phase == "Healthy"):
            return "upgraded"
        if not ready:
            memo.seen = None  # its deadline does not count while it is away
            return "waiting"
        if memo.seen is not None:
            memo.ready_for += max(0.0, now - memo.seen)
        memo.seen = now
        limit = au.spec.health_deadline_seconds + DEADLINE_MARGIN
        why: tuple[str, str] | None = None
        if (report is not None and report.version == version
                and report.phase in UPGRADE_TERMINAL_FAILURES and _key(report) != memo.stale):
            why = (report.phase, report.message)
        elif memo.ready_for > limit:
            last = "none" if report is None else (
                f"{report.phase} {report.version}"
                + (f": {report.message}" if report.message else ""))
            why = ("Timeout", f"not healthy at {version} {limit:g} s (Ready time) after it "
                              f"was told to upgrade; last report: {last}")
        if why is None:
            return "progress"
        memo.failed = (why[0], why[1][:MAX_MESSAGE])
        st.failed.add(name)
        self.store.put(DB, f"{au.metadata.name}/{name}", memo.record(version))
        self._note(au.metadata.name, name)
        self.events.add(type="Warning", reason="AgentUpgradeFailed", obj=f"Node/{name}",
                        message=f"{au.metadata.name}: {why[0]}: {why[1]}"[:MAX_MESSAGE])
        return "failed"

    def _advance(self, au: AgentUpgrade, st: _State) -> bool:
        """Abort, or tell the next batch; True if a release entry changed."""
        name = au.metadata.name
        total = len(st.cls)
        threshold = resolve_count(au.spec.failure_threshold, total, round_up=False)
        if not st.aborted and len(st.failed) > threshold:
            self._abort(au, st, threshold)  # the caller sends the told nodes back
            return False
        if st.aborted or au.spec.paused or not st.candidates:
            return False
        room = max(1, resolve_count(au.spec.max_unavailable, total, round_up=False)) \
            - len(st.progress)
        if room <= 0:
            return False
        batch = st.next_candidates(min(room, MAX_TELL_PER_TICK))  # in name order
        entry = self._entry(au, None, aborted=False)
        for node in batch:
            self._tell(au, st, node)
            self._put(name, node, entry)
            st.set_class(node, "progress")
        st.completed = False
        self.events.add(type="Normal", reason="AgentUpgradeBatch", obj=f"AgentUpgrade/{name}",
                        message=(f"{len(batch)} node(s) told to upgrade to {au.spec.version}: "
                                 + ", ".join(batch[:10]) + (" ..." if len(batch) > 10 else ""))
                        [:MAX_MESSAGE])
        log.info("agent upgrade %s: %d more node(s) told", name, len(batch))
        return True

    def _put(self, upgrade: str, node: str, value: dict[str, Any] | None) -> bool:
        """Put `node`'s release entry for AgentUpgrade `upgrade` (shared with the other
        shards); True if it changed."""
        changed = self.desired.put_entry(node, AGENT_RELEASE_KEY, value)
        if changed:
            self._note(upgrade, node)
        return changed

    def _note(self, upgrade: str, node: str) -> None:
        if self.shared is not None:
            self.shared.noted(upgrade, node)

    def _entry(self, au: AgentUpgrade, memo: _Told | None, *,
               aborted: bool) -> dict[str, Any] | None:
        if not aborted:
            return agent_release_entry(version=au.spec.version, image=au.spec.image,
                                       upgrade=au.metadata.name,
                                       deadline=au.spec.health_deadline_seconds)
        if memo is None or memo.previous is None or memo.previous == au.spec.version:
            return None  # nothing known to go back to: it keeps what it runs
        return agent_release_entry(version=memo.previous, image=None,
                                   upgrade=au.metadata.name,
                                   deadline=au.spec.health_deadline_seconds)

    def _tell(self, au: AgentUpgrade, st: _State, name: str) -> None:
        node: Node = self.objects.nodes[name]
        memo = _Told(previous=node.status.agent_version,
                     stale=_key(parse_agent_upgrade(node.status.agent_upgrade)))
        memo.seen = self.clock()
        st.told[name] = memo
        self.store.put(DB, f"{au.metadata.name}/{name}", memo.record(au.spec.version))
        self._note(au.metadata.name, name)

    def _abort(self, au: AgentUpgrade, st: _State, threshold: int) -> None:
        st.aborted = True
        bad = sorted(st.failed)
        worst = "; ".join(f"{n}: {st.told[n].failed[0]}: {st.told[n].failed[1]}"  # type: ignore[index]
                          for n in bad[:3])
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        back = sum(1 for m in st.told.values()
                   if m.previous is not None and m.previous != au.spec.version)
        self.events.add(
            type="Warning", reason="AgentUpgradeAborted", obj=f"AgentUpgrade/{au.metadata.name}",
            message=(f"version {au.spec.version}: {len(bad)} node(s) failed (threshold "
                     f"{threshold}): {worst}{more}; no new batches, {back} told node(s) "
                     f"sent back to their previous version")[:MAX_MESSAGE])
        log.warning("agent upgrade %s aborted: %d failed nodes", au.metadata.name, len(bad))

    # -- status -------------------------------------------------------------------------

    def _status(self, au: AgentUpgrade, st: _State) -> None:
        bad = sorted(st.failed)
        failures = []
        for n in bad[:MAX_FAILURES_SHOWN]:
            why = st.told[n].failed
            assert why is not None
            failures.append(AgentUpgradeFailure(node=n, reason=why[0], message=why[1]))
        c = st.count
        total, upgraded = len(st.cls), c["upgraded"]
        in_progress, waiting = c["progress"], c["waiting"]
        note = f", {waiting} waiting (not Ready)" if waiting else ""
        counts = (f"{upgraded} of {total} nodes at {au.spec.version}, "
                  f"{in_progress} in progress, {len(bad)} failed{note}")
        phase: Literal["Progressing", "Complete", "Paused", "Aborted"]
        if st.aborted:
            told = sum(1 for m in st.told.values()
                       if m.previous is not None and m.previous != au.spec.version)
            phase = "Aborted"
            message = (f"aborted: {len(bad)} failed; {c['back']} of {told} told "
                       f"node(s) back at their previous version; delete it to try again")
        elif au.spec.paused:
            phase, message = "Paused", counts
        elif not st.candidates and not st.progress:
            phase, message = "Complete", counts
            if not st.completed:
                st.completed = True
                self.events.add(type="Normal", reason="AgentUpgradeComplete",
                                obj=f"AgentUpgrade/{au.metadata.name}",
                                message=f"every Ready selected node runs {au.spec.version}"
                                        f" ({counts})")
        else:
            phase, message = "Progressing", counts
        status = AgentUpgradeStatus(
            observed_generation=au.metadata.generation, phase=phase, total=total,
            upgraded=upgraded, in_progress=in_progress, failed=len(bad), waiting=waiting,
            rolled_back=c["back"], message=message[:MAX_MESSAGE], failures=failures)
        if status != au.status:
            au.status = status
            self.objects.save("AgentUpgrade", au.metadata.name)
            if self.shared is not None:
                self.shared.status_changed(au.metadata.name)

    # -- shards -------------------------------------------------------------------------

    def memo(self, upgrade: str, node: str) -> dict[str, Any] | None:
        """What AgentUpgrade `upgrade` remembers of `node` (`_Told.record`), or None."""
        st = self._states.get(upgrade)
        memo = st.told.get(node) if st is not None else None
        return None if memo is None or st is None else memo.record(st.version)

    def aborted(self, upgrade: str) -> bool:
        st = self._states.get(upgrade)
        return st is not None and st.aborted

    def adopt(self, au: AgentUpgrade, node: str, entry: dict[str, Any] | None,
              memo: dict[str, Any] | None, *, aborted: bool) -> bool:
        """Shards: the holder's entry and memory of `node` for `au` (`noted` there), the
        same here: the entry goes to the node's desired set (its owner delivers it) and
        the memory is kept for the day this shard holds the lease. True if the entry
        changed (the caller commits)."""
        name = au.metadata.name
        st = self._state(au)
        st.aborted |= aborted  # an aborted AgentUpgrade stays aborted
        if memo is None:
            if st.told.pop(node, None) is not None:
                self.store.delete(DB, f"{name}/{node}")
            st.failed.discard(node)
        else:
            told = st.told[node] = _Told.from_record(memo)
            if told.failed is not None:
                st.failed.add(node)
            else:
                st.failed.discard(node)
            self.store.put(DB, f"{name}/{node}", told.record(st.version))
        if entry is None:
            current = self.desired.entry(node, AGENT_RELEASE_KEY)
            if not (isinstance(current, dict) and current.get("upgrade") == name):
                return False  # not this AgentUpgrade's entry (a newer one's): kept
        return self.desired.put_entry(node, AGENT_RELEASE_KEY, entry)

    def adopt_status(self, au: AgentUpgrade, status: AgentUpgradeStatus, *,
                     aborted: bool) -> None:
        """Shards: the status the holder computed for `au` (this shard does not tick)."""
        st = self._state(au)
        st.aborted |= aborted
        st.completed = status.phase == "Complete"
        if status != au.status:
            au.status = status
            self.objects.save("AgentUpgrade", au.metadata.name)

    def resync(self) -> None:
        """This shard now decides (it took the global lease): every node of every
        AgentUpgrade is looked at again on the next tick, from the memory it took over
        (the deadlines of nodes in progress start again)."""
        self._reselect = True
        for st in self._states.values():
            st.full = True


class SharedUpgrades(Protocol):
    """AgentUpgrade batches shared by shards (`cloudcore.cluster.upgrades`)."""

    def decides(self) -> bool:
        """Whether this shard ticks the AgentUpgrades (it holds the global lease)."""
        ...

    def noted(self, upgrade: str, node: str) -> None:
        """`node`'s release entry or memory for `upgrade` changed here."""
        ...

    def status_changed(self, upgrade: str) -> None:
        """`upgrade`'s status changed here."""
        ...

    def deleted(self, upgrade: str, uid: str | None) -> None:
        """AgentUpgrade `upgrade` (`uid`, None if unknown) was deleted here."""
        ...
