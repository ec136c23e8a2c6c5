"""Shard membership and partition leases on JetStream KV (issue 14, proposal 0008).

Each shard is a `Member`: it heartbeats its key in the `<prefix>_members` bucket and
holds leases in `<prefix>_leases`, one key per partition (`partition.0a`, 256 of them,
`shared.topics.PARTITIONS`) and one `global` key for the shard that runs the global
work. A lease value names its holder (member name and a random instance id); every
write to a lease key is a compare-and-set on the key's revision, so two members never
both succeed in taking the same lease from the same state.

Balance: every member sees the live members (their heartbeats, through a watch) and
computes the same target share for each (256 / n, the first 256 % n members in name
order one more). A member under its target takes free or expired leases; a member over
its target releases its excess (the partitions it took last, so that one that overshot
while the views of the membership settled hands back what it just took, not the
partitions it has served all along), but only as much as the others' deficit that free
partitions cannot fill, so nothing is released into the void. A joining member thus
takes its share as the others release theirs; a member killed with SIGKILL stops
renewing, and the others take its leases once they have expired.

Expiry, and the clock assumption (the one thing this module assumes). With P the lease
period and M the margin (P / 10 by default):
- An observer never compares wall clocks. It notes, on its own monotonic clock, when it
  first saw each revision of a lease key (through the watch). The lease is expired for
  it when the key has stayed at that revision for P - M seconds; it then takes the
  lease by CAS on exactly that revision, which fails if the holder renewed since.
- A holder notes, on its monotonic clock, the moment *before* it sent the write that
  produced its current revision (`renewed_at`). It considers the lease lost at
  `renewed_at + P - 2M` unless a renewal succeeded first, and says so (the `lost`
  callback; a guard task checks every tick/2, even while the main loop waits on NATS).
- The write happened after `renewed_at` and the observer saw it after it happened, so
  the observer takes over no earlier than `renewed_at + P - M`, M seconds after the
  holder stopped. This holds if the two monotonic clocks advance at the same rate within
  M / P (10 %) over one period: rates, not offsets. A process paused longer than that
  (SIGSTOP, a frozen VM) wakes up past its own deadline and drops the lease at its first
  tick; a pause between that check and a use of the partition is the window every lease
  system has (a fence token per write closes it: the lease revision is one, for the
  wiring step).
- A member killed with SIGKILL renewed last at most P / 3 before; its leases are taken
  over P - M after that renewal was seen, plus one tick (< M / 3) and one CAS: within
  one lease period of the kill.
- Renewals every P / 3 give the holder two attempts before its deadline.

The heartbeat and the renewals run apart from everything else: in a thread of their own,
with their own event loop and NATS connection, when the member is given `keepalive_kv`
(cloudcore and the `member` command are), else in a task of the member's loop (the unit
tests' in-memory KV). A shard's event loop can be held for seconds at a time by a
takeover of tens of thousands of nodes (a loop lag of 2.5-7.4 s at 100,000 nodes); in a
task, each await of a renewal round waited that long and a 15 s lease lapsed; in the
thread a round takes a NATS round trip whatever the shard's loop is doing.

Callbacks: `on_change(Change)` is awaited in order, one at a time. A lost partition is
announced *before* its lease is released on a rebalance or a clean stop, so a shard's
sync hub can unsubscribe before another shard subscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from cloudcore.cluster.errors import (
    CASConflict,
    ClusterError,
    ConfigError,
    KVUnavailable,
    MemberNameTaken,
)
from cloudcore.cluster.kv import KV, Bucket, Entry, Watch
from shared import topics
from shared.backoff import Backoff

log = logging.getLogger("cloudcore.cluster.leases")

GLOBAL_KEY = "global"
T = TypeVar("T")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


TAKE_ROUNDS = 3
"""Rounds of takes in one rebalance when some were lost to another member's CAS."""


def partition_key(p: int) -> str:
    return f"partition.{p:02x}"


def partition_of(key: str) -> int | None:
    if not key.startswith("partition."):
        return None
    try:
        return int(key[len("partition."):], 16)
    except ValueError:
        return None


def shares(members: Iterable[str], partitions: int = topics.PARTITIONS) -> dict[str, int]:
    """Each live member's target: `partitions // n`, the first `partitions % n` in name
    order one more. Every member computes the same from the same set."""
    names = sorted(set(members))
    if not names:
        return {}
    base, extra = divmod(partitions, len(names))
    return {m: base + (1 if i < extra else 0) for i, m in enumerate(names)}


