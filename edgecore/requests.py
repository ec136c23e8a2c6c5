"""Requests from the cloud against a pod's container: logs (optionally followed) and exec.

Why it exists: the edge only holds an outbound MQTT session, so `fedctl logs` and
`fedctl exec` travel as `Request`s down that session and come back as numbered
`Response` chunks (docs/proposals/0001-requests.md). This module owns running them:
at most `max_active` at once (more are answered `Busy`), each in its own task
(`edgecore[{node}].request.{id}`), found by the pod and container annotations the
reconciler put on the container, ended by its deadline or a `cancel` request.

It never touches the network: responses go to `send` (the agent gives it
`ResponseQueue.put`, the queue the sync handler drains for the link), which returns
False while that queue is full; we then wait, which is the backpressure of a fast log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgecore.reconciler.naming import ANN_CONTAINER, ANN_POD
from edgecore.runtime.errors import (
    ContainerNotFound,
    ContainerRuntimeError,
    ExecTimeout,
    InvalidSpec,
    RuntimeCommandError,
)
from shared.codec import MAX_CHUNK_BYTES, Request, Response

if TYPE_CHECKING:
    from edgecore.runtime.types import ContainerState

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0  # an empty chunk this often while following quietly
SEND_WAIT_S = 0.05  # retry interval while the response queue is full
SEND_GIVE_UP_S = 30.0  # a queue full for this long (link down): end the request


class RequestError(Exception):
    """A request that cannot be served; `code` goes into the final Response."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Stream:
    """Numbered chunks of one request's answer."""

    def __init__(self, owner: EdgeRequests, req: Request) -> None:
        self.owner = owner
        self.req = req
        self.seq = 0
        self.last_sent = time.monotonic()

    async def send(self, data: bytes = b"", *, stream: str = "stdout", done: bool = False,
                   **extra: Any) -> None:
        chunks = [data[i:i + MAX_CHUNK_BYTES] for i in range(0, len(data), MAX_CHUNK_BYTES)]
        if not chunks:
            chunks = [b""]
        for i, chunk in enumerate(chunks):
            last = i == len(chunks) - 1
            msg = Response(node=self.owner.node, id=self.req.id, seq=self.seq, data=chunk,
                           stream=stream, done=done and last,  # type: ignore[arg-type]
                           **(extra if last else {}))
            self.seq += 1
            await self.owner.emit(msg)
        self.last_sent = time.monotonic()


