"""Pagination, field projection, label/cordon/drain, events and the OpenAPI schema."""

from __future__ import annotations

import json
from pathlib import Path

from api_fixture import open_api
from cloudcore_fakes import add_node, daemonset, deployment


async def test_pagination_and_fields(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        for i in range(23):
            add_node(api.fleet, f"n{i:02d}", labels={"even": str(i % 2 == 0).lower()})
        seen: list[str] = []
        cont = None
        pages = 0
        while True:
            params = {"limit": "5", **({"continue": cont} if cont else {})}
            body = (await api.client.get("/api/v1/nodes", params=params)).json()
            seen += [n["metadata"]["name"] for n in body["items"]]
            pages += 1
            cont = body.get("continue")
            if not cont:
                break
        assert seen == [f"n{i:02d}" for i in range(23)] and pages == 5
        # with a selector, pages hold matching objects only
        body = (await api.client.get("/api/v1/nodes", params={
            "limit": "3", "labelSelector": "even=true"})).json()
        assert [n["metadata"]["name"] for n in body["items"]] == ["n00", "n02", "n04"]
        # JSON lines with the token in a header
        r = await api.client.get("/api/v1/nodes", params={"limit": "10"},
                                 headers={"Accept": "application/x-ndjson"})
        lines = r.content.splitlines()
        assert len(lines) == 10 and json.loads(lines[0])["kind"] == "Node"
        assert r.headers["x-continue"]
        # projection
        body = (await api.client.get("/api/v1/nodes", params={
            "fields": "metadata.name,status.ready", "limit": "1"})).json()
        assert body["items"] == [{"metadata": {"name": "n00"}, "status": {"ready": "Ready"}}]
        # a changed node is re-encoded
        api.fleet.mark_not_ready("n00", reason="x", message="gone")
        body = (await api.client.get("/api/v1/nodes", params={
            "fields": "metadata.name,status.ready", "limit": "1"})).json()
        assert body["items"][0]["status"]["ready"] == "NotReady"
        r = await api.client.get("/api/v1/nodes", params={"continue": "garbage!"})
        assert r.status_code == 422 and r.json()["field"] == "continue"
        r = await api.client.get("/api/v1/nodes", params={"limit": "100000"})
        assert r.status_code == 422 and r.json()["field"] == "limit"
        # without limit: everything, no continue key (the old answer)
        body = (await api.client.get("/api/v1/nodes")).json()
        assert len(body["items"]) == 23 and "continue" not in body


async def test_label_cordon_drain_and_events(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        for n in ("a", "b"):
            add_node(api.fleet, n)
        r = await api.client.post("/api/v1/apply", json={"documents": [
            daemonset(), deployment(replicas=4)]})
        assert r.status_code == 200
        on_a = {k[1] for k, v in api.fleet.bound.items() if v == "a"}
        assert "agent-a" in on_a and any(p.startswith("web-") for p in on_a)

        r = await api.client.patch("/api/v1/nodes/a", json={
            "metadata": {"labels": {"zone": "x", "kubernetes.io/hostname": None}}})
        assert r.status_code == 200
        labels = r.json()["metadata"]["labels"]
        assert labels["zone"] == "x" and "kubernetes.io/hostname" not in labels
        # API-set labels survive the agent's report
        api.fleet.node_status("a", {"labels": {"zone": "agent-says"}})
        assert api.fleet.nodes["a"].metadata.labels["zone"] == "x"

        r = await api.client.post("/api/v1/nodes/a/drain")
        assert r.status_code == 200, r.text
        result = r.json()
        assert api.fleet.nodes["a"].spec.unschedulable
        moved = {e["pod"]: e["node"] for e in result["evicted"]}
        assert moved and set(moved.values()) == {"b"}
        assert result["kept"] == [{"pod": "default/agent-a", "reason": "DaemonSet pod"}]
        assert {k[1] for k, v in api.fleet.bound.items() if v == "a"} == {"agent-a"}

        r = await api.client.patch("/api/v1/nodes/a", json={"spec": {"unschedulable": False}})
        assert r.json()["spec"]["unschedulable"] is False
        assert (await api.client.patch("/api/v1/nodes/zz", json={})).status_code == 404

        events = (await api.client.get("/api/v1/events", params={"object": "node/a"})).json()
        reasons = [e["reason"] for e in events["items"]]
        assert {"Registered", "NodeReady", "Cordoned", "Drained", "Uncordoned"} <= set(reasons)
        pod = next(iter(moved))
        evs = (await api.client.get("/api/v1/events",
                                    params={"object": f"pod/{pod}"})).json()["items"]
        assert [e["reason"] for e in evs][-2:] == ["Evicted", "Scheduled"]
        api.fleet.mark_not_ready("b", reason="NodeStatusUnknown", message="no report for 90s")
        warn = (await api.client.get("/api/v1/events", params={"type": "Warning"})).json()
        assert warn["items"][-1]["reason"] == "NodeNotReady"
        last = (await api.client.get("/api/v1/events", params={"limit": 1})).json()["items"]
        assert len(last) == 1


async def test_openapi_has_summaries_and_error_model(tmp_path: Path) -> None:
    async with open_api(tmp_path) as api:
        spec = (await api.client.get("/openapi.json")).json()
        assert "ErrorBody" in spec["components"]["schemas"]
        for path, ops in spec["paths"].items():
            for method, op in ops.items():
                assert op.get("summary"), f"{method} {path} has no summary"
                if path.startswith("/api/"):
                    assert "401" in op["responses"] and "422" in op["responses"], path
        assert (await api.client.get("/docs")).status_code == 200


def test_event_ring_is_bounded_and_aggregates() -> None:
    from cloudcore.fleet.events import EventLog

    log = EventLog(capacity=3, clock=lambda: 1.0)
    for i in range(5):
        log.add(type="Normal", reason="R", obj=f"Node/n{i}", message="m")
    log.add(type="Normal", reason="R", obj="Node/n4", message="m")
    items = log.list()
    assert [e["object"] for e in items] == ["Node/n2", "Node/n3", "Node/n4"]
    assert items[-1]["count"] == 2
    assert [e["object"] for e in log.list(obj="n3")] == ["Node/n3"]
