"""The fenced liveness summary (issue 14, proposal 0008 "Fencing") against a real
nats-server with JetStream KV: the compare-and-sets `Shard.write_liveness` relies on are
NATS's own (a write on a revision that moved is refused; a key deleted since is written
on its deletion marker's revision), not a fake's.

Two `Shard`s over real fleet cores share one real status bucket; their lease tokens are
given (the leases themselves are tested in test_cluster_leases.py): S1 held the
partition with token 5, S2 took it with token 9."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudcore.cluster.kv import KV, KVSettings
from shared import topics
from testbed.natskv import NatsKV

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloudcore"))
from cloudcore_fakes import fenced_shard

pytestmark = pytest.mark.integration

NODE = "n1"
P = topics.partition_of(NODE)
KEY = f"liveness.{topics.pp(P)}"


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsKV]:
    with NatsKV(rundir=tmp_path_factory.mktemp("nats-fence"), servers=1) as srv:
        yield srv


def test_the_liveness_fence_holds_on_nats(nats: NatsKV) -> None:
    async def scenario() -> None:
        kv = KV(KVSettings(urls=tuple(nats.urls), user=nats.user, password=nats.password,
                           ca_file=nats.ca_file, connect_timeout=3.0, request_timeout=3.0))
        await kv.connect()
        try:
            bucket = await kv.bucket("fencetest_status", create=True)

            async def doc() -> dict[str, object]:
                e = await bucket.get(KEY)
                assert e is not None
                got: dict[str, object] = json.loads(e.value)
                return got

            s1, s2 = fenced_shard("S1", bucket, 5, NODE), fenced_shard("S2", bucket, 9, NODE)
            await s1._summaries([P])  # absent: S1's first write creates the key
            assert await s1.write_liveness(P, [NODE])
            await s2._summaries([P])  # S2 takes over: reads it and its revision
            assert await s2.write_liveness(P, [NODE])
            # S1 runs again after a pause and writes what it still believes is its own
            assert not await s1.write_liveness(P, [NODE])
            assert (await doc())["shard"] == "S2" and s1.liveness_fenced == 1

            # a late S1 write that landed after S2's: S2 writes over it at once
            late = json.dumps({"shard": "S1", "fence": 5, "nodes": {}}).encode()
            await bucket.put(KEY, late)
            assert await s2.write_liveness(P, [NODE])
            assert (await doc())["fence"] == 9 and s2.liveness_healed == 1

            # the key deleted meanwhile (a purge by hand): written again on the marker
            await bucket.delete(KEY)
            assert await s2.write_liveness(P, [NODE])
            assert (await doc())["shard"] == "S2"
        finally:
            await kv.close()

    asyncio.run(scenario())
