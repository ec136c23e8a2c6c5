"""Rollout steps decided once for the fleet (issue 14, proposal 0008: "rollouts' gates"
behind the global lease).

Every shard holds every workload and its pods (DaemonSets expand for every node it
knows) but delivers only its own nodes' desired sets. A staged rollout (a DaemonSet's
`updateStrategy`, a Deployment's `strategy`) is advanced by the holder of the global
lease only (`Rollouts.shared.decides()`): it sees every pod's reported status (the
owners put them in their node status summaries, `cloudcore.cluster.status`), gives each
batch the update, and writes what it gave to KV; every shard gives its copies of those
pods the update, so the owner of each pod's node delivers it. The end of a rollout
(Complete, RolledBack, Aborted) is written too, and every shard ends it the same way.

Bucket `<prefix>_rollouts`:
- `<owner>.<pp>` (owner `Kind/ns/name` escaped, `pp` the partition of the pod's name,
  so a key holds about 1/256 of a workload's pods): `{"update": template hash, "pods":
  [names given that update], "by", "fence"}`, rewritten with the names added at each
  batch (a new update starts the list again); during a Deployment's `maxSurge` rollout
  also `"set": [the names of every pod of the Deployment in that pp, as the holder has
  them when it writes]`;
- `<owner>.end`: `{"update", "outcome", "spec", "by", "fence"}` (`spec`: the
  workload's version the holder ended it at, below), written after the owner's steps of
  the same round (a shard reading the end has read the steps before it).

A Deployment's `maxSurge` rollout does not update pods in place: the holder makes new
pods of the update at free indexes (placed by it, on any shard's node, through the
bindings, `cloudcore.cluster.bindings`) and removes old ones (`Rollouts._surge`). Its
steps therefore carry the pod set of each pp they touch: every other shard removes its
copies of the pods not in the set and makes those of the set given the update that it
does not have (`Rollouts.give(make=True)`), so the binding of a surge pod to its node
finds the pod there and the node's owner delivers it; the end (Complete, RolledBack)
then finds the same pods on every shard and ends the rollout alike.

Each value carries the writer's global lease token (`Member.global_revision`, as the
bindings do); a value under a smaller token than one seen is refused (a former holder
paused past its lease). A shard applies a value once its own copy of the workload is at
that template (the objects replica and this bucket are separate watches: what arrives
early is applied at the next `RETRY_S` round, an owner's end only after its steps). A
new holder goes on from the bucket's lists (its copies of the pods were given the
update, made and removed from them). The writes go through `cloudcore.cluster.fenced`;
the watch, fencing and write loops are `cloudcore.cluster.replica`'s.

AgentUpgrade batches across shards are `cloudcore.cluster.upgrades`, in the same shape.

A Deployment scaled (replicas changed) while its maxSurge rollout is under way is scaled
by the holder alone (`Workloads.shared`, this class): the other shards leave its pod
count as it is (their pod set may be behind the holder's, so they would pick other
indexes, and a pod set written before the scale, read after it, would remove what they
made), the holder marks the pps of the pods its scale made or removed (`resized`), and
the sets it writes make and remove the same pods everywhere (a pod of a set that was
not given the update is made at the template a new pod gets, the stable one). A set is
ordered by its key's revision (every set of a pp goes to one key, which the watch
delivers in order; a former holder's late value is fenced) and is the only thing that
changes a follower's pods of such a Deployment, so an older set never follows a newer
one. The end of a rollout carries the version of the workload the holder ended it at
(`"spec"`, its revision in the objects bucket, `ClusterObjects.version_by_key`) and is
applied only once this shard's copy is at least there: applied to an older copy, the end
would sync the pods to the count before the scale (running pods removed, made again).
While no shard holds the global lease, such a Deployment is not scaled at all; the next
holder, once its replica of the steps caught up, brings each to its replicas
(`global_changed`, `_rescale`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from typing import Any

from cloudcore.cluster.fenced import put_all
from cloudcore.cluster.kv import Entry
from cloudcore.cluster.objects import escape, unescape
from cloudcore.cluster.replica import HolderReplica, Task
from cloudcore.fleet.workloads import surge_allowed
from shared import topics
from shared.models import Deployment

log = logging.getLogger("cloudcore.cluster.rollouts")

Key = tuple[str, str]
END = "end"
BATCH = 64
"""Step writes in flight at once. `RETRY_S` (`cloudcore.cluster.fenced`): seconds
between rounds that apply values whose workload template was not here yet, and between
attempts to write values NATS refused."""


def rollouts_bucket(prefix: str) -> str:
    return f"{prefix}_rollouts"


def step_key(owner: str, part: str) -> str:
    return f"{escape(owner)}.{part}"


def part_of(name: str) -> str:
    """The `pp` of a pod name: which key of its owner holds it."""
    return topics.pp(topics.partition_of(name))


class SharedSteps(HolderReplica):
    """The rollout steps shared by shards (module docstring); `Rollouts.shared`."""

    NAME = "rollouts"
    NOUN = "rollout step"
    log = log

    def __init__(self, fleet: Any, *, shard: str, holds_global: Callable[[], bool],
                 fence: Callable[[], int | None],
                 version: Callable[[str, Key], int | None] | None = None) -> None:
        """`version(kind, (namespace, name))`: the revision in the objects bucket of a
        workload as this shard's objects replica applied it (its resourceVersion,
        `ClusterObjects.version_by_key`); without it values wait for no version."""
        super().__init__(fleet, shard=shard, holds_global=holds_global, fence=fence)
        self._version = version
        self.specs: dict[tuple[str, str], int] = {}
        """(owner, END) -> the workload's version the holder had when it wrote the end
        (`"spec"`): applied here only once this shard's copy is at least there."""
        self.lists: dict[tuple[str, str], tuple[str, set[str]]] = {}
        """(owner, pp) -> (update hash, pod names given it), as the bucket says (and,
        on the holder, as it wrote)."""
        self.ends: dict[str, tuple[str, str]] = {}
        """owner -> (update hash, outcome)."""
        self.sets: dict[tuple[str, str], tuple[str, set[str]]] = {}
        """(owner, pp) -> (update hash, the names of every pod of the Deployment in that
        pp) during a maxSurge rollout, as the bucket says (followers only)."""
        self.surging: dict[str, str] = {}
        """Holder: owner -> the update hash of the maxSurge rollout whose values carry
        the pod set."""
        self.made_here = 0
        self.removed_here = 0
        self._todo: set[tuple[str, str]] = set()
        """Keys (owner, pp or END) not fully applied here yet (template not here)."""
        self._out: set[tuple[str, str]] = set()
        self.given_here = 0
        fleet.rollouts.shared = self
        fleet.workloads.shared = self  # the holder alone scales a surging Deployment

    # -- Rollouts.shared ----------------------------------------------------------------

    def _drop_unwritten(self) -> None:
        self._out.clear()

    def given(self, owner: str, thash: str, keys: Collection[Key]) -> None:
        if not self._as_holder():
            return
        self._surge_of(owner, thash)
        for _, name in keys:
            self._list(owner, part_of(name), thash)[1].add(name)
        self._wake.set()

    def removed(self, owner: str, thash: str, keys: Collection[Key]) -> None:
        if not self._as_holder():
            return
        self.surging[owner] = thash  # only a maxSurge rollout removes pods
        for _, name in keys:
            self._list(owner, part_of(name), thash)
        self._wake.set()

    def resized(self, owner: str, thash: str, keys: Collection[Key]) -> None:
        """`Workloads.shared`: the holder scaled a Deployment under a maxSurge rollout
        of `thash` (made or removed `keys`): the pod sets of their pps are written, so
        the other shards, which do not scale it on their own, make and remove the same
        pods."""
        if not self._as_holder():
            return
        self.surging[owner] = thash
        for _, name in keys:
            self._list(owner, part_of(name), thash)
        self._wake.set()

    def _list(self, owner: str, part: str, thash: str) -> tuple[str, set[str]]:
        """The names given `thash` in (owner, part), that key marked to be written."""
        was = self.lists.get((owner, part))
        if was is None or was[0] != thash:
            was = self.lists[(owner, part)] = (thash, set())
        self._out.add((owner, part))
        return was

    def _surge_of(self, owner: str, thash: str) -> None:
        """Holder: note that `owner`'s rollout of `thash` is a Deployment's maxSurge
        rollout (its values then carry the pod set: the other shards make and remove
        the same pods)."""
        ds = self._workload(owner)
        if isinstance(ds, Deployment) and surge_allowed(ds, self.fleet.rollouts.plan(ds)):
            self.surging[owner] = thash

    def ended(self, owner: str, thash: str, outcome: str) -> None:
        if not self._as_holder():
            return
        self.ends[owner] = (thash, outcome)
        self._out.add((owner, END))
        self._wake.set()

    # -- the replica --------------------------------------------------------------------

    def bucket_name(self, prefix: str) -> str:
        return rollouts_bucket(prefix)

    def _tasks(self) -> list[Task]:
        return [("writer", self._writer), ("apply", self._retrier)]

    async def _caught_up(self) -> None:
        self.caught_up = True
        log.info("shard %s: rollout steps replica caught up (%d keys)", self.shard,
                 len(self.lists) + len(self.ends))
        if self._holds():
            self._rescale()

    async def global_changed(self, held: bool) -> None:
        """The shard took (`held`) or lost the global lease (`Shard.on_global`)."""
        if held and self.caught_up:
            self._rescale()

    def _rescale(self) -> None:
        """A new holder (caught up): the Deployments under a maxSurge rollout are scaled
        to their replicas now. An apply changing them while no shard held the lease was
        made by none (each leaves such a Deployment's count to the holder)."""
        plans, workloads = self.fleet.rollouts, self.fleet.workloads
        scaled = 0
        for dep in list(self.fleet.objects.deployments.values()):
            if surge_allowed(dep, plans.plan(dep)) > 0:
                workloads.sync_deployment(dep)
                scaled += 1
        if scaled:
            self.fleet.commit()
            log.info("shard %s: holds the global lease: %d Deployment(s) under a maxSurge "
                     "rollout brought to their replicas", self.shard, scaled)

    def apply_entry(self, e: Entry) -> None:
        """One value of the bucket: remembered and applied (a holder's own are not)."""
        if e.deleted:
            return
        try:
            owner_raw, part = e.key.rsplit(".", 1)
            owner = unescape(owner_raw)
            doc = json.loads(e.value)
            thash = str(doc["update"])
            fence = int(doc.get("fence") or 0)
        except (ValueError, KeyError, TypeError):
            self._unreadable(e)
            return
        if not self._accepts(e, fence):
            return
        if self.decides() and doc.get("by") == self.shard:
            return  # its own write coming back
        spec = doc.get("spec")
        if isinstance(spec, int):
            self.specs[(owner, part)] = spec
        else:
            self.specs.pop((owner, part), None)
        if part == END:
            self.ends[owner] = (thash, str(doc.get("outcome") or ""))
        else:
            names = doc.get("pods") or []
            was = self.lists.get((owner, part))
            if was is not None and was[0] == thash:
                was[1].update(str(n) for n in names)
            else:
                self.lists[(owner, part)] = (thash, {str(n) for n in names})
            pset = doc.get("set")
            if isinstance(pset, list):
                self.sets[(owner, part)] = (thash, {str(n) for n in pset})
        if not self._apply((owner, part)):
            self._todo.add((owner, part))
        else:
            self._todo.discard((owner, part))

    def _workload(self, owner: str) -> Any:
        kind, _, rest = owner.partition("/")
        ns, _, name = rest.partition("/")
        table = {"DaemonSet": self.fleet.objects.daemonsets,
                 "Deployment": self.fleet.objects.deployments}.get(kind)
        return None if table is None else table.get((ns, name))

    def version_of(self, owner: str) -> int | None:
        """The version (objects bucket revision) of `owner` as this shard has it; None
        if not known."""
        if self._version is None:
            return None
        kind, _, rest = owner.partition("/")
        ns, _, name = rest.partition("/")
        return self._version(kind, (ns, name))

    def _behind(self, key: tuple[str, str]) -> bool:
        """Whether this shard's copy of the workload is older than the one the holder
        ended its rollout at (a scale the objects replica has not brought yet: the end
        applied before it would sync the Deployment's pods to the old count here). Pod
        sets do not wait: this shard applies them whatever its copy says (it does not
        scale such a Deployment itself)."""
        spec = self.specs.get(key)
        if spec is None or self._version is None:
            return False
        here = self.version_of(key[0])
        return here is None or here < spec

    def _apply(self, key: tuple[str, str]) -> bool:
        """Apply one remembered value to this shard's copies; False if the workload
        here is not at that template yet (tried again later)."""
        owner, part = key
        ds = self._workload(owner)
        if ds is None or self._behind(key):
            return False
        rollouts = self.fleet.rollouts
        if part == END:
            got = self.ends.get(owner)
            if got is None:
                return True
            if any(k[0] == owner and k[1] != END and self.lists.get(k, ("",))[0] == got[0]
                   for k in self._todo):
                return False  # its steps first (a maxSurge pod set); not an older
                # rollout's, which wait for a template this shard may never have again
            if rollouts.plan(ds).update.thash != got[0]:
                return False
            if rollouts.adopt(ds, got[0], got[1]):
                self.fleet.commit()
            return True
        thash, names = self.lists[key]
        plan = rollouts.plan(ds)
        if plan.update.thash != thash:
            return False
        ns = ds.metadata.namespace
        pset = self.sets.get(key)
        if pset is not None and pset[0] == thash and isinstance(ds, Deployment):
            n = self._reshape(ds, key, thash, names, pset[1]) if surge_allowed(ds, plan) \
                else 0  # the rollout ended here already: its end made the pods
        else:
            n = rollouts.give(ds, thash, [(ns, name) for name in sorted(names)])
            self.given_here += n
        if n:
            self.fleet.commit()
        return True

    def _reshape(self, dep: Deployment, key: tuple[str, str], thash: str, names: set[str],
                 keep: set[str]) -> int:
        """A maxSurge rollout's pods of one pp made what the holder has: the pods not
        in its set removed, those given the update made (or updated) here, so the
        holder's bindings of its surge pods find them on every shard and each node's
        owner delivers them. Returns how many changed."""
        owner, part = key
        workloads = self.fleet.workloads
        gone = sorted(k for k in workloads.owned_set(owner)
                      if k[1] not in keep and part_of(k[1]) == part)
        for k in gone:
            workloads.delete_pod(k)
        ns = dep.metadata.namespace
        n = self.fleet.rollouts.give(dep, thash, [(ns, name) for name in sorted(names)
                                                  if name in keep], make=True)
        # pods of the set not given the update: a scale on the holder made them at the
        # template its plan gives a new pod (the stable one); the same here
        target = self.fleet.rollouts.plan(dep).target_for(None)
        pods = self.fleet.pods
        for name in sorted(keep - names):
            if (ns, name) not in pods and target is not None:
                workloads.put_pod((ns, name), target.pod(ns=ns, name=name, owner=owner,
                                                         node=None),
                                  None, revision=target.revision)
                n += 1
        if gone:
            self.fleet.plans.dirty.add(owner)
        self.removed_here += len(gone)
        self.made_here += n
        return n + len(gone)

    def _retry(self) -> None:
        for key in sorted(self._todo, key=lambda k: (k[1] == END, k)):  # ends last
            if self._apply(key):
                self._todo.discard(key)

    # -- the holder's writes ------------------------------------------------------------

    def pod_sets(self, owner: str) -> dict[str, list[str]]:
        """pp -> the names of `owner`'s pods there, as this shard has them now."""
        out: dict[str, list[str]] = {}
        for _, name in self.fleet.workloads.owned_set(owner):
            out.setdefault(part_of(name), []).append(name)
        return out

    def value(self, key: tuple[str, str], fence: int,
              sets: dict[str, dict[str, list[str]]] | None = None) -> bytes:
        """The value of `key` to write (`sets`: `pod_sets` of owners, made once for a
        round of writes)."""
        owner, part = key
        if part == END:
            thash, outcome = self.ends[owner]
            doc: dict[str, Any] = {"update": thash, "outcome": outcome}
        else:
            thash, names = self.lists[key]
            doc = {"update": thash, "pods": sorted(names)}
            if self.surging.get(owner) == thash:  # the pod set, as it is now
                if sets is None:
                    sets = {}
                if owner not in sets:
                    sets[owner] = self.pod_sets(owner)
                doc["set"] = sorted(sets[owner].get(part, ()))
        version = self.version_of(owner) if part == END else None
        if version is not None:  # the copy the end was decided from (`_behind`)
            doc["spec"] = version
        doc.update({"by": self.shard, "fence": fence})
        return json.dumps(doc, separators=(",", ":")).encode()

    def _to_write(self) -> bool:
        return bool(self._out)

    async def _write_round(self, fence: int) -> bool:
        """Write the marked keys, BATCH at a time; an owner's end after its steps (a
        shard that reads the end must have read the pod set before it)."""
        assert self.bucket is not None
        batch = sorted(self._out, key=lambda k: (k[1] == END, k))[:BATCH]
        self._out.difference_update(batch)
        failed: list[tuple[str, str]] = []
        sets: dict[str, dict[str, list[str]]] = {}  # once per owner a round
        for keys in ([k for k in batch if k[1] != END],
                     [k for k in batch if k[1] == END]):
            if failed:  # no end written while a step of the round was not
                failed += keys
                continue
            bad = await put_all(self.bucket,
                                [(step_key(*k), self.value(k, fence, sets)) for k in keys],
                                log=log, what="rollout step(s)", shard=self.shard)
            failed += [keys[i] for i in bad]
            self.writes += len(keys) - len(bad)
        self._out.update(failed)
        return not failed


__all__ = ["SharedSteps", "rollouts_bucket", "step_key"]
