"""shared.topics.partition_of: the node -> partition map every shard pass asks (liveness
summaries, forecasts, takeovers, the hub's ownership gate) is one cache for the process,
bounded: the names of nodes deleted long ago are let go (issue 14; it replaced three
per-object caches, two of them unbounded)."""

from __future__ import annotations

import zlib

from shared import topics


def test_a_nodes_partition_is_its_crc32_and_the_cache_is_bounded() -> None:
    topics.partition_of.cache_clear()
    names = [f"gone-{i}" for i in range(topics.PARTITION_CACHE + 1000)]
    for n in names:
        assert topics.partition_of(n) == zlib.crc32(n.encode()) % topics.PARTITIONS
    info = topics.partition_of.cache_info()
    assert info.currsize == topics.PARTITION_CACHE  # full, not grown past its bound
    assert info.misses == len(names)
    assert topics.partition_of(names[-1]) == zlib.crc32(names[-1].encode()) % 256
    assert topics.partition_of.cache_info().hits == 1  # a recent name is remembered
    topics.partition_of(names[0])  # the oldest was let go: computed again
    assert topics.partition_of.cache_info().misses == len(names) + 1
    topics.partition_of.cache_clear()
