"""Requests to edges (logs, exec) and the routing of their Responses back to callers.

The API opens a `RequestStream` per call: it gets a random id, the `Request` goes
down the node's topic, and the hub hands every `Response` with that id to the
stream, which yields them in seq order without duplicates (QoS 1 may redeliver).
Closing a stream that has not seen its last chunk sends a `cancel` request, so a
follow stream ends on the edge when its HTTP client goes away. Nothing here is
persisted: a cloud restart ends every request (docs/proposals/0001-requests.md).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from shared.codec import Request, Response

log = logging.getLogger("cloudcore.synchub.requests")

REQUEST_TTL_S = 120.0
"""A Request's `exp` is this many seconds after it is made: an edge refuses it later
(a replay), so an edge clock may lag the cloud's by up to this much."""

MAX_BUFFERED = 256
"""Chunks held per stream (in order or waiting for a gap) before it is failed:
about 16 MiB; a caller that reads slower than the edge sends loses the stream."""


class RequestFailed(Exception):
    """A request ended without an answer; `code` as in Response.code, or Overflow."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class RequestStream:
    """The answer to one request, as an async context manager: `await next(timeout)`."""

    def __init__(self, owner: Requests, node: str, req: Request) -> None:
        self.owner = owner
        self.node = node
        self.req = req
        self.done = False
        self._next_seq = 0
        self._early: dict[int, Response] = {}
        self._queue: asyncio.Queue[Response] = asyncio.Queue()
        self._failed: RequestFailed | None = None

    async def __aenter__(self) -> RequestStream:
        self.owner.open(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.owner.close(self)

    def deliver(self, msg: Response) -> None:
        if self._failed is not None or msg.seq < self._next_seq or msg.seq in self._early:
            return  # a redelivered duplicate, or a stream we gave up on
        self._early[msg.seq] = msg
        while self._next_seq in self._early:
            self._queue.put_nowait(self._early.pop(self._next_seq))
            self._next_seq += 1
        if self._queue.qsize() + len(self._early) > MAX_BUFFERED:
            self._failed = RequestFailed("Overflow", "the caller reads slower than the node "
                                                     "sends; stream ended")
            self._early.clear()

    async def next(self, timeout: float) -> Response:
        """The next chunk in order; raises TimeoutError after `timeout` s without one."""
        if self._queue.empty() and self._failed is not None:
            raise self._failed
        async with asyncio.timeout(timeout):
            msg = await self._queue.get()
        if msg.done:
            self.done = True
        return msg


class Requests:
    """Open request streams, by id. `emit(node, msg)` sends a Request down."""

    def __init__(self, emit: Callable[[str, Any], None], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._emit = emit
        self._clock = clock
        self._streams: dict[str, RequestStream] = {}
        self.stray = 0  # responses for no open stream (late, or after a restart)

    def stream(self, node: str, *, kind: str, pod: str, **fields: Any) -> RequestStream:
        """A stream for a new request (sent when the stream is entered)."""
        req = Request(node=node, id=secrets.token_hex(8), kind=kind,  # type: ignore[arg-type]
                      pod=pod, exp=self._clock() + REQUEST_TTL_S, **fields)
        return RequestStream(self, node, req)

    def open(self, stream: RequestStream) -> None:
        self._streams[stream.req.id] = stream
        self._emit(stream.node, stream.req)

    def close(self, stream: RequestStream) -> None:
        self._streams.pop(stream.req.id, None)
        if not stream.done:
            self._emit(stream.node, Request(node=stream.node, id=stream.req.id, kind="cancel",
                                            exp=self._clock() + REQUEST_TTL_S))

    def deliver(self, node: str, msg: Response) -> None:
        """A Response from `node`; one for an unknown id or from another node is dropped."""
        stream = self._streams.get(msg.id)
        if stream is None or stream.node != node:
            self.stray += 1
            return
        stream.deliver(msg)

    @property
    def open_count(self) -> int:
        return len(self._streams)
