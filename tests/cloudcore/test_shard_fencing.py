"""Issue 14: a shard paused past its lease (SIGSTOP, a stalled VM) that runs again must
not overwrite the partition state its successor writes: the liveness summary a
takeover starts its nodes from (`liveness.<pp>`), and the node status summaries every
other shard shows (`node.<name>`).

Before: both were unconditional puts with no token. A late liveness summary replaced
the new owner's (the next taker started the nodes from it: NotReady flaps), and a
late node summary was shown by every other shard (`NotReady OwnedByAnotherShard
(NodeStatusUnknown)` on a node its owner saw Ready, its NotReady clock started, its
pods' statuses told to the rollout gates) until the owner wrote that node again.

Now the liveness write is a compare-and-set on the key's revision and carries the
partition lease's revision (`fence`); node summaries carry it too and readers refuse
a smaller one than they have seen for the partition; and a lease past its deadline
gives no token even before the guard has dropped it.

`Shard` and `NodeStatuses` against the real fleet core, with a KV bucket fake that
keeps revisions and refuses stale compare-and-sets as NATS does."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from cloudcore_fakes import add_node, fenced_shard, make_fleet

from cloudcore.cluster.errors import CASConflict
from cloudcore.cluster.kv import Entry
from cloudcore.cluster.leases import LeaseSettings, Member, _Held
from cloudcore.cluster.shard import Shard
from cloudcore.cluster.status import NodeStatuses, node_key
from shared import topics

NODE = "n1"
P = topics.partition_of(NODE)
KEY = f"liveness.{topics.pp(P)}"


class Bucket:
    """A KV bucket as NATS keeps one: every write a new revision, CAS on the last."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[bytes, int]] = {}
        self.rev = 0

    def _write(self, key: str, value: bytes) -> int:
        self.rev += 1
        self.values[key] = (value, self.rev)
        return self.rev

    async def get(self, key: str) -> Entry | None:
        got = self.values.get(key)
        return None if got is None else Entry(key, got[0], got[1])

    async def revision_of(self, key: str) -> int:
        got = self.values.get(key)
        return 0 if got is None else got[1]

    async def put(self, key: str, value: bytes) -> int:
        return self._write(key, value)

    async def create(self, key: str, value: bytes) -> int:
        if key in self.values:
            raise CASConflict("status", key, 0, "wrong last sequence")
        return self._write(key, value)

    async def update(self, key: str, value: bytes, *, revision: int) -> int:
        if await self.revision_of(key) != revision:
            raise CASConflict("status", key, revision, "wrong last sequence")
        return self._write(key, value)

    def doc(self, key: str = KEY) -> dict[str, Any]:
        return json.loads(self.values[key][0])


def shard(name: str, bucket: Bucket, fence: int | None) -> Shard:
    return fenced_shard(name, bucket, fence, NODE)  # type: ignore[no-any-return]


def test_a_paused_former_owner_does_not_overwrite_the_new_owners_liveness() -> None:
    bucket = Bucket()
    s1 = shard("S1", bucket, fence=5)
    assert asyncio.run(s1.write_liveness(P, [NODE]))
    assert bucket.doc()["shard"] == "S1" and bucket.doc()["fence"] == 5
    # S1 stops; S2 takes the partition (a greater lease revision) and writes its summary
    s2 = shard("S2", bucket, fence=9)
    asyncio.run(s2._summaries([P]))  # the takeover reads the key (and its revision)
    assert asyncio.run(s2.write_liveness(P, [NODE]))
    # S1 runs again and, before its guard has noticed, writes what it believes is its own
    assert not asyncio.run(s1.write_liveness(P, [NODE]))
    assert bucket.doc()["shard"] == "S2", "the former owner's late summary replaced the new one"
    assert s1.liveness_fenced == 1
    assert P not in s1._liveness_rev


