"""Shared node forecasts (`cloudcore.cluster.forecasts`) through a real nats-server,
with two real lease members (`cloudcore.cluster.leases.Member`, TLS and a password) in
one event loop: each member's shard forecasts its own node with a real forecaster (the
shipped ONNX model) and writes its partitions' values under its real partition lease
tokens; the other shard's scheduler lookup gets the node's forecast through the bucket's
watch. When B stops (its leases released, A takes its partitions), A drops B's
forecasts within its applier's recheck, no tick needed: the partition is its own now
and it has heard no telemetry of the node."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudcore.cluster.forecasts import SharedForecasts
from cloudcore.cluster.kv import KV, KVSettings
from cloudcore.cluster.leases import LeaseSettings, Member
from cloudcore.fleet.forecast import forecast_of
from cloudcore.forecaster import default_model_path
from cloudcore.forecaster.runner import ForecastRunner
from shared import topics
from testbed.natskv import NatsKV

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloudcore"))
from cloudcore_fakes import GI, add_node, make_fleet

pytestmark = pytest.mark.integration

PREFIX = "fctest"
T0 = 1_800_000_000 // 60 * 60


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsKV]:
    with NatsKV(rundir=tmp_path_factory.mktemp("nats-fc"), servers=1) as srv:
        yield srv


def kv_settings(srv: NatsKV) -> KVSettings:
    return KVSettings(urls=tuple(srv.urls), user=srv.user, password=srv.password,
                      ca_file=srv.ca_file, connect_timeout=3.0, request_timeout=3.0)


async def until(what: str, cond: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class ShardSide:
    """A member, its fleet core over `nodes`, its forecaster and its shared forecasts."""

    def __init__(self, member: Member, nodes: list[str]) -> None:
        self.member = m = member
        self.fleet = make_fleet()
        for n in nodes:
            add_node(self.fleet, n)
        self.shared = SharedForecasts(self.fleet, shard=m.name, owns=lambda p: p in m.owned,
                                      holder=m.partition_holder, fence=m.partition_revision,
                                      instance=lambda: m.instance, interval=60.0)
        self.runner = ForecastRunner(default_model_path(), capacity_nodes=16,
                                     apply=self.fleet.apply_forecasts,
                                     known=lambda: self.fleet.nodes,
                                     origins=self.fleet.scheduler.forecast_made,
                                     exchange=self.shared.exchange)
        self.fleet.observer = self.runner.observe

    def forecast(self, node: str) -> dict[str, float] | None:
        return forecast_of(self.fleet.nodes[node].status.usage)


async def test_a_shards_forecast_reaches_the_other_through_nats(nats: NatsKV) -> None:
    async with KV(kv_settings(nats)) as kv_a, KV(kv_settings(nats)) as kv_b:
        a_member = Member(kv_a, LeaseSettings(name="A", lease_period=2.0,
                                              bucket_prefix=PREFIX))
        b_member = Member(kv_b, LeaseSettings(name="B", lease_period=2.0,
                                              bucket_prefix=PREFIX))
        tasks = [asyncio.create_task(a_member.run()), asyncio.create_task(b_member.run())]
        try:
            await until("the members to split the partitions", lambda: (
                a_member.owned and b_member.owned
                and len(a_member.owned | b_member.owned) == topics.PARTITIONS
                and all(b_member.partition_holder(p) == "A" for p in a_member.owned)
                and all(a_member.partition_holder(p) == "B" for p in b_member.owned)))
            names = [f"node-{i}" for i in range(200)]
            hot = next(n for n in names if topics.partition_of(n) in b_member.owned)
            a1 = next(n for n in names if topics.partition_of(n) in a_member.owned)
            a, b = ShardSide(a_member, [hot, a1]), ShardSide(b_member, [hot, a1])
            tasks += [asyncio.create_task(a.shared.run(kv_a, prefix=PREFIX)),
                      asyncio.create_task(b.shared.run(kv_b, prefix=PREFIX))]
            for side, node, cpu in ((b, hot, 0.97), (a, a1, 0.3)):
                side.fleet.add_telemetry(node, [
                    {"ts": T0 + 60 * m, "node": {"cpu": cpu if m < 50 else 1.0,
                                                 "mem": 0.5 * 8 * GI}, "pods": {}}
                    for m in range(60)])
            b.runner.tick()
            a.runner.tick()
            mine = b.forecast(hot)
            assert mine is not None and mine["cpu_p90"] > 0.95
            assert a.forecast(hot) is None  # before the value arrives
            theirs = await until(f"A to get {hot}'s forecast from B through NATS",
                                 lambda: a.forecast(hot))
            assert theirs == pytest.approx(mine, abs=1e-4)
            got = await until(f"B to get {a1}'s forecast from A", lambda: b.forecast(a1))
            assert got == pytest.approx(a.forecast(a1), abs=1e-4)
            assert b.shared.writes >= 1 and a.shared.writes >= 1
            assert a.shared.fenced == 0 and a.shared.unreadable == 0

            # B stops: its leases are released, A takes hot's partition and drops B's
            # value (the partition is A's own, and A heard nothing of hot), no tick needed
            tasks[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[1]
            await until("A to take B's partitions",
                        lambda: topics.partition_of(hot) in a_member.owned)
            await until(f"A to drop B's forecast of {hot}", lambda: a.forecast(hot) is None)
            assert a.forecast(a1) is not None
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
