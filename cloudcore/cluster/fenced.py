"""The one write path of the global lease holder's decisions to KV (issue 14, proposal
0008): the pod bindings (`cloudcore.cluster.bindings`), the rollout steps
(`cloudcore.cluster.rollouts`) and the agent upgrade batches
(`cloudcore.cluster.upgrades`) all write a batch of values, each carrying the holder's
fencing token, at once, and keep what NATS refused for their next round.

`put_all` is that round (`delete_all` for deletes): every value put concurrently; a
`ClusterError` (NATS unreachable, a refusal) is returned for its key so the caller keeps
it for later, any other exception is a bug and propagates. What token a value carries
stays with each caller (their values differ); the refusal of a value read under an
older token is `cloudcore.cluster.replica.HolderReplica._accepts`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from cloudcore.cluster.errors import ClusterError
from cloudcore.cluster.kv import Bucket

RETRY_S = 1.0
"""Seconds a writer waits before it tries values NATS refused again."""


async def put_all(bucket: Bucket, items: Sequence[tuple[str, bytes]], *,
                  log: logging.Logger, what: str, shard: str) -> list[int]:
    """Put every `(key, value)` of `items` at once. Returns the indexes (into `items`)
    that were not written because of a `ClusterError` (logged once for the round, with
    the first error, as "N <what> not written yet"); any other error is raised."""
    return await _round([bucket.put(k, v) for k, v in items], log=log, shard=shard,
                        what=f"{what} not written yet")


async def delete_all(bucket: Bucket, keys: Sequence[str], *, log: logging.Logger,
                     what: str, shard: str) -> list[int]:
    """Delete every key of `keys` at once; as `put_all` ("N <what> not deleted yet")."""
    return await _round([bucket.delete(k) for k in keys], log=log, shard=shard,
                        what=f"{what} not deleted yet")


async def _round(calls: list[Coroutine[Any, Any, Any]], *, log: logging.Logger, what: str,
                 shard: str) -> list[int]:
    got = await asyncio.gather(*calls, return_exceptions=True)
    failed: list[int] = []
    first: ClusterError | None = None
    for i, r in enumerate(got):
        if isinstance(r, ClusterError):
            failed.append(i)
            first = first or r
        elif isinstance(r, BaseException):
            raise r
    if first is not None:
        log.warning("shard %s: %d %s: %s", shard, len(failed), what, first)
    return failed


__all__ = ["RETRY_S", "delete_all", "put_all"]