def test_the_owner_writes_over_a_late_summary_at_once() -> None:
    bucket = Bucket()
    s2 = shard("S2", bucket, fence=9)
    assert asyncio.run(s2.write_liveness(P, [NODE]))
    # a write of the former owner, sent before its pause, lands after S2's
    late = json.dumps({"shard": "S1", "instance": "i-0", "fence": 5, "at": 1.0,
                       "nodes": {NODE: ["NotReady", 1.0]}}).encode()
    bucket.values[KEY] = (late, bucket.rev + 1)
    bucket.rev += 1
    assert asyncio.run(s2.write_liveness(P, [NODE]))
    assert bucket.doc()["shard"] == "S2" and bucket.doc()["fence"] == 9
    assert s2.liveness_healed == 1 and s2.liveness_fenced == 0


def test_no_token_no_write() -> None:
    bucket = Bucket()
    s1 = shard("S1", bucket, fence=None)  # held in `owned`, but the lease is past its deadline
    assert not asyncio.run(s1.write_liveness(P, [NODE]))
    assert KEY not in bucket.values


def test_a_lease_past_its_deadline_gives_no_token_before_the_guard_runs() -> None:
    now = [100.0]
    m = Member(object(), LeaseSettings(name="S1", lease_period=15.0),  # type: ignore[arg-type]
               clock=lambda: now[0])
    m._owned[P] = _Held(revision=42, renewed_at=100.0)
    assert m.partition_revision(P) == 42
    now[0] = 100.0 + 15.0  # paused through the whole period: the guard has not run yet
    assert m.partition_revision(P) is None
    assert P in m._owned  # still listed: only the token is withheld


# -- node status summaries ------------------------------------------------------------


def statuses(fence: int | None = None) -> NodeStatuses:
    fleet = make_fleet()
    add_node(fleet, NODE)
    return NodeStatuses(fleet, shard="S3", owns=lambda p: False, holder=lambda p: None,
                        fence=lambda p: fence)


def summary(st: NodeStatuses, writer: str, ready: str, fence: int | None, rev: int) -> None:
    doc: dict[str, Any] = {"shard": writer, "ready": ready, "reason": "NodeReported",
                           "lastSeen": 1.0, "agentVersion": "1", "desiredGen": 3,
                           "ackedGen": 3}
    if fence is not None:
        doc["fence"] = fence
    st.show(Entry(node_key(NODE), json.dumps(doc).encode(), rev))


def test_another_shard_refuses_a_former_owners_late_summary() -> None:
    st = statuses()
    summary(st, "S2", "Ready", fence=9, rev=10)
    node = st.fleet.objects.nodes[NODE]
    assert node.status.ready == "Ready"
    summary(st, "S1", "NotReady", fence=5, rev=11)  # S1 paused past its lease, then wrote
    assert node.status.ready == "Ready", "a former owner's late word was shown"
    assert st.fleet.eviction.not_ready_since(NODE) is None
    assert st.fenced == 1
    assert st.foreign[NODE].writer == "S2"
    summary(st, "S2", "NotReady", fence=12, rev=12)  # the owner's own later word is shown
    assert node.status.ready == "NotReady"


def test_a_summary_without_a_fence_is_shown_as_before() -> None:
    st = statuses()
    summary(st, "S2", "Ready", fence=9, rev=10)
    summary(st, "S1", "NotReady", fence=None, rev=11)  # a shard of the earlier version
    assert st.fleet.objects.nodes[NODE].status.ready == "NotReady"
    assert st.fenced == 0


def own(fence: int | None) -> NodeStatuses:
    fleet = make_fleet()
    add_node(fleet, NODE)
    fleet.objects.nodes[NODE].status.ready = "Ready"
    return NodeStatuses(fleet, shard="S2", owns=lambda p: True, holder=lambda p: "S2",
                        fence=lambda p: fence)


def test_own_summaries_carry_the_token_and_none_go_out_without_one() -> None:
    got = asyncio.run(own(fence=9).changed_summaries())
    assert json.loads(got[NODE])["fence"] == 9
    assert asyncio.run(own(fence=None).changed_summaries()) == {}
