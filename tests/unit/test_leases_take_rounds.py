"""Issue 14: two members taking a dead member's share at once each get their whole share
in one change.

They pick the expired leases in different orders, so each loses some compare-and-sets
to the other. The picks lost used to wait for the next tick: in the 100,000-node shard
kill a survivor took 10 of its 43 partitions, started their takeover, and took the other
33 only 3.5 s later, a second takeover. The lost picks are now made up at once from the
free leases not tried.

Cloudcore.cluster.leases.Member in one event loop against the in-memory KV of
test_cluster_member_logic."""

from __future__ import annotations

import asyncio
import contextlib

from unit.test_cluster_member_logic import ALL, PERIOD, Log, Store, member, until


async def test_each_survivor_takes_its_share_of_a_dead_member_in_one_change() -> None:
    store, log = Store(), Log()
    dead = member(store, log, "C")
    tasks = [asyncio.create_task(dead.run())]
    try:
        await until(lambda: log.owned("C") == ALL and dead.holds_global, 10)
        store.cut.add("C")  # as killed: it renews nothing from now on
        a, b = member(store, log, "A"), member(store, log, "B")
        tasks += [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
        await until(lambda: len(log.owned("A")) == len(log.owned("B")) == 128, PERIOD * 20)
        takes = {who: [len(c.acquired) for w, c in log.events if w == who and c.acquired]
                 for who in ("A", "B")}
        assert takes == {"A": [128], "B": [128]}, takes
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
    log.check_exclusive()
