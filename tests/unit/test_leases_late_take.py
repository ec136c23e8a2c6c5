"""Issue 14: a take answered after its own deadline is not announced.

An R3 bucket without a stream leader (one of three NATS servers killed) held a member's
takes for 5 s and then applied them, on a revision another member had meanwhile taken
and handed back (nats-server 2.9.10). The member announced all 256 partitions and
dropped them at its next guard tick, 9 ms later, while the other member held them: two
owners (tests/integration/test_cluster_leases.py::test_members_on_a_three_server_cluster,
CI of stop 25). A lease answered after its deadline was lost before it was known to be
won, so it is not announced at all.

Cloudcore.cluster.leases.Member in one event loop against the in-memory KV of
test_cluster_member_logic, whose answers can be made to come late."""

from __future__ import annotations

import asyncio
import contextlib

from unit.test_cluster_member_logic import ALL, PERIOD, Log, Store, member, until


async def test_takes_answered_too_late_are_not_announced() -> None:
    store, log = Store(), Log()
    store.answer_delay = PERIOD  # longer than the holder's deadline (PERIOD * 0.8)
    b = member(store, log, "B")
    task = asyncio.create_task(b.run())
    try:
        await until(lambda: store.in_flight > 0, PERIOD * 3)  # its takes are out
        await asyncio.sleep(PERIOD * 4)
        announced = [c for who, c in log.events if c.acquired or c.global_acquired]
        assert announced == [], (
            f"{len(announced)} change(s) announced takes answered after their deadline")
        store.answer_delay = 0.0  # answers in time again: it takes everything
        await until(lambda: log.owned("B") == ALL and b.holds_global, PERIOD * 10)
        assert not any(c.reason == "expired" for _, c in log.events)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, PERIOD * 5)
    log.check_exclusive()
