"""A big Deployment against the real service over HTTP (issue 16 part 4: `replicas:
100000` timed `fedctl apply` out although the object was made, and stalled the API):
the apply answers with the object written while its pods are still being made, the
API answers while they are, the status converges to the full count, and a second
apply back to 3 removes the rest. `fedctl apply` says the object was created and
`fedctl get deploy` shows the progress."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from cloudcore_fakes import add_node, deployment
from typer.testing import CliRunner

from cloudcore.config import Settings
from fedctl.app import app as fedctl_app

REPLICAS = 10_000
NODES = 10
OWNER = "Deployment/default/big"


async def fedctl(url: str, *argv: str) -> Any:
    """fedctl in a thread (it is synchronous; the service runs in this loop)."""
    return await asyncio.to_thread(CliRunner().invoke, fedctl_app, ["--server", url, *argv])


async def until(check: Any, *, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def test_big_deployment_over_http(service_factory: Any, settings: Settings,
                                        mosquitto: int, tmp_path: Path) -> None:
    settings.mqtt.port = mosquitto
    settings.forecast.enabled = False
    running = await service_factory().start()
    fleet = running.fleet
    for i in range(NODES):
        add_node(fleet, f"n{i}")
    manifest = tmp_path / "big.yaml"
    manifest.write_text(yaml.safe_dump(deployment("big", replicas=REPLICAS)))

    r = await fedctl(running.url, "apply", "-f", str(manifest))
    assert r.exit_code == 0, r.output
    assert "deployment/big created" in r.output.lower()
    # the answer came before the pods: the controller makes them after it
    assert len(fleet.owned_set(OWNER)) < REPLICAS
    assert fleet.workloads.is_scaling(OWNER)

    async with httpx.AsyncClient(base_url=running.url, timeout=30) as http:
        # fedctl shows the progress while the pods are made
        shown = await fedctl(running.url, "get", "deploy", "big", "-o", "wide")
        assert shown.exit_code == 0, shown.output
        assert "Progressing" in shown.output and str(REPLICAS) in shown.output
        assert "scaling up" in shown.output
        answered_while_scaling = 0
        scaling_said = False  # a Progressing condition with reason ScalingReplicaSet
        while fleet.workloads.is_scaling(OWNER):
            got = await http.get("/api/v1/deployments/default/big")
            assert got.status_code == 200
            conditions = (got.json().get("status") or {}).get("conditions") or []
            scaling_said |= any(c["type"] == "Progressing" and c["reason"] == "ScalingReplicaSet"
                                for c in conditions)
            made = len(fleet.owned_set(OWNER))
            if fleet.workloads.is_scaling(OWNER) and 0 < made < REPLICAS:
                answered_while_scaling += 1
            await asyncio.sleep(0.05)
        assert answered_while_scaling > 0
        assert scaling_said

        async def converged() -> bool:
            status = (await http.get("/api/v1/deployments/default/big")).json()["status"]
            return bool(status["replicas"] == REPLICAS)

        await until(converged, timeout=30, what=f"status.replicas == {REPLICAS}")
        got = await fedctl(running.url, "get", "deploy", "big")
        assert got.exit_code == 0, got.output
        assert str(REPLICAS) in got.output

        # the pods that fit nowhere wait with the scheduler's reason (written between
        # the slices, so perhaps after the last pod was made)
        async def explained() -> bool:
            pod = (await http.get(f"/api/v1/pods/default/big-{REPLICAS - 1}")).json()
            return bool(pod["status"].get("reason") == "Unschedulable")

        await until(explained, timeout=30, what="the last pod's Unschedulable reason")
        pending = (await http.get(f"/api/v1/pods/default/big-{REPLICAS - 1}")).json()
        assert pending["status"]["phase"] == "Pending"
        assert f"0/{NODES} nodes available" in pending["status"]["message"]
        assert len(fleet.bound) == NODES * 110  # add_node's nodes take 110 pods each

        small = deployment("big", replicas=3)
        r2 = await http.post("/api/v1/apply", json={"documents": [small]})
        assert r2.status_code == 200 and r2.json()["results"][0]["action"] == "configured"

        async def three_left() -> bool:
            return len(fleet.owned_set(OWNER)) == 3 and not fleet.workloads.is_scaling(OWNER)

        await until(three_left, timeout=60, what="the scale back to 3")
        pods = (await http.get("/api/v1/pods", params={"labelSelector": "app=big"})).json()
        assert sorted(p["metadata"]["name"] for p in pods["items"]) == [
            "big-0", "big-1", "big-2"]
        got = await fedctl(running.url, "get", "deploy", "big")
        assert got.exit_code == 0, got.output
        assert "3" in got.output
