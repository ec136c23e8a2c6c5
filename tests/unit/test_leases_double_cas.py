"""Issue 14: a lease taken by two members at once is announced by one only.

A take is a compare-and-set on the lease key, so two members never both succeed. Yet
Debian's nats-server 2.9.10 accepted both members' writes on 120 of the same partition
keys, 7 ms apart, just after a stream leader change (an R3 bucket with one of three
servers killed: tests/integration/test_cluster_leases.py, CI of 2026-12-07); both
announced the partitions for 1.4 s, until the first one's renewal failed. Both writes
are in the stream in order, so the member whose write was overtaken sees it in its
watch before announcing, and does not take the lease.

Cloudcore.cluster.leases.Member in one event loop against the in-memory KV of
test_cluster_member_logic, with B's compare-and-sets not checked (as that server did)."""

from __future__ import annotations

import asyncio

from unit.test_cluster_member_logic import ALL, Log, Store, member, until


async def test_a_lease_written_by_two_members_is_announced_by_the_later_only() -> None:
    store, log = Store(), Log()
    store.lax.add("B")  # B's takes succeed whatever the key's revision
    a, b = member(store, log, "A"), member(store, log, "B")
    async with asyncio.TaskGroup() as tg:
        ta = tg.create_task(a.run())
        tb = tg.create_task(b.run())
        await until(lambda: log.owned("A") | log.owned("B") == ALL
                    and len(log.owned("A")) == len(log.owned("B")) == 128, 20)
        ta.cancel()
        tb.cancel()
    log.check_exclusive()  # no partition announced by both at any point
