"""Node status summaries shared by the shards (issue 14 part 2, proposal 0008 wiring
step 5), so that any shard lists every node with its status.

What it owns: the keys `node.<name>` of the `<prefix>_status` bucket (default
`edgefed_status`; the shard runtime's `liveness.<pp>` keys live beside them and are not
touched here). `<name>` is escaped as object keys are (`cloudcore.cluster.objects.escape`).

- The owning shard writes, every `interval` seconds, the summaries of its own nodes
  (those of the partitions it holds) that changed since it last wrote them: readiness,
  reason, last report time, agent version and `agentUpgrade` report (the holder's
  AgentUpgrade gates), desired and acked gen, allocatable (what
  the shard placing Deployment replicas needs of another shard's node). The time of the last
  report alone changing is written at most every `seen_every` seconds, so a settled
  fleet costs one write per node per `seen_every`, not per heartbeat. Writes go out
  `BATCH` at a time, in flight together.
- Every shard watches `node.>` and sets the status of each node it does *not* own from
  the summary (readiness, last report time, agent version, gens; reason
  `OwnedByAnotherShard`, or `OwnedByAnotherShard (<owner's reason>)`), announced as a
  change (`Objects.changed`: lists, gets and watches of nodes show it) but never written
  to the shard's own store. A node this shard owns is never overwritten from a summary.

- The summary also carries the node's pods' reported statuses (`pods`: `ns/name` ->
  the status as its agent reported it; written when one changes, statuses being
  replaced on each report). Every shard sets its copies of those pods from it and tells
  its rollouts, so the holder of the global lease gates rollouts on every shard's pods
  (`cloudcore.cluster.rollouts`).
- A readiness change of another shard's node starts or stops its NotReady clock here
  (`Eviction.observe`); the holder's eviction acts on it only while the summary's
  writer holds the node's partition lease and is alive (`trusted`): while the owner is
  dead or the partition is being taken over the clock starts again, so it counts from
  the new owner's word.

- Fencing: with `fence` (`Shard.partition_fence`), each summary carries its partition
  lease's revision (`fence`), and a node whose partition this shard holds no more (or
  whose lease is past its deadline) is not written. A reader keeps the greatest fence
  it has seen per partition and refuses a summary with a smaller one (`fenced`): a
  former owner that was paused past its lease and writes late does not overwrite the
  new owner's word on the other shards. A summary without `fence` (a shard of an
  earlier version) is taken as before.

Only nodes the shard knows are shown (node registrations are not global yet: a node
that joined through another shard after this one started is not listed here).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from cloudcore.cluster.errors import ClusterError
from cloudcore.cluster.kv import KV, Bucket, Entry
from cloudcore.cluster.objects import escape, unescape
from cloudcore.fleet.objects import share_fields_set
from shared import topics
from shared.models import PodStatus

Key = tuple[str, str]

log = logging.getLogger("cloudcore.cluster.status")

NODE_KEY = "node.{name}"
AWAY_REASON = "OwnedByAnotherShard"
BATCH = 64
"""Summary writes in flight at once."""
SLICE = 2_000
"""Nodes compared between two yields to the event loop."""
DOC_SLICE = 200
"""Summaries made, or read, between two yields (each holds the node's pod statuses:
about 20 us to make, 29 us to read at 20,000 nodes, load average 4.5)."""


SHAPES = 10_000
"""Distinct allocatable dicts shared at most (`NodeStatuses._shape`); then it starts
over."""
_READY = {r: r for r in ("Ready", "NotReady", "Unknown")}
"""A summary's readiness as one string object each."""
_INTERNED: dict[str, str] = {}
"""Shard names and shown reasons, one string object each (few; see `_interned`)."""


class Foreign(NamedTuple):
    """The last summary read of a node owned by another shard (`NodeStatuses.foreign`)."""

    writer: str | None
    """The shard that wrote it."""
    ready: str | None
    """Its readiness ("Ready", "NotReady", "Unknown"; None if none)."""
    value: bytes
    """The summary as read (JSON)."""


