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

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

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


TAP = """
import asyncio, json, signal, sys, time
from pathlib import Path
from cloudcore.cluster.kv import KV, KVSettings

cfg = json.loads(sys.argv[1])
out = open(cfg["out"], "a", buffering=1)


async def main() -> None:
    kv = KV(KVSettings(urls=tuple(cfg["urls"]), user=cfg["user"], password=cfg["password"],
                       ca_file=Path(cfg["ca"]), client_name="test-lease-tap"))
    await kv.connect()
    leases = await kv.bucket("edgefed_leases")
    members = await kv.bucket("edgefed_members")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def put() -> None:
        name = Path(cfg["put"]).read_text().strip()
        e = await members.get(name)
        await members.put(name, e.value)
        out.write(json.dumps({"put": name, "t": time.monotonic()}) + "\\n")

    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(put()))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    watch = await leases.watch()
    await watch.caught_up.wait()
    out.write(json.dumps({"ready": True}) + "\\n")

    async def follow() -> None:
        async for e in watch:
            holder = "" if e.deleted else str(json.loads(e.value).get("holder", ""))
            out.write(json.dumps({"t": time.monotonic(), "key": e.key, "holder": holder})
                      + "\\n")
    task = asyncio.create_task(follow())
    await stop.wait()
    task.cancel()
    await kv.close()

asyncio.run(main())
"""


class LeaseTap:
    """Every write of the lease bucket, seen by a child process (its own NATS client and
    event loop; a thread here would compile code beside pytest's, which CPython 3.11's
    AST state does not survive): (monotonic time, key, holder or "" for a deletion), in
    revision order. `put_member` has it rewrite a member's heartbeat key."""

    def __init__(self, nats: NatsKV, workdir: Path) -> None:
        self.out = workdir / "lease-tap.jsonl"
        self.put_file = workdir / "lease-tap.put"
        self.cfg = {"urls": list(nats.urls), "user": nats.user, "password": nats.password,
                    "ca": str(nats.ca_file), "out": str(self.out), "put": str(self.put_file)}
        self.proc: subprocess.Popen[bytes] | None = None

    def _lines(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        text = self.out.read_text()
        return [json.loads(x) for x in text[:text.rfind("\n") + 1].splitlines()]

    @property
    def seen(self) -> list[tuple[float, str, str]]:
        return [(x["t"], x["key"], x["holder"]) for x in self._lines() if "key" in x]

    def put_member(self, name: str) -> None:
        assert self.proc is not None
        self.put_file.write_text(name + "\n")
        self.proc.send_signal(signal.SIGUSR1)
        wait_for(f"the tap rewrote {name}'s heartbeat key",
                 lambda: any(x.get("put") == name for x in self._lines()), 10, every=0.02)

    def oldest_write(self, holder: str) -> float:
        """When the least recently written of `holder`'s current lease keys was written
        (the monotonic clock, the same in every process)."""
        last: dict[str, tuple[float, str]] = {}
        for ts, key, h in self.seen:
            if key.startswith("partition."):
                last[key] = (ts, h)
        return min(ts for ts, h in last.values() if h == holder)

    def holders(self) -> dict[str, str]:
        """partition key -> its holder now ("" when released)."""
        out: dict[str, str] = {}
        for _, key, holder in self.seen:
            if key.startswith("partition."):
                out[key] = holder
        return out

    def changes_since(self, t: float) -> dict[str, list[str]]:
        """partition key -> the holders it had after `t`, one entry per change of holder
        (renewals by the same holder are not changes; a release is "")."""
        seen = self.seen
        now = {key: holder for ts, key, holder in seen
               if ts <= t and key.startswith("partition.")}
        out: dict[str, list[str]] = {}
        for ts, key, holder in seen:
            if ts <= t or not key.startswith("partition."):
                continue
            if holder != now.get(key):
                out.setdefault(key, []).append(holder)
                now[key] = holder
        return out

    @contextmanager
    def running(self) -> Iterator[LeaseTap]:
        with (self.out.parent / "lease-tap.log").open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", TAP, json.dumps(self.cfg)],
                                         stderr=log, cwd=Path(__file__).parents[2])
        try:
            wait_for("the lease tap caught up",
                     lambda: any(x.get("ready") for x in self._lines())
                     or self.proc is None or self.proc.poll() is not None, 30)
            assert self.proc.poll() is None, (self.out.parent / "lease-tap.log").read_text()
            yield self
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def test_a_shard_kill_moves_each_partition_once(tmp_path: Path) -> None:
    with sharded_fleet(tmp_path, SHARDS, NODES, HEARTBEAT) as sf, \
            LeaseTap(sf.nats, tmp_path).running() as tap:
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
