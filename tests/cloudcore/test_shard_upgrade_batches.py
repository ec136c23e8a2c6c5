"""AgentUpgrade batches across shards, against real fleet cores in one event loop
(`cloudcore.cluster.upgrades`, `status`, `cloudcore.fleet.upgrades`): the holder of the
global lease reads every node's agent version and upgrade report from the node status
summaries, decides each health-gated batch over both shards' nodes and writes it; the
other shard puts the same release entries in its nodes' desired sets (its nodes get them
only from it), shows the holder's status, and a shard taking the lease over goes on from
what it adopted. A failure on the other shard's node aborts and sends every told node
back. Before, the other shard's nodes never got their entry (the holder's went nowhere)
and an apply through the other shard told its own nodes outside the holder's gate."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from shard_cores import NODES, OWNER, ShardCore, share_summaries

from cloudcore.cluster.kv import Entry
from cloudcore.cluster.upgrades import STATUS, SharedBatches, batch_key
from shared.entries import AGENT_RELEASE_KEY, parse_agent_release
from shared.models import parse_object

OLD, NEW = "0.9.0", "0.9.1"
NAME = f"agent-{NEW}"
BATCH = 2


def upgrade_doc(*, threshold: int = 0) -> dict[str, Any]:
    return {"apiVersion": "edgefed.io/v1", "kind": "AgentUpgrade", "metadata": {"name": NAME},
            "spec": {"version": NEW, "image": "reg.example:5000/edgefed/agent:0.9.1",
                     "maxUnavailable": BATCH, "failureThreshold": threshold,
                     "healthDeadlineSeconds": 120, "selector": {"matchLabels": {}}}}


class Shard(ShardCore):
    """A shard's fleet core, its summaries and its AgentUpgrade batches, with fake
    agents on its own nodes (`agents[node]`: "ok" upgrades and reports Healthy,
    "crash" reports RolledBack)."""

    def __init__(self, name: str, *, holds: bool, token: int = 7) -> None:
        super().__init__(name, holds=holds, token=token)
        self.fleet.upgrades.clock = self.clock
        for n in NODES:
            self.fleet.node_status(n, {"agentVersion": OLD})
        self.batches = SharedBatches(self.fleet, shard=name, holds_global=self.holding,
                                     fence=self.fence)
        self.batches.caught_up = True
        self.agents = {n: "ok" for n in NODES if OWNER[n] == name}
        self.running = dict.fromkeys(self.agents, OLD)
        self.handled: dict[str, Any] = {}

    def entry(self, node: str) -> Any:
        nd = self.fleet.desired.get(node)
        item = nd.items.get(AGENT_RELEASE_KEY) if nd is not None else None
        return None if item is None else item[0]

    def delivered(self) -> dict[str, Any]:
        """The release entries this shard's own nodes' desired sets hold."""
        return {n: self.entry(n) for n in self.agents if self.entry(n) is not None}

    def agents_act(self) -> None:
        for n, behaviour in self.agents.items():
            value = self.entry(n)
            if value is None or self.handled.get(n) == value:
                continue
            self.handled[n] = value
            rel = parse_agent_release(AGENT_RELEASE_KEY, value)
            previous = self.running[n]
            if behaviour == "ok" or rel.image is None:  # a rollback always works
                self.running[n] = rel.version
                report = {"version": rel.version, "phase": "Healthy", "message": "",
                          "previous": previous}
            else:
                report = {"version": rel.version, "phase": "RolledBack",
                          "message": "exit 3 at start", "previous": previous}
            self.fleet.node_status(n, {"agentVersion": self.running[n],
                                       "agentUpgrade": report})

    def status(self) -> Any:
        return self.fleet.objects.agentupgrades[NAME].status


def exchange(src: Shard, dst: Shard) -> None:
    """The holder's values to the other shard, then the summaries both ways."""
    holder, other = (src, dst) if src.holds else (dst, src)
    for k in sorted(holder.batches._out):
        value = holder.batches.value(k, holder.token)
        assert value is not None
        other.rev += 1
        other.batches.apply_entry(Entry(batch_key(*k), value, other.rev))
    holder.batches._out.clear()
    share_summaries(src, dst)


def apply_both(a: Shard, b: Shard, doc: dict[str, Any]) -> None:
    for s in (a, b):
        s.fleet.apply([parse_object(doc)])
        s.fleet.commit()
    # one identity on every shard, as the objects replica gives it
    mine, theirs = b.fleet.objects.agentupgrades[NAME], a.fleet.objects.agentupgrades[NAME]
    mine.metadata.uid = theirs.metadata.uid
    mine.metadata.creation_timestamp = theirs.metadata.creation_timestamp


def rounds(a: Shard, b: Shard, n: int, until: Any) -> list[int]:
    """Rounds of exchange, agents, exchange, the holder's tick; returns the nodes
    delivered an entry and not yet at NEW after each round."""
    out = []
    for _ in range(n):
        exchange(a, b)
        for s in (a, b):
            s.agents_act()
        exchange(a, b)
        for s in (a, b):
            s.tick()
        running = {**a.running, **b.running}
        told = {**a.delivered(), **b.delivered()}
        out.append(sum(1 for n, v in told.items()
                       if v["version"] == NEW and running[n] != NEW))
        if until():
            break
    exchange(a, b)
    return out


