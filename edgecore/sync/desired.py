"""What comes down from the cloud (DESIGN.md section 3), free of MQTT.

`SyncHandler` turns each decoded message from the cloud into durable state and
replies: a Desired that applies is persisted (one synced LMDB txn) BEFORE its Ack
is returned, a duplicate is re-acked, a gap asks for a Resync from the local gen,
and a ReportAck trims the outbox. The link calls it; it never touches the network,
so the ordering "persist, then ack" is testable without a broker.

Replays (proposal 0002): the link has already checked every message's tag, but a
recorded genuine message could be sent again. A Request is refused once its `exp` has
passed or when its id was seen before (ids are remembered until they expire, at most
`SEEN_IDS`); a snapshot under an epoch this edge left is refused (shared.delta) and
answered with a Resync saying so, so that a cloud restored from a backup moves the
node to a new epoch instead of rolling it back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from edgecore.cache import Cache
from edgecore.errors import CacheError
from edgecore.ratelimit import RateLimitedLog
from edgecore.sync.reporter import Renewed
from edgecore.sync.responses import ResponseQueue
from shared.codec import Ack, Desired, Message, ReportAck, Request, Resync
from shared.delta import LEFT_EPOCH, EdgeDesired, Outcome
from shared.entries import POD

log = logging.getLogger(__name__)

# A burst of in-flight deltas behind one gap must cost one resync, not one each.
GAP_RESYNC_QUIET_S = 2.0
# Request ids remembered against replays (each until its exp passes).
SEEN_IDS = 4096


@dataclass
class SyncStats:
    applied: int = 0
    duplicates: int = 0
    gaps: int = 0
    report_acks: int = 0
    report_again: int = 0  # ReportAcks asking for a full report (the cloud saw a gap)
    unexpected: int = 0  # a message type the cloud should not send us
    persist_failures: int = 0
    refused_epochs: int = 0  # snapshots under an epoch we left (replays, old backups)
    replayed_requests: int = 0  # a Request seen before, expired, or without exp
    new_epochs: int = 0  # snapshots under a new epoch applied (a new owner: full report)


class SyncHandler:
    """Owns the in-memory copy of the desired set, which is always what is on disk."""

    def __init__(
        self, *, node: str, cache: Cache, on_applied: Callable[[], None] = lambda: None,
        on_request: Callable[[Request], None] | None = None,
        responses: ResponseQueue | None = None,
        clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
        require_exp: bool = False, renewed: Renewed | None = None,
    ) -> None:
        """`on_applied` is called after a new desired set is persisted (the agent wakes
        the reconciler); `on_request` gets every Request that is not a replay (None:
        they are dropped, not served here) and its Responses come back through
        `responses`, drained by `pending`. `wall` is the Unix clock Request expiries
        are checked against; `require_exp` refuses a Request without one (a keyed,
        secure agent). `renewed` gets the pod keys each applied Desired puts (the
        reporter reports their next status even if unchanged; None: not told)."""
        self.node = node
        self.renewed = renewed
        self._wall = wall
        self.require_exp = require_exp
        self._seen: OrderedDict[tuple[str, bool], float] = OrderedDict()
        self.cache = cache
        self.on_applied = on_applied
        self.stats = SyncStats()
        self._clock = clock
        self._desired = cache.get_desired()
        self._last_gap: tuple[str | None, int, float] | None = None
        self._rlog = RateLimitedLog(log)
        self.on_request = on_request
        self.responses = responses if responses is not None else ResponseQueue()

    @property
    def desired(self) -> EdgeDesired:
        """The durably persisted desired set (never ahead of the disk)."""
        return self._desired

    def hello(self, reason: str = "connect") -> Resync:
        """The Resync sent on every (re)connect: where we are, desired and reports."""
        d = self._desired
        return Resync(node=self.node, epoch=d.epoch, gen=d.gen, seq=self.cache.last_seq(),
                      reason=reason)

    async def handle(self, msg: Message) -> list[Ack | Resync]:
        """Apply one message from the cloud; returns the replies to publish, in order."""
        if isinstance(msg, Desired):
            return await self._desired_msg(msg)
        if isinstance(msg, ReportAck):
            self.stats.report_acks += 1
            try:
                await asyncio.to_thread(self.cache.ack_reports, msg.seq)
            except CacheError as exc:
                self._rlog.warning("rack", "cannot trim the outbox: %s", exc)
            if msg.again:
                # The cloud missed reports (a gap in their seqs): tell it everything once.
                self.stats.report_again += 1
                if self.renewed is not None:
                    self.renewed.everything()
            return []
        if isinstance(msg, Request):
            why = self._replayed(msg)
            if why is not None:
                self.stats.replayed_requests += 1
                self._rlog.warning("replay", "refused %s request %s: %s", msg.kind, msg.id,
                                   why)
                return []
            if self.on_request is None:
                self._rlog.warning("request", "dropped a %s request: not served here", msg.kind)
            else:
                self.on_request(msg)
            return []
        self.stats.unexpected += 1
        self._rlog.warning(f"unexpected:{msg.t}", "dropped a %r message on the down topic", msg.t)
        return []

    def _replayed(self, msg: Request) -> str | None:
        """Why a Request must not run (expired, seen, no expiry), or None."""
        now = self._wall()
        while self._seen:  # forget ids whose expiry passed: they are refused by exp now
            oldest = next(iter(self._seen.values()))
            if oldest >= now and len(self._seen) <= SEEN_IDS:
                break
            self._seen.popitem(last=False)
        if msg.exp is None:
            return "it carries no expiry" if self.require_exp else None
        if msg.exp < now:
            return f"it expired {now - msg.exp:.0f} s ago (or this clock is ahead)"
        key = (msg.id, msg.kind == "cancel")
        if key in self._seen:
            return "its id was seen before"
        self._seen[key] = msg.exp
        return None

    async def _desired_msg(self, msg: Desired) -> list[Ack | Resync]:
        local = self._desired
        outcome = local.classify(msg)
        if outcome is Outcome.REFUSED:
            self.stats.refused_epochs += 1
            self._rlog.warning("left-epoch", "refused a snapshot under epoch %s, which this "
                               "node left (a replay, or a cloud restored from a backup)",
                               msg.epoch)
            return self._resync_once(LEFT_EPOCH)
        if outcome is Outcome.APPLIED:
            new = local.applied(msg)
            try:
                # Synced write in a thread: an fsync must not stall the event loop.
                await asyncio.to_thread(self.cache.put_desired, new)
            except CacheError as exc:
                # Not persisted -> not acked; the cloud will retry when the ack is late.
                self.stats.persist_failures += 1
                log.error("cannot persist desired gen %d: %s", new.gen, exc)
                return []
            self._desired = new
            if msg.snapshot and local.epoch is not None and msg.epoch != local.epoch:
                self.stats.new_epochs += 1
                if self.renewed is not None:
                    # A new owner (a shard took the node over): tell it everything once
                    # (sync.reporter); that report covers the pods this snapshot puts.
                    self.renewed.everything()
            elif self.renewed is not None:
                self.renewed.add(k for k in msg.put if k.startswith(POD + "/"))
            self.stats.applied += 1
            log.info("applied desired %s gen %d (%s, %d keys)", new.epoch, new.gen,
                     "snapshot" if msg.snapshot else f"delta from {msg.base}", len(new.items))
            self.on_applied()
            return [Ack(node=self.node, epoch=msg.epoch, gen=new.gen)]
        if outcome is Outcome.DUPLICATE:
            self.stats.duplicates += 1
            assert local.epoch is not None  # a duplicate is always of our own epoch
            return [Ack(node=self.node, epoch=local.epoch, gen=local.gen)]
        self.stats.gaps += 1
        log.info("desired gap: have %s gen %d, got %s base %d -> gen %d; asking for resync",
                 local.epoch, local.gen, msg.epoch, msg.base, msg.gen)
        return self._resync_once("gap")

    def _resync_once(self, reason: str) -> list[Ack | Resync]:
        """A Resync, unless one for the same state went out within the quiet time."""
        local = self._desired
        now = self._clock()
        if self._last_gap is not None:
            epoch, gen, at = self._last_gap
            if (epoch, gen) == (local.epoch, local.gen) and now - at < GAP_RESYNC_QUIET_S:
                return []
        self._last_gap = (local.epoch, local.gen, now)
        return [self.hello(reason)]

    def pending(self, after: int) -> list[tuple[int, bytes]]:
        """LinkHandler: the outbox after `after`, in seq order (runs in a worker thread),
        then the queued request responses.

        Responses ride on the link's ordered publish pump; they carry the seq of the
        last report before them so the pump's report cursor does not move. They are
        not persisted: one lost with a broken session ends its request (the cloud
        times out), which is what requests promise.
        """
        items = self.cache.outbox(after=after)
        last = items[-1][0] if items else after
        items.extend((last, payload) for payload in self.responses.drain())
        return items
