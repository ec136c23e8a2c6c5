"""Errors of cloudcore.cluster (shards' shared state on NATS JetStream KV).

    CloudcoreError                       (cloudcore.errors)
    ├── ConfigError                      bad cluster settings; nothing was started
    └── ClusterError                     base of what this package raises at run time
        ├── KVUnavailable (+TemporaryError)  NATS or JetStream cannot be reached now: retry
        ├── BucketMissing                the bucket does not exist and was not to be made
        ├── CASConflict                  a create/update/delete expected another revision
        ├── KVRefused                    NATS answered with an error (permissions, limits)
        └── MemberNameTaken              another live member already uses this name

nats-py's exceptions are wrapped in `cloudcore.cluster.kv` (the only nats importer) with
`raise ... from exc`: callers only ever see this tree.
"""

from __future__ import annotations

from cloudcore.errors import CloudcoreError, ConfigError, TemporaryError


class ClusterError(CloudcoreError):
    """Base of every run-time error of cloudcore.cluster."""


class KVUnavailable(ClusterError, TemporaryError):
    """NATS is unreachable, timed out, or JetStream has no leader right now; `delay` says
    when a retry makes sense. Nothing is known to have been written."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        TemporaryError.__init__(self, message, delay=delay)


class BucketMissing(ClusterError):
    """The named bucket does not exist (open it with `create=True` to make it)."""

    def __init__(self, bucket: str) -> None:
        super().__init__(f"KV bucket {bucket!r} does not exist on this NATS cluster "
                         "(open it with create=True, or check the account/domain)")
        self.bucket = bucket


class CASConflict(ClusterError):
    """A compare-and-set lost: the key was not at `expected` (0 = absent or deleted)."""

    def __init__(self, bucket: str, key: str, expected: int, detail: str = "") -> None:
        what = "to be absent" if expected == 0 else f"at revision {expected}"
        super().__init__(f"KV {bucket}/{key}: expected {what}, but it changed"
                         + (f" ({detail})" if detail else ""))
        self.bucket = bucket
        self.key = key
        self.expected = expected


class KVRefused(ClusterError):
    """NATS refused the call (permissions, a limit, a bad name); retrying will not help."""


class MemberNameTaken(ClusterError):
    """Another live member heartbeats under this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"member name {name!r} is in use by a live member (its heartbeat "
                         "advanced while we waited one lease period); pick another --name "
                         "or stop the other process")
        self.name = name


__all__ = ["BucketMissing", "CASConflict", "ClusterError", "ConfigError", "KVRefused",
           "KVUnavailable", "MemberNameTaken"]
