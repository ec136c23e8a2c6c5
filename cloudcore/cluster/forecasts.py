"""Node forecasts shared by the shards (issue 14, proposal 0008 "Placement"), so the
scheduler of the global lease holder, and `fedctl top nodes --forecast` through any
shard, see a forecast for every node of the fleet, not only the nodes whose telemetry
reached this shard.

Every shard runs the forecaster over its own nodes (only it hears their telemetry). At
each tick (`exchange`, the `ForecastRunner`'s hook) it keeps the forecasts of the nodes
of the partitions it holds, applies them as before, and writes one value per held
partition to bucket `<prefix>_forecasts`, key `fc.<pp>`; the nodes of the partitions
it does not hold get the forecasts their owners wrote. One write per partition per
tick (at most 256 per tick for the whole cluster, whatever the fleet's size), not one
per node.

The value, msgpack: `{"v": 1, "shard", "instance", "fence": the partition lease's
revision when written (its fencing token, `Member.partition_revision`), "at": the
tick's wall time (Unix s), "minute": the newest forecast origin of the partition (Unix
minute), "nodes": {node: [cpu_p50, cpu_p90, mem_p50, mem_p90, trusted, age]}}`: the
four peaks over the horizon in units of 1/10,000 (0..1 utilisation -> 0..10,000, one
to three msgpack bytes each), `trusted` 0 or 1, `age` the minutes between the node's
own forecast origin and `minute` (the scheduler's ledger of recent placements counts
from that origin). A partition with no forecast is written once empty after having
had some, then not again.

A reader takes a partition's value only while all of these hold, and otherwise drops
that partition's forecasts from its nodes (the scheduler then scores them by their
requests, as a node without a forecast):
- it does not hold the partition itself (its own forecasts win);
- the writer is the partition's live holder as this shard's lease view shows it
  (`Shard.partition_holder`): a value of a former owner, or of an owner whose lease
  lapsed, is not used;
- its token is not smaller than one seen before for the partition (a former owner
  paused past its lease, writing late: refused and counted in `fenced`);
- it is at most `stale_ticks` forecast intervals old (its owner stopped forecasting).

Forecasts read are applied to the fleet's nodes (`status.usage`, where the scheduler
and the API read them) by a task of their own, a partition between two yields, as
they arrive, after each tick and every `RECHECK_S` seconds (a value that arrived
before this shard's lease view showed its writer as the holder; a writer whose lease
lapsed or moved, a value grown stale); they are announced (`Objects.changed`), never
written to this shard's store, like the other shards' node statuses
(`cloudcore.cluster.status`). The tick hands the scheduler the origins of every node
with a forecast, own and others' (`Scheduler.forecast_made` forgets the right-sizing
peaks of nodes not in it). Forecasts loaded from the store with the nodes (an earlier
run's) are taken off at the first tick unless it or another shard gives a new one.

Not here: the forecaster's history of a node moves with nothing: a shard taking a
partition over forecasts its nodes from the telemetry it hears from then on (the
fallback forecast of a young history until then), and the `PredictedOverCapacity`
warning of a node is raised by its owner only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from cloudcore.cluster.fenced import put_all
from cloudcore.cluster.kv import KV, Bucket, Entry
from cloudcore.fleet.forecast import FORECAST_KEYS
from shared import topics

log = logging.getLogger("cloudcore.cluster.forecasts")

KEY = "fc.{pp}"
VERSION = 1
SCALE = 10_000
"""A forecast peak of 1.0 (the node's whole allocatable) is written as this integer."""
STALE_TICKS = 3
"""Forecast intervals after which a partition's value is no longer used."""
APPLY_SLICE = 1
"""Partitions applied between two yields (about 400 nodes each at 100,000 nodes)."""
RECHECK_S = 2.0
"""Seconds between two checks of the values applied here when nothing arrives."""
GROUP_SLICE = 5_000
"""Own nodes grouped by partition between two yields by the writer."""
PEAKS = FORECAST_KEYS[:4]  # cpu_p50, cpu_p90, mem_p50, mem_p90
assert FORECAST_KEYS[4] == "trusted"

Results = dict[str, dict[str, float]]



def bucket_name(prefix: str) -> str:
    return f"{prefix}_forecasts"


def key_of(partition: int) -> str:
    return KEY.format(pp=topics.pp(partition))


def partition_of_key(key: str) -> int | None:
    head, _, pp = key.partition(".")
    if head != "fc" or len(pp) != 2:
        return None
    try:
        p = int(pp, 16)
    except ValueError:
        return None
    return p if 0 <= p < topics.PARTITIONS and topics.pp(p) == pp else None


@dataclass(frozen=True)
class PartitionForecasts:
    """One partition's value, decoded."""

    shard: str
    instance: str
    fence: int
    at: float
    minute: int
    nodes: dict[str, tuple[dict[str, float], float]]
    """node -> (its forecast as `FORECAST_KEYS`, its origin in Unix seconds)."""
    revision: int = 0


def encode(*, shard: str, instance: str, fence: int, at: float, results: Results,
           origins: dict[str, float]) -> bytes:
    """One partition's value (module docstring) of `results` (`ForecastRunner`'s, the
    partition's nodes only) and their `origins` (Unix s)."""
    minutes = {n: int(origins.get(n, 0.0) // 60) for n in results}
    top = max(minutes.values(), default=0)
    nodes = {}
    for n, fc in results.items():
        nodes[n] = [*(max(0, round(fc[k] * SCALE)) for k in PEAKS),
                    1 if fc.get("trusted", 0.0) >= 1.0 else 0, top - minutes[n]]
    return msgpack.packb({"v": VERSION, "shard": shard, "instance": instance,
                          "fence": fence, "at": at, "minute": top, "nodes": nodes})


def decode(value: bytes, *, partition: int, revision: int = 0,
           partition_of: Callable[[str], int] = topics.partition_of) -> PartitionForecasts:
    """A partition's value; ValueError naming what is wrong if it is not one (a node
    of another partition in it is an error too: an owner writes only its own)."""
    try:
        doc = msgpack.unpackb(value, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"not msgpack: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("v") != VERSION:
        raise ValueError(f"not a version {VERSION} forecasts map")
    shard, instance, fence = doc.get("shard"), doc.get("instance"), doc.get("fence")
    at, minute, raw = doc.get("at"), doc.get("minute"), doc.get("nodes")
    if not isinstance(shard, str) or not isinstance(instance, str):
        raise ValueError("shard and instance must be strings")
    if not isinstance(fence, int) or isinstance(fence, bool) or fence < 0:
        raise ValueError(f"fence must be a revision, got {fence!r}")
    if not isinstance(at, int | float) or not math.isfinite(at):
        raise ValueError(f"at must be a time, got {at!r}")
    if not isinstance(minute, int) or not isinstance(raw, dict):
        raise ValueError("minute must be an integer and nodes a map")
    nodes: dict[str, tuple[dict[str, float], float]] = {}
    for name, row in raw.items():
        if (not isinstance(row, list) or len(row) != 6
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                           for x in row)):
            raise ValueError(f"node {name}: expected 6 integers >= 0, got {row!r}")
        if partition_of(name) != partition:
            raise ValueError(f"node {name} is not in partition {topics.pp(partition)}")
        fc = {k: row[i] / SCALE for i, k in enumerate(PEAKS)}
        fc["trusted"] = 1.0 if row[4] else 0.0
        nodes[name] = (fc, float((minute - row[5]) * 60))
    return PartitionForecasts(shard=shard, instance=instance, fence=fence, at=float(at),
                              minute=minute, nodes=nodes, revision=revision)


class SharedForecasts:
    """A shard's writer of its partitions' forecasts and reader of the others' (module
    docstring). `owns(p)`: this shard holds partition p; `holder(p)`: the live holder
    of p as the leases show it; `fence(p)`: p's lease revision while held;
    `instance()`: this shard's member instance (None before it joined)."""

    def __init__(self, fleet: Any, *, shard: str, owns: Callable[[int], bool],
                 holder: Callable[[int], str | None], fence: Callable[[int], int | None],
                 interval: float, stale_ticks: int = STALE_TICKS,
                 instance: Callable[[], str | None] = lambda: None,
                 wall: Callable[[], float] = time.time) -> None:
        if not interval > 0 or stale_ticks < 1:
            raise ValueError("forecast interval must be > 0 s and stale_ticks >= 1")
        self.fleet = fleet
        self.shard = shard
        self.owns = owns
        self.holder = holder
        self.fence = fence
        self.instance = instance
        self.interval = interval
        self.stale_ticks = stale_ticks
        self.wall = wall
        self.bucket: Bucket | None = None
        self._tick: tuple[float, Results, dict[str, float]] | None = None
        """The last tick's (wall time, own forecasts, origins), not written yet (grouped
        and encoded by the writer, in slices)."""
        self._nonempty: set[int] = set()
        """Partitions whose last value written had nodes."""
        self._local: set[str] = set()
        """Nodes given a forecast by this shard's own tick last time."""
        self._first = True
        """No tick yet: forecasts loaded from the store (an earlier run's) are not this
        run's; the first tick takes off every one it does not set or show."""
        self.read: dict[int, PartitionForecasts] = {}
        """partition -> the newest value taken from the bucket."""
        self._max_fence: dict[int, int] = {}
        self._shown: dict[int, tuple[int, set[str]]] = {}
        """partition -> (revision of the value applied, its nodes given a forecast)."""
        self.origins: dict[str, float] = {}
        """Other shards' nodes with a forecast applied here -> its origin (Unix s)."""
        self._wake_writer = asyncio.Event()
        self._wake_apply = asyncio.Event()
        self.writes = 0
        self.bytes_written = 0
        self.fenced = 0
        self.unreadable = 0
        self.applied = 0
        """Other shards' node forecasts applied here, since start."""

    # -- the tick (ForecastRunner.exchange) ----------------------------------------------

    def exchange(self, results: Results, origins: dict[str, float]
                 ) -> tuple[Results, dict[str, float]]:
        """This shard's tick: returns the forecasts to apply here (those of the nodes of
        the partitions it holds) and the origins the scheduler learns (those nodes' and
        every other shard's node shown here); queues one value per held partition for
        the writer and wakes the applier (other shards' values)."""
        owned = {p for p in range(topics.PARTITIONS) if self.owns(p)}
        part_of = topics.partition_of
        mine = {n: fc for n, fc in results.items() if part_of(n) in owned}
        if len(mine) == len(results):  # the usual case: nothing left from a lost partition
            mine, merged = results, dict(origins)
        else:
            merged = {n: o for n, o in origins.items() if n in mine}
        self._tick = (self.wall(), mine, origins)
        # own nodes that lost their forecast here (partition given up, history gone)
        local = set(mine)
        dropped, self._local = self._local - local, local
        if self._first:
            self._first = False
            dropped = {n for n, node in self.fleet.objects.nodes.items()
                       if n not in local and "cpu_p90" in node.status.usage}
        for name in dropped:
            if name not in self.origins:
                self._clear(name)
        self._wake_writer.set()
        self._wake_apply.set()
        merged.update(self.origins)
        return mine, merged

    # -- the service's task --------------------------------------------------------------

    async def run(self, kv: KV, *, prefix: str, replicas: int = 1) -> None:
        """Watch the bucket, write this shard's values and apply the others' until
        cancelled."""
        self.bucket = await kv.bucket(bucket_name(prefix), create=True, replicas=replicas)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._writer(), name=f"cloudcore[{self.shard}].forecasts.writer")
            tg.create_task(self._applier(), name=f"cloudcore[{self.shard}].forecasts.apply")
            watch = await self.bucket.watch("fc.>")
            try:
                async for e in watch:
                    self.take(e)  # a partition's value decoded between two yields
                    await asyncio.sleep(0)
            finally:
                await watch.stop()

    async def _writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer.clear()
            await self.write_pending()

    async def write_pending(self) -> int:
        """Write the values of the last tick: one per partition still held that has
        forecasts or had some in its last value, under the partition's token now
        (grouped `GROUP_SLICE` nodes and encoded a partition between two yields, then
        written all in flight together); what NATS refused is dropped: the next tick
        writes newer ones. Returns values written."""
        assert self.bucket is not None
        if self._tick is None:
            return 0
        (at, mine, origins), self._tick = self._tick, None
        by_part: dict[int, Results] = {}
        for i, (name, fc) in enumerate(mine.items(), 1):
            p = topics.partition_of(name)
            part = by_part.get(p)
            if part is None:
                part = by_part[p] = {}
            part[name] = fc
            if i % GROUP_SLICE == 0:
                await asyncio.sleep(0)
        instance = self.instance() or ""
        items: list[tuple[int, bytes, bool]] = []
        for p in sorted(set(by_part) | self._nonempty):
            token = self.fence(p)
            if token is None:
                continue  # not held (lost meanwhile): never written without the token
            part = by_part.get(p, {})
            items.append((p, encode(shard=self.shard, instance=instance, fence=token, at=at,
                                    results=part, origins=origins), bool(part)))
            await asyncio.sleep(0)
        items = [x for x in items if self.owns(x[0])]  # not a partition lost meanwhile
        if not items:
            return 0
        failed = set(await put_all(self.bucket, [(key_of(p), v) for p, v, _ in items],
                                   log=log, what="partition forecasts", shard=self.shard))
        done = 0
        for i, (p, value, has_nodes) in enumerate(items):
            if i in failed:
                continue
            done += 1
            self.bytes_written += len(value)
            if has_nodes:
                self._nonempty.add(p)
            else:
                self._nonempty.discard(p)
        self.writes += done
        return done

    # -- the others' side ----------------------------------------------------------------

    def take(self, e: Entry) -> None:
        """A value of the bucket as the watch delivers it: kept if readable and not
        fenced off (applied by the applier)."""
        p = partition_of_key(e.key)
        if p is None:
            return
        if e.deleted:
            self.read.pop(p, None)
            self._wake_apply.set()
            return
        try:
            v = decode(e.value, partition=p, revision=e.revision,
                       partition_of=topics.partition_of)
        except ValueError as exc:
            self.unreadable += 1
            log.warning("shard %s: unreadable forecasts of partition %s (revision %d): "
                        "%s; ignored", self.shard, topics.pp(p), e.revision, exc)
            return
        if v.shard == self.shard and self.owns(p):
            return  # our own value: the tick applied it already
        if v.fence < self._max_fence.get(p, 0):
            self.fenced += 1
            log.warning("shard %s: forecasts of partition %s (revision %d) by %s refused: "
                        "written under partition lease token %d, token %d seen before (a "
                        "former owner's late write)", self.shard, topics.pp(p), e.revision,
                        v.shard, v.fence, self._max_fence[p])
            return
        self._max_fence[p] = v.fence
        self.read[p] = v
        self._wake_apply.set()

    def usable(self, p: int, now: float | None = None) -> PartitionForecasts | None:
        """Partition p's value if this shard uses it now (module docstring)."""
        v = self.read.get(p)
        if v is None or self.owns(p) or self.holder(p) != v.shard:
            return None
        now = self.wall() if now is None else now
        if now - v.at > self.stale_ticks * self.interval:
            return None
        return v

    async def _applier(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RECHECK_S):
                    await self._wake_apply.wait()
            self._wake_apply.clear()
            await self.apply_read()

    async def apply_read(self) -> int:
        """Bring the other shards' nodes' forecasts here up to the values read: apply the
        usable values not applied yet, drop the forecasts of partitions whose value is
        no longer usable; a partition between two yields. Returns partitions changed."""
        changed = 0
        parts = sorted(set(self.read) | set(self._shown))
        for i, p in enumerate(parts, 1):
            v = self.usable(p)
            shown = self._shown.get(p)
            if v is None:
                if shown is not None:
                    self._drop(p)
                    changed += 1
            elif shown is None or shown[0] != v.revision:
                self._show(p, v)
                changed += 1
            else:
                continue
            if i % APPLY_SLICE == 0:
                await asyncio.sleep(0)
        return changed

    def _show(self, p: int, v: PartitionForecasts) -> None:
        nodes = self.fleet.objects.nodes
        before = self._shown.get(p, (0, set()))[1]
        now: set[str] = set()
        for name, (fc, origin) in v.nodes.items():
            node = nodes.get(name)
            if node is None:
                continue
            usage = {k: x for k, x in node.status.usage.items() if k not in FORECAST_KEYS}
            usage.update(fc)
            node.status.usage = usage
            self.fleet.objects.changed("Node", name)
            self.origins[name] = origin
            now.add(name)
        self.applied += len(now)
        for name in before - now:
            self.origins.pop(name, None)
            self._clear(name)
        self._shown[p] = (v.revision, now)

    def _drop(self, p: int) -> None:
        _, names = self._shown.pop(p)
        for name in names:
            self.origins.pop(name, None)
            if name not in self._local:
                self._clear(name)

    def _clear(self, name: str) -> None:
        node = self.fleet.objects.nodes.get(name)
        if node is None or not any(k in node.status.usage for k in FORECAST_KEYS):
            return
        node.status.usage = {k: x for k, x in node.status.usage.items()
                             if k not in FORECAST_KEYS}
        if self.owns(topics.partition_of(name)):
            self.fleet.objects.save("Node", name)
        else:
            self.fleet.objects.changed("Node", name)


__all__ = ["KEY", "STALE_TICKS", "PartitionForecasts", "SharedForecasts", "bucket_name",
           "decode", "encode", "key_of"]