@dataclass(frozen=True)
class LeaseSettings:
    """One member's lease behaviour. Times in seconds."""

    name: str  # member name, unique among live members ([A-Za-z0-9_-], 1-64)
    lease_period: float = 15.0  # a dead member's leases are taken within this long
    margin: float | None = None  # clock-rate allowance (None: period / 10): others take a
    # lease unchanged for period - margin, the holder gives up at period - 2 x margin
    tick: float | None = None  # how often to check (None: min(margin / 3, period / 15))
    partitions: int = topics.PARTITIONS
    replicas: int = 1  # bucket copies: 1 on a single server, 3 on a cluster
    bucket_prefix: str = "edgefed"  # buckets <prefix>_members and <prefix>_leases

    @property
    def margin_s(self) -> float:
        return self.margin if self.margin is not None else self.lease_period / 10

    @property
    def tick_s(self) -> float:
        return self.tick if self.tick is not None else min(self.margin_s / 3,
                                                           self.lease_period / 15)

    @property
    def expiry(self) -> float:
        """Seconds a key must stay at one revision before others may take it."""
        return self.lease_period - self.margin_s

    @property
    def renew_every(self) -> float:
        return self.lease_period / 3

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"name: {self.name!r} must be 1-64 of [A-Za-z0-9_-]",
                              field="cluster.name")
        if self.lease_period < 0.5:
            raise ConfigError("lease_period: at least 0.5 s", field="cluster.lease_period")
        if not 0 < self.margin_s < self.renew_every:
            raise ConfigError(f"margin: must be in (0, lease_period / 3 = "
                              f"{self.renew_every:.2f}) s", field="cluster.margin")
        if not 0 < self.tick_s < self.margin_s:
            raise ConfigError(f"tick: must be in (0, margin = {self.margin_s:.2f}) s: the "
                              "holder must notice its deadline before others may take over",
                              field="cluster.tick")
        if not 1 <= self.partitions <= 256:
            raise ConfigError("partitions: 1..256", field="cluster.partitions")
        if self.replicas < 1:
            raise ConfigError("replicas: at least 1", field="cluster.replicas")
        if not re.match(r"^[A-Za-z0-9_-]{1,32}$", self.bucket_prefix):
            raise ConfigError("bucket_prefix: 1-32 of [A-Za-z0-9_-]",
                              field="cluster.bucket_prefix")


@dataclass(frozen=True)
class Change:
    """What changed for this member at one moment; `owned` is the set after it."""

    acquired: frozenset[int]
    lost: frozenset[int]
    owned: frozenset[int]
    global_acquired: bool = False
    global_lost: bool = False
    holds_global: bool = False
    reason: str = ""  # "acquire", "rebalance", "expired", "conflict", "stop"


OnChange = Callable[[Change], Awaitable[None]]


@dataclass
class _Seen:
    """A key as the watch showed it, and when (our monotonic clock) this revision came."""

    revision: int
    seen_at: float
    holder: str = ""
    instance: str = ""
    deleted: bool = False


@dataclass
class _Held:
    revision: int
    renewed_at: float  # monotonic time just before the write that made `revision`


@dataclass
class _View:
    keys: dict[str, _Seen] = field(default_factory=dict)


