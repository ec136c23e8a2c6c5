"""Turns pod status changes into numbered, persisted reports for the cloud.

The reconciler tells the reporter every pod's current status (it is the
reconciler's `StatusSink`); the reporter keeps what it last told the cloud (in
memory and in the cache) and sends only the differences. A change that someone
waits for goes out at once (issue 16): a pod's phase, pod-level reason,
readiness or revision differs from what the cloud was told, or the pod is gone,
or it is new and not merely Pending. Everything else (pull progress, a message
text, restart counts within a phase, a new pod's first Pending) waits up to
`batch_s` so that bursts share one report; an urgent change flushes whatever is
waiting with it. Each report gets the next seq, and the outbox entry, the seq
bump and the "last reported" statuses are written in ONE synced transaction
before the link may publish it; the link resends the outbox until ReportAck.

The first report after start carries node_status; an empty report is the
heartbeat; each telemetry point is a report of its own (`telemetry`), with no
node_status (the cloud reads the node's usage from the point itself; a copy in
node_status was a third of an idle node's telemetry bytes, issue 16).

A pod whose desired entry the cloud sends again (`Renewed`: the entry was in an applied
Desired's puts, even unchanged) has its next status reported even if it equals what
was last reported: the cloud put such a pod's status back to Pending when it bound it
to this node again (moved away and back while this node did not see it go, or deleted
and created again), and it hears nothing else. Kept in memory: an agent restart
between the Desired and the next reconciler pass loses it (the next status change of
the pod is reported as ever).

A new owner: a snapshot under a new epoch (shard takeover, issue 14, `cloudcore.cluster.
shard`; a cloud restored from a backup; drift) comes from a cloud that may lack reports an
earlier owner acked but never shared (a shard killed in the seconds before it wrote its
node summary), and the statuses in them change only when the pod's or the node's status
next changes. So the sync handler calls `Renewed.everything` once such a snapshot is
persisted, and the next report carries the node status (agentVersion, agentUpgrade) and
every pod's last status again (`resend_all`), through the outbox like any report. An
ordinary snapshot (same epoch, e.g. after a gap) does not: the same cloud has every report
it acked.

Reports the cloud missed: a report published while nothing was subscribed (the broker
came back before the cloud's subscriber; the node's partition between two shards) is
PUBACKed by the broker and dropped, and a later report is acked cumulatively over it.
The cloud sees the gap in the seqs and sets `again` on that ReportAck; the sync handler
then calls `Renewed.everything` too. A report carrying everything is marked `full`, so
the cloud does not ask again for the gap before it.

A full disk (the outbox write raises `CacheError`, e.g. ENOSPC) is temporary:
- status changes stay pending and are retried with the shared backoff; nothing is
  marked "reported" until a report carrying it is persisted, so the cloud gets the
  full current status once space returns;
- a heartbeat that cannot be persisted is published UNPERSISTED (`publish_unpersisted`,
  the link's one-slot side channel) as an empty report that reuses the highest seq
  the cloud is known to have processed (`acked_floor`). For the cloud that is a
  duplicate: it re-acks it and restarts the node's liveness clock, and it changes
  nothing else. No new seq is ever used without being persisted, so seqs still only
  grow across restarts and no real report can be shadowed by a heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from edgecore.cache import Cache, OutboxKind
from edgecore.errors import CacheError
from edgecore.ratelimit import RateLimitedLog
from shared.backoff import Backoff
from shared.codec import Report, encode
from shared.delta import EdgeDesired
from shared.entries import status_value
from shared.pods import PodStatus

log = logging.getLogger(__name__)


def _comparable(status: PodStatus) -> dict[str, Any]:
    value = status_value(status)
    value.pop("updatedAt", None)
    return value


# What an operator, `fedctl wait` or a rollout waits for: a change in any of these is
# reported at once rather than batched.
_URGENT_FIELDS = ("phase", "reason", "ready", "revision")


def urgent(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Whether the change from `old` (what the cloud knows; None: nothing) to `new`
    (None: the pod is gone) must be reported without waiting for the batch window."""
    if new is None:
        return old is not None
    if old is None:  # a new pod: its first Pending/ContainerCreating can wait
        return (new.get("phase", "Pending") != "Pending"
                or new.get("reason") not in (None, "ContainerCreating"))
    return any(old.get(f) != new.get(f) for f in _URGENT_FIELDS)


