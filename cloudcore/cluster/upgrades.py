"""AgentUpgrade batches decided once for the fleet (issue 14, proposal 0008: the global
work behind the global lease), in the shape of the rollout steps
(`cloudcore.cluster.rollouts`).

Every shard holds every AgentUpgrade (a global object) and every node's desired set, but
delivers only its own nodes'. Only the holder of the global lease ticks the AgentUpgrade
controller (`Upgrades.shared.decides()`; `cloudcore.fleet.upgrades`): it sees every
node's readiness, agent version and `agentUpgrade` report (the owners put them in their
node status summaries, `cloudcore.cluster.status`), decides each health-gated batch, the
failures, the abort and the rollback as one cloudcore does, and writes what it decided to
KV. Every other shard puts the same release entries in its copies of the nodes' desired
sets, so the owner of each node delivers its entry, and keeps the holder's memory of each
told node (the version it ran before, its failure), from which a new holder goes on.

Bucket `<prefix>_upgrades`:
- `<upgrade>.<pp>` (the AgentUpgrade's name escaped, `pp` the partition of the node, so a
  key holds about 1/256 of its nodes): `{"uid", "version", "aborted", "nodes": {node:
  {"entry": the node's `agent/-/release` value for this AgentUpgrade or null, "memo":
  what the controller remembers of it (`_Told.record`) or null}}, "by", "fence"}`,
  rewritten with every node of that pp the AgentUpgrade ever wrote (the node a holder
  changed read afresh at write time);
- `<upgrade>.status`: `{"uid", "version", "aborted", "status": the AgentUpgrade's status
  as the holder computed it, "by", "fence"}`; the other shards show it (they do not
  tick).

Each value carries the writer's global lease token (`Member.global_revision`); a value
under a smaller token than one seen is refused, and the holder refuses any value under
a token older than its own (a former holder paused past its lease, writing late). A
value is applied once the shard's replica has the AgentUpgrade with that uid (the
objects replica and this bucket are separate watches: what arrives early is applied at
the next `RETRY_S` round; a key of a deleted AgentUpgrade waits until one with its uid
comes, which is never, and costs a dictionary look-up a round). A shard taking the lease
looks at every node again from what it adopted (`Upgrades.resync`): nodes in progress
start their health deadline afresh, the failed ones stay failed, an aborted AgentUpgrade
stays aborted.

A delete of the AgentUpgrade removes its entries on every shard (each shard's own
`Upgrades.deleted`, from the objects replica); its keys here stay until the bucket's
keys are purged by hand.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from cloudcore.cluster.fenced import RETRY_S, put_all
from cloudcore.cluster.kv import KV, Bucket, Entry
from cloudcore.cluster.objects import escape, unescape
from shared import topics
from shared.entries import AGENT_RELEASE_KEY
from shared.models import AgentUpgradeStatus

log = logging.getLogger("cloudcore.cluster.upgrades")

Key = tuple[str, str]
STATUS = "status"
BATCH = 64
"""Values written at once."""


def upgrades_bucket(prefix: str) -> str:
    return f"{prefix}_upgrades"


def batch_key(upgrade: str, part: str) -> str:
    return f"{escape(upgrade)}.{part}"


class SharedBatches:
    """The AgentUpgrade batches shared by shards (module docstring); `Upgrades.shared`."""

    def __init__(self, fleet: Any, *, shard: str, holds_global: Callable[[], bool],
                 fence: Callable[[], int | None]) -> None:
        self.fleet = fleet
        self.shard = shard
        self._holds = holds_global
        self._fence = fence
        self.caught_up = False
        self.max_fence = 0
        self.fenced = 0
        """Values refused for their stale fencing token."""
        self.nodes: dict[Key, set[str]] = {}
        """(upgrade, pp) -> the nodes its key holds (written here or read from KV)."""
        self._docs: dict[Key, dict[str, Any]] = {}
        """Values read and not applied yet (the AgentUpgrade with that uid not here)."""
        self._seen: dict[tuple[str, str], tuple[Any, Any]] = {}
        """(upgrade, node) -> (entry, memo) last adopted here."""
        self._out: set[Key] = set()
        self._out_fence: int | None = None
        self._wake = asyncio.Event()
        self.bucket: Bucket | None = None
        self.writes = 0
        self.adopted = 0
        """Nodes whose entry or memory was taken over from the holder's values here."""
        fleet.upgrades.shared = self

    # -- Upgrades.shared ----------------------------------------------------------------

    def decides(self) -> bool:
        return self.caught_up and self._holds()

    def _as_holder(self) -> bool:
        """Whether this shard decides now; values it marked under an earlier lease
        token and never wrote are dropped (it looks at every node again anyway)."""
        if not self.decides():
            return False
        fence = self._fence()
        if fence != self._out_fence:
            self._out.clear()
            self._out_fence = fence
        return True

    def noted(self, upgrade: str, node: str) -> None:
        if not self._as_holder():
            return
        key = (upgrade, topics.pp(topics.partition_of(node)))
        self.nodes.setdefault(key, set()).add(node)
        self._out.add(key)
        self._wake.set()

    def status_changed(self, upgrade: str) -> None:
        if not self._as_holder():
            return
        self._out.add((upgrade, STATUS))
        self._wake.set()

    async def global_changed(self, held: bool) -> None:
        """The shard took (`held`) or lost the global lease (`Shard.on_global`)."""
        if held and self.caught_up:
            self.fleet.upgrades.resync()
        self._wake.set()

    # -- the replica --------------------------------------------------------------------

    async def run(self, kv: KV, *, prefix: str, replicas: int = 1) -> None:
        self.bucket = await kv.bucket(upgrades_bucket(prefix), create=True,
                                      replicas=replicas)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flush(), name=f"cloudcore[{self.shard}].upgrades.writer")
            tg.create_task(self._retry(), name=f"cloudcore[{self.shard}].upgrades.apply")
            watch = await self.bucket.watch(">")
            try:
                if watch.caught_up.is_set():
                    self._caught_up()
                async for e in watch:
                    self.apply_entry(e)
                    if not self.caught_up and watch.caught_up.is_set():
                        self._caught_up()
            finally:
                await watch.stop()

    def _caught_up(self) -> None:
        self.caught_up = True
        log.info("shard %s: agent upgrade batches replica caught up (%d keys)",
                 self.shard, len(self.nodes))
        if self._holds():
            self.fleet.upgrades.resync()
        self._wake.set()

    def apply_entry(self, e: Entry) -> None:
        """One value of the bucket: remembered and applied (a holder's own are not)."""
        if e.deleted:
            return
        try:
            raw, part = e.key.rsplit(".", 1)
            upgrade = unescape(raw)
            doc = json.loads(e.value)
            fence = int(doc.get("fence") or 0)
            str(doc["uid"])
            if part != STATUS and not isinstance(doc["nodes"], dict):
                raise TypeError("nodes")
        except (ValueError, KeyError, TypeError):
            log.warning("shard %s: unreadable agent upgrade batch %s (revision %d); "
                        "ignored", self.shard, e.key, e.revision)
            return
        own = self._fence() if self.decides() else None
        if fence < self.max_fence or (own is not None and fence < own):
            self.fenced += 1
            log.warning("shard %s: agent upgrade batch %s (revision %d) refused: written "
                        "under global lease token %d, token %d seen before", self.shard,
                        e.key, e.revision, fence, max(self.max_fence, own or 0))
            return
        self.max_fence = fence
        if own is not None and doc.get("by") == self.shard:
            return  # its own write coming back
        key = (upgrade, part)
        if part != STATUS:
            self.nodes.setdefault(key, set()).update(str(n) for n in doc["nodes"])
        self._docs[key] = doc
        if self._apply(key):
            del self._docs[key]

    def _apply(self, key: Key) -> bool:
        """Apply a value read to this shard's copies; False while this shard has no
        AgentUpgrade of that name and uid (tried again later)."""
        upgrade, part = key
        doc = self._docs[key]
        au = self.fleet.objects.agentupgrades.get(upgrade)
        if au is None or au.metadata.uid != doc["uid"]:
            return False
        ups = self.fleet.upgrades
        aborted = bool(doc.get("aborted"))
        if part == STATUS:
            if isinstance(doc.get("status"), dict):
                try:
                    status = AgentUpgradeStatus.model_validate(doc["status"])
                except ValueError:
                    log.warning("shard %s: unreadable status in agent upgrade batch %s",
                                self.shard, batch_key(*key))
                    return True
                ups.adopt_status(au, status, aborted=aborted)
            return True
        changed = False
        for node, v in doc["nodes"].items():
            entry = v.get("entry") if isinstance(v, dict) else None
            memo = v.get("memo") if isinstance(v, dict) else None
            if not isinstance(entry, dict | None) or not isinstance(memo, dict | None):
                log.warning("shard %s: unreadable node %s in agent upgrade batch %s",
                            self.shard, node, batch_key(*key))
                continue
            if self._seen.get((upgrade, node)) == (entry, memo):
                continue
            self._seen[(upgrade, node)] = (entry, memo)
            changed |= ups.adopt(au, str(node), entry, memo, aborted=aborted)
            self.adopted += 1
        if changed:
            self.fleet.commit()  # the owners deliver the entries
        return True

    async def _retry(self) -> None:
        while True:
            await asyncio.sleep(RETRY_S)
            for key in sorted(self._docs):
                if self._apply(key):
                    del self._docs[key]

    # -- the holder's writes ------------------------------------------------------------

    def value(self, key: Key, fence: int) -> bytes | None:
        """The value of `key` as this shard's controller has it now (None: the
        AgentUpgrade is gone)."""
        upgrade, part = key
        au = self.fleet.objects.agentupgrades.get(upgrade)
        if au is None:
            return None
        ups = self.fleet.upgrades
        doc: dict[str, Any] = {"uid": au.metadata.uid, "version": au.spec.version,
                               "aborted": ups.aborted(upgrade)}
        if part == STATUS:
            doc["status"] = None if au.status is None else au.status.model_dump(
                mode="json", by_alias=True, exclude_none=True)
        else:
            nodes: dict[str, Any] = {}
            for node in sorted(self.nodes.get(key, ())):
                entry = self.fleet.desired_sets.entry(node, AGENT_RELEASE_KEY)
                if not (isinstance(entry, dict) and entry.get("upgrade") == upgrade):
                    entry = None
                nodes[node] = {"entry": entry, "memo": ups.memo(upgrade, node)}
            doc["nodes"] = nodes
        doc.update({"by": self.shard, "fence": fence})
        return json.dumps(doc, separators=(",", ":")).encode()

    async def _flush(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._out and self.decides():
                fence = self._fence()
                if fence is None or self.bucket is None:
                    break
                batch = sorted(self._out, key=lambda k: (k[1] == STATUS, k))[:BATCH]
                self._out.difference_update(batch)
                items = [(k, v) for k in batch if (v := self.value(k, fence)) is not None]
                bad = await put_all(self.bucket, [(batch_key(*k), v) for k, v in items],
                                    log=log, what="agent upgrade batch value(s)",
                                    shard=self.shard)
                self.writes += len(items) - len(bad)
                if bad:
                    self._out.update(items[i][0] for i in bad)
                    await asyncio.sleep(RETRY_S)


__all__ = ["SharedBatches", "batch_key", "upgrades_bucket"]
