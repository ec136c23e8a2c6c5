"""The watch stream over a real uvicorn server: ADDED, MODIFIED, DELETED, BOOKMARK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from api_fixture import open_api
from cloudcore_fakes import add_node, deployment

from cloudcore.fleet import Fleet


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Fleet, httpx.AsyncClient]]:
    async with open_api(tmp_path) as api:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(api.client._transport.app,  # type: ignore[attr-defined]
                                               lifespan="off", log_level="warning"))
        task = asyncio.create_task(server.serve(sockets=[sock]), name="test.uvicorn")
        while not server.started:
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield f"http://127.0.0.1:{port}", api.fleet, client
        api.fleet.watches.close()
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        sock.close()


async def _next(lines: Any) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            line = await lines.__anext__()
            if line.strip():
                return dict(json.loads(line))


async def test_watch_nodes_and_pods(served: tuple[str, Fleet, httpx.AsyncClient]) -> None:
    _, fleet, client = served
    add_node(fleet, "n1")
    async with client.stream("GET", "/api/v1/watch/nodes",
                             params={"heartbeatSeconds": "0.1"}) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        ev = await _next(lines)
        assert ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "n1"
        assert (await _next(lines)) == {"type": "BOOKMARK", "initialEventsEnd": True}
        add_node(fleet, "n2")
        ev = await _next(lines)
        assert (ev["type"], ev["object"]["metadata"]["name"]) == ("ADDED", "n2")
        fleet.patch_node("n1", unschedulable=True)
        ev = await _next(lines)
        assert ev["type"] == "MODIFIED" and ev["object"]["spec"]["unschedulable"] is True
        fleet.delete("Node", None, "n2")
        ev = await _next(lines)
        assert (ev["type"], ev["object"]["metadata"]["name"]) == ("DELETED", "n2")
        assert (await _next(lines))["type"] == "BOOKMARK"  # heartbeat when idle
    for _ in range(50):
        if not fleet.watches.count():
            break
        await asyncio.sleep(0.02)
    assert fleet.watches.count() == 0  # the stream unsubscribed when the client left

    # pods, filtered by label, without the initial list
    async with client.stream("GET", "/api/v1/watch/pods", params={
            "labelSelector": "app=web", "sendInitialEvents": "false"}) as r:
        lines = r.aiter_lines()
        fleet.apply([__import__("shared.models", fromlist=["parse_object"]).parse_object(
            deployment(replicas=1))])
        ev = await _next(lines)
        assert ev["type"] == "ADDED" and ev["object"]["metadata"]["name"] == "web-0"


async def test_watch_unknown_kind_is_404(served: tuple[str, Fleet, httpx.AsyncClient]) -> None:
    _, _, client = served
    r = await client.get("/api/v1/watch/gizmos")
    assert r.status_code == 404 and r.json()["error"]
