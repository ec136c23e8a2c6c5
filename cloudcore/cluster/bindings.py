"""Deployment and bare Pod placement once for the whole fleet (issue 14, proposal 0008:
"the global lease for the global work").

Pods the scheduler places (no `spec.nodeName`: Deployment replicas, bare pods) are
placed by one shard only, the holder of the global lease. It schedules over every node
(all shards know every node through the shared registrations; another shard's node
shows its readiness and allocatable from that shard's status summary) and writes each
binding to KV; every other shard binds its copy of the pod where the binding says and
never schedules such a pod itself. Each shard then derives the desired sets of its own
nodes from its bindings as before, so a pod name (`{deployment}-{i}`, the same on every
shard) runs on exactly one node of the fleet.

Bucket `<prefix>_bindings`, one key per pod `<namespace>.<name>` (escaped as object
keys are), value JSON `{"node", "message": the scheduler's explanation, "by": shard,
"fence": the global lease token}`; an unbind writes `"node": null` (a value, so that it
carries the token too). Pinned pods (DaemonSet pods, `spec.nodeName`) are bound on
each shard by their pin, as before, and never written.

- Every shard watches the bucket (each key's last value, then changes) into `remote`
  (pod -> (node, message)) and, once the watch reported the existing values, makes its
  own bindings of unpinned pods what `remote` says (`reconcile`): a pod bound elsewhere
  moves, one `remote` does not have waits for the holder. Afterwards each change is
  applied as it arrives (by every shard but the holder, whose own bindings are the
  newest), and a pod made here later (its Deployment reached this
  shard's replica after the binding) is bound from `remote` at the next pending retry.
- The holder (`schedules()`: holds the global lease and caught up) binds as a single
  cloudcore does; `Placement` tells it every bind and unbind of an unpinned pod, which
  goes to an outbox written by a task, `BATCH` writes in flight. A pod the holder finds
  pending with a binding in `remote` (placed by a previous holder) is bound there, not
  scheduled again: the new holder resumes from KV.
- On `global_lost` the outbox is dropped (what it held was never written, so no other
  shard acted on it) and this shard's bindings are made what the bucket says again
  (`_kv`): the pods the old holder bound but did not write wait for the next holder,
  which finds them pending and places them.
- Fencing: the token is the revision of the `global` lease key the holder last wrote
  (`Member.global_revision`; KV revisions only grow and each holder takes the key by
  CAS on the last one, so a later holder's token is always greater). A new holder
  writes key `fence` `{"fence", "by"}` before its first binding, and every write
  carries its token; every shard keeps the greatest token seen and refuses a binding
  written under a smaller one (a former holder paused past its lease, writing late),
  and the holder writes its own binding of that pod over it. A late write that lands
  after the new holder took the lease but before its `fence` key was written is taken
  by the other shards for a moment: the holder, which knows its own token, refuses it
  and writes its binding over it at once.

- Drains: a drain through any shard puts the node's shared spec (`NodeSpec` key) with
  a drain mark; every shard remembers the marked nodes (`drain_mark`, `drains`) and the
  holder moves their replicas (`Placement.drain`, then placed and written as any bind),
  at once or when it takes the lease. The draining shard does not follow the old
  bindings back to the node meanwhile (`Placement.drained_here`).

Eviction of replicas off another shard's long-NotReady node goes through these
bindings too: `Eviction.run` on the holder moves them, trusting the node's readiness
only on its live owner's word (`cloudcore.cluster.status.NodeStatuses.trusted`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from cloudcore.cluster.errors import ClusterError
from cloudcore.cluster.fenced import put_all
from cloudcore.cluster.kv import Entry
from cloudcore.cluster.objects import escape, unescape
from cloudcore.cluster.replica import HolderReplica, Task

log = logging.getLogger("cloudcore.cluster.bindings")

Key = tuple[str, str]
BATCH = 64
"""Binding writes in flight at once."""
SLICE = 2_000
"""Pods compared between two yields to the event loop in a reconcile."""
APPLY_SLICE = 1_000
"""Binding changes applied between two yields (about 35 ms of them at 35 us each,
in-process at 20,000 replicas)."""
FENCE_KEY = "fence"
"""The key holding the fencing token of the latest holder, `{"fence", "by"}`."""


def bindings_bucket(prefix: str) -> str:
    return f"{prefix}_bindings"


def binding_key(key: Key) -> str:
    return f"{escape(key[0])}.{escape(key[1])}"


def parse_binding_key(text: str) -> Key:
    ns, name = text.split(".")
    return unescape(ns), unescape(name)


class Bindings(HolderReplica):
    """The placement shared by shards (module docstring); `Placement.shared`."""

    NAME = "bindings"
    NOUN = "binding"
    APPLY_SLICE = APPLY_SLICE
    log = log

    def __init__(self, fleet: Any, *, shard: str, holds_global: Callable[[], bool],
                 fence: Callable[[], int | None]) -> None:
        super().__init__(fleet, shard=shard, holds_global=holds_global, fence=fence)
        self._acquired_fence: int | None = None
        self._announced = 0
        self.remote: dict[Key, tuple[str, str]] = {}
        """pod -> (node, message) as the bucket says (the holder's own writes included
        as soon as it makes them)."""
        self._kv: dict[Key, tuple[str, str]] = {}
        """What the bucket says, as far as the watch delivered it (in revision order)."""
        self._out: dict[Key, tuple[str, str] | None] = {}
        self._inflight: set[Key] = set()
        self.drains: set[str] = set()
        """Nodes drained through some shard and still cordoned (`drain_mark`)."""
        self.applied = 0
        """Changes of the bucket (by another shard) applied to this shard's bindings."""
        fleet.placement.shared = self

    # -- Placement.shared ---------------------------------------------------------------

    def schedules(self) -> bool:
        return self.decides()

    def binding(self, key: Key) -> tuple[str, str] | None:
        return self.remote.get(key)

    def bound(self, key: Key, node: str, message: str) -> None:
        if not self.schedules():
            return
        was = self.remote.get(key)
        if was is not None and was[0] == node:
            return  # adopted from the bucket: already written
        self.remote[key] = (node, message)
        self._out[key] = (node, message)
        self._wake.set()

    def unbound(self, key: Key) -> None:
        if not self.schedules() or key not in self.remote:
            return
        del self.remote[key]
        self._out[key] = None
        self._wake.set()

    def drain_mark(self, node: str, marked: bool) -> None:
        """A node's shared spec (`NodeSpec` key) arrived, drained (`marked`: drained
        through some shard and still cordoned) or not. The holder moves the node's
        replicas at once; the mark is kept so that a later holder does too."""
        if not marked:
            self.drains.discard(node)
            return
        self.drains.add(node)
        if self.schedules():
            self._drain(node)

    def _drain(self, node: str) -> None:
        placement = self.fleet.placement
        if node not in self.fleet.objects.nodes:
            return
        moved, _ = placement.drain(node)
        if moved:
            log.info("shard %s: %d replica(s) moved off %s, drained through a shard",
                     self.shard, len(moved), node)
            self._commit.set()  # the commit places them elsewhere (and writes them)

    # -- the lease ----------------------------------------------------------------------

    async def global_changed(self, held: bool) -> None:
        """The shard took (`held`) or lost the global lease."""
        self._acquired_fence = self._fence() if held else None
        self._wake.set()  # a new holder announces its fencing token at once
        if held:
            log.info("shard %s: places Deployment replicas and bare pods for the fleet "
                     "(%d bindings in the shared store)", self.shard, len(self.remote))
            if self.schedules():
                for node in sorted(self.drains):  # drains a former holder may have missed
                    self._drain(node)
        else:
            dropped = len(self._out)
            for key in [*self._out, *self._inflight]:  # back to what the bucket says
                was = self._kv.get(key)
                if was is None:
                    self.remote.pop(key, None)
                else:
                    self.remote[key] = was
            self._out.clear()
            if dropped:
                log.warning("shard %s: global lease lost with %d binding(s) not written; "
                            "the next holder places those pods", self.shard, dropped)
            await self.reconcile()
        self._commit.set()

    # -- the replica --------------------------------------------------------------------

    def bucket_name(self, prefix: str) -> str:
        return bindings_bucket(prefix)

    def _tasks(self) -> list[Task]:
        return [("writer", self._writer), ("commit", self._committer)]

    async def _caught_up(self) -> None:
        await self.reconcile()
        self.caught_up = True
        if self.schedules():
            for node in sorted(self.drains):
                self._drain(node)
        self._commit.set()
        log.info("shard %s: pod bindings replica caught up (%d bindings)", self.shard,
                 len(self.remote))

    def apply_entry(self, e: Entry) -> None:
        """One change of the bucket: remembered, and applied to this shard's binding of
        the pod unless this shard has a newer one of its own to write."""
        if e.key == FENCE_KEY:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.max_fence = max(self.max_fence, int(json.loads(e.value)["fence"]))
            return
        try:
            key = parse_binding_key(e.key)
        except ValueError:
            log.warning("shard %s: %r is not a binding key; ignored", self.shard, e.key)
            return
        node: str | None = None
        if not e.deleted:  # a delete or purge by hand: no token to check
            try:
                doc = json.loads(e.value)
                node = None if doc["node"] is None else str(doc["node"])
                fence = int(doc.get("fence") or 0)
            except (ValueError, KeyError, TypeError):
                self._unreadable(e)
                return
            own = (self._acquired_fence or 0) if self.schedules() else None
            if not self._accepts(e, fence, own=own):
                self._rewrite(key)
                return
        if node is None:
            self._kv.pop(key, None)
        else:
            self._kv[key] = (node, str(doc.get("message") or ""))
        if self.schedules() or key in self._out or key in self._inflight:
            # the holder's own bindings are the newest (a previous holder wrote its
            # last ones a lease period before this one took over)
            return
        if node is None:
            if self.remote.pop(key, None) is None:
                return
        else:
            self.remote[key] = self._kv[key]
        if self.caught_up and self._follow(key):
            self.applied += 1
            self._commit.set()

    def _rewrite(self, key: Key) -> None:
        """A binding refused for its fencing token (`_accepts`: a former holder's late
        write, not applied): the holder writes its own binding of that pod over it, so
        the bucket heals."""
        if self.schedules() and key not in self._out and key not in self._inflight:
            self._out[key] = self.remote.get(key)
            self._wake.set()

    def _follow(self, key: Key) -> bool:
        """Make this shard's binding of `key` what `remote` says; True if it changed."""
        placement = self.fleet.placement
        pod = self.fleet.objects.pods.get(key)
        if pod is None or pod.spec.node_name is not None:
            return False
        want = self.remote.get(key)
        cur = placement.node_of(key)
        if want is not None and (want[0] not in self.fleet.objects.nodes
                                 or placement.drained_here(want[0])):
            want = None  # a node this shard does not know (yet), or drained here: wait
        if want is None:
            if cur is None:
                return False
            placement.unbind(key)
            placement.queue(key)
            return True
        if cur == want[0]:
            return False
        if cur is not None:
            placement.unbind(key)
        placement.bind(key, want[0], want[1])
        return True

    async def reconcile(self) -> int:
        """Make every binding of an unpinned pod here what `remote` says (the pods the
        bucket has but this shard has pending are bound at the next retry). Returns how
        many changed."""
        placement = self.fleet.placement
        changed = 0
        for i, key in enumerate([*placement.bound, *self.remote], 1):
            if i % SLICE == 0:
                await asyncio.sleep(0)
            if self._follow(key):
                changed += 1
        if changed:
            log.info("shard %s: %d pod binding(s) made what the shared store says",
                     self.shard, changed)
        return changed

    def _commit_now(self) -> None:
        """Commit (pending retry, desired sets) after changes applied from the bucket or
        a lease change."""
        if self.fleet.commit():
            self.fleet.workloads.wake()

    def _to_write(self) -> bool:
        return bool(self._out) or self._announce_due()

    async def _write_round(self, fence: int) -> bool:
        if self._announce_due() and not await self._announce():
            return False
        batch = list(self._out.items())[:BATCH]
        for key, _ in batch:
            del self._out[key]
        self._inflight = {k for k, _ in batch}
        try:
            failed = await self._write(batch, fence)
        finally:
            self._inflight = set()
        for key, value in failed:
            self._out.setdefault(key, value)
        return not failed

    def _announce_due(self) -> bool:
        return self._acquired_fence is not None and self._announced < self._acquired_fence

    async def _announce(self) -> bool:
        """Write this holder's fencing token (key `fence`) before its first binding:
        from then on every shard refuses a former holder's late writes."""
        assert self.bucket is not None and self._acquired_fence is not None
        fence = self._acquired_fence
        try:
            await self.bucket.put(FENCE_KEY, json.dumps(
                {"fence": fence, "by": self.shard}, separators=(",", ":")).encode())
        except ClusterError as exc:
            log.warning("shard %s: global lease token not announced yet: %s", self.shard,
                        exc)
            return False
        self._announced = fence
        self.max_fence = max(self.max_fence, fence)
        return True

    async def _write(self, batch: list[tuple[Key, tuple[str, str] | None]], fence: int
                     ) -> list[tuple[Key, tuple[str, str] | None]]:
        assert self.bucket is not None

        def value(v: tuple[str, str] | None) -> bytes:
            # an unbind is a value without a node, not a delete: it carries the token
            node, message = v if v is not None else (None, "")
            return json.dumps({"node": node, "message": message, "by": self.shard,
                               "fence": fence}, separators=(",", ":")).encode()

        bad = await put_all(self.bucket, [(binding_key(k), value(v)) for k, v in batch],
                            log=log, what="pod binding(s)", shard=self.shard)
        self.writes += len(batch) - len(bad)
        return [batch[i] for i in bad]


__all__ = ["Bindings", "binding_key", "bindings_bucket", "parse_binding_key"]
