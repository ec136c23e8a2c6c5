"""Issue 14: a member's leases are renewed together, not in the phases they were taken in.

Each lease used to be renewed lease_period / 3 after its own last renewal, so leases
taken at different moments kept their own phases: the leases of a shard killed at
100,000 nodes expired in batches over 6 s, and the survivors took them over in three
rounds (three takeovers, and two partitions handed on once more). When one lease is due,
every lease past half its renewal interval now goes with it.

Cloudcore.cluster.leases.Member's renewal round against the in-memory KV of
test_cluster_member_logic, on a clock of the test's own."""

from __future__ import annotations

import asyncio

from unit.test_cluster_member_logic import PERIOD, FakeKV, Store

from cloudcore.cluster.leases import LeaseSettings, Member, _Held, partition_key


def test_leases_past_half_their_interval_are_renewed_with_a_due_one() -> None:
    store = Store()
    now = [100.0]
    m = Member(FakeKV(store, "A"), LeaseSettings(name="A", lease_period=PERIOD),  # type: ignore[arg-type]
               clock=lambda: now[0])
    every = m.settings.renew_every
    ages = {0: every * 1.1, 1: every * 0.7, 2: every * 0.3}  # due, past half, fresh

    async def run() -> dict[int, float]:
        leases = await m.kv.bucket("edgefed_leases")
        for p, age in ages.items():
            rev = await leases.create(partition_key(p), m._lease_value())
            m._owned[p] = _Held(rev, now[0] - age)
        await m._renew(leases)
        return {p: h.renewed_at for p, h in m._owned.items()}

    renewed = asyncio.run(run())
    assert renewed[0] == renewed[1] == now[0]  # the due one, and the one past half
    assert renewed[2] == now[0] - ages[2]  # not yet: it joins the next round
