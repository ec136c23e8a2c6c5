"""Every shard's broker identities in every shard's broker files (issue 14, proposal
0008), so that a broker can read any one shard's password file and ACL: no hand merge.

A shard connects to the brokers as `<user>_<shard>_sub` and `_pub<i>` (its own
identities, so shards never take each other's sessions). It publishes them in bucket
`<prefix>_brokerusers`, key `<shard>` (escaped as object keys are), value JSON
`{"users": {username: its mosquitto hash, or null without a password}}`, at start;
every shard
watches the bucket and puts the other shards' users in its own password file and ACL
beside its own (`on_change(users)`, the service's `ServiceUsers.set_others`).

The hashes are mosquitto `$7$` (PBKDF2-SHA512) hashes, what the password file itself
holds; the bucket is behind NATS's TLS and login like every other. A shard's key stays
after the shard is gone for good (its users stay in the files, unused); deleting the
key (`nats kv del`) takes them out everywhere.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from cloudcore.cluster.kv import KV, Entry
from cloudcore.cluster.objects import escape, unescape

log = logging.getLogger("cloudcore.cluster.identities")


def users_bucket(prefix: str) -> str:
    return f"{prefix}_brokerusers"


class BrokerIdentities:
    """This shard's broker users, published; the others', gathered (module docstring)."""

    def __init__(self, *, shard: str, own: dict[str, str | None],
                 on_change: Callable[[dict[str, str | None]], None]) -> None:
        self.shard = shard
        self.own = dict(own)
        self.on_change = on_change
        self.by_shard: dict[str, dict[str, str | None]] = {}

    async def run(self, kv: KV, *, prefix: str, replicas: int = 1) -> None:
        bucket = await kv.bucket(users_bucket(prefix), create=True, replicas=replicas)
        raw = json.dumps({"users": self.own}, separators=(",", ":")).encode()
        await bucket.put(escape(self.shard), raw)
        watch = await bucket.watch(">")
        try:
            async for e in watch:
                self.apply_entry(e)
        finally:
            await watch.stop()

    def apply_entry(self, e: Entry) -> None:
        shard = unescape(e.key)
        if shard == self.shard:
            return
        if e.deleted:
            if self.by_shard.pop(shard, None) is None:
                return
        else:
            try:
                users = json.loads(e.value)["users"]
                if not isinstance(users, dict) or not all(
                        isinstance(u, str) and (h is None or isinstance(h, str))
                        for u, h in users.items()):
                    raise TypeError("users")
            except (ValueError, KeyError, TypeError):
                log.warning("shard %s: unreadable broker users of shard %s; ignored",
                            self.shard, shard)
                return
            if self.by_shard.get(shard) == users:
                return
            self.by_shard[shard] = dict(users)
        merged: dict[str, str | None] = {}
        for name in sorted(self.by_shard):
            merged.update(self.by_shard[name])
        for user in self.own:
            merged.pop(user, None)
        log.info("shard %s: broker files hold the identities of %d other shard(s) "
                 "(%d users)", self.shard, len(self.by_shard), len(merged))
        self.on_change(merged)


__all__ = ["BrokerIdentities", "users_bucket"]
