"""The delta algebra of the desired state (DESIGN.md section 3).

Cloud side, per node (`NodeDesired`): `gen` grows by one for every change to the
node's desired set; each key remembers `kgen`, the gen at which it last changed;
a delete leaves a tombstone carrying its gen. A delta from base `b` is every key
with kgen > b and every tombstone with gen > b, so many quick changes collapse into
one message. Tombstones at or below the acked gen may be collected; a base older
than what was collected, an unknown epoch, or a base from the future gets a full
snapshot instead.

Edge side (`EdgeDesired`): a delta applies when `base <= gen < msg.gen` in the same
epoch. (The contract asks for `base == gen`; accepting an older base is equally
correct, because a delta from b carries every change after b, and saves a resync
when an older delta overtakes a newer one.) An old or equal gen is a duplicate to
re-ack; a base beyond the local gen is a gap that asks for a resync; a snapshot
always applies unless it is older than what we hold in the same epoch, or is under
one of the last `EPOCHS_KEPT` epochs the edge left (`REFUSED`: a recorded snapshot
replayed by someone with broker access must not roll the node back; proposal 0002).

Drift (proposal 0002): an edge that reports a gen above the cloud's in the cloud's
epoch (a forged message once accepted, or a cloud restored from an older backup)
cannot converge by deltas; the cloud moves that node to a new epoch of its own
(`NodeDesired.restart_epoch`) and sends a snapshot.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from shared.codec import Desired


def new_epoch() -> str:
    return secrets.token_hex(8)


@dataclass
class NodeDesired:
    """The cloud's desired set for one node, with the history needed for deltas."""

    node: str
    epoch: str
    gen: int = 0
    items: dict[str, tuple[Any, int]] = field(default_factory=dict)  # key -> (value, kgen)
    tombs: dict[str, int] = field(default_factory=dict)  # key -> gen of the delete
    floor: int = 0  # tombstones with gen <= floor have been collected
    acked: int = 0

    def values(self) -> dict[str, Any]:
        return {k: v for k, (v, _) in self.items.items()}

    def replace(self, wanted: dict[str, Any]) -> bool:
        """Make the set equal to `wanted` as ONE change; True if anything changed."""
        changed = [k for k, v in wanted.items() if k not in self.items or self.items[k][0] != v]
        gone = [k for k in self.items if k not in wanted]
        if not changed and not gone:
            return False
        self.gen += 1
        for k in changed:
            self.items[k] = (wanted[k], self.gen)
            self.tombs.pop(k, None)
        for k in gone:
            del self.items[k]
            self.tombs[k] = self.gen
        return True

    def put(self, key: str, value: Any) -> bool:
        if key in self.items and self.items[key][0] == value:
            return False
        self.gen += 1
        self.items[key] = (value, self.gen)
        self.tombs.pop(key, None)
        return True

    def delete(self, key: str) -> bool:
        if key not in self.items:
            return False
        self.gen += 1
        del self.items[key]
        self.tombs[key] = self.gen
        return True

    def needs_snapshot(self, base: int, epoch: str | None) -> bool:
        return epoch != self.epoch or base < self.floor or base > self.gen

    def delta(self, base: int, epoch: str | None) -> Desired:
        """What an edge at (epoch, base) needs to reach `gen`."""
        if self.needs_snapshot(base, epoch):
            return self.snapshot()
        return Desired(
            node=self.node,
            epoch=self.epoch,
            base=base,
            gen=self.gen,
            put={k: v for k, (v, kg) in self.items.items() if kg > base},
            delete=[k for k, g in self.tombs.items() if g > base],
        )

    def snapshot(self) -> Desired:
        return Desired(
            node=self.node, epoch=self.epoch, base=0, gen=self.gen, snapshot=True,
            put=self.values(),
        )

    def ack(self, epoch: str, gen: int) -> bool:
        """Record an edge ack; True if it moved `acked` forward."""
        if epoch != self.epoch or gen <= self.acked or gen > self.gen:
            return False
        self.acked = gen
        return True

    def collect(self) -> int:
        """Drop tombstones the edge has acked past; returns how many were dropped."""
        old = [k for k, g in self.tombs.items() if g <= self.acked]
        for k in old:
            del self.tombs[k]
        if old:
            self.floor = max(self.floor, self.acked)
        return len(old)

    def restart_epoch(self, epoch: str) -> None:
        """Continue this node's set under a new `epoch` (drift): the edge's next message
        gets a snapshot, acks of the old epoch count for nothing, and no tombstone is
        needed any more. Items and gen are kept."""
        self.epoch = epoch
        self.tombs.clear()
        self.floor = self.gen
        self.acked = 0

    def drifted(self, epoch: str | None, gen: int) -> bool:
        """Whether an edge claiming (epoch, gen) holds a gen we never made in our epoch."""
        return epoch == self.epoch and gen > self.gen

    def to_record(self) -> dict[str, Any]:
        return {"node": self.node, "epoch": self.epoch, "gen": self.gen,
                "items": {k: [v, g] for k, (v, g) in self.items.items()},
                "tombs": self.tombs, "floor": self.floor, "acked": self.acked}

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> NodeDesired:
        return cls(node=r["node"], epoch=r["epoch"], gen=r["gen"],
                   items={k: (v, g) for k, (v, g) in r["items"].items()},
                   tombs=dict(r["tombs"]), floor=r["floor"], acked=r["acked"])


class Outcome(Enum):
    APPLIED = "applied"  # persist, then ack the new gen
    DUPLICATE = "duplicate"  # nothing new: re-ack the local gen
    GAP = "gap"  # cannot apply: ask for a resync from the local gen
    REFUSED = "refused"  # a snapshot under an epoch this edge left: never applied


EPOCHS_KEPT = 16
"""Epochs an edge remembers having left (EdgeDesired.left)."""
LEFT_EPOCH = "left-epoch"
"""`Resync.reason` of an edge that refused a snapshot under an epoch it left: the
cloud then moves the node to a new epoch (it may be a cloud restored from a backup)."""


@dataclass
class EdgeDesired:
    """The edge's copy of its desired set, and the last epochs it left."""

    epoch: str | None = None
    gen: int = 0
    items: dict[str, Any] = field(default_factory=dict)
    left: tuple[str, ...] = ()  # oldest first, at most EPOCHS_KEPT

    def classify(self, msg: Desired) -> Outcome:
        if msg.snapshot:
            if msg.epoch != self.epoch and msg.epoch in self.left:
                return Outcome.REFUSED
            if msg.epoch == self.epoch and msg.gen <= self.gen:
                return Outcome.DUPLICATE
            return Outcome.APPLIED
        if msg.epoch != self.epoch:
            return Outcome.GAP
        if msg.gen <= self.gen:
            return Outcome.DUPLICATE
        if msg.base > self.gen:
            return Outcome.GAP
        return Outcome.APPLIED

    def applied(self, msg: Desired) -> EdgeDesired:
        """The state after applying `msg` (call only when classify() said APPLIED).

        Returns a new object so the caller can persist it before adopting it.
        """
        if msg.snapshot:
            left = self.left
            if self.epoch is not None and msg.epoch != self.epoch:
                left = (*(e for e in left if e != self.epoch), self.epoch)[-EPOCHS_KEPT:]
            return EdgeDesired(epoch=msg.epoch, gen=msg.gen, items=dict(msg.put), left=left)
        items = dict(self.items)
        for k in msg.delete:
            items.pop(k, None)
        items.update(msg.put)
        return EdgeDesired(epoch=msg.epoch, gen=msg.gen, items=items, left=self.left)