def _interned(text: str) -> str:
    """`text` as one object for all its equal copies (shard names, reasons: few; a
    flood of distinct ones is not kept past 1,000)."""
    got = _INTERNED.get(text)
    if got is None:
        if len(_INTERNED) >= 1000:
            return text
        got = _INTERNED[text] = text
    return got


def _document(value: bytes) -> dict[str, Any] | None:
    """A summary decoded, or None if it is not a JSON object."""
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def node_key(name: str) -> str:
    return NODE_KEY.format(name=escape(name))


class NodeStatuses:
    """Writer of this shard's nodes' summaries and reader of the others' (module
    docstring). `owns(partition)` says whether this shard holds a partition."""

    def __init__(self, fleet: Any, *, shard: str, owns: Callable[[int], bool],
                 holder: Callable[[int], str | None] | None = None,
                 fence: Callable[[int], int | None] | None = None,
                 interval: float = 2.0, seen_every: float = 15.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.fleet = fleet
        self.shard = shard
        self.owns = owns
        self.holder = holder
        """partition -> the live shard holding its lease, or None (`Shard.partition_holder`);
        without it a summary's writer is taken as the live owner."""
        self.fence = fence
        """partition -> this shard's fencing token for it, None when not held
        (`Shard.partition_fence`); without it summaries go out unfenced (tests)."""
        self._max_fence: dict[int, int] = {}
        """partition -> the greatest fence read in another shard's summary of it."""
        self.fenced = 0
        """Summaries refused as written by a former owner after a later one."""
        self._fenced_logged = 0.0
        fleet.eviction.trusted = self.trusted
        self.interval = interval
        self.seen_every = seen_every
        self.wall = wall
        self.bucket: Bucket | None = None
        self._written: dict[str, tuple[Any, ...]] = {}
        self.writes = 0
        self.shown = 0
        self._pod_seen: dict[str, dict[str, str]] = {}
        """node -> pod -> the status last applied from its owner's summary, as compact
        JSON (compared, never read back: a string of ~150 bytes where the decoded dicts
        took ~1.6 KB a pod, issue 14)."""
        self.pods_shown = 0
        self.foreign: dict[str, Foreign] = {}
        """node -> the last summary read for a node owned by another shard: its writer,
        its readiness and the summary as read (bytes: decoded again only when the node
        is just lost here and shown as its owner says; the decoded document took ~2.6 KB
        a node, kept for the two thirds of the fleet a shard does not own, issue 14)."""
        self._shapes: dict[tuple[tuple[str, int], ...], dict[str, int]] = {}
        """Allocatable dicts of other shards' nodes by content: nodes of one hardware
        shape share one (replaced on a change, never edited in place)."""

    async def run(self, kv: KV, bucket: str, *, replicas: int = 1) -> None:
        self.bucket = await kv.bucket(bucket, create=True, replicas=replicas)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_loop(), name=f"cloudcore[{self.shard}].node-status")
            watch = await self.bucket.watch("node.>")
            try:
                n = 0
                async for e in watch:
                    self.show(e)
                    n += 1
                    if n % DOC_SLICE == 0:  # a burst (a catch-up, a takeover's round)
                        await asyncio.sleep(0)
            finally:
                await watch.stop()

    # -- the owner's side ---------------------------------------------------------------

    def _state(self, node: Any) -> tuple[Any, ...]:
        """What a summary says of the node, to compare with what was written. The
        allocatable is the node's own dict (nodes of one shape share one, replaced on a
        change, never edited in place: `Nodes.status`), not a sorted copy: ~210 bytes a
        node fewer (issue 14)."""
        st = node.status
        seen = st.last_seen
        bucket = int(seen // self.seen_every) if seen is not None else None
        return (st.ready, st.reason, bucket, st.agent_version,
                dict(st.agent_upgrade) if st.agent_upgrade else None, st.desired_gen,
                st.acked_gen, st.allocatable or None, self._pod_ids(node.metadata.name))

    def _reported(self, name: str) -> list[tuple[Key, Any]]:
        """The pods bound to node `name` with a status its agent reported."""
        pods = self.fleet.objects.pods
        out = []
        for key in self.fleet.placement.on_node(name):
            pod = pods.get(key)
            if pod is not None and pod.status.node_name == name \
                    and pod.status.revision is not None:
                out.append((key, pod))
        return out

    def _pod_ids(self, name: str) -> tuple[tuple[Key, int], ...]:
        """Which reported statuses the node's pods have (statuses are replaced on each
        report, never edited in place: their identity says whether one changed)."""
        return tuple(sorted((k, id(p.status)) for k, p in self._reported(name)))

    async def changed_summaries(self) -> dict[str, bytes]:
        """The summaries of this shard's nodes that changed since written last (the
        loop yields every SLICE nodes: no pass holds the event loop long)."""
        out: dict[str, bytes] = {}
        nodes = self.fleet.objects.nodes
        for i, name in enumerate(list(nodes), 1):
            if i % SLICE == 0:
                await asyncio.sleep(0)
            node = nodes.get(name)
            if node is None:
                continue
            if not self.owns(topics.partition_of(name)):
                self._written.pop(name, None)  # written again when it comes back
                was = self.foreign.get(name)
                if (was is not None and was.ready in ("Ready", "NotReady")
                        and node.status.reason == AWAY_REASON
                        and node.status.ready == "Unknown"
                        and not self._mine(topics.partition_of(name))):
                    doc = _document(was.value)
                    if doc is not None:  # just lost: the owner's view again
                        self._overlay(name, node, doc)
                continue
            state = self._state(node)
            if self._written.get(name) == state:
                continue
            fence = None
            if self.fence is not None:
                fence = self.fence(topics.partition_of(name))
                if fence is None:
                    continue  # the lease is past its deadline: not ours to write now
            st = node.status
            if len(out) % DOC_SLICE == DOC_SLICE - 1:
                await asyncio.sleep(0)
            out[name] = json.dumps({
                "shard": self.shard, "fence": fence, "ready": st.ready, "reason": st.reason,
                "lastSeen": st.last_seen, "agentVersion": st.agent_version,
                "agentUpgrade": st.agent_upgrade,
                "desiredGen": st.desired_gen, "ackedGen": st.acked_gen,
                "allocatable": dict(st.allocatable or {}), "at": self.wall(),
                "pods": {f"{k[0]}/{k[1]}": p.status.model_dump(
                    mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
                    for k, p in self._reported(name)}},
                separators=(",", ":")).encode()
            self._written[name] = state
        return out

    async def _write_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.write_changed()

    async def write_changed(self) -> int:
        assert self.bucket is not None
        todo = list((await self.changed_summaries()).items())
        done = 0
        for i in range(0, len(todo), BATCH):
            chunk = todo[i:i + BATCH]
            if self.fence is not None:  # a partition lost while the batches went out
                gone = [n for n, _ in chunk if self.fence(topics.partition_of(n)) is None]
                for name in gone:
                    self._written.pop(name, None)
                if gone:
                    skip = set(gone)
                    chunk = [(n, v) for n, v in chunk if n not in skip]
            got = await asyncio.gather(*(self.bucket.put(node_key(n), v) for n, v in chunk),
                                       return_exceptions=True)
            for (name, _), r in zip(chunk, got, strict=True):
                if isinstance(r, BaseException):
                    self._written.pop(name, None)  # try again next round
                    if not isinstance(r, ClusterError):
                        raise r
                else:
                    done += 1
            failed = [r for r in got if isinstance(r, ClusterError)]
            if failed:
                log.warning("shard %s: %d node status summaries not written: %s",
                            self.shard, len(failed), failed[0])
                break
        self.writes += done
        return done

    # -- the others' side ---------------------------------------------------------------

    def show(self, e: Entry) -> None:
        """Set a node's status from another shard's summary (not for own nodes)."""
        name = unescape(e.key.partition(".")[2])
        if e.deleted:
            self.foreign.pop(name, None)
            self._pod_seen.pop(name, None)
            return
        doc = _document(e.value)
        if doc is None:
            log.warning("shard %s: unreadable status summary %s", self.shard, e.key)
            return
        writer = doc.get("shard")
        if writer == self.shard:
            return
        fence = doc.get("fence")
        if isinstance(fence, int) and not isinstance(fence, bool):
            p = topics.partition_of(name)
            if fence < self._max_fence.get(p, 0):
                self.fenced += 1
                if self.fenced == 1 or time.monotonic() - self._fenced_logged >= 60:
                    self._fenced_logged = time.monotonic()
                    log.warning("shard %s: status summary of %s by %s refused: fence %d, "
                                "a later owner's was %d (%d refused so far)", self.shard,
                                name, writer, fence, self._max_fence[p], self.fenced)
                return
            self._max_fence[p] = fence
        ready = doc.get("ready")
        self.foreign[name] = Foreign(
            writer=_interned(writer) if isinstance(writer, str) else None,
            ready=_READY.get(ready) if isinstance(ready, str) else None, value=e.value)
        node = self.fleet.objects.nodes.get(name)
        if node is None or self._mine(topics.partition_of(name)):
            return
        self._overlay(name, node, doc)

    def _mine(self, p: int) -> bool:
        """Whether partition `p` is this shard's or being taken over by it (its lease is
        ours, the takeover has not ended): another shard's summary of its nodes is then an
        old word, not to be shown. Shown during a takeover, it stayed on the node for good
        (`OwnedByAnotherShard (...)` on the owner itself, which then wrote it into its own
        summary: 4,241 nodes in the 100,000-node shard kill, issue 14)."""
        return self.owns(p) or (self.holder is not None and self.holder(p) == self.shard)

    def _pods(self, node: str, pods: dict[str, Any]) -> None:
        """The owner's reported pod statuses of `node`: set on this shard's copies of
        the pods bound there (announced, not stored), and told to the rollouts as a
        report (`RolloutPlans.pod_reported`): the holder's gates see every shard's pods."""
        seen = self._pod_seen.get(node)
        if seen is None:
            if not pods:
                return
            seen = self._pod_seen[node] = {}
        table, placement = self.fleet.objects.pods, self.fleet.placement
        for ref, value in pods.items():
            compact = json.dumps(value, separators=(",", ":"))
            if seen.get(ref) == compact:
                continue
            ns, _, pname = ref.partition("/")
            key = (ns, pname)
            pod = table.get(key)
            if pod is None or placement.node_of(key) != node or not isinstance(value, dict):
                continue
            try:
                status = PodStatus.model_validate(value)
            except ValueError:
                log.warning("shard %s: unreadable status of pod %s in the summary of %s",
                            self.shard, ref, node)
                continue
            status.node_name = node
            share_fields_set(status)  # as a reported status (`Objects.save`): ~670 B a pod
            seen[ref] = compact
            pod.status = status
            self.pods_shown += 1
            self.fleet.objects.changed("Pod", key)
            self.fleet.plans.pod_reported(key, pod)
        for ref in [r for r in seen if r not in pods]:
            del seen[ref]
        if not seen:
            del self._pod_seen[node]

    def trusted(self, name: str) -> bool:
        """Whether this shard may act on node `name`'s readiness now (the eviction of
        its replicas, `Eviction.trusted`): its own node, or one whose summary was
        written by the shard that holds the node's partition lease and is alive. While
        the owner is dead or its partition is being taken over, the summary is an old
        word: the node's NotReady clock starts again once the new owner speaks."""
        p = topics.partition_of(name)
        if self.owns(p):
            return True
        was = self.foreign.get(name)
        if was is None:
            return False
        writer = was.writer
        return writer is not None and (self.holder is None or self.holder(p) == writer)

    def _shape(self, alloc: dict[str, int]) -> dict[str, int]:
        """An allocatable dict, shared with every other shard's node showing the same."""
        items = tuple((str(k), v) for k, v in alloc.items())
        shape = self._shapes.get(items)
        if shape is None:
            if len(self._shapes) >= SHAPES:  # shapes are few; a flood of them is not kept
                self._shapes.clear()
            shape = self._shapes[items] = dict(items)
        return shape

    def _overlay(self, name: str, node: Any, doc: dict[str, Any]) -> None:
        st = node.status
        ready = doc.get("ready")
        if ready in ("Ready", "NotReady", "Unknown"):
            if ready != st.ready or (ready == "NotReady" and
                                     self.fleet.eviction.not_ready_since(name) is None):
                # every shard keeps every node's NotReady clock; the holder of the
                # global lease moves the replicas off (`Eviction.run`, `trusted`)
                self.fleet.eviction.observe(name, ready)
            st.ready = ready
        reason = doc.get("reason")
        st.reason = AWAY_REASON if not reason or reason == AWAY_REASON \
            else _interned(f"{AWAY_REASON} ({reason})")
        if isinstance(doc.get("lastSeen"), int | float):
            st.last_seen = float(doc["lastSeen"])
        if isinstance(doc.get("agentVersion"), str):
            st.agent_version = doc["agentVersion"]
        if "agentUpgrade" in doc:  # how its last upgrade went: the holder's upgrade gates
            up = doc["agentUpgrade"]
            st.agent_upgrade = up if isinstance(up, dict) else None
        alloc = doc.get("allocatable")
        if isinstance(alloc, dict) and alloc and all(
                isinstance(v, int) for v in alloc.values()):
            st.allocatable = self._shape(alloc)  # the global placement
        for field, attr in (("desiredGen", "desired_gen"), ("ackedGen", "acked_gen")):
            if isinstance(doc.get(field), int):
                setattr(st, attr, doc[field])
        pods = doc.get("pods")
        if isinstance(pods, dict):
            self._pods(name, pods)
        self.shown += 1
        self.fleet.upgrades.node_changed(name)  # readiness, agent version: upgrade gates
        self.fleet.objects.changed("Node", name)


async def run_shared(kv_settings: Any, objects: Any, statuses: NodeStatuses, *,
                     status_bucket: str, replicas: int = 1, bindings: Any = None,
                     brokermap: Any = None, identities: Any = None,
                     rollouts: Any = None, upgrades: Any = None, forecasts: Any = None,
                     prefix: str = "edgefed") -> None:
    """A shard's shared state beside its leases, on its own NATS connection: the global
    objects replica (`cloudcore.cluster.objects.ClusterObjects`), the node status
    summaries, the pod bindings (`cloudcore.cluster.bindings`), the rollout steps
    (`cloudcore.cluster.rollouts`), the agent upgrade batches
    (`cloudcore.cluster.upgrades`), the shared node forecasts
    (`cloudcore.cluster.forecasts`), the broker map
    (`cloudcore.cluster.brokermap`) and the shards' broker users
    (`cloudcore.cluster.identities`), until cancelled."""
    async with KV(kv_settings) as kv, asyncio.TaskGroup() as tg:
        tg.create_task(objects.run(kv), name=f"cloudcore[{statuses.shard}].objects")
        if bindings is not None:
            tg.create_task(bindings.run(kv, prefix=prefix, replicas=replicas),
                           name=f"cloudcore[{statuses.shard}].bindings")
        if rollouts is not None:
            tg.create_task(rollouts.run(kv, prefix=prefix, replicas=replicas),
                           name=f"cloudcore[{statuses.shard}].rollouts")
        if upgrades is not None:
            tg.create_task(upgrades.run(kv, prefix=prefix, replicas=replicas),
                           name=f"cloudcore[{statuses.shard}].upgrades")
        if forecasts is not None:
            tg.create_task(forecasts.run(kv, prefix=prefix, replicas=replicas),
                           name=f"cloudcore[{statuses.shard}].forecasts")
        if brokermap is not None:
            tg.create_task(brokermap.run(kv, prefix=prefix, replicas=replicas),
                           name=f"cloudcore[{statuses.shard}].brokermap")
        if identities is not None:
            tg.create_task(identities.run(kv, prefix=prefix, replicas=replicas),
                           name=f"cloudcore[{statuses.shard}].broker-users")
        tg.create_task(statuses.run(kv, status_bucket, replicas=replicas),
                       name=f"cloudcore[{statuses.shard}].statuses")
__all__ = ["AWAY_REASON", "NODE_KEY", "NodeStatuses", "node_key", "run_shared"]
