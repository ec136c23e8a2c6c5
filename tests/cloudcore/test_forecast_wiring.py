"""Telemetry -> forecaster -> node status, scheduler, events and `fedctl top nodes`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cloudcore_fakes import GI, add_node, make_fleet

from cloudcore.config import Settings
from cloudcore.fleet import Fleet
from cloudcore.forecaster import default_model_path
from cloudcore.forecaster.runner import ForecastRunner
from cloudcore.service import open_forecaster
from shared.models import parse_object

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fedctl"))
from test_fedctl_real import Cloud, _cloud, fed

T0 = 1_800_000_000 // 60 * 60  # a minute start, Unix seconds
LOAD = {"cool": (0.10, 0.20), "warm": (0.45, 0.50), "hot": (0.97, 0.60)}


def _telemetry(name: str, minutes: int = 60) -> list[dict[str, Any]]:
    cpu, mem = LOAD[name]
    out = []
    for m in range(minutes):
        # hot: saturated for its last 10 minutes (a calibrated p90 of a node at 99 %
        # may stay just under 100 %; one pinned at 100 % cannot)
        c = cpu if name != "hot" or m < 50 else 1.0
        # cpu as a fraction for one node, as millicores for the others (4000m nodes)
        cpu_val: float = c if name == "cool" else c * 4000
        out.append({"ts": T0 + 60 * m, "node": {"cpu": cpu_val, "mem": mem * 8 * GI},
                    "pods": {}})
    return out


def _wire(fleet: Fleet) -> ForecastRunner:
    runner = ForecastRunner(default_model_path(), capacity_nodes=16,
                            apply=fleet.apply_forecasts, known=lambda: fleet.nodes)
    fleet.observer = runner.observe
    return runner


def _feed(fleet: Fleet) -> ForecastRunner:
    runner = _wire(fleet)
    for name in LOAD:
        add_node(fleet, name)
        fleet.add_telemetry(name, [*_telemetry(name), {"ts": "x"}, "junk",
                                   {"ts": T0, "node": {"cpu": float("nan"), "mem": 1}}])
    runner.tick()
    return runner


def _pod(name: str, cpu: str = "500m") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "m", "image": "nginx",
                                     "resources": {"requests": {"cpu": cpu}}}]}}


def test_telemetry_to_status_scheduler_and_event() -> None:
    fleet = make_fleet()
    _feed(fleet)
    assert fleet.telemetry_malformed == 3 * 3
    usage = {n: fleet.nodes[n].status.usage for n in LOAD}
    for n in LOAD:
        for k in ("cpu", "mem", "cpu_p50", "cpu_p90", "mem_p50", "mem_p90"):
            assert 0.0 <= usage[n][k] <= 1.0, (n, k)
        assert usage[n]["cpu_p50"] <= usage[n]["cpu_p90"] + 1e-6
    assert usage["cool"]["cpu"] == pytest.approx(0.10)
    assert usage["warm"]["cpu"] == pytest.approx(0.45)
    assert usage["hot"]["cpu_p90"] > 0.95 > usage["warm"]["cpu_p90"] > usage["cool"]["cpu_p90"]

    # the cool node wins; pinned to the hot one, the pod stays Pending with the reason
    fleet.apply(_objs(_pod("a")))
    assert fleet.pods[("default", "a")].spec.node_name in (None, "cool")
    assert fleet.pods[("default", "a")].status.node_name == "cool"
    pinned = _pod("b")
    pinned["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "hot"}
    fleet.apply(_objs(pinned))
    st = fleet.pods[("default", "b")].status
    assert st.phase == "Pending" and "predicted over capacity (cpu p90" in (st.message or "")

    warn = fleet.events.list(obj="Node/hot", type="Warning")
    assert [e["reason"] for e in warn] == ["PredictedOverCapacity"]
    assert not fleet.events.list(obj="Node/cool", type="Warning")
    fleet.apply_forecasts({"hot": {"cpu_p50": 1, "cpu_p90": 1, "mem_p50": 0, "mem_p90": 0,
                               "trusted": 0.0}})
    assert len(fleet.events.list(obj="Node/hot", type="Warning")) == 1  # rate-limited


def _objs(manifest: dict[str, Any]) -> list[Any]:
    return [parse_object(manifest)]


def test_disabled_forecasting_falls_back(tmp_path: Path) -> None:
    fleet = make_fleet()
    add_node(fleet, "n")
    settings = Settings()
    settings.forecast.model_path = tmp_path / "missing.onnx"
    assert open_forecaster(settings, fleet) is None
    assert fleet.observer is None
    fleet.add_telemetry("n", _telemetry("warm", 2))
    assert "cpu_p90" not in fleet.nodes["n"].status.usage


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from _cloud(tmp_path, False)


def test_fedctl_top_nodes_forecast(cloud: Cloud) -> None:
    cloud.call(_feed, cloud.fleet)
    pinned = _pod("p")
    pinned["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "hot"}
    cloud.call(lambda: cloud.fleet.apply(_objs(pinned)))
    r = fed(cloud, "top", "nodes", "--forecast")
    assert r.exit_code == 0, r.output
    head = r.stdout.splitlines()[0].split()
    assert head == ["NAME", "CPU", "MEM", "CPU", "P50", "CPU", "P90", "MEM", "P50", "MEM", "P90"]
    assert any(line.split()[:2] == ["cool", "10%"] for line in r.stdout.splitlines())
    r = fed(cloud, "top", "nodes")
    assert r.exit_code == 0 and "P90" not in r.stdout
    r = fed(cloud, "top", "nodes", "--forecast", "-o", "json")
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["hot"]["cpu_p90"] > 95 and rows["cool"]["cpu"] == 10.0
    r = fed(cloud, "describe", "pod", "p")
    assert "predicted over capacity (cpu p90" in r.stdout, r.stdout


def test_placement_flags_reach_the_settings_and_trusted_reaches_the_scheduler() -> None:
    from cloudcore.__main__ import parse_args
    from cloudcore.config import ConfigError
    from cloudcore.fleet.forecast import forecast_of
    from cloudcore.scheduler import RightSizedCapacity, Scheduler

    s = parse_args(["--placement", "right-sizing", "--placement-safety", "0.1"])
    assert (s.forecast.placement, s.forecast.placement_safety) == ("right-sizing", 0.1)
    assert parse_args([]).forecast.placement == "requests"
    s.forecast.placement_safety = 0.9
    with pytest.raises(ConfigError, match="placement_safety"):
        s.validate()
    fleet = make_fleet()
    runner = _feed(fleet)
    usage = fleet.nodes["warm"].status.usage
    assert usage["trusted"] == 0.0  # 60 minutes: the learner has no examples yet
    assert runner.forecaster.learner.calibrated() is False
    assert forecast_of(usage)["trusted"] == 0.0
    rs = Scheduler.right_sizing()
    assert any(isinstance(f, RightSizedCapacity) for f in rs.filters)
