"""Placements since a node's forecast count on top of its p90 (issue 4's stale-p90 race).

Without the ledger, every pod of a burst sees the same stale p90 and the node with
the best forecast takes them all, far past its predicted headroom.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from cloudcore_fakes import GI, add_node, make_fleet

from cloudcore.fleet import Fleet
from cloudcore.forecaster import default_model_path
from cloudcore.forecaster.runner import ForecastRunner
from cloudcore.scheduler import NodeView, RecentPlacements, Scheduler
from cloudcore.scheduler.core import predicted_capacity
from shared.models import PodSpec, parse_object

T0 = 1_800_000_000 // 60 * 60  # a minute start, Unix seconds


def _spec(cpu: str = "600m") -> PodSpec:
    return PodSpec.model_validate({"containers": [
        {"name": "c", "image": "busybox", "resources": {"requests": {"cpu": cpu}}}]})


def _fc(cpu_p90: float) -> dict[str, float]:
    return {"cpu_p50": cpu_p90 - 0.05, "cpu_p90": cpu_p90, "mem_p50": 0.1, "mem_p90": 0.1}


P90 = {"a": 0.5, "b": 0.8, "c": 0.8}  # a: 2000m of predicted headroom, b/c: 800m


def _views(requested: dict[str, int]) -> list[NodeView]:
    """What the fleet gives the scheduler: requests of the bound pods, a stale forecast."""
    return [NodeView(name=n, ready="Ready",
                     allocatable={"cpu": 4000, "memory": 8 * GI, "pods": 110},
                     requested={"cpu": requested.get(n, 0)}, forecast=_fc(p90))
            for n, p90 in P90.items()]


def _burst(s: Scheduler, pods: int) -> list[str | None]:
    requested: dict[str, int] = {}
    out = []
    for _ in range(pods):
        d = s.schedule(_spec(), _views(requested))
        out.append(d.node)
        if d.node is not None:
            requested[d.node] = requested.get(d.node, 0) + 600
    return out


def test_burst_spreads_once_predicted_headroom_is_used() -> None:
    s = Scheduler(clock=lambda: T0 + 30.0)
    placed = _burst(s, 5)
    per_node = Counter(placed)
    # a has room for 3 pods of 600m (2000m), b and c for one each: 5 fit, none over
    assert per_node == {"a": 3, "b": 1, "c": 1}, placed
    for n, k in per_node.items():
        assert P90[n] * 4000 + 600 * k <= 4000
    # the sixth is refused everywhere, and the reason says why
    d = s.schedule(_spec(), _views({n: 600 * k for n, k in per_node.items()}))
    assert d.node is None
    assert "predicted over capacity (cpu p90 50% + 45% placed since)" in d.message


def test_without_the_ledger_the_whole_burst_lands_on_one_node() -> None:
    """The bug this fixes: a ledger that forgets at once behaves as before the fix."""
    forgetful = RecentPlacements(clock=lambda: T0 + 30.0, max_age=-1.0)
    placed = _burst(Scheduler(recent=forgetful), 5)
    assert placed == ["a"] * 5  # 2000m + 5 x 600m predicted on a 4000m node


def test_a_forecast_that_saw_the_pods_replaces_them() -> None:
    now = [T0 + 30.0]
    s = Scheduler(clock=lambda: now[0])
    assert _burst(s, 3) == ["a", "a", "b"]
    assert s.recent.unforecast("a") == {"cpu": 1200}
    assert s.recent.unforecast("b") == {"cpu": 600}
    # a forecast whose newest minute started before the binds (T0): still counted
    s.forecast_made({"a": float(T0), "b": float(T0)})
    assert s.recent.unforecast("a") == {"cpu": 1200} and len(s.recent) == 3
    # the next minute's forecast saw them (its p90 now includes their usage): dropped
    now[0] = T0 + 130.0
    s.forecast_made({"a": float(T0 + 60), "b": float(T0)})
    assert s.recent.unforecast("a") == {}
    assert "a" not in s.recent and len(s.recent) == 1


def test_placements_no_forecast_covers_expire() -> None:
    now = [T0]
    ledger = RecentPlacements(clock=lambda: now[0], max_age=900.0)
    ledger.add("n", {"cpu": 500, "memory": GI, "pods": 1})
    assert ledger.unforecast("n") == {"cpu": 500, "memory": GI}
    ledger.forecast_made({})  # no forecast for n (forecasting off, n silent)
    assert ledger.unforecast("n") == {"cpu": 500, "memory": GI}
    now[0] = T0 + 901
    assert ledger.unforecast("n") == {}
    ledger.forecast_made({})
    assert len(ledger) == 0


def test_filter_and_scorer_count_unforecast_requests() -> None:
    alloc = {"cpu": 4000, "memory": 8 * GI}
    req = {"cpu": 600, "pods": 1}
    free = NodeView(name="n", allocatable=alloc, forecast=_fc(0.5))
    assert predicted_capacity(_spec(), req, free) is None
    full = NodeView(name="n", allocatable=alloc, forecast=_fc(0.5), unforecast={"cpu": 1500})
    assert predicted_capacity(_spec(), req, full) == \
        "predicted over capacity (cpu p90 50% + 38% placed since)"
    # nodes without a forecast ignore the ledger (requests alone decide)
    s = Scheduler(clock=lambda: T0)
    s.recent.add("x", {"cpu": 3900})
    plain = NodeView(name="x", allocatable={"cpu": 4000, "memory": 8 * GI})
    assert s.schedule(_spec(), [plain]).node == "x"


def test_check_neither_records_nor_counts() -> None:
    s = Scheduler(clock=lambda: T0)
    v = _views({})[0]
    for _ in range(5):
        assert s.check(_spec(), v) is None
    assert len(s.recent) == 0


# -- through the fleet and the real forecaster ------------------------------------------


def _pod(name: str) -> Any:
    return parse_object({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                         "spec": {"containers": [{"name": "m", "image": "nginx",
                                                  "resources": {"requests": {"cpu": "600m"}}}]}})


def _telemetry(cpu: float, minutes: int = 60) -> list[dict[str, Any]]:
    return [{"ts": T0 + 60 * m, "node": {"cpu": cpu, "mem": 0.2 * 8 * GI}, "pods": {}}
            for m in range(minutes)]


def test_fleet_burst_with_real_forecaster_and_origins() -> None:
    now = [T0 + 60 * 60 + 10.0]  # just after the 60th minute was reported
    fleet: Fleet = make_fleet(scheduler=Scheduler(clock=lambda: now[0]))
    runner = ForecastRunner(default_model_path(), capacity_nodes=8,
                            apply=fleet.apply_forecasts, known=lambda: fleet.nodes,
                            origins=fleet.scheduler.forecast_made)
    fleet.observer = runner.observe
    for name, cpu in (("quiet", 0.30), ("busy1", 0.70), ("busy2", 0.70)):
        add_node(fleet, name)
        fleet.add_telemetry(name, _telemetry(cpu))
    runner.tick()
    fc = fleet.nodes["quiet"].status.usage
    room = int((1.0 - fc["cpu_p90"]) * 4000 // 600)  # pods that fit quiet's p90 headroom
    assert 1 <= room < 6
    for i in range(6):
        fleet.apply([_pod(f"p{i}")])
    on = Counter(fleet.pods[("default", f"p{i}")].status.node_name for i in range(6))
    assert on["quiet"] == room, on  # not all 6: the stale p90 no longer attracts them all
    assert len(fleet.scheduler.recent) == 6
    # the binds happened during minute 60: its forecast still counts them; the one
    # whose newest minute (61) began after them has seen them, and the ledger empties
    for minute, left in ((60, 6), (61, 0)):
        now[0] += 60.0
        for name in ("quiet", "busy1", "busy2"):
            fleet.add_telemetry(name, [{"ts": T0 + 60 * minute,
                                        "node": {"cpu": 0.5, "mem": GI}, "pods": {}}])
        runner.tick()
        assert len(fleet.scheduler.recent) == left, minute
