"""Retries of unacked deltas wait while cloudcore's own publish queue is not empty:
under a burst, an ack is not late while the delta may not even have left."""

from __future__ import annotations

import asyncio

from cloudcore_fakes import FakeStore, add_node, daemonset, make_fleet

from cloudcore.config import SyncSettings
from cloudcore.metrics import Metrics
from cloudcore.synchub.hub import BACKLOG_WAIT, SyncHub
from shared import topics
from shared.backoff import Backoff
from shared.codec import Ack, Desired, decode, encode
from shared.models import parse_object


def make_hub(backlog: list[int]) -> tuple[SyncHub, list[Desired], list[float]]:
    fleet = make_fleet()
    now = [0.0]
    settings = SyncSettings()
    settings.ack_timeout = 1.0
    hub = SyncHub(nodes=fleet, desired=fleet.desired_sets, store=FakeStore(),  # type: ignore[arg-type]
                  settings=settings, metrics=Metrics(), clock=lambda: now[0])
    sent: list[Desired] = []

    def send(partition: int, topic: str, payload: bytes, broker: str) -> None:
        msg = decode(payload)
        if isinstance(msg, Desired):
            sent.append(msg)

    hub.attach(send, backlog=lambda: backlog[0])
    add_node(fleet, "n1")
    fleet.apply([parse_object(daemonset())])
    return hub, sent, now


def test_retry_waits_for_the_publish_queue_then_resends() -> None:
    backlog = [1000]
    hub, sent, now = make_hub(backlog)
    assert len(sent) == 1  # the first delta
    now[0] = 5.0  # well past the ack timeout, but our own queue is still full
    assert hub.retry_due(now[0]) == 0
    assert len(sent) == 1
    backlog[0] = 0  # drained; the ack is late for real now
    now[0] += BACKLOG_WAIT
    assert hub.retry_due(now[0]) == 1
    assert len(sent) == 2 and sent[1].gen == sent[0].gen


def test_retry_without_backlog_is_unchanged() -> None:
    hub, sent, now = make_hub([0])
    now[0] = 5.0
    assert hub.retry_due(now[0]) == 1
    assert len(sent) == 2


def test_ack_deadline_grows_with_the_number_in_flight() -> None:
    """A big rollout gives later nodes more time: their acks queue behind the others'."""
    from cloudcore.synchub.hub import ACKS_PER_S

    fleet = make_fleet()
    settings = SyncSettings()
    settings.ack_timeout = 1.0
    hub = SyncHub(nodes=fleet, desired=fleet.desired_sets, store=FakeStore(),  # type: ignore[arg-type]
                  settings=settings, metrics=Metrics(), clock=lambda: 0.0)
    hub.attach(lambda partition, topic, payload, broker: None)
    for i in range(50):
        add_node(fleet, f"n{i}")
    fleet.apply([parse_object(daemonset())])
    deadlines = sorted(when for when, _ in hub._retry)
    assert len(deadlines) == 50
    assert deadlines[-1] - deadlines[0] >= 48 / ACKS_PER_S
    assert hub.retry_due(deadlines[0]) == 1  # due ones are still resent


class _CountingHeap:
    """heapq as the hub uses it, counting pushes and pops."""

    def __init__(self) -> None:
        import heapq
        self._heapq = heapq
        self.ops = 0

    def heappush(self, heap: list, item: object) -> None:  # type: ignore[type-arg]
        self.ops += 1
        self._heapq.heappush(heap, item)

    def heappop(self, heap: list) -> object:  # type: ignore[type-arg]
        self.ops += 1
        return self._heapq.heappop(heap)


def _heap_ops_for_a_burst(n: int, monkeypatch: object) -> tuple[int, int]:
    """n nodes get a delta while our publish queue stays full for n wake-ups of the
    retry loop, then it drains: (heap operations, deltas resent)."""
    import cloudcore.synchub.hub as hubmod

    counting = _CountingHeap()
    monkeypatch.setattr(hubmod, "heapq", counting)  # type: ignore[attr-defined]
    fleet = make_fleet()
    now = [0.0]
    backlog = [1000]
    settings = SyncSettings()
    settings.ack_timeout = 1.0
    hub = SyncHub(nodes=fleet, desired=fleet.desired_sets, store=FakeStore(),  # type: ignore[arg-type]
                  settings=settings, metrics=Metrics(), clock=lambda: now[0])
    hub.attach(lambda partition, topic, payload, broker: None, backlog=lambda: backlog[0])
    for i in range(n):
        add_node(fleet, f"n{i}")
    fleet.apply([parse_object(daemonset())])
    for _ in range(n):  # every wake-up finds every retry due, and the queue full
        now[0] += 5.0
        assert hub.retry_due(now[0]) == 0
    backlog[0] = 0
    now[0] += 5.0
    resent = hub.retry_due(now[0])
    return counting.ops, resent


def test_retry_bookkeeping_under_a_backlog_is_linear(monkeypatch: object) -> None:
    """Issue 14: wake-ups while the publish queue is full must not touch each due
    retry (that made a rollout's bookkeeping grow with its square); the deltas are
    still resent once the queue drains."""
    small, resent_small = _heap_ops_for_a_burst(40, monkeypatch)
    big, resent_big = _heap_ops_for_a_burst(160, monkeypatch)
    assert (resent_small, resent_big) == (40, 160)
    assert big <= 6 * 160  # a push per send and per resend, a pop per due entry
    assert big <= 5 * small  # 4x the nodes: ~4x the work, not 16x


def test_in_flight_is_a_live_count() -> None:
    """Acked deltas no longer count toward the next ack deadline (stale heap entries
    used to)."""
    hub, sent, _ = make_hub([0])
    assert hub._in_flight == 1
    hub.handle(topics.up("n1"), encode(Ack(node="n1", epoch=sent[0].epoch, gen=sent[0].gen)))
    assert hub._in_flight == 0
    assert hub.retry_due(5.0) == 0  # its heap entry is stale: no resend
    assert len(sent) == 1


async def test_sends_after_the_next_retry_do_not_wake_the_retry_loop() -> None:
    """Issue 14: each send used to wake the retry loop; now only one due before the
    loop would wake by itself does. (Counts wake-ups, not time.)"""
    fleet = make_fleet()
    settings = SyncSettings()
    settings.ack_timeout = 1.0
    hub = SyncHub(nodes=fleet, desired=fleet.desired_sets, store=FakeStore(),  # type: ignore[arg-type]
                  settings=settings, metrics=Metrics(), clock=lambda: 0.0)
    sent: list[str] = []
    hub.attach(lambda partition, topic, payload, broker: sent.append(topic))
    wakeups = [0]
    retry_due = hub.retry_due

    def counted(now: float) -> int:
        wakeups[0] += 1
        return retry_due(now)

    hub.retry_due = counted  # type: ignore[method-assign]
    hub._backoff = Backoff(base=1.0, cap=1.0, jitter=0.0)  # deadlines in send order
    fleet.apply([parse_object(daemonset())])
    add_node(fleet, "n0")  # its retry is the heap's head, due at 1.0 (the fake clock stays 0)
    loop = asyncio.create_task(hub.run_retries())
    try:
        for _ in range(5):
            await asyncio.sleep(0)
        before = wakeups[0]
        for i in range(1, 50):
            add_node(fleet, f"n{i}")  # due after n0: no wake-up
            await asyncio.sleep(0)
        assert len(sent) == 50
        assert wakeups[0] - before <= 2  # was 49, one per send
    finally:
        loop.cancel()
