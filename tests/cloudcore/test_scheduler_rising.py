"""Right-sizing's rising guard (issue 15, eighth round): a trusted node whose pods' share of
their requests is rising well above its recent average takes no pod past its requests;
within them, and once the rise has become the node's normal, right-sizing decides as
before."""

from __future__ import annotations

import pytest

from cloudcore.scheduler import NodeView, Scheduler
from cloudcore.scheduler.recent import ShareTrend
from shared.models import PodSpec

GI = 2**30
ALLOC = {"cpu": 4000, "memory": 16 * GI, "pods": 110}


def _pod(cpu_m: int) -> PodSpec:
    return PodSpec.model_validate({"containers": [{"name": "c", "image": "busybox", "resources": {
        "requests": {"cpu": f"{cpu_m}m", "memory": GI}}}]})


def _node(cpu_req: int, cpu_p50: float) -> NodeView:
    return NodeView(name="n", ready="Ready", allocatable=ALLOC,
                    requested={"cpu": cpu_req, "memory": 4 * GI, "pods": 4},
                    forecast={"cpu_p50": cpu_p50, "cpu_p90": cpu_p50 + 0.03,
                              "mem_p50": 0.2, "mem_p90": 0.23, "trusted": 1.0})


@pytest.mark.parametrize("guard", [True, False])
def test_a_node_on_a_rise_is_not_taken_past_its_requests(guard: bool) -> None:
    now = [0.0]
    sched = Scheduler.right_sizing(safety=0.05, overcommit=0.5, clock=lambda: now[0],
                                   rising_margin=0.1 if guard else None)
    pod = _pod(400)
    # pods using half their requests: 400m more fits past the requests (4,400 of 6,000)
    assert sched.check(pod, _node(4000, 0.5)) is None
    now[0] = 600.0  # ten minutes later they use 60 % of them: 20 % above the average
    reason = sched.check(pod, _node(4000, 0.6))
    if not guard:
        assert reason is None  # without the guard the p90 still has room
        return
    assert reason is not None and "rising" in reason
    # within its requests the guard refuses nothing (same share: 0.45 x 4,000 / 3,000)
    assert sched.check(pod, _node(3000, 0.45)) is None
    # once the new level has lasted (hours at 60 %), it is the node's normal again
    for k in range(1, 13):
        now[0] = 600.0 + 1800.0 * k
        sched.check(pod, _node(3000, 0.45))
    assert sched.check(pod, _node(4000, 0.6)) is None


def test_share_trend_is_an_average_in_time_and_bounded_to_live_nodes() -> None:
    trend = ShareTrend(half_life=3600.0)
    assert trend.observe("a", "cpu", 0.5, 0.0) == 0.5  # its own baseline at first
    assert trend.observe("a", "cpu", 1.0, 3600.0) == 0.5  # the average before it
    assert trend.average("a", "cpu") == pytest.approx(0.75)  # half-way after a half-life
    assert trend.observe("a", "cpu", 1.0, 3600.0) == pytest.approx(0.75)  # same time: no change
    assert trend.average("a", "memory") is None
    trend.observe("b", "memory", 0.3, 0.0)
    trend.keep_only({"b"})
    assert len(trend) == 1 and trend.average("a", "cpu") is None
    with pytest.raises(ValueError, match="rising margin"):
        Scheduler.right_sizing(rising_margin=2.0)
