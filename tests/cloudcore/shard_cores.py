"""Two shards' fleet cores in one event loop, for the in-process tests of the global
lease holder's decisions across shards (issue 14: test_shard_rollout_steps,
test_shard_surge_steps, test_shard_upgrade_batches).

`ShardCore` is one shard: a real fleet core that knows every node of `NODES` and owns
half of them (`OWNER`, a partition each), its node status summaries (`st`), a fake
clock (`t`, `clock`) and the global lease as two fields (`holds`, `token`) that its
replicas read through `holding` and `fence`. Each test adds the replica it tests and
passes the holder's values to the other shard itself; `share_summaries` passes the
node status summaries both ways, as the status buckets would.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cloudcore_fakes import add_node, make_fleet

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.status import NodeStatuses, node_key
from cloudcore.fleet.controller import Fleet
from cloudcore.fleet.template import Template
from shared import topics
from shared.models import parse_object

NODES = [f"n{i}" for i in range(8)]
OWNER = {n: ("A" if i % 2 == 0 else "B") for i, n in enumerate(NODES)}
PART_OWNER = {topics.partition_of(n): s for n, s in OWNER.items()}
assert len(PART_OWNER) == len(NODES)  # a partition each


def rev_of(doc: dict[str, Any]) -> str:
    """The template revision of a workload document."""
    return Template(parse_object(doc).spec.template).revision


class ShardCore:
    """A shard's fleet core over `NODES` and its node status summaries (module
    docstring)."""

    def __init__(self, name: str, *, holds: bool, token: int = 7) -> None:
        self.name = name
        self.fleet: Fleet = make_fleet()
        self.t = [1000.0]
        for n in NODES:
            add_node(self.fleet, n)
        self.holds, self.token = holds, token
        self.st = NodeStatuses(self.fleet, shard=name, owns=lambda p: PART_OWNER[p] == name,
                               holder=PART_OWNER.get)
        self.rev = 0
        """The revision of the last value this shard was given (`Entry.revision`)."""

    def clock(self) -> float:
        return self.t[0]

    def holding(self) -> bool:
        """`holds_global` of this shard's replicas."""
        return self.holds

    def fence(self) -> int | None:
        """`fence` of this shard's replicas: its token while it holds the lease."""
        return self.token if self.holds else None

    def own(self) -> list[str]:
        return [n for n in NODES if OWNER[n] == self.name]

    def apply(self, doc: dict[str, Any]) -> None:
        self.fleet.apply([parse_object(doc)])
        self.fleet.commit()

    def tick(self) -> None:
        self.t[0] += 1
        if self.holds:
            self.fleet.expire(0.0)  # the global part of the liveness tick


def share_summaries(a: ShardCore, b: ShardCore) -> None:
    """Each shard's changed node status summaries shown by the other, both committed."""
    for src, dst in ((a, b), (b, a)):
        for node, value in asyncio.run(src.st.changed_summaries()).items():
            dst.rev += 1
            dst.st.show(Entry(node_key(node), value, dst.rev))
        dst.fleet.commit()
