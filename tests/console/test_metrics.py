"""cloudcore's /metrics through prometheus-client (issue 17, part 2), and the console's
overview summary, in-process over a real LMDB store (no browser needed)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cloudcore.api import create_app
from cloudcore.auth import Auth, Role
from cloudcore.config import StoreSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.metrics import LAG, LAG_MAX, LoopLag, Metrics, add_rollout_gauges
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_same_names_types_and_labels_as_before() -> None:
    m = Metrics()
    m.describe("cloudcore_joins_total", "Join calls by result.")
    m.inc("cloudcore_joins_total", result="Joined")
    m.inc("cloudcore_joins_total", 2, result="UnknownJoinToken")
    m.inc("cloudcore_messages_in_total", type="report")
    m.add_gauges(lambda: [("cloudcore_nodes", (("ready", "Ready"),), 3.0),
                          ("cloudcore_nodes", (("ready", 'Not"Ready\n'),), 1.0),
                          ("cloudcore_pods", (), 7.0)])
    text = m.render()
    assert "# TYPE cloudcore_joins_total counter" in text
    assert "# HELP cloudcore_joins_total Join calls by result." in text
    assert 'cloudcore_joins_total{result="Joined"} 1.0' in text
    assert 'cloudcore_joins_total{result="UnknownJoinToken"} 2.0' in text
    assert "# TYPE cloudcore_nodes gauge" in text
    assert 'cloudcore_nodes{ready="Not\\"Ready\\n"} 1.0' in text  # escaped by the client
    assert "_created" not in text  # no OpenMetrics extras in the 0.0.4 text
    parsed = families(text)  # Prometheus' own parser reads it back
    assert parsed["cloudcore_joins"].type == "counter"  # type: ignore[attr-defined]
    assert parsed["cloudcore_pods"].samples[0].value == 7.0  # type: ignore[attr-defined]
    assert "process_resident_memory_bytes" in parsed
    assert m.value("cloudcore_joins_total", result="UnknownJoinToken") == 2.0
    assert m.total("cloudcore_joins_total") == 3.0


def test_each_metrics_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.inc("cloudcore_a_total")
    assert "cloudcore_a_total" in a.render() and "cloudcore_a_total" not in b.render()


async def test_loop_lag_sees_a_call_that_holds_the_loop() -> None:
    m = Metrics(process=False)
    lag = LoopLag(m, interval=0.02, window=60)
    task = asyncio.create_task(lag.run(), name="test.loop-lag")
    try:
        await asyncio.sleep(0.1)
        time.sleep(0.2)  # noqa: ASYNC251 (the point: a call that holds the loop 200 ms)
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert lag.worst() >= 0.15
    text = m.render()
    value = {f.name: f.samples[0].value for f in text_string_to_metric_families(text)}
    assert value[LAG_MAX] >= 0.15
    assert value[LAG] < value[LAG_MAX]  # the last sample came after the stall
    lag.record(0.0, time.monotonic() + 120)  # a minute later the stall is forgotten
    assert lag.worst() == 0.0


async def test_metrics_endpoint_and_console_overview(tmp_path: Path) -> None:
    async with Store(StoreSettings(state_dir=tmp_path / "s", batch_interval=0.005)) as store:
        writer = asyncio.create_task(store.run(), name="test.writer")
        try:
            await _endpoint_and_overview(store)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)


async def _endpoint_and_overview(store: Store) -> None:
    fleet = Fleet(store=store, scheduler=Scheduler(),
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0))
    access = Auth(store=store, enabled=True)
    metrics = Metrics()
    add_rollout_gauges(metrics, fleet)
    app = create_app(fleet, metrics=metrics, flush=store.flush, auth=access)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/metrics")
        assert r.status_code == 200 and r.text.endswith("\n")
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert (await c.get("/console/api/overview")).status_code == 401
        text = (await c.get("/metrics")).text
        assert 'cloudcore_api_refused_total{reason="Unauthenticated"} 1.0' in text

        for i, (site, state) in enumerate([("lyon", "Ready"), ("lyon", "NotReady"),
                                           ("nice", "Unknown"), ("nice", "Ready")]):
            node = fleet.join_node(f"n{i}", labels={"edgefed.io/site": site}, arch="arm64")
            node.status.ready = state
            node.status.last_seen = 1000.0 + i
        fleet.nodes["n3"].status.desired_gen = 5  # Ready but behind on gens
        token, _ = access.create_api_token(role=Role.READ_ONLY, name="viewer")
        auth = {"Authorization": f"Bearer {token}"}
        r = await c.get("/console/api/overview", headers=auth)
        assert r.status_code == 200, r.text
        o = r.json()
        assert o["total"] == 4 and o["states"] == {"Ready": 2, "NotReady": 1, "Unknown": 1}
        assert o["behind"] == 1 and o["troubledTotal"] == 3
        assert [n["name"] for n in o["troubled"]] == ["n1", "n2", "n3"]  # worst first
        assert o["groups"] == {"site": {"lyon": 2, "nice": 2}, "arch": {"arm64": 4}}
        r = await c.get("/console/api/overview", headers=auth,
                        params={"labelSelector": "edgefed.io/site=nice", "troubled": 1})
        o = r.json()
        assert o["total"] == 2 and [n["name"] for n in o["troubled"]] == ["n2"]
        assert o["troubledTotal"] == 2
        r = await c.get("/console/api/overview", headers=auth, params={"troubled": 10_000})
        assert r.status_code == 422
        # rollout progress as counts without names
        op, _ = access.create_api_token(role=Role.OPERATOR, name="op")
        ds = {"apiVersion": "apps/v1", "kind": "DaemonSet",
              "metadata": {"name": "agent", "namespace": "default"},
              "spec": {"selector": {"matchLabels": {"app": "a"}},
                       "template": {"metadata": {"labels": {"app": "a"}},
                                    "spec": {"containers": [{"name": "c",
                                                             "image": "busybox"}]}}}}
        r = await c.post("/api/v1/apply", json={"documents": [ds]},
                         headers={"Authorization": f"Bearer {op}"})
        assert r.status_code == 200, r.text
        text = (await c.get("/metrics")).text
        assert 'cloudcore_rollout_pods{kind="DaemonSet",state="desired"} 4.0' in text
        assert 'cloudcore_rollouts{kind="Deployment",phase="Complete"} 0.0' in text
        assert "# TYPE cloudcore_rollouts gauge" in text and "agent" not in text
        # a node's telemetry for its plot: read-only role, 404 for no such node
        assert (await c.get("/console/api/nodes/n0/telemetry")).status_code == 401
        r = await c.get("/console/api/nodes/n0/telemetry", headers=auth)
        assert r.json() == {"points": [], "forecast": None, "horizonSeconds": 900}
        r = await c.get("/console/api/nodes/nope/telemetry", headers=auth)
        assert r.status_code == 404
        # the pages themselves are open (they hold no data) and strict
        page = await c.get("/console/")
        assert page.status_code == 200 and "script-src 'self'" in page.headers[
            "content-security-policy"]


def test_the_grafana_dashboard_names_only_metrics_cloudcore_has() -> None:
    root = Path(__file__).resolve().parents[2]
    dash = json.loads((root / "docs" / "grafana-cloudcore.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"\b(cloudcore_[a-z_]+)\b", e)}
    source = "\n".join(p.read_text() for p in (root / "cloudcore").rglob("*.py"))
    missing = sorted(n for n in names if f'"{n}"' not in source)
    assert not missing, f"the dashboard uses metrics cloudcore does not define: {missing}"
    assert len(names) >= 15
