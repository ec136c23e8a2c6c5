"""Turns pod status changes into numbered, persisted reports for the cloud.

The reconciler tells the reporter every pod's current status (it is the
reconciler's `StatusSink`); the reporter keeps what it last told the cloud (in
memory and in the cache) and batches only the differences into one `Report`
every `batch_s`. Each report gets the next seq, and the outbox entry, the seq
bump and the "last reported" statuses are written in ONE synced transaction
before the link may publish it; the link resends the outbox until ReportAck.

The first report after start carries node_status; an empty report is the
heartbeat; each telemetry point is a report of its own (`telemetry`), carrying
the node's usage as a partial node_status ({"usage": {...}}).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from edgecore.cache import Cache, OutboxKind
from edgecore.errors import CacheError
from shared.codec import Report, encode
from shared.delta import EdgeDesired
from shared.entries import status_value
from shared.models import PodStatus

log = logging.getLogger(__name__)


def _comparable(status: PodStatus) -> dict[str, Any]:
    value = status_value(status)
    value.pop("updatedAt", None)
    return value


class Reporter:
    def __init__(
        self, *, node: str, cache: Cache, desired: Callable[[], EdgeDesired],
        node_status: Callable[[], dict[str, Any]], kick: Callable[[], None] = lambda: None,
        batch_s: float = 0.5, clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
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
        self._send_node_status = True

    def update(self, key: str, status: PodStatus | None) -> None:
        """StatusSink: the pod's current status (None: gone). Cheap; called every pass."""
        value = None if status is None else _comparable(status)
        if self._reported.get(key) == value:
            self._pending.pop(key, None)  # back to what the cloud already knows
            return
        self._pending[key] = value
        self._event.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self) -> None:
        """Send the first report (node status) now, then batch changes until cancelled."""
        await self.flush()
        while True:
            await self._event.wait()
            await asyncio.sleep(self.batch_s)
            await self.flush()

    async def flush(self) -> int | None:
        """Persist one report with everything pending; returns its seq (None: nothing to say)."""
        self._event.clear()
        if not self._pending and not self._send_node_status:
            return None
        pods, self._pending = self._pending, {}
        now = self.clock()
        wire = {k: None if v is None else {**v, "updatedAt": now} for k, v in pods.items()}
        node_status = self.node_status() if self._send_node_status else None
        d = self.desired()

        def make(seq: int) -> bytes:
            return encode(Report(node=self.node, seq=seq, epoch=d.epoch, gen=d.gen, ts=now,
                                 pods=wire, node_status=node_status))

        try:
            result = await asyncio.to_thread(
                self.cache.append_report, make, kind=OutboxKind.STATUS, reported=pods)
        except CacheError as exc:
            log.error("cannot persist a report, will retry: %s", exc)
            for k, v in pods.items():  # put back what newer updates have not replaced
                self._pending.setdefault(k, v)
            self._event.set()
            return None
        for k, v in pods.items():
            if v is None:
                self._reported.pop(k, None)
            else:
                self._reported[k] = v
        self._send_node_status = False
        self.last_append = time.monotonic()
        if result.dropped_status:
            # The cloud will never see some status changes: tell it everything again.
            forgotten, self._reported = self._reported, {}
            for k, v in forgotten.items():
                self._pending.setdefault(k, v)
            self._send_node_status = True
            self._event.set()
        self.kick()
        return result.seq

    async def telemetry(self, point: dict[str, Any]) -> int | None:
        """Persist one telemetry point as its own report (TELEMETRY: dropped first when the
        outbox is over budget), with the node's usage as a partial node_status."""
        d = self.desired()
        now = self.clock()
        node = point.get("node") or {}
        usage = {"cpu": node["cpu"]} if "cpu" in node else {}
        if "mem" in node:
            usage["memory"] = node["mem"]

        def make(seq: int) -> bytes:
            return encode(Report(node=self.node, seq=seq, epoch=d.epoch, gen=d.gen, ts=now,
                                 telemetry=[point],
                                 node_status={"usage": usage} if usage else None))

        try:
            result = await asyncio.to_thread(self.cache.append_report, make,
                                             kind=OutboxKind.TELEMETRY)
        except CacheError as exc:
            log.warning("cannot persist a telemetry point, dropped: %s", exc)
            return None
        self.last_append = time.monotonic()
        self.kick()
        return result.seq

    async def heartbeat(self) -> int:
        """Persist an empty report (droppable first under the outbox budget); returns seq."""
        d = self.desired()
        now = self.clock()

        def make(seq: int) -> bytes:
            return encode(Report(node=self.node, seq=seq, epoch=d.epoch, gen=d.gen, ts=now))

        result = await asyncio.to_thread(self.cache.append_report, make,
                                         kind=OutboxKind.TELEMETRY)
        self.last_append = time.monotonic()
        self.kick()
        return result.seq
