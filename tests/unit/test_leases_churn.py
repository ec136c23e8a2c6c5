"""Issue 14: the lease decisions after a kill -9 and at start, with
cloudcore.cluster.leases.Member in one event loop against the in-memory KV of
test_cluster_member_logic (NATS's revision and CAS semantics, a member that can be cut
off as by kill -9).

- After a kill, each of the dead member's partitions changes owner once. Before the fix
  its last heartbeat could be seen after its last renewal (separate writes): the
  survivors took its expired leases, then it counted as live again (young heartbeat, no
  expired lease left) and they handed them back, and took them again when the heartbeat
  expired: two owner changes, two snapshots per moved node.
- At start, when one member took every partition before the others joined, each member
  ends up with nodes of a small fleet. Before, a member took and handed back contiguous
  runs of the partition space (from an offset of its name), so with shards G1-G3 and the
  18 nodes `sim-0..17` of tests/integration/test_shard_gates.py one shard held 85
  partitions and not one node, whatever the wait.

The real thing (nats-server, cloudcore shards, kill -9) is
tests/integration/test_shard_kill_once.py."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from unit.test_cluster_member_logic import PERIOD, FakeKV, Log, Store, member, until

from cloudcore.cluster.leases import LeaseSettings, Member
from shared import topics

KILL_PERIOD = 1.5  # long enough that the premise below holds on a loaded machine
LATE = 0.4  # the dead member's last heartbeat is seen this long after the kill


def lease_ages(m: Member, holder: str) -> list[float]:
    """Ages of `holder`'s lease keys in `m`'s view (how long each has stayed at the
    revision `m` saw)."""
    now = time.monotonic()
    return [now - s.seen_at for s in m._leases.keys.values()
            if s.holder == holder and not s.deleted]


async def kill_with_a_late_heartbeat() -> tuple[Log, set[int], int] | None:
    """A, B and C split the partitions; C is cut off (kill -9) and its heartbeat key is
    written LATE seconds later, as its last heartbeat is seen when it landed after its
    last lease renewal. None if the premise did not hold: when the heartbeat was
    written, A or B already had one of C's leases within 0.3 s of expiry (the event
    loop starved on a loaded machine), so the write could be taken as a sign of life
    after C was seen dead, which the rule allows."""
    store, log = Store(), Log()
    ms = [Member(FakeKV(store, n), LeaseSettings(name=n, lease_period=KILL_PERIOD),  # type: ignore[arg-type]
                 on_change=log.recorder(n)) for n in "ABC"]
    ok = True
    async with asyncio.TaskGroup() as tg:
        ts = [tg.create_task(m.run()) for m in ms]
        await until(lambda: sorted(len(log.owned(n)) for n in "ABC") == [85, 85, 86], 30)
        c_had, mark = log.owned("C"), len(log.events)
        store.cut.add("C")  # as kill -9: no renewal, no heartbeat from now on
        await asyncio.sleep(LATE)
        expiry = ms[0].settings.expiry
        if max(age for m in ms[:2] for age in lease_ages(m, "C")) > expiry - 0.3:
            ok = False
        else:  # no await between the check and the write
            key = next(k for k in store.keys if k[0].endswith("_members") and k[1] == "C")
            store.write(key[0], "C", store.keys[key].value, "put")
            await until(lambda: len(log.owned("A")) + len(log.owned("B")) == 256,
                        KILL_PERIOD * 10)
            await asyncio.sleep(KILL_PERIOD * 2)  # past the expiry of that heartbeat
        for t in ts:
            t.cancel()
    log.check_exclusive()
    return (log, c_had, mark) if ok else None


async def test_a_killed_members_partitions_change_owner_once() -> None:
    for _ in range(5):
        got = await kill_with_a_late_heartbeat()
        if got is not None:
            break
    else:
        pytest.fail("the machine is too loaded: in 5 tries the late heartbeat could not "
                    "be written while the dead member's leases were still young")
    log, c_had, mark = got
    taken: dict[int, int] = {}
    for who, ch in log.events[mark:]:
        if who != "C" and ch.reason != "stop":
            assert not ch.lost & c_had, f"{who} handed back {len(ch.lost & c_had)} of C's"
            for p in ch.acquired & c_had:
                taken[p] = taken.get(p, 0) + 1
    assert taken == dict.fromkeys(c_had, 1)


async def test_a_member_alive_again_after_its_leases_expired_is_counted_again() -> None:
    """The other side of the rule above: a member whose leases lapsed while it was cut
    off (a NATS outage) counts as live again once its heartbeat moves, and gets its share
    back."""
    store, log = Store(), Log()
    a, b, c = (member(store, log, n) for n in "ABC")
    async with asyncio.TaskGroup() as tg:
        ts = [tg.create_task(m.run()) for m in (a, b, c)]
        await until(lambda: sorted(len(log.owned(n)) for n in "ABC") == [85, 85, 86], 20)
        store.cut.add("C")
        await until(lambda: len(log.owned("A")) + len(log.owned("B")) == 256, PERIOD * 10)
        store.cut.discard("C")
        for w in store.watches:
            w.flush()
        await until(lambda: sorted(len(log.owned(n)) for n in "ABC") == [85, 85, 86],
                    PERIOD * 20)
        for t in ts:
            t.cancel()
    log.check_exclusive()


NODE_PARTITIONS = {topics.partition_of(f"sim-{i}") for i in range(18)}


@pytest.mark.parametrize("names", [("G1", "G2", "G3"), ("S1", "S2", "S3"),
                                   ("K1", "K2", "K3")])
async def test_members_joining_one_by_one_each_get_nodes(names: tuple[str, ...]) -> None:
    """Every start order: the first alone takes all 256, the second joins (128 each),
    then the third."""
    for order in itertools.permutations(names):
        store, log = Store(), Log()
        async with asyncio.TaskGroup() as tg:
            ts = []
            for i, n in enumerate(order, 1):
                ts.append(tg.create_task(member(store, log, n).run()))
                want = sorted(topics.PARTITIONS // i + (1 if k < topics.PARTITIONS % i else 0)
                              for k in range(i))
                await until(lambda joined=order[:i], want=want, log=log: sorted(
                    len(log.owned(m)) for m in joined) == want, PERIOD * 20)
            held = {n: log.owned(n) for n in names}
            for t in ts:
                t.cancel()
        log.check_exclusive()
        for n in names:
            assert held[n] & NODE_PARTITIONS, \
                f"joined in the order {order}: {n} holds none of the 18 nodes' partitions"
