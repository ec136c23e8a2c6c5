"""The fenced write round of the shards' holder (`cloudcore.cluster.fenced`): what NATS
refused comes back by index for the next round, logged once; any other error is raised.
A bucket stand-in (the round's logic only; the real bucket is exercised by the shard
integration tests)."""

from __future__ import annotations

import logging

import pytest

from cloudcore.cluster.errors import KVUnavailable
from cloudcore.cluster.fenced import delete_all, put_all

log = logging.getLogger("test.fenced")


class Bucket:
    def __init__(self, refuse: set[str], *, bug: str | None = None) -> None:
        self.refuse = refuse
        self.bug = bug
        self.data: dict[str, bytes] = {}

    async def put(self, key: str, value: bytes) -> int:
        if key == self.bug:
            raise RuntimeError("a bug")
        if key in self.refuse:
            raise KVUnavailable(f"put {key}: NATS/JetStream unavailable")
        self.data[key] = value
        return len(self.data)

    async def delete(self, key: str) -> None:
        if key in self.refuse:
            raise KVUnavailable(f"delete {key}: NATS/JetStream unavailable")
        self.data.pop(key, None)


async def test_refused_writes_come_back_by_index_and_are_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    bucket = Bucket({"b", "d"})
    with caplog.at_level(logging.WARNING, logger="test.fenced"):
        bad = await put_all(bucket, [(k, k.encode()) for k in "abcd"],  # type: ignore[arg-type]
                            log=log, what="pod binding(s)", shard="S1")
    assert bad == [1, 3] and bucket.data == {"a": b"a", "c": b"c"}
    [rec] = caplog.records
    assert rec.getMessage().startswith("shard S1: 2 pod binding(s) not written yet: put b")
    bucket.refuse = {"c"}
    assert await delete_all(bucket, ["a", "c"], log=log, what="key(s)",  # type: ignore[arg-type]
                            shard="S1") == [1]
    assert bucket.data == {"c": b"c"}


async def test_an_error_that_is_not_the_clusters_is_raised() -> None:
    with pytest.raises(RuntimeError, match="a bug"):
        await put_all(Bucket(set(), bug="b"), [("a", b""), ("b", b"")],  # type: ignore[arg-type]
                      log=log, what="x", shard="S1")
