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
- `<upgrade>.<node>` (both escaped as object keys are): `{"uid", "version", "created",
  "aborted", "entry": the node's `agent/-/release` value for this AgentUpgrade or null,
  "memo":
  what the controller remembers of it (`_Told.record`: the version it ran before, its
  failure) or null, "by", "fence"}`, written when the holder changed either (read
  afresh at write time), so a batch writes the keys of the nodes it told and no more;
- `<upgrade>._status` (no node name holds `_`): `{"uid", "version", "aborted", "status":
  the AgentUpgrade's status as the holder computed it, "by", "fence"}`, written after
  the nodes' values of the same round; the other shards show it (they do not tick).

Each value carries the writer's global lease token (`Member.global_revision`); a value
under a smaller token than one seen is refused, and the holder refuses any value under
a token older than its own (a former holder paused past its lease, writing late). A
value is applied once the shard's replica has the AgentUpgrade with that uid (the
objects replica and this bucket are separate watches: what arrives early waits, and is
applied at the next `RETRY_S` round; a round costs a look-up per AgentUpgrade name
waited for while it is not here; a value of an AgentUpgrade of that name made before the
one here (`"created"`, the object's creationTimestamp) is dropped). A shard taking the
lease looks at every node again from what it adopted (`Upgrades.resync`): nodes in
progress start their health deadline afresh, the failed ones stay failed, an aborted
AgentUpgrade stays aborted.

A delete of the AgentUpgrade removes its entries on every shard (each shard's own
`Upgrades.deleted`, from the objects replica, which tells `deleted` here): values of its
uid waiting here are dropped and later ones ignored, and the holder deletes its keys
(before any write of that round, so a re-created AgentUpgrade of the same name keeps
its own). Keys of an AgentUpgrade deleted while no shard held the lease, or written by
a former holder after the delete, stay in the bucket (a shard reading them keeps them
in memory until an AgentUpgrade of that name made later is there: purge the keys
`<name>.>` by hand after such a delete).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from cloudcore.cluster.fenced import delete_all, put_all
from cloudcore.cluster.kv import Entry
from cloudcore.cluster.objects import escape, unescape
from cloudcore.cluster.replica import HolderReplica, Task
from shared.entries import AGENT_RELEASE_KEY
from shared.models import AgentUpgradeStatus

log = logging.getLogger("cloudcore.cluster.upgrades")

Key = tuple[str, str]
STATUS = "_status"
BATCH = 64
"""Values written at once."""
APPLY_SLICE = 200
"""Values read between two yields to the event loop (a catch-up, a big batch): about
5-20 ms of them at 26-105 us each (`python -m testbed.bench_shard_upgrade`)."""


def upgrades_bucket(prefix: str) -> str:
    return f"{prefix}_upgrades"


def batch_key(upgrade: str, node: str) -> str:
    """The key of `node`'s value (or, for node STATUS, the status) of `upgrade`."""
    return f"{escape(upgrade)}.{node if node == STATUS else escape(node)}"


class SharedBatches(HolderReplica):
    """The AgentUpgrade batches shared by shards (module docstring); `Upgrades.shared`."""

    NAME = "upgrades"
    NOUN = "agent upgrade batch"
    APPLY_SLICE = APPLY_SLICE
    log = log

    def __init__(self, fleet: Any, *, shard: str, holds_global: Callable[[], bool],
                 fence: Callable[[], int | None]) -> None:
        super().__init__(fleet, shard=shard, holds_global=holds_global, fence=fence)
        self._docs: dict[str, dict[str, dict[str, Any]]] = {}
        """upgrade -> node (or STATUS) -> the value read and not applied yet (no
        AgentUpgrade with that uid here yet)."""
        self._dead: set[str] = set()
        """uids of AgentUpgrades deleted here: their values are ignored."""
        self.keys: dict[str, set[str]] = {}
        """upgrade -> the nodes (and STATUS) it has keys of, as far as seen here."""
        self._purge: list[str] = []
        """Holder: keys to delete before its next writes (a deleted AgentUpgrade's)."""
        self._out: set[Key] = set()
        self.adopted = 0
        """Nodes whose entry or memory was taken over from the holder's values here."""
        fleet.upgrades.shared = self

    # -- Upgrades.shared ----------------------------------------------------------------

    def _drop_unwritten(self) -> None:
        self._out.clear()  # it looks at every node again anyway

    def noted(self, upgrade: str, node: str) -> None:
        if not self._as_holder():
            return
        self._out.add((upgrade, node))
        self.keys.setdefault(upgrade, set()).add(node)
        self._wake.set()

    def deleted(self, upgrade: str, uid: str | None) -> None:
        """AgentUpgrade `upgrade` (`uid`) was deleted here: its values are dropped and,
        on the holder, its keys deleted."""
        if uid is not None:
            self._dead.add(uid)
        waiting = self._docs.get(upgrade, {})
        for node in [n for n, d in waiting.items() if d.get("uid") == uid]:
            del waiting[node]
        if not waiting:
            self._docs.pop(upgrade, None)
        self._out = {k for k in self._out if k[0] != upgrade}
        known = self.keys.pop(upgrade, set())
        if self.decides():
            self._purge += [batch_key(upgrade, n) for n in sorted(known)]
            self._wake.set()

    def status_changed(self, upgrade: str) -> None:
        if not self._as_holder():
            return
        self._out.add((upgrade, STATUS))
        self.keys.setdefault(upgrade, set()).add(STATUS)
        self._wake.set()

    async def global_changed(self, held: bool) -> None:
        """The shard took (`held`) or lost the global lease (`Shard.on_global`)."""
        if held and self.caught_up:
            self.fleet.upgrades.resync()
        self._wake.set()

    # -- the replica --------------------------------------------------------------------

    def bucket_name(self, prefix: str) -> str:
        return upgrades_bucket(prefix)

    def _tasks(self) -> list[Task]:
        return [("writer", self._writer), ("apply", self._retrier),
                ("commit", self._committer)]

    async def _caught_up(self) -> None:
        self.caught_up = True
        log.info("shard %s: agent upgrade batches replica caught up (%d values waiting "
                 "for their AgentUpgrade)", self.shard,
                 sum(len(d) for d in self._docs.values()))
        if self._holds():
            self.fleet.upgrades.resync()
        self._wake.set()

    def apply_entry(self, e: Entry) -> None:
        """One value of the bucket: remembered and applied (a holder's own are not)."""
        if e.deleted:
            with contextlib.suppress(ValueError):
                raw, part = e.key.rsplit(".", 1)
                upgrade = unescape(raw)
                node = part if part == STATUS else unescape(part)
                self._docs.get(upgrade, {}).pop(node, None)
                self.keys.get(upgrade, set()).discard(node)
            return
        try:
            raw, part = e.key.rsplit(".", 1)
            upgrade, node = unescape(raw), part if part == STATUS else unescape(part)
            doc = json.loads(e.value)
            fence = int(doc.get("fence") or 0)
            str(doc["uid"])
            if part != STATUS and not (isinstance(doc.get("entry"), dict | None)
                                       and isinstance(doc.get("memo"), dict | None)):
                raise TypeError("entry, memo")
        except (ValueError, KeyError, TypeError):
            self._unreadable(e)
            return
        own = self._fence() if self.decides() else None
        if not self._accepts(e, fence, own=own):
            return
        if own is not None and doc.get("by") == self.shard:
            return  # its own write coming back
        if doc["uid"] in self._dead or self._older(upgrade, doc):
            return
        self.keys.setdefault(upgrade, set()).add(node)
        if not self._apply(upgrade, node, doc):
            self._docs.setdefault(upgrade, {})[node] = doc

    def _older(self, upgrade: str, doc: dict[str, Any]) -> bool:
        """Whether `doc` is of an AgentUpgrade of that name made before the one here (a
        deleted one's value, not deleted from the bucket): never applied."""
        au = self.fleet.objects.agentupgrades.get(upgrade)
        if au is None or au.metadata.uid == doc["uid"]:
            return False
        mine, theirs = au.metadata.creation_timestamp, doc.get("created")
        return isinstance(theirs, str) and mine is not None and theirs < mine

    def _apply(self, upgrade: str, node: str, doc: dict[str, Any]) -> bool:
        """Apply a value read to this shard's copies; False while this shard has no
        AgentUpgrade of that name and uid (tried again later)."""
        au = self.fleet.objects.agentupgrades.get(upgrade)
        if au is None or au.metadata.uid != doc["uid"]:
            return False
        ups = self.fleet.upgrades
        aborted = bool(doc.get("aborted"))
        if node == STATUS:
            if isinstance(doc.get("status"), dict):
                try:
                    status = AgentUpgradeStatus.model_validate(doc["status"])
                except ValueError:
                    log.warning("shard %s: unreadable status in agent upgrade batch %s",
                                self.shard, batch_key(upgrade, node))
                    return True
                ups.adopt_status(au, status, aborted=aborted)
            return True
        self.adopted += 1
        if ups.adopt(au, node, doc.get("entry"), doc.get("memo"), aborted=aborted):
            self._commit.set()  # the node's owner delivers its entry
        return True

    def _retry(self) -> None:
        for upgrade in sorted(self._docs):
            waiting = self._docs[upgrade]
            au = self.fleet.objects.agentupgrades.get(upgrade)
            if au is None:
                continue  # one look-up for all its values
            for node in list(waiting):
                doc = waiting[node]
                if self._older(upgrade, doc) or (doc["uid"] == au.metadata.uid
                                                 and self._apply(upgrade, node, doc)):
                    del waiting[node]
            if not waiting:
                del self._docs[upgrade]

    # -- the holder's writes ------------------------------------------------------------

    def value(self, key: Key, fence: int) -> bytes | None:
        """The value of `key` as this shard's controller has it now (None: the
        AgentUpgrade is gone)."""
        upgrade, node = key
        au = self.fleet.objects.agentupgrades.get(upgrade)
        if au is None:
            return None
        ups = self.fleet.upgrades
        doc: dict[str, Any] = {"uid": au.metadata.uid, "version": au.spec.version,
                               "created": au.metadata.creation_timestamp,
                               "aborted": ups.aborted(upgrade)}
        if node == STATUS:
            doc["status"] = None if au.status is None else au.status.model_dump(
                mode="json", by_alias=True, exclude_none=True)
        else:
            entry = self.fleet.desired_sets.entry(node, AGENT_RELEASE_KEY)
            doc["entry"] = entry if isinstance(entry, dict) and \
                entry.get("upgrade") == upgrade else None
            doc["memo"] = ups.memo(upgrade, node)
        doc.update({"by": self.shard, "fence": fence})
        return json.dumps(doc, separators=(",", ":")).encode()

    def _to_write(self) -> bool:
        return bool(self._out or self._purge)

    async def _write_round(self, fence: int) -> bool:
        """The deleted AgentUpgrades' keys first, then BATCH marked values (the status
        last)."""
        assert self.bucket is not None
        if self._purge and not await self._purged():
            return False
        batch = sorted(self._out, key=lambda k: (k[1] == STATUS, k))[:BATCH]
        self._out.difference_update(batch)
        items = [(k, v) for k in batch if (v := self.value(k, fence)) is not None]
        bad = await put_all(self.bucket, [(batch_key(*k), v) for k, v in items],
                            log=log, what="agent upgrade batch value(s)", shard=self.shard)
        self.writes += len(items) - len(bad)
        self._out.update(items[i][0] for i in bad)
        return not bad

    async def _purged(self) -> bool:
        """Delete the keys of deleted AgentUpgrades, BATCH at a time, before any write;
        False if NATS refused some (kept for the next round)."""
        assert self.bucket is not None
        while self._purge:
            batch, self._purge = self._purge[:BATCH], self._purge[BATCH:]
            bad = await delete_all(self.bucket, batch, log=log, shard=self.shard,
                                   what="key(s) of deleted AgentUpgrades")
            if bad:
                self._purge = [batch[i] for i in bad] + self._purge
                return False
        return True


__all__ = ["SharedBatches", "batch_key", "upgrades_bucket"]
