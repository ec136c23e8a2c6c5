"""A node's forecast through a shard that does not own it (issue 14, proposal 0008
"Placement"), with real processes: a nats-server, a secure mosquitto, two `cloudcore
--shard` processes and a simulated fleet (tests/integration/shard_fleet.py).

The simulator sends no telemetry, so no shard can forecast its nodes here; the test
writes the value the owning shard's tick would write (`cloudcore.cluster.forecasts
.encode`: the owner's name, its partition lease's current revision as the token, now)
into the forecasts bucket, and reads the node through the other shard's API: `GET
/api/v1/nodes/<node>` shows the forecast (the scheduler's lookup reads the same
`status.usage`). A value claiming to be from the shard that does not hold the
partition is not shown, and the owner's value made stale (its time 3 forecast intervals
old) takes the forecast away. The owner's own writing, from its forecaster, through
NATS is tests/integration/test_shard_forecasts_kv.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from cloudcore.cluster.forecasts import bucket_name, encode, key_of
from cloudcore.cluster.kv import KV, KVSettings
from cloudcore.cluster.leases import partition_key
from integration.shard_fleet import one_owner_each, sharded_fleet
from integration.test_shards import (
    HEARTBEAT,
    pytestmark,  # noqa: F401  (needs nats-server and mosquitto)
    wait_for,
)
from shared import topics
from testbed.natskv import NatsKV

NODES = 8
SHARDS = ("F1", "F2")
FC = {"cpu_p50": 0.4, "cpu_p90": 0.9, "mem_p50": 0.25, "mem_p90": 0.5, "trusted": 0.0}


def write_value(nats: NatsKV, node: str, *, shard: str, at: float) -> int:
    """Put the forecasts value of `node`'s partition as shard `shard` would, under the
    partition lease's current revision; returns that token."""
    p = topics.partition_of(node)

    async def put() -> int:
        async with KV(KVSettings(urls=tuple(nats.urls), user=nats.user,
                                 password=nats.password, ca_file=nats.ca_file)) as kv:
            lease = await (await kv.bucket("edgefed_leases")).get(partition_key(p))
            assert lease is not None
            bucket = await kv.bucket(bucket_name("edgefed"), create=True)
            await bucket.put(key_of(p), encode(
                shard=shard, instance="test", fence=lease.revision, at=at,
                results={node: FC}, origins={node: time.time() // 60 * 60}))
            return lease.revision

    return asyncio.run(put())


def usage(shard: Any, node: str) -> dict[str, float]:
    return dict(shard.call(f"/api/v1/nodes/{node}")["status"].get("usage") or {})


def test_a_nodes_forecast_through_a_shard_that_does_not_own_it(tmp_path: Path) -> None:
    with sharded_fleet(tmp_path, SHARDS, NODES, HEARTBEAT) as sf:
        by_name = {s.name: s for s in sf.shards}
        owner = wait_for("every node Ready on one shard, both shards owning some",
                         lambda: one_owner_each(sf.shards, NODES), 90)
        node = sorted(owner)[0]
        mine, other = by_name[owner[node]], by_name[next(s for s in SHARDS
                                                         if s != owner[node])]
        assert "cpu_p90" not in usage(other, node)

        # a value claiming to be the non-owner's is not the partition holder's word
        write_value(sf.nats, node, shard=other.name, at=time.time())
        time.sleep(2)
        assert "cpu_p90" not in usage(other, node)

        write_value(sf.nats, node, shard=mine.name, at=time.time())
        got = wait_for(f"{node}'s forecast through {other.name}",
                       lambda: (u := usage(other, node)).get("cpu_p90") and u, 20)
        assert {k: got[k] for k in FC} == FC

        # the owner's value from 3 intervals (60 s each) and more ago: no forecast
        write_value(sf.nats, node, shard=mine.name, at=time.time() - 3 * 60 - 5)
        wait_for(f"{other.name} to drop the stale forecast of {node}",
                 lambda: "cpu_p90" not in usage(other, node), 20)
