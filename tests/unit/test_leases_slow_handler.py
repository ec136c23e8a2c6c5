"""Issue 14: a lease-change handler that runs longer than the lease period does not cost
the member its leases.

A shard's `on_change` for an acquisition takes its nodes over (a new epoch and a snapshot
each); with 100,000 nodes on 3 shards one such takeover of 50,000 nodes ran 95 s on a
busy loop. The member's tick awaits the handler, and the heartbeat and renewals used to
be in that tick: they stopped, every lease lapsed, the other members reaped the member
and took its partitions while it was still taking them over (and its "expired"
announcement waited behind the handler, so the log had two holders at once), and the
leases went round the shards without end. Now the heartbeat and renewals run in their
own task.

Cloudcore.cluster.leases.Member in one event loop against the in-memory KV of
test_cluster_member_logic (NATS's revision and CAS semantics)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from unit.test_cluster_member_logic import PERIOD, FakeKV, Log, Store, member, until

from cloudcore.cluster.leases import Change, LeaseSettings, Member

SLOW = PERIOD * 4  # the first acquisition's handler runs this long (the loop stays free)


def slow_member(store: Store, log: Log,
                slow: Callable[[Change], bool]) -> tuple[Member, asyncio.Event, asyncio.Event]:
    """Member A whose handler of the first change `slow` picks runs SLOW seconds (many
    nodes taken over or let go, yielding as it goes); the events: in it, done."""
    record = log.recorder("A")
    in_handler, handler_done = asyncio.Event(), asyncio.Event()

    async def slow_on_change(c: Change) -> None:
        await record(c)
        if slow(c) and not in_handler.is_set():
            in_handler.set()
            await asyncio.sleep(SLOW)
            handler_done.set()

    a = Member(FakeKV(store, "A"), LeaseSettings(name="A", lease_period=PERIOD),  # type: ignore[arg-type]
               on_change=slow_on_change)
    return a, in_handler, handler_done


def nothing_lapsed(log: Log) -> None:
    log.check_exclusive()
    lapsed = [(who, c.reason) for who, c in log.events if c.reason in ("expired", "conflict")]
    assert not lapsed, f"leases lapsed or were taken from under their holder: {lapsed}"


async def test_a_handler_longer_than_the_lease_period_keeps_the_leases() -> None:
    store, log = Store(), Log()
    a, in_handler, handler_done = slow_member(store, log, lambda c: bool(c.acquired))
    b = member(store, log, "B")
    async with asyncio.TaskGroup() as tg:
        ta = tg.create_task(a.run())
        await until(in_handler.is_set, 10)
        took = set(log.owned("A"))
        assert len(took) == 256
        tb = tg.create_task(b.run())  # a second member joins while A is in its handler
        await until(handler_done.is_set, SLOW * 5)
        # A was heard and kept every lease through a handler four lease periods long
        assert b.live_members() == ["A", "B"], "B counted A dead while A took over"
        assert a.owned == took, "A's leases lapsed while its handler ran"
        assert not log.owned("B") & took, "B took A's partitions during A's handler"
        # then they share as usual: A hands B its half, announced before released
        await until(lambda: len(log.owned("A")) == len(log.owned("B")) == 128, PERIOD * 20)
        ta.cancel()
        tb.cancel()
    nothing_lapsed(log)


async def test_leases_being_released_are_renewed_until_the_handler_is_done() -> None:
    """A member hands partitions back (a second member joined): it announces the loss,
    its handler runs (a shard's loss of 66,000 nodes ran 42 s at 100,000 nodes), and
    only then deletes the keys. Before, those leases were no longer renewed from the
    announcement on: they lapsed during the handler, the other member took them as
    expired and counted the first as dead (it held expired leases), and the targets
    went round (issue 14, the 100,000-node shard kill of 2026-12-07)."""
    store, log = Store(), Log()
    a, releasing, handed_back = slow_member(
        store, log, lambda c: bool(c.lost) and c.reason == "rebalance")
    b = member(store, log, "B")
    async with asyncio.TaskGroup() as tg:
        ta = tg.create_task(a.run())
        await until(lambda: len(log.owned("A")) == 256, 10)
        tb = tg.create_task(b.run())
        await until(releasing.is_set, 10)
        seen_live: list[list[str]] = []
        while not handed_back.is_set():
            seen_live.append(b.live_members())
            assert not log.owned("B") & log.owned("A") and len(log.owned("B")) == 0, \
                "B took partitions A was still handing back"
            await asyncio.sleep(PERIOD / 10)
        assert all(live == ["A", "B"] for live in seen_live), \
            f"B counted A dead while A handed partitions back: {seen_live}"
        await until(lambda: len(log.owned("A")) == len(log.owned("B")) == 128, PERIOD * 20)
        ta.cancel()
        tb.cancel()
    nothing_lapsed(log)
