"""A shard's replica of one bucket of the global lease holder's decisions (issue 14,
proposal 0008): the shape the pod bindings (`cloudcore.cluster.bindings`), the rollout
steps (`cloudcore.cluster.rollouts`) and the AgentUpgrade batches
(`cloudcore.cluster.upgrades`) share, so that each of them keeps only what its values
mean.

`HolderReplica` owns:
- the replica's loop (`run`): open the bucket, start the writer and the subclass's
  other tasks (`_tasks`), watch the bucket (each key's last value, then changes),
  handing every value to `apply_entry`, calling `_caught_up` once when the watch has
  reported the values that existed, and yielding to the event loop every
  `APPLY_SLICE` values (a catch-up, a big batch);
- who decides (`decides`: caught up and holding the global lease) and the holder's
  token check when it marks a value to write (`_as_holder`);
- the fencing of what it reads (`_accepts`): a value written under a global lease
  token smaller than one seen (or than the holder's own) is refused, counted in
  `fenced` and logged;
- the holder's write loop (`_writer`): woken by `_wake`, one `_write_round` after
  another while this shard decides and has a token, `RETRY_S` between rounds that NATS
  refused part of (`cloudcore.cluster.fenced` writes them and says which);
- the optional periodic tasks: a committer (`_commit` set: `_commit_now` at most every
  `COMMIT_S`) and a retrier (`_retry` every `RETRY_S`, for values read before what
  they apply to was here).

What a value holds, which token it carries, how it is applied, what catching up
does and what a round writes stay with each subclass.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from cloudcore.cluster.fenced import RETRY_S
from cloudcore.cluster.kv import KV, Bucket, Entry

COMMIT_S = 0.05
"""Seconds at least between two commits of the fleet by a replica's committer (a batch
of thousands of changes is one commit, not one each)."""

Task = tuple[str, Callable[[], Coroutine[Any, Any, None]]]


class HolderReplica(ABC):
    """A shard's copy of a bucket the global lease holder writes (module docstring)."""

    NAME: ClassVar[str]
    """The replica's name in its tasks' names (`cloudcore[<shard>].<NAME>.writer`)."""
    NOUN: ClassVar[str]
    """What one value is, in log lines ("binding")."""
    APPLY_SLICE: ClassVar[int | None] = None
    """Values applied between two yields to the event loop; None: no yield."""
    log: ClassVar[logging.Logger]
    """The subclass module's logger."""

    def __init__(self, fleet: Any, *, shard: str, holds_global: Callable[[], bool],
                 fence: Callable[[], int | None]) -> None:
        self.fleet = fleet
        self.shard = shard
        self._holds = holds_global
        self._fence = fence
        self.caught_up = False
        self.max_fence = 0
        """The greatest fencing token seen in the bucket (a value carrying a smaller one
        is a former holder's, late: refused)."""
        self.fenced = 0
        """Values refused for their stale fencing token."""
        self.bucket: Bucket | None = None
        self.writes = 0
        self._wake = asyncio.Event()
        """Set when the holder has something to write."""
        self._commit = asyncio.Event()
        """Set when the fleet is to be committed (`_committer`)."""
        self._out_fence: int | None = None

    # -- what a subclass provides -------------------------------------------------------

    @abstractmethod
    def bucket_name(self, prefix: str) -> str:
        """The bucket's name under the cluster's `prefix`."""

    @abstractmethod
    def apply_entry(self, e: Entry) -> None:
        """One value (or delete) of the bucket, as the watch delivers it."""

    def _tasks(self) -> list[Task]:
        """The tasks `run` starts beside the watch: (role, coroutine function)."""
        return [("writer", self._writer)]

    async def _caught_up(self) -> None:
        """The watch has reported every value that existed when it started."""
        self.caught_up = True

    @abstractmethod
    def _to_write(self) -> bool:
        """Whether the holder has something to write."""

    @abstractmethod
    async def _write_round(self, fence: int) -> bool:
        """Write one round under token `fence`; False if NATS refused part of it (what
        was not written kept for a later round)."""

    def _drop_unwritten(self) -> None:
        """What was marked to write under an earlier lease token is dropped
        (`_as_holder`). A replica that marks nothing ahead of its rounds (the bindings:
        they are written as they are decided) has nothing to drop."""
        return

    def _commit_now(self) -> None:
        self.fleet.commit()

    def _retry(self) -> None:
        """Apply again what could not be applied when it was read (by `_retrier`, which
        only replicas that keep such values start); nothing by default."""
        return

    # -- shared -------------------------------------------------------------------------

    def decides(self) -> bool:
        """Whether this shard decides for the fleet now: its replica caught up and it
        holds the global lease."""
        return self.caught_up and self._holds()

    def _as_holder(self) -> bool:
        """Whether this shard decides now; what it marked under an earlier lease token
        and never wrote is dropped (the holders since decided afresh)."""
        if not self.decides():
            return False
        fence = self._fence()
        if fence != self._out_fence:
            self._drop_unwritten()
            self._out_fence = fence
        return True

    async def run(self, kv: KV, *, prefix: str, replicas: int = 1) -> None:
        """Watch the bucket and write the holder's values until cancelled."""
        self.bucket = await kv.bucket(self.bucket_name(prefix), create=True,
                                      replicas=replicas)
        async with asyncio.TaskGroup() as tg:
            for role, work in self._tasks():
                tg.create_task(work(), name=f"cloudcore[{self.shard}].{self.NAME}.{role}")
            watch = await self.bucket.watch(">")
            try:
                if watch.caught_up.is_set():
                    await self._caught_up()
                n = 0
                async for e in watch:
                    self.apply_entry(e)
                    if not self.caught_up and watch.caught_up.is_set():
                        await self._caught_up()
                    n += 1
                    if self.APPLY_SLICE and n % self.APPLY_SLICE == 0:
                        await asyncio.sleep(0)
            finally:
                await watch.stop()

    def _unreadable(self, e: Entry) -> None:
        self.log.warning("shard %s: unreadable %s %s (revision %d); ignored", self.shard,
                         self.NOUN, e.key, e.revision)

    def _accepts(self, e: Entry, fence: int, *, own: int | None = None) -> bool:
        """Whether a value written under global lease token `fence` is taken: not if a
        greater token was seen in the bucket (`max_fence`) or, given `own` (the holder's
        own token), `own` is greater: a former holder paused past its lease, writing
        late (counted in `fenced`, logged). A value taken raises `max_fence` to its
        token."""
        if fence < self.max_fence or (own is not None and fence < own):
            self.fenced += 1
            self.log.warning("shard %s: %s %s (revision %d) refused: written under global "
                             "lease token %d, token %d seen before (a former holder's "
                             "late write)", self.shard, self.NOUN, e.key, e.revision,
                             fence, max(self.max_fence, own or 0))
            return False
        self.max_fence = fence
        return True

    async def _writer(self) -> None:
        """The holder's writes, one `_write_round` after another while this shard
        decides and has a token; `RETRY_S` after a round NATS refused part of."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._to_write() and self.decides():
                fence = self._fence()
                if fence is None or self.bucket is None:
                    break  # the lease is going: never write without a token
                if not await self._write_round(fence):
                    await asyncio.sleep(RETRY_S)

    async def _committer(self) -> None:
        """`_commit_now` after `_commit` is set; at most every `COMMIT_S`."""
        while True:
            await self._commit.wait()
            self._commit.clear()
            self._commit_now()
            await asyncio.sleep(COMMIT_S)

    async def _retrier(self) -> None:
        while True:
            await asyncio.sleep(RETRY_S)
            self._retry()


__all__ = ["COMMIT_S", "HolderReplica"]
