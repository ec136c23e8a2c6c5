"""The edge side of logs/exec requests, with a fake runtime and the real sync queue."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edgecore.cache import Cache
from edgecore.reconciler.naming import ANN_CONTAINER, ANN_POD
from edgecore.requests import EdgeRequests
from edgecore.runtime.errors import ExecTimeout
from edgecore.runtime.types import Capabilities, ContainerState
from edgecore.sync import ResponseQueue, SyncHandler
from shared.codec import MAX_CHUNK_BYTES, Request, Response, decode


def state(cid: str, pod: str, container: str, *, status: str = "running",
          started: float = 1.0) -> ContainerState:
    return ContainerState(id=cid, status=status, pid=1, exit_code=None,  # type: ignore[arg-type]
                          started_at=started, finished_at=None, oom_killed=False,
                          annotations={ANN_POD: pod, ANN_CONTAINER: container})


class Runtime:
    capabilities = Capabilities(exec=True)  # list, logs and exec: what requests use

    def __init__(self) -> None:
        self.states = [state("old", "pod/default/p", "main", status="stopped", started=0.5),
                       state("cur", "pod/default/p", "main"),
                       state("two-a", "pod/default/two", "a"),
                       state("two-b", "pod/default/two", "b")]
        self.log = b"l1\nl2\nl3\n"
        self.exec_calls: list[tuple[str, list[str], float]] = []
        self.exec_result: Any = (0, b"", b"")
        self.exec_gate: asyncio.Event | None = None

    async def list(self) -> list[ContainerState]:
        return self.states

    async def logs(self, cid: str, *, tail: int | None = None,
                   since: float | None = None) -> bytes:
        lines = self.log.splitlines(keepends=True)
        return b"".join(lines[-tail:] if tail else lines)

    async def exec(self, cid: str, argv: list[str], *,
                   timeout_s: float = 30) -> tuple[int, bytes, bytes]:
        self.exec_calls.append((cid, argv, timeout_s))
        if self.exec_gate is not None:
            await self.exec_gate.wait()
        if isinstance(self.exec_result, Exception):
            raise self.exec_result
        return self.exec_result  # type: ignore[no-any-return]


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.cache = Cache(tmp_path / "cache")
        self.runtime = Runtime()
        self.kicks = 0
        self.responses = ResponseQueue()
        self.reqs = EdgeRequests(node="n1", runtime=self.runtime, send=self.responses.put,
                                 kick=self._kick, max_active=2, poll_s=0.02)
        self.sync = SyncHandler(node="n1", cache=self.cache, on_request=self.reqs.submit,
                                responses=self.responses)
        self.got: list[Response] = []

    def _kick(self) -> None:
        self.kicks += 1

    def drain(self) -> list[Response]:
        for _, payload in self.sync.pending(0):
            msg = decode(payload)
            assert isinstance(msg, Response)
            self.got.append(msg)
        return self.got

    async def finish(self, rid: str, timeout: float = 5.0) -> list[Response]:
        async with asyncio.timeout(timeout):
            while not any(r.id == rid and r.done for r in self.drain()):
                await asyncio.sleep(0.01)
        return [r for r in self.got if r.id == rid]

    async def ask(self, **kw: Any) -> list[Response]:
        req = Request(node="n1", **kw)
        assert await self.sync.handle(req) == []
        return await self.finish(req.id)


@pytest.fixture
async def h(tmp_path: Path) -> Any:
    harness = Harness(tmp_path)
    task = asyncio.create_task(harness.reqs.run(), name="test.requests")
    yield harness
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    harness.cache.close()


async def test_logs_tail_of_the_running_container(h: Harness) -> None:
    out = await h.ask(id="r1", kind="logs", pod="pod/default/p", tail=2)
    assert b"".join(r.data for r in out) == b"l2\nl3\n"
    assert out[-1].done and out[-1].error is None
    assert [r.seq for r in out] == list(range(len(out)))
    assert h.kicks > 0


async def test_exec_runs_in_the_newest_running_container(h: Harness) -> None:
    h.runtime.exec_result = (3, b"hi\n", b"err\n")
    out = await h.ask(id="r2", kind="exec", pod="pod/default/p", argv=["sh", "-c", "x"],
                      timeout=7)
    assert h.runtime.exec_calls == [("cur", ["sh", "-c", "x"], 7)]
    assert [(r.stream, r.data) for r in out if r.data] == [("stdout", b"hi\n"),
                                                           ("stderr", b"err\n")]
    assert out[-1].done and out[-1].exit_code == 3


@pytest.mark.parametrize(("kw", "code", "text"), [
    ({"pod": "pod/default/nope"}, "NotFound", "no container"),
    ({"pod": "pod/default/p", "container": "side"}, "NotFound", "it has: main"),
    ({"pod": "pod/default/two"}, "BadRequest", "choose one of: a, b"),
])
async def test_finding_the_container_fails_clearly(h: Harness, kw: dict[str, Any], code: str,
                                                   text: str) -> None:
    out = await h.ask(id="r3", kind="logs", **kw)
    assert out[-1].done and out[-1].code == code and text in (out[-1].error or "")


async def test_exec_timeout_is_reported(h: Harness) -> None:
    h.runtime.exec_result = ExecTimeout("too slow")
    out = await h.ask(id="r4", kind="exec", pod="pod/default/p", argv=["sleep", "9"],
                      timeout=1)
    assert out[-1].code == "Timeout"


async def test_big_output_is_chunked(h: Harness) -> None:
    h.runtime.log = b"x" * (2 * MAX_CHUNK_BYTES + 10) + b"\n"
    out = await h.ask(id="r5", kind="logs", pod="pod/default/p")
    assert [len(r.data) for r in out] == [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES, 11]
    assert b"".join(r.data for r in out) == h.runtime.log


async def test_busy_beyond_the_limit_and_cancel_frees_a_slot(h: Harness) -> None:
    h.runtime.exec_gate = asyncio.Event()
    for rid in ("a", "b"):
        await h.sync.handle(Request(node="n1", id=rid, kind="exec", pod="pod/default/p",
                                    argv=["true"]))
    out = await h.ask(id="c", kind="exec", pod="pod/default/p", argv=["true"])
    assert out[-1].code == "Busy"
    await h.sync.handle(Request(node="n1", id="a", kind="cancel"))
    async with asyncio.timeout(2):
        while "a" in h.reqs.active:
            await asyncio.sleep(0.01)
    h.runtime.exec_gate.set()
    assert (await h.finish("b"))[-1].exit_code == 0
    assert not any(r.id == "a" for r in h.drain())  # a cancelled request says nothing


async def test_follow_sends_new_lines_until_the_deadline(h: Harness) -> None:
    req = Request(node="n1", id="f", kind="logs", pod="pod/default/p", tail=1, follow=True,
                  timeout=0.5)
    await h.sync.handle(req)
    await asyncio.sleep(0.1)
    h.runtime.log += b"l4\n"
    await asyncio.sleep(0.1)
    h.runtime.log += b"l5\nl6\n"
    out = await h.finish("f")
    assert b"".join(r.data for r in out) == b"l3\nl4\nl5\nl6\n"
    assert out[-1].done and out[-1].error is None


async def test_responses_ride_the_pump_without_moving_the_report_cursor(h: Harness) -> None:
    assert h.responses.put(Response(node="n1", id="z", seq=0, done=True))
    items = h.sync.pending(41)
    assert [seq for seq, _ in items] == [41]
    assert h.sync.pending(41) == []
