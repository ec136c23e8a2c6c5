"""Issue 14: a member stopped while a renewal is in flight hands back every lease and
removes its heartbeat key, at once.

The heartbeat and renewals run in their own task (test_leases_slow_handler). At a stop,
that task used to run on while the member released its leases: a renewal landing then
moved the keys' revisions, so the releases (a delete on the revision seen before) failed
and the leases lapsed instead of being handed over; and the next heartbeat found the
member's key deleted and wrote it again, so a stopped member looked alive for a lease
period (CI of stop 25: 85 of 87 releases failed, "our heartbeat key was removed; joining
again", and the process did not exit).

Cloudcore.cluster.leases.Member in one event loop against the in-memory KV of
test_cluster_member_logic, whose answers to updates can be made to come late."""

from __future__ import annotations

import asyncio
import contextlib

from unit.test_cluster_member_logic import PERIOD, Log, Store, member, until


async def test_a_stop_during_a_renewal_hands_back_every_lease_and_its_key() -> None:
    store, log = Store(), Log()
    a = member(store, log, "A")
    task = asyncio.create_task(a.run())
    await until(lambda: len(log.owned("A")) == 256 and a.holds_global, 10)
    store.answer_delay = PERIOD / 3  # a renewal lands at once, its answer comes late
    await until(lambda: store.in_flight > 0, PERIOD * 3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, PERIOD * 5)
    store.answer_delay = 0.0
    await asyncio.sleep(PERIOD * 2)  # whatever of A still ran would write by now
    left = sorted(f"{b}/{k}" for (b, k), e in store.keys.items() if not e.deleted)
    assert left == [], f"a stopped member left keys behind: {left}"
    assert log.owned("A") == set() and not a.holds_global
