"""The cloud's store of series scraped on devices (issue 17): labels, replacement,
expiry, refusals, and `/metrics/edge` behind a read-only token."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from api_fixture import open_api
from prometheus_client.parser import text_string_to_metric_families

from cloudcore.auth import Role
from cloudcore.fleet.edgemetrics import EdgeSeries
from cloudcore.metrics import Metrics, add_edge_gauges
from shared.entries import SeriesSet, metrics_batch


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def batch(ts: float, pods: dict[str, list[tuple[str, dict[str, str], float]]],
          types: dict[str, str] | None = None, iv: float = 60) -> dict[str, Any]:
    return metrics_batch(
        ts, interval=iv,
        agent=SeriesSet(types={"edgecore_reports_sent_total": "counter"},
                        samples=[("edgecore_reports_sent_total", {}, 7.0)]),
        pods={k: SeriesSet(types=types or {}, samples=v) for k, v in pods.items()})


def families(text: str) -> dict[str, Any]:
    """Parsed by prometheus_client, as Prometheus would read it (it raises on bad text)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_render_labels_node_namespace_pod_and_keeps_types() -> None:
    clock = Clock()
    s = EdgeSeries(clock=clock)
    assert s.put("edge-1", batch(clock.now, {
        "pod/shop/counter": [("requests_total", {"code": "200"}, 5.0),
                             ("lat_bucket", {"le": "+Inf"}, 3.0), ("lat_sum", {}, 1.5),
                             ("lat_count", {}, 3.0), ("clash", {"pod": "inner"}, 1.0)]},
        types={"requests_total": "counter", "lat": "histogram"}))
    assert s.put("edge-2", batch(clock.now, {"pod/shop/counter": [
        ("requests_total", {"code": "500"}, 1.0)]}, types={"requests_total": "counter"}))
    text = s.render()
    fam = families(text)
    assert fam["requests"].type == "counter"
    got = {(x.labels["node"], x.labels["code"]): x.value for x in fam["requests"].samples}
    assert got == {("edge-1", "200"): 5.0, ("edge-2", "500"): 1.0}
    sample = fam["requests"].samples[0]
    assert sample.labels["namespace"] == "shop" and sample.labels["pod"] == "counter"
    assert fam["lat"].type == "histogram" and len(fam["lat"].samples) == 3
    clash = fam["clash"].samples[0].labels
    assert clash["pod"] == "counter" and clash["exported_pod"] == "inner"
    agent = fam["edgecore_reports_sent"].samples
    assert {x.labels["node"] for x in agent} == {"edge-1", "edge-2"}
    assert "pod" not in agent[0].labels
    assert s.series == 2 * 1 + 5 + 1


def test_a_batch_replaces_the_node_and_series_expire() -> None:
    clock = Clock()
    s = EdgeSeries(clock=clock, stale_s=180)
    s.put("edge-1", batch(clock.now, {"pod/a/old": [("x", {}, 1.0)]}))
    s.put("edge-1", batch(clock.now, {"pod/a/new": [("y", {}, 2.0)]}))
    text = s.render()
    assert 'pod="new"' in text and 'pod="old"' not in text
    assert s.series == 2
    clock.now += 181  # no batch for 3 intervals (and stale_s): gone
    assert s.render() == ""
    assert s.expire() == 1 and s.series == 0 and s.nodes() == 0


def test_refusals_are_counted_and_keep_what_was_held() -> None:
    clock = Clock()
    s = EdgeSeries(clock=clock, max_series=6, max_series_per_node=4)
    assert s.put("edge-1", batch(clock.now, {"pod/a/p": [("x", {}, 1.0)]}))
    assert not s.put("edge-1", {"ts": clock.now, "metrics": {"pods": {"pod/a/p": {
        "s": [["bad name", {}, 1]]}}}})
    assert not s.put("edge-1", {"ts": clock.now, "metrics": {"pods": {"not-a-pod": {}}}})
    assert not s.put("edge-1", {"ts": clock.now, "metrics": {"pods": {"pod/a/p": {
        "s": [["x", {"a": 1}, 1]]}}}})
    assert not s.put("edge-1", batch(clock.now - 3600, {}))  # a backlog from long ago
    assert not s.put("edge-2", batch(clock.now, {"pod/a/p": [(f"x{i}", {}, 1.0)
                                                             for i in range(4)]}))
    assert s.put("edge-2", batch(clock.now, {"pod/a/p": [("x", {}, 1.0), ("y", {}, 1.0)]}))
    assert not s.put("edge-3", batch(clock.now, {"pod/a/p": [("x", {}, 1.0)]}))
    assert dict(s.refused) == {"malformed": 3, "stale": 1, "node_limit": 1,
                               "fleet_limit": 1}
    assert s.accepted == 2 and s.series == 5
    assert 'node="edge-1"' in s.render()
    m = Metrics(process=False)
    add_edge_gauges(m, s)
    out = m.render()
    assert 'cloudcore_edge_metrics_batches{result="stale"} 1.0' in out
    assert "cloudcore_edge_series 5.0" in out


async def test_report_telemetry_lands_in_the_store_not_the_forecast(tmp_path: Path) -> None:
    async with open_api(tmp_path, auth_on=True) as api:
        fleet = api.fleet
        fleet.register_node("edge-1")
        now = time.time()
        scraped = batch(now, {"pod/shop/web": [("hits_total", {}, 3.0)]},
                        types={"hits_total": "counter"})
        fleet.add_telemetry("edge-1", [scraped])
        assert fleet.telemetry_malformed == 0 and "edge-1" not in fleet.telemetry
        fleet.add_telemetry("edge-1", [
            scraped, {"ts": int(now // 60 * 60), "node": {"cpu": 100, "mem": 1 << 20}}])
        assert len(fleet.telemetry["edge-1"]) == 1  # the point only
        c = api.client
        r = await c.get("/metrics/edge")
        assert r.status_code == 401  # it names nodes and pods
        token, _ = api.auth.create_api_token(role=Role.READ_ONLY, name="prometheus")
        r = await c.get("/metrics/edge", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        hits = families(r.text)["hits"].samples[0]
        assert hits.labels == {"node": "edge-1", "namespace": "shop", "pod": "web"}
        assert hits.value == 3.0
