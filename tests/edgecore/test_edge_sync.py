"""Desired handling: APPLIED persists then acks, DUPLICATE re-acks, GAP asks to resync."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecore.cache import Cache, OutboxKind
from edgecore.errors import CacheError
from edgecore.sync import SyncHandler
from shared.codec import Ack, Desired, ReportAck, Request, Resync, Will
from shared.delta import LEFT_EPOCH

NODE = "edge-1"


@pytest.fixture
def cache(tmp_path: Path):
    with Cache(tmp_path / "c") as c:
        yield c


def desired(gen: int, base: int = 0, *, epoch: str = "E", snapshot: bool = False,
            put: dict | None = None, delete: list[str] | None = None) -> Desired:
    return Desired(node=NODE, epoch=epoch, base=base, gen=gen, snapshot=snapshot,
                   put=put or {}, delete=delete or [])


async def test_applied_persists_then_acks(cache: Cache) -> None:
    events: list[str] = []
    real_put = cache.put_desired

    def put(d):
        real_put(d)
        events.append(f"persisted {d.gen}")

    cache.put_desired = put  # type: ignore[method-assign]
    sync = SyncHandler(node=NODE, cache=cache, on_applied=lambda: events.append("wake"))
    assert sync.hello() == Resync(node=NODE, epoch=None, gen=0, seq=0, reason="connect")
    replies = await sync.handle(desired(2, snapshot=True, put={"pod/a/x": {"v": 1}}))
    assert replies == [Ack(node=NODE, epoch="E", gen=2)]
    assert events == ["persisted 2", "wake"]
    replies = await sync.handle(desired(3, 2, put={"pod/a/y": {"v": 2}}, delete=["pod/a/x"]))
    assert replies == [Ack(node=NODE, epoch="E", gen=3)]
    assert cache.get_desired().items == {"pod/a/y": {"v": 2}}
    # A restarted agent starts from what was persisted.
    again = SyncHandler(node=NODE, cache=cache)
    assert (again.desired.epoch, again.desired.gen) == ("E", 3)
    assert again.hello().gen == 3


async def test_duplicate_is_reacked_with_local_gen(cache: Cache) -> None:
    sync = SyncHandler(node=NODE, cache=cache)
    await sync.handle(desired(5, snapshot=True, put={"pod/a/x": 1}))
    for dup in (desired(5, 4, put={"pod/a/x": 1}), desired(3, 2), desired(5, snapshot=True)):
        assert await sync.handle(dup) == [Ack(node=NODE, epoch="E", gen=5)]
    assert sync.stats.duplicates == 3 and sync.stats.applied == 1
    assert cache.get_desired().gen == 5


async def test_gap_asks_for_resync_once(cache: Cache) -> None:
    cache.append_report(lambda s: b"r", kind=OutboxKind.STATUS)
    sync = SyncHandler(node=NODE, cache=cache)
    await sync.handle(desired(2, snapshot=True))
    want = [Resync(node=NODE, epoch="E", gen=2, seq=1, reason="gap")]
    assert await sync.handle(desired(7, 5)) == want
    assert await sync.handle(desired(8, 6)) == []  # same gap, inside the quiet time
    # A delta from another epoch is a gap too (only a snapshot may switch epochs).
    sync._last_gap = None
    assert await sync.handle(desired(3, 2, epoch="F")) == want
    assert cache.get_desired().gen == 2
    # An older base still applies: a delta from b carries every change after b.
    assert await sync.handle(desired(4, 1, put={"pod/a/z": 1})) == [
        Ack(node=NODE, epoch="E", gen=4)]
    # A snapshot of a new epoch always applies.
    assert await sync.handle(desired(1, snapshot=True, epoch="F")) == [
        Ack(node=NODE, epoch="F", gen=1)]


async def test_never_acks_what_is_not_persisted(cache: Cache) -> None:
    sync = SyncHandler(node=NODE, cache=cache)

    def broken(_d):
        raise CacheError("disk full")

    cache.put_desired = broken  # type: ignore[method-assign]
    assert await sync.handle(desired(2, snapshot=True, put={"pod/a/x": 1})) == []
    assert sync.desired.gen == 0 and sync.stats.persist_failures == 1


async def test_report_ack_trims_outbox_and_wrong_direction_is_dropped(cache: Cache) -> None:
    for _ in range(3):
        cache.append_report(lambda s: b"r", kind=OutboxKind.STATUS)
    sync = SyncHandler(node=NODE, cache=cache)
    assert await sync.handle(ReportAck(node=NODE, seq=2)) == []
    assert [s for s, _ in sync.pending(0)] == [3]
    assert await sync.handle(Will(node=NODE)) == []
    assert sync.stats.unexpected == 1


# -- replays (proposal 0002) ----------------------------------------------------------


async def test_requests_expired_seen_or_without_expiry_are_refused(cache: Cache) -> None:
    now = [1000.0]
    ran: list[str] = []
    sync = SyncHandler(node=NODE, cache=cache, wall=lambda: now[0], require_exp=True,
                       on_request=lambda r: ran.append(f"{r.kind}:{r.id}"))

    def req(rid: str, exp: float | None, kind: str = "exec") -> Request:
        return Request(node=NODE, id=rid, kind=kind, argv=["id"], exp=exp)  # type: ignore[arg-type]

    assert await sync.handle(req("a", 1100)) == []
    await sync.handle(req("a", 1100))  # replayed as recorded
    await sync.handle(req("b", 999))  # expired
    await sync.handle(req("c", None))  # an expiry is required
    await sync.handle(req("a", 1100, kind="cancel"))  # its cancel shares the id: runs once
    await sync.handle(req("a", 1100, kind="cancel"))
    assert ran == ["exec:a", "cancel:a"]
    assert sync.stats.replayed_requests == 4
    now[0] = 1200.0  # later, the recorded one is refused by its expiry alone
    await sync.handle(req("a", 1100))
    assert ran == ["exec:a", "cancel:a"] and sync.stats.replayed_requests == 5
    # an insecure agent takes requests from a cloud that sends no expiry
    old = SyncHandler(node=NODE, cache=cache, wall=lambda: now[0],
                      on_request=lambda r: ran.append(r.id))
    await old.handle(req("z", None))
    assert ran[-1] == "z"


async def test_a_snapshot_under_a_left_epoch_is_refused_also_after_a_restart(
        cache: Cache) -> None:
    sync = SyncHandler(node=NODE, cache=cache)
    await sync.handle(desired(1, snapshot=True, epoch="E1", put={"pod/a/x": 1}))
    await sync.handle(desired(2, 1, epoch="E1", put={"pod/a/evil": 1}))
    await sync.handle(desired(5, snapshot=True, epoch="E2", put={"pod/a/y": 2}))
    assert cache.get_desired().left == ("E1",)
    # a recorded E1 snapshot replayed, after an agent restart on the same cache
    again = SyncHandler(node=NODE, cache=cache)
    replies = await again.handle(desired(9, snapshot=True, epoch="E1", put={"pod/a/evil": 1}))
    assert replies == [Resync(node=NODE, epoch="E2", gen=5, seq=0, reason=LEFT_EPOCH)]
    assert again.stats.refused_epochs == 1
    assert cache.get_desired().items == {"pod/a/y": 2}
    # only the last 16 epochs are kept
    for i in range(20):
        await again.handle(desired(1, snapshot=True, epoch=f"F{i}"))
    left = cache.get_desired().left
    assert len(left) == 16 and left[-1] == "F18" and "E1" not in left