class Renewed:
    """What the cloud must be told again (module docstring): the pod keys whose desired
    entry it sent again, which the sync handler adds once a Desired is persisted and the
    reporter takes; and `everything`, a new owner of the node's desired set. Made first
    and given to both, like the agent's `wake` event."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self.on_everything: Callable[[], None] = lambda: None
        """Set by the reporter: report the node status and every pod again, once."""

    def add(self, keys: Iterable[str]) -> None:
        self._keys.update(keys)

    def everything(self) -> None:
        """A snapshot under a new epoch was persisted: the cloud that sent it may lack
        reports an earlier owner acked (module docstring, "A new owner")."""
        self.on_everything()

    def take(self) -> set[str]:
        keys, self._keys = self._keys, set()
        return keys

    def __bool__(self) -> bool:
        return bool(self._keys)


class Reporter:
    def __init__(
        self, *, node: str, cache: Cache, desired: Callable[[], EdgeDesired],
        node_status: Callable[[], dict[str, Any]], kick: Callable[[], None] = lambda: None,
        batch_s: float = 0.5, clock: Callable[[], float] = time.time,
        acked: Callable[[], int] = lambda: 0,
        publish_unpersisted: Callable[[bytes], None] | None = None,
        retry: Backoff | None = None, renewed: Renewed | None = None,
    ) -> None:
        """`renewed`: the pods whose next status is reported even if unchanged (None:
        its own, which nothing fills)."""
        self.node = node
        self.renewed = renewed if renewed is not None else Renewed()
        self.renewed.on_everything = self.resend_all
        self.cache = cache
        self.desired = desired
        self.node_status = node_status
        self.kick = kick
        self.batch_s = batch_s
        self.clock = clock
        self.last_append = 0.0  # time.monotonic() of the last report appended
        self._reported: dict[str, dict[str, Any]] = cache.reported_statuses()
        self._pending: dict[str, dict[str, Any] | None] = {}
        self._event = asyncio.Event()
        self._urgent = asyncio.Event()  # something in _pending must not wait for batch_s
        self.urgent_flushes = 0  # reports sent before their batch window ended
        self._send_node_status = True
        self.acked = acked
        """Highest seq the cloud acked in this process (the link's ReportAck watermark)."""
        self.publish_unpersisted = publish_unpersisted
        """Where a heartbeat goes when it cannot be persisted (None: it is skipped)."""
        self.retry = retry or Backoff(initial=max(batch_s, 0.5), cap=30.0)
        self.persist_failures = 0
        self.unpersisted_heartbeats = 0
        self._rlog = RateLimitedLog(log)
        self._floor: int | None = None  # computed on first need (it reads the outbox)
        self._failed = False  # the last flush could not be persisted
        self.resends = 0  # full status reports asked for (resend_all)
        self.full_reports = 0  # reports persisted with `full` (everything in them)
        self._full = False  # the next report holds everything: mark it `full`
        self._again: set[str] = set()  # pods the next report carries even if unchanged
        self._writing: dict[str, dict[str, Any] | None] = {}  # pods of the report in flight

    @property
    def acked_floor(self) -> int:
        """Highest seq that the cloud has processed or that no longer waits in the
        outbox: an empty report with this seq is a no-op (a duplicate) for the cloud.

        Every seq below the oldest outbox entry was acked by the cloud (or dropped by
        the budget, its content given up); new entries only get higher seqs, so the
        value computed once stays a valid floor, raised by later acks.
        """
        if self._floor is None:
            first = self.cache.outbox(after=0)[:1]
            self._floor = first[0][0] - 1 if first else self.cache.last_seq()
        return max(self._floor, self.acked())

    def update(self, key: str, status: PodStatus | None) -> None:
        """StatusSink: the pod's current status (None: gone). Cheap; called every pass."""
        if self.renewed:  # the cloud no longer shows what it was told: tell it again
            for k in self.renewed.take():
                self._reported.pop(k, None)
        value = None if status is None else _comparable(status)
        if self._reported.get(key) == value and key not in self._again:
            self._pending.pop(key, None)  # back to what the cloud already knows
            return
        self._pending[key] = value
        self._event.set()
        if urgent(self._reported.get(key), value):
            self._urgent.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        """Send the first report (node status) now, then batch changes until cancelled."""
        await self.flush()
        while True:
            await self._event.wait()
            if not self._urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.batch_s):
                        await self._urgent.wait()
                if self._urgent.is_set():
                    self.urgent_flushes += 1
            await self.flush()
            if self._failed:
                # Not persisted (disk full): retry with backoff, not every batch_s.
                await asyncio.sleep(self.retry.next())
            else:
                self.retry.reset()

    async def flush(self) -> int | None:
        """Persist one report with everything pending; returns its seq (None: nothing to say)."""
        self._event.clear()
        self._urgent.clear()
        self._failed = False
        if not self._pending and not self._send_node_status:
            return None
        pods, self._pending = self._pending, {}
        # Taken now, so that a resend_all while this report is being persisted is kept
        # for the next one rather than cleared with this one.
        with_status, self._send_node_status = self._send_node_status, False
        full, self._full = self._full, False
        now = self.clock()
        wire = {k: None if v is None else {**v, "updatedAt": now} for k, v in pods.items()}
        node_status = self.node_status() if with_status else None
        d = self.desired()

        def make(seq: int) -> bytes:
            return encode(Report(node=self.node, seq=seq, epoch=d.epoch, gen=d.gen, ts=now,
                                 pods=wire, node_status=node_status, full=full))

        resends = self.resends
        self._writing = pods
        try:
            result = await asyncio.to_thread(
                self.cache.append_report, make, kind=OutboxKind.STATUS, reported=pods)
        except CacheError as exc:
            self.persist_failures += 1
            self._rlog.warning("status", "cannot persist a status report (%d pod changes "
                               "pending), will retry: %s", len(pods), exc)
            for k, v in pods.items():  # put back what newer updates have not replaced
                self._pending.setdefault(k, v)
            self._send_node_status |= with_status
            self._full |= full
            self._failed = True
            self._event.set()
            return None
        finally:
            self._writing = {}
        for k, v in pods.items():
            if v is None:
                self._reported.pop(k, None)
            else:
                self._reported[k] = v
        if self.resends == resends:  # else resend_all counted these in the next report
            self._again.difference_update(pods)
        self.last_append = time.monotonic()
        if full:
            self.full_reports += 1
        if result.dropped_status:
            # The cloud will never see some status changes: tell it everything again.
            forgotten, self._reported = self._reported, {}
            for k, v in forgotten.items():
                self._pending.setdefault(k, v)
            self._send_node_status = True
            self._full = True
            self._event.set()
        self.kick()
        return result.seq

    def resend_all(self) -> None:
        """Report the node status and every pod's status again, in the next report,
        marked `full` (module docstring, "A new owner" and "Reports the cloud missed").
        Not urgent: the reconciler pass that the new set wakes usually lands its
        statuses in the same report (within `batch_s`)."""
        self.resends += 1
        # with the pods of a report being persisted now: their values are the newest
        last = {**self._reported, **self._writing}
        self._again = set(last)
        for k, v in last.items():
            self._pending.setdefault(k, v)  # a newer pending value stays
        self._send_node_status = True
        self._full = True
        self._event.set()

    def node_status_changed(self) -> None:
        """The node status changed in a way the cloud waits for (an agent upgrade's
        phase): send it in a report at once."""
        self._send_node_status = True
        self._event.set()
        self._urgent.set()

    async def telemetry(self, point: dict[str, Any]) -> int | None:
        """Persist one telemetry point as its own report (TELEMETRY: dropped first when the
        outbox is over budget). It claims no (epoch, gen): the acks and statuses say
        what is applied, and the 20 bytes are a tenth of an idle node's report."""
        now = self.clock()

        def make(seq: int) -> bytes:
            return encode(Report(node=self.node, seq=seq, ts=float(int(now)),
                                 telemetry=[point]))

        try:
            result = await asyncio.to_thread(self.cache.append_report, make,
                                             kind=OutboxKind.TELEMETRY)
        except CacheError as exc:
            self.persist_failures += 1
            self._rlog.warning("telemetry", "cannot persist a telemetry point, dropped: %s",
                               exc)
            return None
        self.last_append = time.monotonic()
        self.kick()
        return result.seq

    async def metrics(self, batch: dict[str, Any]) -> int | None:
        """Persist a batch of scraped samples (`shared.entries.metrics_batch`) as its own
        report. The cloud keeps only the latest batch, so this one replaces a previous
        batch still waiting in the outbox, and the byte budget drops it before any
        telemetry or status (`Cache.append_report(metrics=True)`): scraped metrics
        never crowd out status while offline. Returns the seq (None: not persisted)."""
        now = self.clock()

        def make(seq: int) -> bytes:
            return encode(Report(node=self.node, seq=seq, ts=float(int(now)),
                                 telemetry=[batch]))

        try:
            result = await asyncio.to_thread(self.cache.append_report, make,
                                             kind=OutboxKind.TELEMETRY, metrics=True)
        except CacheError as exc:
            self.persist_failures += 1
            self._rlog.warning("metrics", "cannot persist a metrics batch, dropped: %s", exc)
            return None
        self.last_append = time.monotonic()
        self.kick()
        return result.seq

    async def heartbeat(self) -> int | None:
        """Persist an empty report (droppable first under the outbox budget); returns seq.

        If it cannot be persisted (CacheError: disk full), publish it unpersisted with
        seq `acked_floor` instead (see the module docstring) and return None.
        """
        d = self.desired()
        now = self.clock()

        def make(seq: int) -> bytes:
            return encode(Report(node=self.node, seq=seq, epoch=d.epoch, gen=d.gen, ts=now))

        try:
            result = await asyncio.to_thread(self.cache.append_report, make,
                                             kind=OutboxKind.TELEMETRY)
        except CacheError as exc:
            self.persist_failures += 1
            floor = self.acked_floor
            if self.publish_unpersisted is None or floor < 1:
                self._rlog.warning("heartbeat", "heartbeat skipped (cannot persist it and "
                                   "no acked seq to reuse): %s", exc)
                return None
            self._rlog.warning("heartbeat", "cannot persist heartbeats, sending them "
                               "unpersisted as seq %d: %s", floor, exc)
            self.unpersisted_heartbeats += 1
            self.publish_unpersisted(make(floor))
            return None
        self.last_append = time.monotonic()
        self.kick()
        return result.seq
