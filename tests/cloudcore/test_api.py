"""The HTTP API in-process (httpx ASGITransport) over a real store in tmp_path."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudcore_fakes import add_node, daemonset, deployment

from cloudcore.api import create_app
from cloudcore.config import Settings, StoreSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store
from shared.codec import DOWN_LIMITS


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


async def test_values_too_big_for_the_wire_are_refused_at_apply(
        api: tuple[httpx.AsyncClient, Fleet, Store]) -> None:
    client, fleet, _ = api
    cap = DOWN_LIMITS.max_str_bytes
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "big", "namespace": "default"},
          "data": {"ok": "x", "blob": "x" * (cap + 1)}}
    r = await client.post("/api/v1/apply", json={"documents": [cm]})
    assert r.status_code == 422
    assert r.json()["field"] == "data.blob"
    assert f"limit of {cap} bytes" in r.json()["error"] and "documents[0]" in r.json()["error"]
    assert ("default", "big") not in fleet.configmaps
    cm["data"]["blob"] = "x" * (cap - 10)
    assert (await client.post("/api/v1/apply", json={"documents": [cm]})).status_code == 200

    # a Secret travels sealed as one ciphertext: all values together must fit
    half = cap // 2  # each value fits (2/3 of the cap in base64), both do not
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "s", "namespace": "default"},
              "stringData": {"a": "y" * half, "b": "y" * half}}
    r = await client.post("/api/v1/apply", json={"documents": [secret]})
    assert r.status_code == 422 and r.json()["field"] == "data"
    assert "sealed" in r.json()["error"] and str(cap) in r.json()["error"]
    secret["stringData"] = {"a": "y" * half}
    assert (await client.post("/api/v1/apply", json={"documents": [secret]})).status_code == 200


async def test_https_with_the_fleet_ca(service_factory: Any, settings: Settings,
                                       mosquitto: int) -> None:
    """The API as shipped: HTTPS with the fleet CA, tokens required, /api/v1/ca open."""
    settings.insecure = False
    settings.mqtt.port = mosquitto
    settings.forecast.enabled = False
    running = await service_factory().start()
    assert running.url.startswith("https://127.0.0.1:")
    ca_file = settings.store.state_dir / "pki" / "ca.crt"
    verify = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(base_url=running.url, verify=verify) as c:
        assert (await c.get("/healthz")).status_code == 200
        ca = (await c.get("/api/v1/ca")).json()
        assert ca["caCert"] == ca_file.read_text() and ca["caCertHash"] == running.ca.hash
        r = await c.get("/api/v1/nodes")
        assert r.status_code == 401
        admin = (settings.store.state_dir / "admin.token").read_text().strip()
        assert (settings.store.state_dir / "admin.token").stat().st_mode & 0o777 == 0o600
        r = await c.get("/api/v1/nodes", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200
    # a client that trusts only the system CAs refuses the server; plain HTTP gets nowhere
    async with httpx.AsyncClient(base_url=running.url) as c:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await c.get("/healthz")
    async with httpx.AsyncClient(base_url=running.url.replace("https", "http")) as c:
        with pytest.raises(httpx.HTTPError):
            await c.get("/healthz")
