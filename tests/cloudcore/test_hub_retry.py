"""Retries of unacked deltas wait while cloudcore's own publish queue is not empty:
under a burst, an ack is not late while the delta may not even have left."""

from __future__ import annotations

from cloudcore_fakes import FakeStore, add_node, daemonset, make_fleet

from cloudcore.config import SyncSettings
from cloudcore.metrics import Metrics
from cloudcore.synchub.hub import BACKLOG_WAIT, SyncHub
from shared.codec import Desired, decode
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