class Member:
    """One shard's membership and leases. `await member.run()` joins, keeps the leases
    balanced until cancelled, then releases them (announcing the loss first) and
    leaves. Raises MemberNameTaken if another live member has the name, ClusterError
    subclasses on a fatal failure; a NATS outage is not fatal (leases lapse and are
    announced lost; they are taken again when NATS is back)."""

    def __init__(self, kv: KV, settings: LeaseSettings, *, on_change: OnChange | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 keepalive_kv: Callable[[], KV] | None = None) -> None:
        """`keepalive_kv`: makes the (unconnected) KV of a second NATS connection, for
        the heartbeat and renewals in a thread of their own (module docstring)."""
        settings.validate()
        self.kv = kv
        self.settings = settings
        self.name = settings.name
        self.instance = secrets.token_hex(6)
        self._on_change = on_change
        self._clock = clock
        self._owned: dict[int, _Held] = {}
        # lease key -> lease announced lost and not deleted yet: still renewed while the
        # change handler runs (a shard's loss of 66,000 nodes ran 42 s at 100,000 nodes),
        # so it does not lapse meanwhile and make this member look dead to the others
        self._releasing: dict[str, _Held] = {}
        self._global: _Held | None = None
        self._leases = _View()
        self._members = _View()
        self._emit_lock = asyncio.Lock()
        self._keepalive_kv = keepalive_kv
        # held through a keepalive round (heartbeat and renewals), by a release while it
        # takes its keys out of `_releasing`, and by a stop while it ends the keepalive:
        # a renewal in flight moves a key's revision, and a delete on the revision seen
        # before it fails (the key then lapses instead of being handed over at once).
        # A threading lock, taken without blocking either loop (`_between_rounds`).
        self._round_lock = threading.Lock()
        # every change of `_owned` and `_global` (never held across an await): the
        # keepalive thread writes renewals into them while this loop takes and drops
        self._state_lock = threading.Lock()
        self._keep_stop = threading.Event()
        self._member_rev = 0
        self._beat_at = 0.0
        self._started_at = clock()
        self._reaped: set[tuple[str, int]] = set()
        self._last_live: list[str] = []
        # member -> revision of its heartbeat key when it was last seen holding an
        # expired lease: out of the live set until that key moves (`live_members`)
        self._dead: dict[str, int] = {}
        self._seq = itertools.count(1)
        self.joined = asyncio.Event()
        self._members_bucket: Bucket | None = None
        self._leases_bucket: Bucket | None = None

    # -- what others may read -------------------------------------------------------

    @property
    def owned(self) -> frozenset[int]:
        return frozenset(self._owned)

    @property
    def holds_global(self) -> bool:
        return self._global is not None

    @property
    def global_revision(self) -> int | None:
        """The revision of the `global` lease key this member last wrote (None: it does
        not hold it). KV revisions only grow and a new holder takes the key by CAS on
        the last one, so this is a fencing token: any write of a later holder carries a
        greater one than any of an earlier holder (`cloudcore.cluster.bindings`)."""
        return self._global.revision if self._global is not None else None

    def partition_revision(self, p: int) -> int | None:
        """The revision of partition `p`'s lease key this member last wrote (None: it
        does not hold it): the partition's fencing token, as `global_revision` is the
        global lease's (`cloudcore.cluster.forecasts`, `.status`, `.shard`'s liveness
        summaries). None as well once the lease is past its own deadline, before the
        guard has dropped it: a process that was paused (SIGSTOP, a stalled VM) and runs
        again must not stamp a write with a token it no longer holds."""
        h = self._owned.get(p)
        if h is None or self._clock() >= self._deadline(h):
            return None
        return h.revision

    def partition_holder(self, p: int) -> str | None:
        """The member holding partition `p` as this member sees it: the lease key is
        held and was renewed within `expiry` (its holder is alive); None while it is
        free, expired or being taken over (`cloudcore.cluster.status`: the eviction
        clock of another shard's node counts only on a live owner's word)."""
        if p in self._owned:
            return self.name
        seen = self._leases.keys.get(partition_key(p))
        if seen is None or seen.deleted or not seen.holder:
            return None
        if self._clock() - seen.seen_at >= self.settings.expiry:
            return None
        return seen.holder

    def live_members(self) -> list[str]:
        """Members whose heartbeat advanced within `expiry`, this member included, less
        those seen holding an expired lease (a live member renews them all).

        A member once seen holding an expired lease stays out until its heartbeat key
        moves again. Its keys are separate writes at separate moments (the heartbeat,
        and each batch of leases renewed from when it was taken), so after a kill -9
        they expire one after another in any observer's view: without this, once the
        first expired batch was taken over the dead member held no expired lease while
        its heartbeat or its other batches were still young, counted as live again, and
        the survivors handed back what they had just taken and took it again when the
        rest expired (two owner changes, two snapshots per moved node; issue 14)."""
        now = self._clock()
        expiry = self.settings.expiry
        members = self._members.keys
        stale: set[str] = set()
        for s in self._leases.keys.values():
            if not s.deleted and s.holder and now - s.seen_at >= expiry:
                stale.add(s.holder)
        for n in stale - {self.name}:
            m = members.get(n)
            self._dead[n] = m.revision if m is not None else 0
        live = {self.name}
        for n, s in members.items():
            if s.deleted or now - s.seen_at >= expiry or n in stale:
                continue
            if n in self._dead:
                if self._dead[n] == s.revision:
                    continue  # not heard from since it was seen dead
                del self._dead[n]  # it wrote its heartbeat since: alive
            live.add(n)
        return sorted(live)

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        prefix = s.bucket_prefix
        members = await self._until_available("open the members bucket", lambda: self.kv.bucket(
            f"{prefix}_members", create=True, replicas=s.replicas,
            ttl=max(60.0, 20 * s.lease_period)))
        leases = await self._until_available("open the leases bucket", lambda: self.kv.bucket(
            f"{prefix}_leases", create=True, replicas=s.replicas))
        self._members_bucket, self._leases_bucket = members, leases
        # a watch whose server died is restarted after two missed idle beats: its view
        # is then at most that old, so a lease period's worth of beats (kv.Bucket.watch)
        beat = min(5.0, max(0.25, s.lease_period / 8))
        mw = await self._until_available("watch the members",
                                         lambda: members.watch(idle_heartbeat=beat))
        lw = await self._until_available("watch the leases",
                                         lambda: leases.watch(idle_heartbeat=beat))
        keepalive: asyncio.Task[None] | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._follow(mw, self._members),
                               name=f"cluster[{self.name}].members-watch")
                tg.create_task(self._follow(lw, self._leases),
                               name=f"cluster[{self.name}].leases-watch")
                try:
                    await self._wait_caught_up(mw, lw)
                    await self._until_available("join", lambda: self._join(members))
                    self.joined.set()
                    tg.create_task(self._guard(), name=f"cluster[{self.name}].guard")
                    keepalive = tg.create_task(
                        self._keepalive(members, leases) if self._keepalive_kv is None
                        else self._keepalive_thread(), name=f"cluster[{self.name}].keepalive")
                    while True:
                        await self._tick(members, leases)
                        await asyncio.sleep(s.tick_s)
                finally:
                    await self._leave(members, leases, keepalive)
                    await mw.stop()
                    await lw.stop()
        except BaseExceptionGroup as eg:
            # one failure inside the group: raise it as itself, not wrapped
            if len(eg.exceptions) == 1:
                raise eg.exceptions[0] from None
            raise

    async def _until_available(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry `call` while NATS is unavailable (a cluster electing a leader, a
        server restarting), with the shared backoff; other errors pass through."""
        backoff = Backoff(initial=0.2, cap=5.0)
        while True:
            try:
                return await call()
            except KVUnavailable as exc:
                delay = backoff.next()
                log.warning("member %s: %s: %s; retrying in %.1f s", self.name, what, exc,
                            delay)
                await asyncio.sleep(delay)

    async def _ours(self, bucket: Bucket, key: str) -> int | None:
        """The key's revision if its current value is this instance's own write (a write
        whose answer was lost, e.g. a timeout during a leader change), else None."""
        try:
            e = await bucket.get(key)
        except ClusterError:
            return None
        if e is None:
            return None
        try:
            doc = json.loads(e.value)
        except ValueError:
            return None
        return e.revision if isinstance(doc, dict) and doc.get("instance") == self.instance \
            else None

    async def _wait_caught_up(self, *watches: Watch) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*(w.caught_up.wait() for w in watches)),
                                   self.kv.settings.request_timeout * 2)
        except TimeoutError as exc:
            raise KVUnavailable("the lease and member watches did not catch up") from exc

    async def _follow(self, watch: Watch, view: _View) -> None:
        async for e in watch:
            self._observe(view, e)

    def _observe(self, view: _View, e: Entry) -> None:
        old = view.keys.get(e.key)
        if old is not None and old.revision >= e.revision:
            return
        holder = instance = ""
        if not e.deleted:
            try:
                doc = json.loads(e.value)
                holder, instance = str(doc.get("holder") or doc.get("name") or ""), \
                    str(doc.get("instance", ""))
            except (ValueError, AttributeError):
                log.warning("lease key %s: unreadable value at revision %d", e.key,
                            e.revision)
        view.keys[e.key] = _Seen(e.revision, self._clock(), holder, instance, e.deleted)

    def _member_value(self) -> bytes:
        return json.dumps({"name": self.name, "instance": self.instance, "pid": os.getpid(),
                           "host": socket.gethostname(), "at": time.time()}).encode()

    def _lease_value(self) -> bytes:
        return json.dumps({"holder": self.name, "instance": self.instance,
                           "n": next(self._seq)}).encode()

    async def _join(self, members: Bucket) -> None:
        """Register our heartbeat key. A key of that name that is still heartbeating
        belongs to someone else (MemberNameTaken); one that stays still for a lease
        period is a dead predecessor's and is taken over by CAS."""
        seen = self._members.keys.get(self.name)
        if seen is not None and not seen.deleted:
            log.info("member %s: a previous %s key exists; waiting up to %.1f s to see "
                     "whether it is alive", self.name, self.name, self.settings.lease_period)
            first = seen.revision
            deadline = seen.seen_at + self.settings.lease_period
            while self._clock() < deadline:
                cur = self._members.keys.get(self.name)
                if cur is None or cur.revision != first:
                    raise MemberNameTaken(self.name)
                await asyncio.sleep(self.settings.tick_s)
            t0 = self._clock()
            try:
                self._member_rev = await members.update(self.name, self._member_value(),
                                                        revision=first)
            except CASConflict as exc:
                raise MemberNameTaken(self.name) from exc
            self._beat_at = t0
            return
        t0 = self._clock()
        try:
            self._member_rev = await members.create(self.name, self._member_value())
        except CASConflict as exc:
            rev = await self._ours(members, self.name)  # our earlier try did succeed
            if rev is None:
                raise MemberNameTaken(self.name) from exc
            self._member_rev = rev
        self._beat_at = t0

    async def _stop_keepalive(self, task: asyncio.Task[None] | None) -> None:
        """End the heartbeat and renewals once `_leave` has announced the loss, between
        two rounds (a round in flight finishes first, so the revisions `_leave` deletes
        on are the keys' last). Left running, a renewal landing during `_leave` made its
        deletes fail, and the next heartbeat found our key deleted and wrote it again: a
        stopped member looked alive for a lease period (issue 14, CI of stop 25)."""
        if task is None or task.done():
            return
        async with self._between_rounds():
            self._keep_stop.set()
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @contextlib.asynccontextmanager
    async def _between_rounds(self) -> AsyncIterator[None]:
        """Hold `_round_lock`: no keepalive round is in flight meanwhile. Polled, so
        neither event loop blocks on it and a cancelled wait leaves it free."""
        while not self._round_lock.acquire(blocking=False):
            await asyncio.sleep(0.005)
        try:
            yield
        finally:
            self._round_lock.release()

    async def _leave(self, members: Bucket, leases: Bucket,
                     keepalive: asyncio.Task[None] | None) -> None:
        """Clean stop: announce every lease lost (they are still renewed meanwhile),
        end the keepalive, then release them and our key."""
        with self._state_lock:
            lost = frozenset(self._owned)
            g = self._global
            self._releasing.update((partition_key(p), h) for p, h in self._owned.items())
            if g is not None:
                self._releasing[GLOBAL_KEY] = g
            self._owned.clear()
            self._global = None
        if lost or g is not None:
            await self._emit(Change(frozenset(), lost, frozenset(), global_lost=g is not None,
                                    reason="stop"))
        await self._stop_keepalive(keepalive)
        with self._state_lock:
            held = dict(self._releasing)
            self._releasing.clear()
        calls = [leases.delete(k, revision=h.revision) for k, h in held.items()]
        if self._member_rev:
            calls.append(members.delete(self.name, revision=self._member_rev))
        if calls:
            with contextlib.suppress(TimeoutError):
                results = await asyncio.wait_for(
                    asyncio.gather(*calls, return_exceptions=True),
                    self.kv.settings.request_timeout)
                failed = [r for r in results if isinstance(r, BaseException)]
                if failed:
                    log.warning("member %s: %d of %d releases failed (they expire by "
                                "themselves): %s", self.name, len(failed), len(calls),
                                failed[0])

    async def _emit(self, change: Change) -> None:
        if self._on_change is None:
            return
        async with self._emit_lock:
            await self._on_change(change)

    # -- the loop -----------------------------------------------------------------------

    def _deadline(self, h: _Held) -> float:
        return h.renewed_at + self.settings.lease_period - 2 * self.settings.margin_s

    async def _guard(self) -> None:
        """Drop leases past our own deadline even while the main loop waits on NATS."""
        while True:
            await self._expire_own()
            await asyncio.sleep(self.settings.tick_s / 2)

    async def _expire_own(self) -> None:
        now = self._clock()
        with self._state_lock:
            lost = frozenset(p for p, h in self._owned.items() if now >= self._deadline(h))
            g_lost = self._global is not None and now >= self._deadline(self._global)
            if not lost and not g_lost:
                return
            for p in lost:
                del self._owned[p]
            if g_lost:
                self._global = None
        log.warning("member %s: %d lease(s)%s not renewed in time; dropped", self.name,
                    len(lost), " and the global lease" if g_lost else "")
        await self._emit(Change(frozenset(), lost, self.owned, global_lost=g_lost,
                                holds_global=self.holds_global, reason="expired"))

    async def _keepalive(self, members: Bucket, leases: Bucket) -> None:
        """The heartbeat and the renewals, in their own task: the tick awaits `on_change`
        for what it takes or hands back, and a shard's takeover of tens of thousands of
        nodes can run longer than a lease period on a busy loop (95 s for 50,000 nodes in
        the 100,000-node shard kill, issue 14). Behind it, the heartbeat and renewals
        stopped, every lease lapsed, the others reaped the member and took its partitions
        while it was still taking them over, and the leases went round the shards for
        good."""
        while True:
            change = await self._round(members, leases)
            if change is not None:
                await self._emit(change)
            await asyncio.sleep(self.settings.tick_s)

    async def _round(self, members: Bucket, leases: Bucket) -> Change | None:
        async with self._between_rounds():
            if self._keep_stop.is_set():
                return None
            await self._heartbeat(members)
            return await self._renew(leases)

    async def _keepalive_thread(self) -> None:
        """`_keepalive` in a thread of its own, with its own event loop and NATS
        connection (module docstring). Returns never; raises what ends the thread
        (MemberNameTaken); cancelled, stops it (`_stop_keepalive` first waits for the
        round in flight) and waits for it."""
        assert self._keepalive_kv is not None
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def end(exc: BaseException | None) -> None:
            if not ended.done():
                if exc is None:
                    ended.set_result(None)
                else:
                    ended.set_exception(exc)

        def main() -> None:
            try:
                asyncio.run(self._keepalive_loop(loop))
            except BaseException as exc:  # handed to the member's loop
                loop.call_soon_threadsafe(end, exc)
            else:
                loop.call_soon_threadsafe(end, None)

        thread = threading.Thread(target=main, name=f"cluster[{self.name}].keepalive",
                                  daemon=True)
        thread.start()
        try:
            await ended
        finally:
            self._keep_stop.set()
            await asyncio.to_thread(thread.join, self.kv.settings.request_timeout * 3)
            if thread.is_alive():
                log.warning("member %s: the keepalive thread did not stop", self.name)

    async def _keepalive_loop(self, member_loop: asyncio.AbstractEventLoop) -> None:
        assert self._keepalive_kv is not None
        prefix = self.settings.bucket_prefix
        kv = self._keepalive_kv()
        backoff = Backoff(initial=0.2, cap=5.0)
        while True:  # connect (then nats-py reconnects by itself)
            if self._keep_stop.is_set():
                return
            try:
                await kv.connect()
                break
            except KVUnavailable as exc:
                delay = backoff.next()
                log.warning("member %s: keepalive connection: %s; retrying in %.1f s",
                            self.name, exc, delay)
                await asyncio.sleep(delay)
        try:
            members = await self._until_available(
                "open the members bucket (keepalive)", lambda: kv.bucket(f"{prefix}_members"))
            leases = await self._until_available(
                "open the leases bucket (keepalive)", lambda: kv.bucket(f"{prefix}_leases"))
            while not self._keep_stop.is_set():
                change = await self._round(members, leases)
                if change is not None:  # announced by the member's own loop, in order
                    asyncio.run_coroutine_threadsafe(self._emit(change), member_loop)
                await asyncio.sleep(self.settings.tick_s)
        finally:
            await kv.close()

    async def _tick(self, members: Bucket, leases: Bucket) -> None:
        await self._expire_own()
        await self._reap(members)
        await self._rebalance(leases)
        await self._take_global(leases)

    async def _heartbeat(self, members: Bucket) -> None:
        t0 = self._clock()
        if t0 - self._beat_at < self.settings.renew_every:
            return
        try:
            self._member_rev = await members.update(self.name, self._member_value(),
                                                    revision=self._member_rev)
            self._beat_at = t0
        except CASConflict as exc:
            rev = await self._ours(members, self.name)
            if rev is not None:
                self._member_rev = rev  # an earlier heartbeat did land; beat again soon
                return
            current = await members.get(self.name)
            if current is not None:
                raise MemberNameTaken(self.name) from exc
            # reaped while we could not beat (NATS out of reach for a lease period):
            # our leases lapsed already (the guard said so); join again
            log.warning("member %s: our heartbeat key was removed; joining again", self.name)
            try:
                self._member_rev = await members.create(self.name, self._member_value())
                self._beat_at = t0
            except CASConflict as again:
                raise MemberNameTaken(self.name) from again
        except KVUnavailable as exc:
            log.warning("member %s: heartbeat failed: %s", self.name, exc)

    async def _reap(self, members: Bucket) -> None:
        """Delete the heartbeat keys of members dead in our view (CAS on the revision we
        saw, so a member that just beat is left alone), so that a member joining now
        does not count them live for a whole lease period."""
        now = self._clock()
        for name, seen in list(self._members.keys.items()):
            if name == self.name or seen.deleted or (name, seen.revision) in self._reaped \
                    or now - seen.seen_at < self.settings.expiry:
                continue
            self._reaped.add((name, seen.revision))
            with contextlib.suppress(ClusterError):
                await members.delete(name, revision=seen.revision)
                log.info("member %s: %s stopped heartbeating; its key is removed",
                         self.name, name)

    async def _renew(self, leases: Bucket) -> Change | None:
        """Renew what is due; the loss of leases another member took meanwhile is
        returned, to be announced once the keepalive lock is let go."""
        now = self._clock()
        every = self.settings.renew_every
        with self._state_lock:
            ages = [now - h.renewed_at for h in (*self._owned.values(),
                                                 *self._releasing.values())]
            if self._global is not None:
                ages.append(now - self._global.renewed_at)
            if not ages or max(ages) < every:
                return None
            # one is due: every lease past half its renewal interval goes with it, so
            # the leases renew (and, the member killed, expire) together, not in the
            # phases they were taken in: the batches of a killed shard's leases expired
            # over 6 s, and its partitions were taken over in 3 rounds (issue 14)
            at = every / 2
            due = [(p, h) for p, h in self._owned.items() if now - h.renewed_at >= at]
            g_held = self._global if self._global is not None and \
                now - self._global.renewed_at >= at else None
            going = [(k, h) for k, h in self._releasing.items() if now - h.renewed_at >= at]

        async def renew(key: str, h: _Held) -> tuple[str, _Held | None, BaseException | None]:
            t0 = self._clock()
            try:
                rev = await leases.update(key, self._lease_value(), revision=h.revision)
            except CASConflict as exc:
                # a renewal whose answer was lost may have landed: then the key is ours
                # at a newer revision, written after h.renewed_at, so h.renewed_at is
                # still a safe (early) start for our deadline
                mine = await self._ours(leases, key)
                if mine is None:
                    return key, None, exc
                return key, _Held(mine, h.renewed_at), None
            except ClusterError as exc:
                return key, None, exc
            return key, _Held(rev, t0), None

        jobs = [renew(partition_key(p), h) for p, h in due]
        if g_held is not None:
            jobs.append(renew(GLOBAL_KEY, g_held))
        jobs += [renew(k, h) for k, h in going]
        conflicts: set[int] = set()
        g_conflict = False
        unavailable = 0
        give_back: list[tuple[str, int]] = []
        results = await asyncio.gather(*jobs)
        with self._state_lock:  # each applied only if still the lease renewed
            for key, held, exc in results[len(jobs) - len(going):]:
                if held is not None and key in self._releasing:
                    self._releasing[key] = held
                elif held is None and not isinstance(exc, CASConflict):
                    unavailable += 1
                else:  # taken meanwhile (it was being let go) or deleted: nothing to do
                    self._releasing.pop(key, None)
            for key, held, exc in results[:len(jobs) - len(going)]:
                p = partition_of(key)
                if held is not None:
                    if p is not None and p in self._owned:
                        self._owned[p] = held
                    elif p is None and self._global is not None:
                        self._global = held
                    else:  # dropped by the guard meanwhile: give it back
                        give_back.append((key, held.revision))
                elif isinstance(exc, CASConflict):
                    if p is None:
                        g_conflict = self._global is not None
                        self._global = None
                    elif self._owned.pop(p, None) is not None:
                        conflicts.add(p)
                else:
                    unavailable += 1
        for key, rev in give_back:
            with contextlib.suppress(ClusterError):
                await leases.delete(key, revision=rev)
        if unavailable:
            log.warning("member %s: %d renewal(s) failed (NATS unavailable); retrying",
                        self.name, unavailable)
        if conflicts or g_conflict:
            log.error("member %s: %d lease(s) were taken by another member before we "
                      "renewed them", self.name, len(conflicts) + g_conflict)
            return Change(frozenset(), frozenset(conflicts), self.owned,
                          global_lost=g_conflict, holds_global=self.holds_global,
                          reason="conflict")
        return None

    def _free_or_expired(self, key: str, now: float) -> tuple[bool, int, float] | None:
        """(expired?, revision to CAS on, free since) if the key may be taken now."""
        seen = self._leases.keys.get(key)
        if seen is None:
            return False, 0, self._started_at
        if seen.deleted:
            return False, seen.revision, seen.seen_at
        if now - seen.seen_at >= self.settings.expiry:
            return True, seen.revision, seen.seen_at + self.settings.expiry
        return None

    async def _take(self, leases: Bucket, key: str, revision: int) -> _Held | None:
        t0 = self._clock()
        try:
            if revision == 0:
                rev = await leases.create(key, self._lease_value())
            else:
                rev = await leases.update(key, self._lease_value(), revision=revision)
        except CASConflict:
            return None
        except KVUnavailable as exc:
            log.warning("member %s: taking %s failed: %s", self.name, key, exc)
            return None
        return _Held(rev, t0)

    async def _rebalance(self, leases: Bucket) -> None:
        now = self._clock()
        live = self.live_members()
        if live != self._last_live:
            log.info("member %s: live members %s (were %s)", self.name, live,
                     self._last_live)
            self._last_live = live
        targets = shares(live, self.settings.partitions)
        mine = targets.get(self.name, 0)
        free: list[tuple[int, bool, int, float]] = []
        held_by: dict[str, int] = {}
        for p in range(self.settings.partitions):
            if p in self._owned:
                continue
            key = partition_key(p)
            takeable = self._free_or_expired(key, now)
            if takeable is not None:
                free.append((p, *takeable))
            else:
                seen = self._leases.keys[key]
                held_by[seen.holder] = held_by.get(seen.holder, 0) + 1
        have = len(self._owned)
        if have > mine:
            deficit = sum(max(0, t - held_by.get(m, 0)) for m, t in targets.items()
                          if m != self.name)
            n = min(have - mine, max(0, deficit - len(free)))
            if n > 0:  # the ones taken last: a shard's settled partitions stay put
                log.info("member %s: releasing %d of %d (target %d; live %s; others "
                         "hold %s; %d free)", self.name, n, have, mine, live, held_by,
                         len(free))
                await self._release(leases, list(self._owned)[-n:])
            return
        if not free:
            return
        # free ones first, then expired, each in an order of our own (a hash of our name
        # and the partition): members taking at the same moment mostly try different
        # keys, and what a member takes or hands back (the ones taken last) is spread over
        # the partition space, not one contiguous run of it, so each member gets its
        # share of the nodes too (nodes sit in partitions by a hash of their name; a run
        # of 85 of 256 partitions held none of 18 test nodes, issue 14)
        free.sort(key=lambda t: (t[1], self._order(t[0])))
        picks = free[:max(0, mine - have)]
        reason = "acquire"
        if not picks:
            # Members may briefly disagree on who is live (a newcomer still counts a
            # dead member for one lease period): then free partitions can sit below
            # everyone's target. Whatever stayed free for lease_period / 3 is taken by
            # anyone; the rebalance hands it on once the views agree.
            picks = [f for f in free if now - f[3] >= self.settings.renew_every]
            reason = "stranded"
        if not picks:
            return
        # Two members taking a dead member's share at once pick in different orders, and
        # each loses some CASes to the other: the picks lost are made up from the free
        # ones not tried, at once (`TAKE_ROUNDS`), not at a later tick, when this change's
        # handler has started (a survivor took 10 of its 43, and the other 33 only 3.5 s
        # later, after the first takeover: two takeovers, the second one late)
        got: dict[int, _Held] = {}
        tried: list[tuple[int, bool, int, float]] = []
        for _ in range(TAKE_ROUNDS):
            results = await asyncio.gather(*(self._take(leases, partition_key(p), rev)
                                             for p, _, rev, _ in picks))
            tried += picks
            won = {f[0]: h for f, h in zip(picks, results, strict=True) if h is not None}
            kept = await self._confirmed(self._in_time({partition_key(p): h
                                                         for p, h in won.items()}))
            got.update((p, h) for p, h in won.items() if partition_key(p) in kept)
            if reason != "acquire" or len(won) == len(picks):
                break
            untried = {f[0] for f in tried}
            picks = [f for f in free if f[0] not in untried][:max(0, mine - have - len(got))]
            if not picks:
                break
        picks = tried
        if not got:
            return
        with self._state_lock:
            self._owned.update(got)
        log.info("member %s: took %d (%s, %d expired; target %d, had %d; live %s; others "
                 "hold %s; %d free)", self.name, len(got), reason,
                 sum(1 for f in picks if f[1] and f[0] in got), mine, have, live, held_by,
                 len(free))
        await self._emit(Change(frozenset(got), frozenset(), self.owned,
                                holds_global=self.holds_global, reason=reason))

    def _in_time(self, taken: dict[str, _Held]) -> dict[str, _Held]:
        """The takes answered a margin before their own deadline, in time to be renewed.
        A take answered later was lost, or nearly, before it was known to be won, and its
        write may have landed any time since it was sent: it is not announced, and not
        deleted either (it lapses as any unrenewed lease). An R3 bucket without a stream
        leader (one of three servers killed) held takes for 3-5 s; the member announced
        them and dropped them at its next guard tick, 9-54 ms later, while the other
        member held them (test_members_on_a_three_server_cluster, CI of stop 25)."""
        now = self._clock()  # a margin before it: one tick and a renewal's round trip
        late = [k for k, h in taken.items()
                if now >= self._deadline(h) - self.settings.margin_s]
        if late:
            log.warning("member %s: %d take(s) answered after their deadline (%.1f s "
                        "after they were sent); not taken", self.name, len(late),
                        now - min(taken[k].renewed_at for k in late))
        return {k: h for k, h in taken.items() if k not in late}

    async def _confirmed(self, taken: dict[str, _Held]) -> dict[str, _Held]:
        """The takes the leases' watch shows as their key's latest write. A take is a
        compare-and-set, so none should be overtaken; but Debian's nats-server 2.9.10
        accepted two members' CAS writes on the same keys at once just after a stream
        leader change (R3 bucket, one server killed: 120 partitions taken by both, 7 ms
        apart, CI of 2026-12-07). Both writes are in the stream, in order, so the one
        seen overtaken by another member's write is not announced. Waits for the watch
        at most a request timeout; a take the watch has not shown by then is not
        announced either (it lapses; trusting the CAS then let a member whose watch
        was stalled on a killed server announce partitions another member held)."""
        if not taken:
            return taken
        keys = self._leases.keys
        deadline = self._clock() + self.kv.settings.request_timeout

        def caught_up() -> bool:
            return all((s := keys.get(k)) is not None and s.revision >= h.revision
                       for k, h in taken.items())

        while not caught_up() and self._clock() < deadline:
            await asyncio.sleep(0.005)
        out: dict[str, _Held] = {}
        unseen = 0
        for k, h in taken.items():
            s = keys.get(k)
            if s is None or s.revision < h.revision:
                unseen += 1
            elif s.revision == h.revision or s.instance == self.instance:
                out[k] = h
        if unseen:
            log.warning("member %s: %d lease(s) taken not yet in our watch after %.1f s; "
                        "not taken (they lapse)", self.name, unseen,
                        self.kv.settings.request_timeout)
        if len(out) + unseen < len(taken):
            log.error("member %s: %d lease(s) taken were overtaken by another member's "
                      "write at once (NATS accepted two compare-and-sets); not taken",
                      self.name, len(taken) - len(out) - unseen)
        return out

    def _order(self, p: int) -> int:
        return zlib.crc32(f"{self.name}/{p}".encode())

    async def _release(self, leases: Bucket, parts: list[int]) -> None:
        with self._state_lock:  # still renewed, as releasing, until deleted
            lost = [p for p in parts if p in self._owned]
            self._releasing.update((partition_key(p), self._owned.pop(p)) for p in lost)
        await self._emit(Change(frozenset(), frozenset(lost), self.owned,
                                holds_global=self.holds_global, reason="rebalance"))
        held = await self._stop_releasing([partition_key(p) for p in lost])
        results = await asyncio.gather(
            *(leases.delete(k, revision=h.revision) for k, h in held.items()),
            return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            log.warning("member %s: %d release(s) failed (they expire instead): %s",
                        self.name, len(failed), failed[0])

    async def _stop_releasing(self, keys: list[str]) -> dict[str, _Held]:
        """Take these keys out of `_releasing` between two keepalive rounds: their
        revisions are then the last written, the ones to delete on."""
        async with self._between_rounds():
            with self._state_lock:
                return {k: self._releasing.pop(k) for k in keys if k in self._releasing}

    async def _take_global(self, leases: Bucket) -> None:
        if self._global is not None:
            return
        takeable = self._free_or_expired(GLOBAL_KEY, self._clock())
        if takeable is None:
            return
        held = await self._take(leases, GLOBAL_KEY, takeable[1])
        if held is None or not await self._confirmed(self._in_time({GLOBAL_KEY: held})):
            return
        with self._state_lock:
            self._global = held
        await self._emit(Change(frozenset(), frozenset(), self.owned, global_acquired=True,
                                holds_global=True, reason="acquire"))


__all__ = ["GLOBAL_KEY", "Change", "LeaseSettings", "Member", "OnChange", "partition_key",
           "partition_of", "shares"]
