"""A shard kill moves each orphaned partition once (issue 14), with real processes: a
nats-server with JetStream, a secure mosquitto, three `cloudcore --shard` processes and
a simulated fleet (tests/integration/shard_fleet.py).

The test follows the lease bucket itself (a KV watch from this process: every write of
every partition key, with its holder) and the simulated nodes' counters. After kill -9
of the shard holding the most nodes, it writes that shard's heartbeat key once more, 0.6
of a renewal period later, as its last heartbeat is seen when it landed that long after
its last lease renewal (separate writes, each due every lease period / 3 on its own
schedule, so a kill can fall between them; at 20,000 nodes this ordering made the
survivors take the dead shard's partitions, hand them back when it looked alive again,
and take them again: two owner changes and two snapshots per moved node). Asserted,
once the survivors hold everything and the dead shard's heartbeat key has expired too:
each of its partitions changed holder exactly once (to a survivor, never back, never
between survivors), no survivor's own partition moved, and the nodes received exactly
one snapshot per moved node."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cloudcore.cluster.kv import KV, KVSettings
from integration.shard_fleet import sharded_fleet
from integration.test_shards import (
    HEARTBEAT,
    LEASE,
    daemonset,
    owners,
    pytestmark,  # noqa: F401  (needs nats-server and mosquitto)
    wait_for,
)
from testbed.natskv import NatsKV

NODES = 30
SHARDS = ("K1", "K2", "K3")


class LeaseTap:
    """Every write of the lease bucket seen from here: (monotonic time, key, holder or
    "" for a deletion), in revision order; `put_member` rewrites a member's key."""

    def __init__(self, nats: NatsKV) -> None:
        self.settings = KVSettings(urls=tuple(nats.urls), user=nats.user,
                                   password=nats.password, ca_file=nats.ca_file,
                                   client_name="test-lease-tap")
        self.seen: list[tuple[float, str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._kv: KV | None = None
        self._task: Any = None

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> None:
        self._kv = KV(self.settings)
        await self._kv.connect()
        bucket = await self._kv.bucket("edgefed_leases")
        watch = await bucket.watch()

        async def follow() -> None:
            async for e in watch:
                holder = "" if e.deleted else str(json.loads(e.value).get("holder", ""))
                self.seen.append((time.monotonic(), e.key, holder))
        self._task = asyncio.ensure_future(follow())

    def put_member(self, name: str) -> None:
        async def put() -> None:
            assert self._kv is not None
            members = await self._kv.bucket("edgefed_members")
            e = await members.get(name)
            assert e is not None, f"no heartbeat key for {name}"
            await members.put(name, e.value)
        self._run(put())

    def oldest_write(self, holder: str) -> float:
        """When the least recently written of `holder`'s current lease keys was written
        (this process's monotonic clock)."""
        last: dict[str, tuple[float, str]] = {}
        for ts, key, h in list(self.seen):
            if key.startswith("partition."):
                last[key] = (ts, h)
        return min(ts for ts, h in last.values() if h == holder)

    def holders(self) -> dict[str, str]:
        """partition key -> its holder now ("" when released)."""
        out: dict[str, str] = {}
        for _, key, holder in list(self.seen):
            if key.startswith("partition."):
                out[key] = holder
        return out

    def changes_since(self, t: float) -> dict[str, list[str]]:
        """partition key -> the holders it had after `t`, one entry per change of holder
        (renewals by the same holder are not changes; a release is "")."""
        now = self.holders_at(t)
        out: dict[str, list[str]] = {}
        for ts, key, holder in list(self.seen):
            if ts <= t or not key.startswith("partition."):
                continue
            if holder != now.get(key):
                out.setdefault(key, []).append(holder)
                now[key] = holder
        return out

    def holders_at(self, t: float) -> dict[str, str]:
        out: dict[str, str] = {}
        for ts, key, holder in list(self.seen):
            if ts <= t and key.startswith("partition."):
                out[key] = holder
        return out

    def stop(self) -> None:
        async def close() -> None:
            if self._task is not None:
                self._task.cancel()
            if self._kv is not None:
                await self._kv.close()
        try:
            self._run(close(), 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    @contextmanager
    def running(self) -> Iterator[LeaseTap]:
        self._thread.start()
        try:
            self._run(self._start())
            yield self
        finally:
            self.stop()


def test_a_shard_kill_moves_each_partition_once(tmp_path: Path) -> None:
    with sharded_fleet(tmp_path, SHARDS, NODES, HEARTBEAT) as sf, \
            LeaseTap(sf.nats).running() as tap:
        shards = {s.name: s for s in sf.shards}

        def one_owner_each() -> dict[str, str] | None:
            o = owners(sf.shards)
            if len(o) == NODES and all(len(v) == 1 for v in o.values()) \
                    and len({v[0] for v in o.values()}) == len(SHARDS):
                return {n: v[0] for n, v in o.items()}
            return None

        own = wait_for("every node Ready on one shard, nodes on every shard",
                       one_owner_each, 120)
        sf.shards[0].call("/api/v1/apply", {"documents": [daemonset("once")]})
        wait_for("the DaemonSet on every node",
                 lambda: len(sf.pods("once-")) == NODES, 60, every=0.5)
        wait_for("the partitions settled (no holder change for two lease periods)",
                 lambda: not tap.changes_since(time.monotonic() - 2 * LEASE)
                 and len(tap.holders()) == 256, 60, every=0.5)
        before = tap.holders()
        per_shard = {n: sum(1 for o in own.values() if o == n) for n in SHARDS}
        victim = shards[max(per_shard, key=lambda n: per_shard[n])]
        moved = sorted(n for n, o in own.items() if o == victim.name)
        theirs = {k for k, h in before.items() if h == victim.name}
        snapshots0 = sf.sim_stats()["snapshots_in"]
        print(f"nodes per shard {per_shard}; killing {victim.name} ({len(moved)} nodes, "
              f"{len(theirs)} partitions)")

        t_kill = time.monotonic()
        victim.proc.kill()
        # its last heartbeat, seen most of a renewal period after its last renewal (each
        # is due every lease / 3 on its own schedule, so a kill can fall between them)
        time.sleep(0.6 * LEASE / 3)
        oldest = tap.oldest_write(victim.name)
        tap.put_member(victim.name)
        if time.monotonic() - oldest > 0.9 * LEASE - 0.5:
            # its renewals were already late (a starved machine): the survivors may have
            # seen it dead before this write, which then counts as a sign of life
            pytest.skip(f"{victim.name}'s oldest lease was {time.monotonic() - oldest:.1f}"
                        " s old at its late heartbeat: too loaded to stage this kill")
        survivors = [s for s in sf.shards if s is not victim]

        def taken_over() -> bool:
            h = tap.holders()
            if len(h) != 256 or any(x in ("", victim.name) for x in h.values()):
                return False
            o = owners(survivors)
            return all(len(o.get(n, [])) == 1 for n in own)

        wait_for("every partition and node on a survivor", taken_over, 10 * LEASE)
        print(f"taken over in {time.monotonic() - t_kill:.1f} s")
        # past the expiry of the dead shard's heartbeat key (written after the kill) and
        # two more lease periods: a hand-back and second take would have shown by then
        time.sleep(4 * LEASE)
        wait_for("the nodes' counters written", lambda: sf.sim_stats()[
            "snapshots_in"] >= snapshots0 + len(moved), 10)
        time.sleep(2)  # one more stats write
        changes = tap.changes_since(t_kill)
        snapshots = sf.sim_stats()["snapshots_in"] - snapshots0
        print(f"holder changes after the kill: {sum(len(v) for v in changes.values())} "
              f"for {len(theirs)} partitions; snapshots {snapshots} for {len(moved)} moved "
              "nodes")
        survivors_names = {s.name for s in survivors}
        twice = {k: v for k, v in changes.items() if len(v) != 1}
        assert not twice, f"partitions that changed holder more than once: {twice}"
        assert set(changes) == theirs, (
            f"changed: {len(changes)}, the dead shard's: {len(theirs)}; survivors' own that "
            f"moved: {sorted(set(changes) - theirs)}")
        assert all(v[0] in survivors_names for v in changes.values())
        assert snapshots == len(moved), f"{snapshots} snapshots for {len(moved)} moved nodes"
        assert len(sf.pods("once-")) == NODES
