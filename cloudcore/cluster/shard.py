"""The shard runtime (issue 14, proposal 0008 wiring steps 1, 3 and 4): what a
`cloudcore --shard NAME` process does with the leases its `Member` holds.

The service builds one `Shard` over the fleet, the sync hub and the broker links, and
runs it in its task group (`cloudcore[NAME].cluster`). The shard:

- gates the hub (`SyncHub.owns`): a message of a node in a partition it does not hold
  is dropped, nothing is sent to such a node;
- on `acquired` (after the lease CAS succeeded): gives each node of the partition a new
  epoch (its desired set, recomputed from the objects this shard holds, goes out as one
  snapshot, then deltas) and starts its liveness from the previous owner's summary in
  KV, in slices of `SLICE` nodes; then opens the gate and subscribes the partition's
  `up` and `will` filters on every broker: the partition is held from here, and the
  change is announced. After that (a tail the next change waits for) it sends each
  taken node its snapshot, paced by the hub's publish queue limit (not at the node's
  next report);
- on `lost` (announced before the release): takes the gate down first, unsubscribes
  (waiting for the brokers' answer, bounded), forgets the nodes' delivery state and
  liveness, and drops their report seqs and acked gens from its LMDB; the nodes read
  `Unknown` (`OwnedByAnotherShard`) in this shard's API;
- writes, every `status_interval`, one liveness summary per partition it holds into
  the `<prefix>_status` bucket, key `liveness.<pp>`: `{"shard", "instance", "fence",
  "at": unix time, "nodes": {node: [readiness, last_seen unix time or null]}}`. The
  write is a compare-and-set on the key's revision this shard last read or wrote, and
  `fence` is the partition lease's revision (`partition_fence`): a former owner that
  was paused past its lease and writes late finds the key moved, reads a greater fence
  there and stops (`liveness_fenced`); an owner that finds a smaller one (such a late
  write that landed first) writes over it at once (`liveness_healed`). A shard taking the
  partition over starts each node as it was last known there (Ready stays Ready, its
  NotReady deadline counted from that last_seen), so a takeover within the heartbeat
  window flaps no node to NotReady. Wall clocks of the shards are compared here (NTP);
  a node not in the summary starts `Unknown` with a full window, as after a restart;
- runs the global work only while it holds the `global` lease: the part of the
  liveness tick that moves rollouts, agent upgrades and evictions
  (`GatedNodes.expire`); on `global_lost` they stop before the lease is released. The
  forecaster runs on every shard, over its own nodes, and the shards share their
  partitions' forecasts (`cloudcore.cluster.forecasts`, fenced by `partition_fence`).

Deployment and bare Pod placement behind the global lease is
`cloudcore.cluster.bindings` (told of lease changes through `on_global`), staged
rollouts `cloudcore.cluster.rollouts`. The node status summaries are fenced by the
same token (`cloudcore.cluster.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cloudcore.cluster.errors import CASConflict, ClusterError
from cloudcore.cluster.kv import KV, Bucket
from cloudcore.cluster.leases import Change, LeaseSettings, Member
from cloudcore.fleet.naming import HEARTBEAT
from shared import topics
from shared.delta import new_epoch

log = logging.getLogger("cloudcore.cluster.shard")

UNSUBSCRIBE_WAIT = 3.0
"""Seconds a loss waits for the brokers to confirm the unsubscription before it lets
the release go on (the gate already drops the partition's messages)."""
STATUS_KEY = "liveness.{pp}"
SLICE = 1000
"""Nodes handled between two yields to the event loop in a takeover or a loss (5-15 ms
of the loop: `testbed.bench_shard`, "Shard takeover cost" in docs/benchmarks.md). On a
saturated loop (the 100,000-node runs: turns of 100-200 ms) a takeover's wall time is
about its yields times the turn, not its own work (~35 us a node): 250 made 200 yields
of 50,000 nodes, and the takeover took minutes (issue 14)."""
PUSH_SLICE = 400
"""Snapshots built, sealed and queued between two yields when taken nodes get their sets
(~12 ms at ~30 us each, the budget the workload expansion slices aim at)."""
QUEUE_SLICE = 5000
"""Nodes put in the hub's deferred queue between two yields when the hub builds no
snapshot now (its publish queue is full): a microsecond or two each."""
SCAN_SLICE = 20000
"""Node names looked at between two yields when the nodes of partitions are listed
(~0.4 us each)."""
SUMMARY_READS = 32
"""Liveness summaries read from KV at once in a takeover."""
TAKEOVER_REASON = "ShardTakeover"
AWAY_REASON = "OwnedByAnotherShard"

Filters = Callable[[list[str]], Awaitable[None]]


def partition_filters(partitions: list[int]) -> list[str]:
    """The `up` and `will` filters of these partitions."""
    out: list[str] = []
    for p in sorted(partitions):
        out += [topics.up_filter(p), topics.will_filter(p)]
    return out


def status_bucket(prefix: str) -> str:
    return f"{prefix}_status"


class Shard:
    """One shard's use of its leases (module docstring)."""

    def __init__(self, *, name: str, fleet: Any, hub: Any, subscribe: Filters,
                 unsubscribe: Filters, lease: LeaseSettings, status_interval: float,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 drop_queued: Callable[[set[int]], int] | None = None) -> None:
        self.name = name
        self._drop_queued = drop_queued
        """Takes what the publishers queued for these partitions' nodes out of their
        queues (`BrokerLinks.drop_queued`), at a loss."""
        self.fleet = fleet
        self.hub = hub
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self.lease = lease
        self.status_interval = status_interval
        self.clock = clock
        self.wall = wall
        self.owned: set[int] = set()
        self.holds_global = False
        self.member: Member | None = None
        self._status: Bucket | None = None
        self._gated: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self.on_global: list[Callable[[bool], Awaitable[None]]] = []
        """Called with True after the global lease was taken, with False after it was
        lost and before it is released (`cloudcore.cluster.bindings`)."""
        self._running: list[asyncio.Task[None]] = []
        self._tg: asyncio.TaskGroup | None = None
        self._forgetting: asyncio.Task[None] | None = None
        """The tail of the last change, run after it was announced: a loss's per-node
        forgetting (`_forget`, after the leases were let go) or an acquisition's
        snapshot push (`_push_tail`, after the partitions were opened); the next change
        waits for it."""
        self.takeovers = 0
        """Nodes started from a previous owner's summary (Ready or NotReady as there)."""
        self._liveness_rev: dict[int, int] = {}
        """partition -> the revision of its liveness key as this shard last read or
        wrote it (0: absent): the next write is a compare-and-set on it."""
        self.liveness_fenced = 0
        """Liveness writes given up because a later owner wrote the key (this shard's
        lease is gone, whatever its clock says)."""
        self.liveness_healed = 0
        """Liveness keys written over at once because a former owner had written them
        late (a smaller fence)."""
        self.last_takeover: dict[str, float] = {}
        """The last acquisition's partitions, nodes, wall times (s: in all; listed_s:
        summaries read and nodes listed; prepared_s: epochs, statuses, liveness;
        subscribed_s; pushed_s), yields to the loop and the longest stretch between two
        in the preparation (yields, longest_slice_s) and the push (push_yields,
        longest_push_slice_s); its log line says the same."""
        self.last_loss: dict[str, float] = {}
        """The same of the last loss (s, unsubscribed_s, forgotten_s, yields,
        longest_slice_s)."""
        hub.owns = self.owns

    def global_fence(self) -> int | None:
        """The global lease's fencing token while this shard holds it
        (`Member.global_revision`)."""
        return self.member.global_revision if self.member is not None else None

    def partition_fence(self, partition: int) -> int | None:
        """Partition `partition`'s lease revision while this shard holds it (its fencing
        token, `Member.partition_revision`; `cloudcore.cluster.forecasts`)."""
        if partition not in self.owned or self.member is None:
            return None
        return self.member.partition_revision(partition)

    def instance(self) -> str | None:
        """This process's member instance (None before it joined)."""
        return self.member.instance if self.member is not None else None

    def owns(self, partition: int) -> bool:
        return partition in self.owned

    def partition_holder(self, partition: int) -> str | None:
        """The shard holding `partition` and alive, as the leases show it (None: free,
        expired, being taken over; `Member.partition_holder`)."""
        if partition in self.owned:
            return self.name
        return self.member.partition_holder(partition) if self.member is not None else None

    def filters(self) -> list[str]:
        """What a (re)connecting subscriber subscribes: the partitions held now."""
        return partition_filters(list(self.owned))

    def gated(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run `factory()` as task `name` only while this shard holds the global lease."""
        self._gated.append((name, factory))

    # -- the service's task -------------------------------------------------------------

    async def run(self, kv: KV) -> None:
        """Join, hold leases and act on them until cancelled (then every lease is
        announced lost and released)."""
        self._status = await kv.bucket(status_bucket(self.lease.bucket_prefix), create=True,
                                       replicas=self.lease.replicas)
        self.member = Member(kv, self.lease, on_change=self.on_change,
                             keepalive_kv=lambda: KV(dataclasses.replace(
                                 kv.settings, client_name=f"{kv.settings.client_name}"
                                 "-keepalive")))
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                tg.create_task(self._write_status(), name=f"cloudcore[{self.name}].status")
                await self.member.run()
            finally:
                self._tg = None
                await self._stop_global()

    # -- lease changes ------------------------------------------------------------------

    async def on_change(self, c: Change) -> None:
        if self._forgetting is not None:  # the last change's tail first: in order
            await self._forgetting
            self._forgetting = None
        if c.global_lost:
            await self._stop_global()
            for hook in self.on_global:
                await hook(False)
        if c.lost:
            await self._lose(sorted(c.lost))
        if c.acquired:
            await self._acquire(sorted(c.acquired))
        if c.global_acquired:
            self._start_global()
            for hook in self.on_global:
                await hook(True)
        log.info("shard %s: %s: +%d -%d partitions, %d held%s", self.name, c.reason,
                 len(c.acquired), len(c.lost), len(self.owned),
                 "; holds the global lease" if self.holds_global else "")

    async def _nodes_by_partition(self, parts: set[int]) -> dict[int, list[str]]:
        """The nodes of these partitions (a pass over every node, in slices)."""
        out: dict[int, list[str]] = {p: [] for p in parts}
        names = list(self.fleet.nodes)
        partition_of = topics.partition_of
        for i in range(0, len(names), SCAN_SLICE):
            for node in names[i:i + SCAN_SLICE]:
                p = partition_of(node)
                if p in out:
                    out[p].append(node)
            await asyncio.sleep(0)
        return out

    async def _acquire(self, parts: list[int]) -> None:
        t0 = time.perf_counter()
        summaries, by_part = await asyncio.gather(self._summaries(parts),
                                                  self._nodes_by_partition(set(parts)))
        t_listed = time.perf_counter()
        now_wall, now = self.wall(), self.clock()
        fleet, desired = self.fleet, self.fleet.desired_sets
        liveness, nodes = fleet.liveness, fleet.objects.nodes
        desired_for, set_heartbeat, heard = (desired.desired_for, liveness.set_heartbeat,
                                             liveness.heard)
        eviction, changed = fleet.eviction, fleet.objects.changed
        taken: list[str] = []
        slices = _Slices()
        for p in parts:
            known = summaries.get(p, {})
            for name in by_part[p]:
                node = nodes.get(name)
                if node is None:
                    continue
                nd = desired_for(name)
                nd.restart_epoch(new_epoch())  # snapshot first, then deltas
                # not written now: a shard starts holding nothing and every acquisition
                # starts a new epoch again, so no store commit of every set at once.
                # The status showed the previous owner's gens (its summary): from now
                # on it shows this shard's set, or desired_gen would stay the other's
                # until the node's set next changes, never equal to what is acked here
                status = node.status
                status.desired_gen, status.acked_gen = nd.gen, 0
                hb = node.metadata.annotations.get(HEARTBEAT)  # the node's own window
                set_heartbeat(name, float(hb) if hb else None)
                was = known.get(name)
                if was is not None and was[0] in ("Ready", "NotReady"):
                    status.ready = was[0]
                    status.reason = TAKEOVER_REASON
                    if was[1] is not None:
                        status.last_seen = float(was[1])
                    self.takeovers += 1
                    if was[0] == "Ready":
                        age = max(0.0, now_wall - float(was[1] or now_wall))
                        heard(name, now - age)
                else:
                    status.ready = "Unknown"
                    status.reason = TAKEOVER_REASON
                    heard(name, now)
                if status.ready != "NotReady" or eviction.not_ready_since(name) is None:
                    # NotReady as the previous owner said: its eviction clock goes on
                    # (started when this shard read that owner's summary)
                    eviction.observe(name, status.ready)
                changed("Node", name)
                taken.append(name)
                if len(taken) % SLICE == 0:
                    await slices.pause()  # a big takeover never holds the loop long
        slices.end()
        t_prepared = time.perf_counter()
        lapsed = [p for p in parts if not self._still_held(p)]
        if lapsed:
            # the lease of these lapsed while they were being taken over (NATS out of
            # reach for a lease period): another shard may hold them already, so
            # they are not opened here; their loss is announced next and `_lose` marks
            # their nodes as another shard's
            log.warning("shard %s: %d of %d partition(s) lapsed during their takeover; "
                        "not taken", self.name, len(lapsed), len(parts))
            parts = [p for p in parts if p not in lapsed]
            gone = {n for p in lapsed for n in by_part[p]}
            taken = [n for n in taken if n not in gone]
        self.hub.restart_links(taken)
        self.owned.update(parts)  # the gate opens before the subscription
        await self._subscribe(partition_filters(parts))
        t_subscribed = time.perf_counter()
        # held from here: reports and acks are heard and answered, and the push of each
        # taken node's snapshot goes on after the change is announced (it was 8-10 s of
        # 13-15 s takeovers of 16,600 nodes at 100,000, issue 14); the next change
        # waits for it, as for a loss's tail
        tail = self._push_tail(parts=parts, taken=taken, by_part=by_part,
                               summaries=summaries, t0=t0, t_listed=t_listed,
                               t_prepared=t_prepared, t_subscribed=t_subscribed,
                               slices=slices)
        if self._tg is None:  # tests driving on_change directly
            await tail
        else:
            self._forgetting = self._tg.create_task(tail, name=f"cloudcore[{self.name}].push")

    async def _push_tail(self, *, parts: list[int], taken: list[str],
                         by_part: dict[int, list[str]], summaries: dict[int, dict[str, Any]],
                         t0: float, t_listed: float, t_prepared: float, t_subscribed: float,
                         slices: _Slices) -> None:
        pushed = await self._push(taken)  # after the subscription: the acks are heard
        t_end = time.perf_counter()
        self.last_takeover = {
            "partitions": len(parts), "nodes": len(taken), "s": t_end - t0,
            "listed_s": t_listed - t0, "prepared_s": t_prepared - t_listed,
            "subscribed_s": t_subscribed - t_prepared, "pushed_s": t_end - t_subscribed,
            "yields": slices.n, "longest_slice_s": slices.longest,
            "push_yields": pushed.n, "longest_push_slice_s": pushed.longest}
        log.info("shard %s: took %d partition(s), %d node(s) (%d as last known) in %.1f s "
                 "(summaries and nodes listed %.1f s, prepared %.1f s, subscribed %.1f s, "
                 "pushed %.1f s; %d + %d yields to the loop, longest hold %.0f + %.0f ms)",
                 self.name, len(parts), len(taken),
                 sum(1 for p in parts for n in by_part[p] if n in summaries.get(p, {})),
                 t_end - t0, t_listed - t0, t_prepared - t_listed,
                 t_subscribed - t_prepared, t_end - t_subscribed, slices.n, pushed.n,
                 slices.longest * 1000, pushed.longest * 1000)

    def _still_held(self, partition: int) -> bool:
        """Whether the member still holds `partition`'s lease (True without a member:
        tests drive `on_change` directly)."""
        return self.member is None or self.member.partition_revision(partition) is not None

    async def _push(self, taken: list[str]) -> _Slices:
        """Send each taken node its set now (a snapshot under its new epoch) rather than
        at its next report, up to a heartbeat later: a change made while its partition
        had no owner reaches it within the takeover. The hub's own path for a changed set
        (`SyncHub.desired_changed`): a node with nothing to send, NotReady or with a
        delta in flight is skipped, and beyond the publish queue limit a node waits in
        the hub's deferred queue, so thousands of nodes taken at once do not flood.
        Yields to the loop after each `PUSH_SLICE` nodes, but while the hub only queues
        them (`SyncHub.deferring`: no snapshot is built now) after `QUEUE_SLICE`; a
        saturated loop's turn can be 100 ms (issue 14). Returns its yields and longest
        hold."""
        slices = _Slices()
        queued = 0
        for i in range(0, len(taken), PUSH_SLICE):
            only_queued = self.hub.deferring()
            self.hub.desired_changed(set(taken[i:i + PUSH_SLICE]))
            if only_queued:
                queued += PUSH_SLICE
                if queued < QUEUE_SLICE:
                    continue
            queued = 0
            await slices.pause()  # snapshots are sealed here: the loop is not held
        slices.end()
        return slices

    async def _lose(self, parts: list[int]) -> None:
        t0 = time.perf_counter()
        self.owned.difference_update(parts)  # the gate closes first
        for p in parts:
            self._liveness_rev.pop(p, None)
        if self._drop_queued is not None:
            # and nothing queued for their nodes goes out after the release: up to 4,096
            # messages wait in the publishers (`QUEUE_AHEAD`), and a snapshot of this
            # shard's that reached a node after the next owner's moved the node back to
            # this shard's epoch (its next delta from the new owner was refused as from
            # an epoch it had left: 677-1,593 "desired drift" resyncs at 100,000 nodes)
            dropped = self._drop_queued(set(parts))
            if dropped:
                log.info("shard %s: %d queued message(s) for the nodes of %d partition(s) "
                         "given up not sent", self.name, dropped, len(parts))
        by_part = await self._nodes_by_partition(set(parts))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UNSUBSCRIBE_WAIT):
                await self._unsubscribe(partition_filters(parts))
        t_unsubscribed = time.perf_counter()
        fleet = self.fleet
        gone = [n for p in parts for n in by_part[p]]
        self.hub.drop_links(gone)
        # no liveness deadline here for them from now on (a shard never marks another
        # shard's node NotReady): a dict removal each, so in big slices
        forget, forget_report_seq = fleet.liveness.forget, fleet.desired_sets.forget_report_seq
        for i, name in enumerate(gone, 1):
            if i % SCAN_SLICE == 0:
                await asyncio.sleep(0)
            forget(name)
            forget_report_seq(name)
        # the rest is this shard's own view of them: after the leases are let go, so the
        # next shard takes them over without waiting for it (66,438 nodes took 41.9 s of
        # a loaded loop at 100,000 nodes, issue 14)
        tail = self._forget(parts, gone, t0, t_unsubscribed)
        if self._tg is None:  # tests driving on_change directly
            await tail
        else:
            self._forgetting = self._tg.create_task(tail, name=f"cloudcore[{self.name}].forget")

    async def _forget(self, parts: list[int], gone: list[str], t0: float,
                      t_unsubscribed: float) -> None:
        fleet = self.fleet
        delete, nodes, changed = fleet.store.delete, fleet.objects.nodes, fleet.objects.changed
        slices = _Slices()
        for i, name in enumerate(gone, 1):
            if i % SLICE == 0:
                await slices.pause()
            delete("acked", name)
            node = nodes.get(name)
            if node is not None:
                node.status.ready = "Unknown"
                node.status.reason = AWAY_REASON
                changed("Node", name)
        slices.end()
        t_end = time.perf_counter()
        self.last_loss = {"partitions": len(parts), "nodes": len(gone), "s": t_end - t0,
                          "unsubscribed_s": t_unsubscribed - t0,
                          "forgotten_s": t_end - t_unsubscribed, "yields": slices.n,
                          "longest_slice_s": slices.longest}
        log.info("shard %s: gave up %d partition(s), %d node(s) in %.1f s (unsubscribed "
                 "%.1f s; %d yields to the loop, longest hold %.0f ms)", self.name,
                 len(parts), len(gone), t_end - t0, t_unsubscribed - t0, slices.n,
                 slices.longest * 1000)

    def forget_all(self) -> None:
        """At start, before any lease: no node is this shard's, so none has a liveness
        deadline here (a shard never marks another shard's node NotReady)."""
        for name in list(self.fleet.objects.nodes):
            self.fleet.liveness.forget(name)

    # -- global work --------------------------------------------------------------------

    def _start_global(self) -> None:
        self.holds_global = True
        if self._tg is None:
            return
        for name, factory in self._gated:
            self._running.append(self._tg.create_task(_forever(factory), name=name))
        log.info("shard %s: holds the global lease; running %s", self.name,
                 ", ".join(n for n, _ in self._gated) or "the liveness tick's global part")

    async def _stop_global(self) -> None:
        self.holds_global = False
        running, self._running = self._running, []
        for t in running:
            t.cancel()
        for t in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if running:
            log.info("shard %s: global work stopped", self.name)

    # -- liveness summaries -------------------------------------------------------------

    async def _summaries(self, parts: list[int]) -> dict[int, dict[str, tuple[str, Any]]]:
        """The previous owners' liveness summaries of these partitions, read at once
        (`SUMMARY_READS` at a time): one after the other, each read waited for a turn of
        a loaded loop, and 43 of them took 4.7 s of a takeover at 100,000 nodes."""
        out: dict[int, dict[str, tuple[str, Any]]] = {}
        status = self._status
        if status is None:
            return out
        room = asyncio.Semaphore(SUMMARY_READS)

        async def read(p: int) -> None:
            async with room:
                try:
                    e = await status.get(STATUS_KEY.format(pp=topics.pp(p)))
                except ClusterError as exc:
                    log.warning("shard %s: no liveness summary of partition %s: %s",
                                self.name, topics.pp(p), exc)
                    return
            self._liveness_rev[p] = e.revision if e is not None else 0
            if e is None or not e.value:
                return
            try:
                doc = json.loads(e.value)
                out[p] = {str(n): (str(v[0]), v[1]) for n, v in doc["nodes"].items()}
            except (ValueError, KeyError, TypeError, IndexError):
                log.warning("shard %s: unreadable liveness summary of partition %s",
                            self.name, topics.pp(p))

        await asyncio.gather(*(read(p) for p in parts))
        return out

    async def _write_status(self) -> None:
        assert self._status is not None
        while True:
            await asyncio.sleep(self.status_interval)
            owned = sorted(self.owned)
            if not owned:
                continue
            by_part = await self._nodes_by_partition(set(owned))
            for p in owned:
                await asyncio.sleep(0)  # one partition's nodes between two yields
                if p not in self.owned:
                    continue  # lost meanwhile: its new owner writes it now
                try:
                    await self.write_liveness(p, by_part[p])
                except ClusterError as exc:
                    log.warning("shard %s: liveness summary not written: %s", self.name, exc)
                    break

    async def write_liveness(self, p: int, names: list[str]) -> bool:
        """Write partition `p`'s liveness summary, fenced (module docstring): False if
        not written (this shard does not hold the lease, or a later owner wrote)."""
        assert self._status is not None
        key = STATUS_KEY.format(pp=topics.pp(p))
        if self.member is None:  # driven without leases (tests): nothing to fence with
            await self._status.put(key, self.summary(names))
            return True
        healing = False
        for _attempt in range(2):
            fence = self.partition_fence(p)
            if fence is None:
                return False  # the lease is gone (or past its deadline): not ours to write
            rev = self._liveness_rev.get(p)
            if rev is None:
                rev = self._liveness_rev[p] = await self._status.revision_of(key)
            value = self.summary(names, fence=fence)
            try:
                self._liveness_rev[p] = (await self._status.update(key, value, revision=rev)
                                         if rev else await self._status.create(key, value))
                self.liveness_healed += healing
                return True
            except CASConflict:
                e = await self._status.get(key)
                theirs, writer = _fence_of(e.value) if e is not None else (None, "")
                if theirs is not None and theirs > fence:
                    self._liveness_rev.pop(p, None)
                    self.liveness_fenced += 1
                    log.warning("shard %s: liveness summary of partition %s not written: a "
                                "later owner (%s) wrote it; this shard's lease is gone",
                                self.name, topics.pp(p), writer)
                    return False
                # a former owner's late write (or one of ours we did not see): over it
                self._liveness_rev[p] = await self._status.revision_of(key)
                healing = True
        return False

    def summary(self, names: list[str], *, fence: int | None = None) -> bytes:
        """The liveness summary of one partition's nodes (module docstring)."""
        nodes = self.fleet.objects.nodes
        doc = {"shard": self.name, "instance": self.member.instance if self.member else None,
               "fence": fence, "at": self.wall(),
               "nodes": {n: [nodes[n].status.ready, nodes[n].status.last_seen]
                         for n in names if n in nodes}}
        return json.dumps(doc, separators=(",", ":")).encode()


def _fence_of(value: bytes) -> tuple[int | None, str]:
    """The fencing token (None: none, or unreadable) and writer of a liveness summary
    as stored."""
    try:
        doc = json.loads(value)
        fence, writer = doc.get("fence"), str(doc.get("shard"))
    except (ValueError, AttributeError):
        return None, "?"
    return (fence if isinstance(fence, int) and not isinstance(fence, bool) else None), writer


class _Slices:
    """A loop of work in slices: its yields to the event loop, and the longest it held
    the loop between two (or before the first, or after the last)."""

    __slots__ = ("_since", "longest", "n")

    def __init__(self) -> None:
        self.n = 0
        self.longest = 0.0
        self._since = time.perf_counter()

    async def pause(self) -> None:
        self.end()
        await asyncio.sleep(0)
        self.n += 1
        self._since = time.perf_counter()

    def end(self) -> None:
        self.longest = max(self.longest, time.perf_counter() - self._since)


async def _forever(factory: Callable[[], Awaitable[None]]) -> None:
    await factory()


class GatedNodes:
    """The fleet as the hub's `NodeSink`, with the global part of the liveness tick
    (rollout steps, agent upgrades, evictions: `Fleet.expire`) only while the shard
    holds the global lease; otherwise its own nodes' deadlines and the workloads'
    statuses (`Rollouts.tick` takes no step while `Rollouts.shared` does not decide)."""

    def __init__(self, fleet: Any, *, is_global: Callable[[], bool]) -> None:
        self._fleet = fleet
        self._is_global = is_global

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fleet, name)

    def expire(self, now: float) -> list[str]:
        if self._is_global():
            return list(self._fleet.expire(now))
        out = list(self._fleet.node_ops.expire(now))
        for name in out:
            self._fleet.eviction.observe(name, "NotReady")
            self._fleet.upgrades.node_changed(name)
        self._fleet.rollouts.tick()  # workload statuses only: the holder takes the steps
        return out
