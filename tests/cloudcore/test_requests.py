"""Logs and exec through the hub's request routing and the API, with a scripted edge.

The edge is a function of each Request the hub sends: it answers by feeding
Responses back into `hub.handle`, as the subscriber would (possibly duplicated
and out of order), or stays silent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudcore_fakes import add_node

from cloudcore.api import create_app
from cloudcore.config import StoreSettings, SyncSettings
from cloudcore.fleet import Fleet, Liveness
from cloudcore.metrics import Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store
from cloudcore.synchub import SyncHub
from cloudcore.synchub.requests import Requests
from shared import topics
from shared.codec import Request, Response, decode, encode
from shared.models import parse_object

Edge = Callable[[Request], list[Response]]


@dataclass
class Setup:
    client: httpx.AsyncClient
    fleet: Fleet
    hub: SyncHub
    sent: list[Request] = field(default_factory=list)
    edge: Edge | None = None


def pod(name: str = "p", node: str = "n1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node,
                     "containers": [{"name": "main", "image": "busybox"}]}}


@contextlib.asynccontextmanager
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with Store(StoreSettings(state_dir=tmp_path / "s", batch_interval=0.005)) as store:
        writer = asyncio.create_task(store.run(), name="test.writer")
        fleet = Fleet(store=store, scheduler=Scheduler(),
                      liveness=Liveness(default_heartbeat=30, missed=3, now=0))
        hub = SyncHub(nodes=fleet, desired=fleet.desired_sets, store=store,
                      settings=SyncSettings(), metrics=Metrics())
        app = create_app(fleet, metrics=Metrics(), flush=store.flush, requests=hub.requests)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            s = Setup(client, fleet, hub)
            loop = asyncio.get_running_loop()

            def send(partition: int, topic: str, payload: bytes, broker: str) -> None:
                msg = decode(payload)
                if not isinstance(msg, Request):
                    return
                s.sent.append(msg)
                if s.edge is not None:
                    for resp in s.edge(msg):
                        loop.call_soon(hub.handle, topics.up(msg.node), encode(resp))

            hub.attach(send)
            add_node(fleet, "n1")
            fleet.apply([parse_object(pod())])
            try:
                yield s
            finally:
                fleet.watches.close()
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer


def resp(req: Request, seq: int, **kw: Any) -> Response:
    return Response(node=req.node, id=req.id, seq=seq, **kw)


async def test_logs_in_order_without_duplicates(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        def edge(req: Request) -> list[Response]:
            if req.kind != "logs":
                return []
            a, b, c = (resp(req, 0, data=b"one\n"), resp(req, 1, data=b"two\n"),
                       resp(req, 2, data=b"three\n", done=True))
            return [b, a, b, a, c]  # reordered and duplicated

        s.edge = edge
        r = await s.client.get("/api/v1/pods/default/p/log", params={"tail": 3, "since": 60})
        assert r.status_code == 200, r.text
        assert r.text == "one\ntwo\nthree\n"
        req = s.sent[0]
        assert (req.kind, req.pod, req.tail, req.follow) == ("logs", "pod/default/p", 3, False)
        assert req.since is not None
        assert s.hub.requests.open_count == 0


async def test_exec_collects_streams_and_exit_code(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        s.edge = lambda req: [resp(req, 0, data=b"hi\n"),
                              resp(req, 1, stream="stderr", data=b"oops\n"),
                              resp(req, 2, done=True, exit_code=3)]
        r = await s.client.post("/api/v1/pods/default/p/exec",
                                json={"command": ["sh", "-c", "echo hi; exit 3"]})
        assert r.status_code == 200, r.text
        assert r.json() == {"exitCode": 3, "stdout": "hi\n", "stderr": "oops\n"}
        assert s.sent[0].argv == ["sh", "-c", "echo hi; exit 3"]


@pytest.mark.parametrize(("code", "status"), [("NotFound", 404), ("Conflict", 409),
                                              ("Timeout", 504), ("Busy", 429)])
async def test_edge_errors_map_to_statuses(tmp_path: Path, code: str, status: int) -> None:
    async with setup(tmp_path) as s:
        s.edge = lambda req: [resp(req, 0, done=True, code=code, error=f"edge says {code}")]
        r = await s.client.post("/api/v1/pods/default/p/exec", json={"command": ["true"]})
        assert r.status_code == status
        assert r.json()["error"] == f"edge says {code}"


async def test_silent_node_is_504_and_the_request_is_cancelled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cloudcore.api.app.ANSWER_TIMEOUT", 0.2)
    async with setup(tmp_path) as s:
        r = await s.client.get("/api/v1/pods/default/p/log")
        assert r.status_code == 504
        assert "n1 did not answer" in r.json()["error"]
        assert [m.kind for m in s.sent] == ["logs", "cancel"]
        assert s.sent[1].id == s.sent[0].id


async def test_not_ready_node_is_409_and_nothing_is_sent(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        s.fleet.mark_not_ready("n1", reason="Test", message="gone")
        r = await s.client.post("/api/v1/pods/default/p/exec", json={"command": ["true"]})
        assert r.status_code == 409
        assert "NotReady" in r.json()["error"]
        assert s.sent == []


async def test_unknown_pod_is_404_and_empty_command_422(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        assert (await s.client.get("/api/v1/pods/default/nope/log")).status_code == 404
        r = await s.client.post("/api/v1/pods/default/p/exec", json={"command": []})
        assert r.status_code == 422


async def test_follow_streams_until_done(tmp_path: Path) -> None:
    async with setup(tmp_path) as s:
        loop = asyncio.get_running_loop()

        def edge(req: Request) -> list[Response]:
            if req.kind == "logs":  # later chunks arrive later, out of order
                loop.call_later(0.1, s.hub.handle, topics.up("n1"),
                                encode(resp(req, 2, data=b"c\n", done=True)))
                loop.call_later(0.05, s.hub.handle, topics.up("n1"),
                                encode(resp(req, 1, data=b"b\n")))
            return [resp(req, 0, data=b"a\n")]

        s.edge = edge
        r = await s.client.get("/api/v1/pods/default/p/log", params={"follow": "true"})
        assert r.status_code == 200
        assert r.text == "a\nb\nc\n"
        assert s.sent[0].follow and s.sent[0].timeout == 3600
        assert [m.kind for m in s.sent] == ["logs"]  # done: no cancel


def test_requests_ignores_strays_and_other_nodes() -> None:
    sent: list[tuple[str, Any]] = []
    reqs = Requests(emit=lambda node, msg: sent.append((node, msg)))
    stream = reqs.stream("n1", kind="logs", pod="pod/default/p")
    reqs.open(stream)
    rid = stream.req.id
    reqs.deliver("n2", Response(node="n2", id=rid, seq=0, data=b"x", done=True))
    reqs.deliver("n1", Response(node="n1", id="other", seq=0, done=True))
    assert reqs.stray == 2
    reqs.close(stream)
    assert [m.kind for _, m in sent] == ["logs", "cancel"]
