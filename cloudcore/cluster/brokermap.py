"""The partition -> broker map shared by shards (issue 14, proposal 0008; the map itself
is proposal 0007).

Bucket `<prefix>_brokermap`, one key `map`, value JSON `{"map": BrokerMap.to_value(),
"by": shard, "what": the change}`. A change through any shard's API (`move`, `add`,
`drain`, `remove`, the `BrokerTierPort` of `cloudcore.api.brokermap`) is computed from
the newest map (the bucket's, or this shard's own while the bucket has none: every
shard starts from the same `--broker` flags) and written by compare-and-set on the
key's revision, so two changes through two shards at once are applied one after the
other (the loser's is computed again from the winner's map). Every shard watches the
key and makes each newer map the one in force with `BrokerTier.adopt`, exactly as a
change made in one process is: persisted in its store, its connections to a broker
added or removed opened or closed, and the `broker/-/map` entry put into the desired
set of every node whose list changed (each shard delivers only to its own nodes; the
others' sets hold it too, so a node taken over keeps it). The call answers once this
shard applied the change (15 s bound, then 503: the change is durable).

The checks of a change are the tier's, against the map it is computed from; the
"sessions still on the broker" check of a remove counts only the nodes this shard
heard there (each shard hears its own nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from cloudcore.cluster.errors import CASConflict
from cloudcore.cluster.kv import KV, Bucket, Entry
from cloudcore.cluster.objects import NotConnected, NotReplicated
from cloudcore.errors import Conflict, NotFound
from shared.brokermap import BrokerMap
from shared.errors import ObjectError

log = logging.getLogger("cloudcore.cluster.brokermap")

KEY = "map"
TRIES = 10
"""Compare-and-set attempts of one change while other shards' changes keep winning."""


def brokermap_bucket(prefix: str) -> str:
    return f"{prefix}_brokermap"


class SharedBrokerMap:
    """The broker tier of a shard (module docstring); wraps this shard's
    `cloudcore.synchub.brokers.BrokerTier`."""

    def __init__(self, tier: Any, *, shard: str, applied_wait: float = 15.0) -> None:
        self.tier = tier
        self.shard = shard
        self.applied_wait = applied_wait
        self.bucket: Bucket | None = None
        self._advanced = asyncio.Event()
        self.adopted = 0

    # -- reads --------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        return dict(self.tier.view())

    def for_join(self, node: str) -> tuple[int, list[str]]:
        version, urls = self.tier.for_join(node)
        return int(version), list(urls)

    # -- changes ------------------------------------------------------------------------

    async def move(self, partitions: list[int], to: str) -> dict[str, Any]:
        if not partitions:
            raise ObjectError("partitions: name at least one partition", field="partitions")

        def op(m: BrokerMap) -> BrokerMap:
            _known(m, to)
            return m.move(partitions, to)
        more = "..." if len(partitions) > 8 else ""
        return await self._change(op, f"moved partitions {partitions[:8]}{more} to {to}")

    async def add(self, name: str, url: str) -> dict[str, Any]:
        return await self._change(lambda m: m.add(name, url), f"added broker {name} {url}")

    async def drain(self, name: str) -> dict[str, Any]:
        def op(m: BrokerMap) -> BrokerMap:
            _known(m, name)
            if not [n for n, b in m.brokers.items() if b.state == "active" and n != name]:
                raise Conflict(f"broker {name!r} is the only active broker; add another "
                               "before draining it")
            return m.drain(name)
        return await self._change(op, f"draining broker {name}")

    async def remove(self, name: str, *, force: bool = False) -> dict[str, Any]:
        def op(m: BrokerMap) -> BrokerMap:
            _known(m, name)
            homed = m.homes()[name]
            if homed:
                raise Conflict(f"broker {name!r} is still home of {len(homed)} "
                               "partition(s); drain it (or move them) first")
            sessions = self.tier.view()["brokers"].get(name, {}).get("sessions", 0)
            if sessions and not force:
                raise Conflict(
                    f"broker {name!r} still has {sessions} session(s) on shard "
                    f"{self.shard} (nodes last heard there); wait until `fedctl get "
                    "brokers` shows 0 on every shard, or force it (`fedctl brokers remove "
                    "--force`, ?force=true): those nodes are cut off until their next "
                    "retry of their home broker")
            return m.remove(name)
        return await self._change(op, f"removed broker {name}")

    async def _change(self, op: Callable[[BrokerMap], BrokerMap], what: str
                      ) -> dict[str, Any]:
        if self.bucket is None:
            raise NotConnected("the shard is not connected to the shared store (NATS) yet; "
                               "retry", delay=1.0)
        bucket = self.bucket
        for _ in range(TRIES):
            e = await bucket.get(KEY)
            shared = _parse(e) if e is not None else None
            here: BrokerMap = self.tier.map
            current = shared if shared is not None and shared.version >= here.version \
                else here
            new = op(current)
            if new is current:
                return self.view()
            raw = json.dumps({"map": new.to_value(), "by": self.shard, "what": what},
                             separators=(",", ":")).encode()
            try:
                if e is None:
                    await bucket.create(KEY, raw)
                else:
                    await bucket.update(KEY, raw, revision=e.revision)
            except CASConflict:
                continue  # another shard's change went first: computed again from it
            await self._wait_applied(new.version)
            return self.view()
        raise Conflict("the broker map: changes through other shards kept winning; "
                       "try again")

    async def _wait_applied(self, version: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.applied_wait
        while self.tier.map.version < version:
            left = deadline - loop.time()
            if left <= 0:
                raise NotReplicated(
                    f"broker map version {version} written to the shared store, but shard "
                    f"{self.shard} applied only up to version {self.tier.map.version} "
                    f"within {self.applied_wait:g} s: the change is durable and every "
                    "shard applies it", delay=1.0)
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._advanced.wait()

    # -- the replica --------------------------------------------------------------------

    async def run(self, kv: KV, *, prefix: str, replicas: int = 1) -> None:
        """Watch the shared map and adopt every newer version until cancelled."""
        self.bucket = await kv.bucket(brokermap_bucket(prefix), create=True,
                                      replicas=replicas)
        watch = await self.bucket.watch(KEY)
        try:
            async for e in watch:
                await self.apply_entry(e)
        finally:
            await watch.stop()

    async def apply_entry(self, e: Entry) -> None:
        if e.deleted:
            return
        new = _parse(e)
        if new is None:
            log.warning("shard %s: unreadable broker map in the shared store (revision "
                        "%d); ignored", self.shard, e.revision)
            return
        if new.version > self.tier.map.version:
            try:
                doc = json.loads(e.value)
                what = f"{doc.get('what') or 'changed'} (through shard {doc.get('by')})"
            except ValueError:
                what = "changed through another shard"
            await self.tier.adopt(new, what)
            self.adopted += 1
        elif new.version < self.tier.map.version:
            log.warning("shard %s: the shared broker map is version %d, this shard's "
                        "version %d: the next change through any shard starts from this "
                        "shard's", self.shard, new.version, self.tier.map.version)
        self._advanced.set()


def _known(m: BrokerMap, name: str) -> None:
    if name not in m.brokers:
        raise NotFound("broker", name)


def _parse(e: Entry) -> BrokerMap | None:
    try:
        return BrokerMap.from_value(json.loads(e.value)["map"])
    except (ValueError, KeyError, TypeError, ObjectError):
        return None


__all__ = ["SharedBrokerMap", "brokermap_bucket"]