def test_an_agent_upgrade_completes_over_both_shards_in_gated_batches() -> None:
    a, b = Shard("A", holds=True), Shard("B", holds=False)
    apply_both(a, b, upgrade_doc())
    assert b.delivered() == {}  # B's apply tells nothing: the holder decides
    exchange(a, b)
    first = {**a.delivered(), **b.delivered()}
    assert sorted(first) == ["n0", "n1"], first  # the holder's first batch, both shards
    in_progress = rounds(a, b, 30, lambda: a.status().phase == "Complete")
    assert a.status().phase == "Complete", a.status()
    assert {**a.running, **b.running} == dict.fromkeys(NODES, NEW)
    assert max(in_progress) <= BATCH
    assert b.batches.adopted > 0
    # B shows the holder's status, and keeps its memory of every node told
    assert b.status().phase == "Complete" and b.status().upgraded == len(NODES)
    assert all(b.fleet.upgrades.memo(NAME, n) is not None for n in NODES)


def test_a_failure_on_the_other_shards_node_aborts_and_sends_every_told_node_back() -> None:
    a, b = Shard("A", holds=True), Shard("B", holds=False)
    b.agents["n3"] = "crash"
    apply_both(a, b, upgrade_doc())
    rounds(a, b, 30, lambda: a.status().phase == "Aborted"
           and all(v["version"] == OLD for v in {**a.delivered(), **b.delivered()}.values()))
    assert a.status().phase == "Aborted", a.status()
    assert [f.node for f in a.status().failures] == ["n3"]
    told = {**a.delivered(), **b.delivered()}
    assert told and all(v["version"] == OLD and v["image"] is None for v in told.values())
    assert {**a.running, **b.running} == dict.fromkeys(NODES, OLD)
    assert b.status().phase == "Aborted"
    assert json.loads(a.batches.value((NAME, STATUS), 7) or b"")["aborted"] is True


def test_a_new_holder_goes_on_from_what_it_adopted() -> None:
    a, b = Shard("A", holds=True), Shard("B", holds=False, token=9)
    b.agents["n5"] = "crash"
    apply_both(a, b, upgrade_doc(threshold=1))
    rounds(a, b, 3, lambda: False)
    done = {n for n, v in {**a.running, **b.running}.items() if v == NEW}
    assert 0 < len(done) < len(NODES)
    a.holds, b.holds = False, True  # A lost the lease; B took it
    asyncio.run(b.batches.global_changed(True))
    in_progress = rounds(a, b, 40, lambda: b.status().phase == "Complete")
    assert b.status().phase == "Complete", b.status()
    assert max(in_progress) <= BATCH
    # n5 failed (tolerated: threshold 1) and stays failed; every other node at NEW
    assert [f.node for f in b.status().failures] == ["n5"]
    assert {n: v for n, v in {**a.running, **b.running}.items() if v != NEW} == {"n5": OLD}
    # A's late value under its old token is refused by the new holder
    late = Entry(batch_key(NAME, STATUS), json.dumps(
        {"uid": "x", "version": NEW, "aborted": True, "status": None, "by": "A",
         "fence": 7}).encode(), 10_000)
    b.batches.apply_entry(late)
    assert b.batches.fenced == 1 and not b.fleet.upgrades.aborted(NAME)


def test_a_deleted_agent_upgrade_leaves_nothing_behind_and_a_new_one_applies() -> None:
    a, b = Shard("A", holds=True), Shard("B", holds=False)
    apply_both(a, b, upgrade_doc())
    exchange(a, b)
    assert sorted({**a.delivered(), **b.delivered()}) == ["n0", "n1"]
    late = Entry(batch_key(NAME, "n3"), a.batches.value((NAME, "n1"), 7) or b"", 5_000)
    known = sorted(a.batches.keys[NAME])
    for s in (a, b):
        s.fleet.delete("AgentUpgrade", None, NAME)
    # every shard took the entries away; the holder deletes the keys before its next writes
    assert a.delivered() == {} and b.delivered() == {}
    assert a.batches._purge == [batch_key(NAME, n) for n in known]
    b.batches.apply_entry(late)  # the deleted one's value, read late: ignored
    assert not b.batches._docs and b.delivered() == {}
    apply_both(a, b, upgrade_doc())  # the same name again: its own values apply
    # a shard that never saw the delete (restarted) drops the old one's value too: it
    # was made before the AgentUpgrade of that name it has
    old = json.loads(late.value)
    old["created"] = "2000-01-01T00:00:00Z"
    b.batches._dead.clear()
    b.batches.apply_entry(Entry(late.key, json.dumps(old).encode(), 5_001))
    assert not b.batches._docs
    exchange(a, b)
    assert sorted({**a.delivered(), **b.delivered()}) == ["n0", "n1"]
    in_progress = rounds(a, b, 30, lambda: a.status().phase == "Complete")
    assert a.status().phase == "Complete" and max(in_progress) <= BATCH