class EdgeRequests:
    """Serves Requests; `submit` from the event loop, `run()` owns the request tasks."""

    def __init__(self, *, node: str, runtime: Any, send: Callable[[Response], bool],
                 kick: Callable[[], None] = lambda: None, max_active: int = 4,
                 poll_s: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self.node = node
        self.runtime = runtime
        self.send = send
        self.kick = kick
        self.max_active = max_active
        self.poll_s = poll_s
        self.clock = clock
        self.active: dict[str, asyncio.Task[None]] = {}
        self.served = 0

    # -- entry points --------------------------------------------------------------

    def submit(self, req: Request) -> None:
        """Start (or cancel) a request; never blocks, never raises."""
        if req.kind == "cancel":
            task = self.active.get(req.id)
            if task is not None:
                task.cancel()
            return
        if req.id in self.active:
            return  # a redelivered request: already running
        if len(self.active) >= self.max_active:
            self._emit_now(Response(node=self.node, id=req.id, seq=0, done=True, code="Busy",
                                    error=f"node {self.node} already serves {self.max_active} "
                                          "requests; try again"))
            return
        task = asyncio.create_task(self._serve(req), name=f"edgecore[{self.node}].request."
                                                          f"{req.id}")
        self.active[req.id] = task
        task.add_done_callback(lambda _t, rid=req.id: self.active.pop(rid, None))

    async def run(self) -> None:
        """Work until cancelled; on cancellation, end every running request."""
        try:
            await asyncio.Event().wait()
        finally:
            tasks = list(self.active.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- output ----------------------------------------------------------------------

    def _emit_now(self, msg: Response) -> None:
        if self.send(msg):
            self.kick()

    async def emit(self, msg: Response) -> None:
        """Queue one chunk, waiting while the link's queue is full."""
        deadline = time.monotonic() + SEND_GIVE_UP_S
        while not self.send(msg):
            self.kick()
            if time.monotonic() > deadline:
                raise RequestError("Failed", "the link is not draining responses")
            await asyncio.sleep(SEND_WAIT_S)
        self.kick()

    # -- serving ---------------------------------------------------------------------

    async def _serve(self, req: Request) -> None:
        out = _Stream(self, req)
        self.served += 1
        try:
            async with asyncio.timeout(req.timeout + (0 if req.kind == "logs" else 5)):
                cid = await self.find(req.pod, req.container)
                if req.kind == "exec":
                    await self._exec(out, cid)
                else:
                    await self._logs(out, cid)
        except RequestError as exc:
            await self._final(out, code=exc.code, error=str(exc))
        except TimeoutError:
            if req.kind == "logs" and req.follow:
                await self._final(out)  # the follow deadline: a normal end
            else:
                await self._final(out, code="Timeout",
                                  error=f"{req.kind} took longer than {req.timeout:g} s")
        except ContainerRuntimeError as exc:
            await self._final(out, code="Failed", error=str(exc))
        except Exception as exc:  # a bug must end the request, not the agent
            log.exception("request %s failed", req.id)
            await self._final(out, code="Failed", error=f"internal error: {type(exc).__name__}")

    async def _final(self, out: _Stream, **extra: Any) -> None:
        with contextlib.suppress(RequestError):
            await out.send(done=True, **extra)

    async def find(self, pod: str, container: str | None) -> str:
        """The runtime id of `container` of `pod` (running preferred, then newest)."""
        states: list[ContainerState] = await self.runtime.list()
        mine = [s for s in states if s.annotations.get(ANN_POD) == pod]
        if not mine:
            raise RequestError("NotFound", f"{pod} has no container on node {self.node}")
        names = sorted({s.annotations.get(ANN_CONTAINER, "") for s in mine})
        if container is None:
            # The one running container when only one runs (init containers that
            # completed are not what `exec` / `logs` without a container mean).
            running = sorted({s.annotations.get(ANN_CONTAINER, "") for s in mine
                              if s.status == "running"})
            choice = running if len(running) == 1 else names
            if len(choice) > 1:
                raise RequestError("BadRequest", f"{pod} has several containers; choose one "
                                                 f"of: {', '.join(names)}")
            container = choice[0]
        cands = [s for s in mine if s.annotations.get(ANN_CONTAINER) == container]
        if not cands:
            raise RequestError("NotFound", f"{pod} has no container {container!r} (it has: "
                                           f"{', '.join(names)})")
        best = max(cands, key=lambda s: (s.status == "running", s.started_at or 0.0))
        return best.id

    async def _exec(self, out: _Stream, cid: str) -> None:
        req = out.req
        if not req.argv:
            raise RequestError("BadRequest", "exec: command must not be empty")
        try:
            rc, stdout, stderr = await self.runtime.exec(cid, list(req.argv),
                                                         timeout_s=req.timeout)
        except ExecTimeout as exc:
            raise RequestError("Timeout", f"the command ran longer than {req.timeout:g} s"
                               ) from exc
        except InvalidSpec as exc:
            raise RequestError("BadRequest", str(exc)) from exc
        except RuntimeCommandError as exc:
            raise RequestError("Conflict", str(exc)) from exc
        except ContainerNotFound as exc:
            raise RequestError("NotFound", str(exc)) from exc
        if stdout:
            await out.send(stdout, stream="stdout")
        if stderr:
            await out.send(stderr, stream="stderr")
        await out.send(done=True, exit_code=rc)

    async def _logs(self, out: _Stream, cid: str) -> None:
        req = out.req
        try:
            if not req.follow:
                data = await self.runtime.logs(cid, tail=req.tail, since=req.since)
                await out.send(data, done=True)
                return
            await self._follow(out, cid)
        except ContainerNotFound as exc:
            raise RequestError("NotFound", str(exc)) from exc

    async def _follow(self, out: _Stream, cid: str) -> None:
        """Send the requested log, then what is new every poll_s, until the deadline.

        New output is found by length: the log filtered by a fixed `since` only grows
        (unless rotation drops a file holding some of it, which the anchor, the last
        bytes sent, detects). The base is read before the first answer, so a line
        written between the two reads may be sent twice but is never lost.
        """
        req = out.req
        since = req.since if req.since is not None else self.clock()
        base = await self.runtime.logs(cid, since=since)
        first = await self.runtime.logs(cid, tail=req.tail, since=req.since)
        await out.send(first)
        sent, anchor = len(base), base[-64:]
        polls = 0
        while True:
            await asyncio.sleep(self.poll_s)
            polls += 1
            try:
                now = await self.runtime.logs(cid, since=since)
            except ContainerNotFound:
                break  # removed: the stream ends
            start = sent
            if anchor and now[sent - len(anchor):sent] != anchor:
                i = now.rfind(anchor)
                start = i + len(anchor) if i >= 0 else 0
            if len(now) > start:
                await out.send(now[start:])
            elif time.monotonic() - out.last_sent >= KEEPALIVE_S:
                await out.send(b"")
            sent, anchor = len(now), now[-64:] if now else anchor
            if polls % 4 == 0 and not await self._running(cid):
                tail = await self.runtime.logs(cid, since=since)
                if len(tail) > sent:
                    await out.send(tail[sent:])
                break
        await out.send(done=True)

    async def _running(self, cid: str) -> bool:
        for s in await self.runtime.list():
            if s.id == cid:
                return bool(s.status == "running")
        return False
