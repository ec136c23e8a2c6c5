"""The HTTP API in-process (httpx ASGITransport) over a real store in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cloudcore_fakes import add_node, daemonset, deployment

from cloudcore.api import create_app
from cloudcore.config import StoreSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Fleet, Store]]:
    async with Store(StoreSettings(state_dir=tmp_path / "s", batch_interval=0.005)) as store:
        writer = asyncio.create_task(store.run(), name="test.writer")
        fleet = Fleet(store=store, scheduler=Scheduler(),
                      liveness=Liveness(default_heartbeat=30, missed=3, now=0))
        fleet.load(store.load())
        app = create_app(fleet, metrics=Metrics(), flush=store.flush)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, fleet, store
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer


async def test_apply_get_list_delete(api: tuple[httpx.AsyncClient, Fleet, Store]) -> None:
    client, fleet, store = api
    for n in ("n1", "n2"):
        add_node(fleet, n, labels={"zone": "a" if n == "n1" else "b"})
    r = await client.post("/api/v1/apply", json={"documents": [daemonset(), deployment()]})
    assert r.status_code == 200, r.text
    assert [x["action"] for x in r.json()["results"]] == ["created", "created"]
    assert r.json()["results"][0] == {"kind": "DaemonSet", "namespace": "default",
                                      "name": "agent", "action": "created"}
    assert store.pending == 0  # durable before the response

    r = await client.post("/api/v1/apply", json={"documents": [daemonset(args=["x"])],
                                                 "dryRun": True})
    assert r.json()["results"][0]["action"] == "configured"
    assert fleet.daemonsets[("default", "agent")].spec.template.spec.containers[0].args != ["x"]

    items = (await client.get("/api/v1/pods", params={"labelSelector": "app=agent"})).json()
    assert sorted(i["metadata"]["name"] for i in items["items"]) == ["agent-n1", "agent-n2"]
    on_n1 = (await client.get("/api/v1/pods", params={"node": "n1"})).json()["items"]
    assert "agent-n1" in {i["metadata"]["name"] for i in on_n1}
    nodes = (await client.get("/api/v1/nodes", params={"labelSelector": "zone!=a"})).json()
    assert [n["metadata"]["name"] for n in nodes["items"]] == ["n2"]

    pod = (await client.get("/api/v1/pods/default/web-0")).json()
    assert pod["status"]["reason"] == "Scheduled"
    assert pod["status"]["message"].startswith("scheduled on ")
    node = (await client.get("/api/v1/nodes/n1")).json()
    assert node["status"]["ready"] == "Ready" and node["status"]["desiredGen"] >= 1

    r = await client.delete("/api/v1/daemonsets/default/agent")
    assert r.status_code == 200 and r.json()["deleted"]["metadata"]["name"] == "agent"
    assert (await client.get("/api/v1/pods/default/agent-n1")).status_code == 404

    # survives a reload of the store
    assert store.load()["deployments"]["default/web"]["spec"]["replicas"] == 2


async def test_errors_are_json(api: tuple[httpx.AsyncClient, Fleet, Store]) -> None:
    client, _, _ = api
    bad = deployment()
    bad["spec"]["template"]["spec"]["containers"][0]["lifecycle"] = {"preStop": {}}
    r = await client.post("/api/v1/apply", json={"documents": [daemonset(), bad]})
    assert r.status_code == 422
    body = r.json()
    assert body["field"] == "spec.template.spec.containers[0].lifecycle"
    assert "documents[1]" in body["error"] and "not supported" in body["error"]
    assert (await client.get("/api/v1/daemonsets")).json()["items"] == []  # all or nothing

    r = await client.get("/api/v1/pods/default/missing")
    assert r.status_code == 404 and r.json()["error"] == "Pod 'default/missing' not found"
    assert (await client.get("/api/v1/widgets")).status_code == 404
    assert (await client.delete("/api/v1/nodes/nope")).status_code == 404
    r = await client.post("/api/v1/apply", json={"documents": [{"kind": "Node", "metadata": {
        "name": "ghost"}}]})
    assert r.status_code == 422 and r.json()["field"] == "metadata.name"
    r = await client.post("/api/v1/apply", json={"docs": []})
    assert r.status_code == 422 and r.json()["field"] == "documents"
    r = await client.get("/api/v1/pods", params={"labelSelector": "=x"})
    assert r.status_code == 422 and r.json()["field"] == "labelSelector"
    for path in ("/healthz", "/readyz"):
        assert (await client.get(path)).status_code == 200
    metrics = (await client.get("/metrics")).text
    assert metrics.endswith("\n")
