"""The queue of request responses waiting for the link (memory only, bounded).

Responses to the cloud's logs/exec requests (`edgecore.requests`) are put here
and leave with the link's ordered publish pump, after the outbox (see
`SyncHandler.pending`). They are not persisted: a response lost with a broken
session ends its request (the cloud times out), which is what requests promise.

It is its own object so that the request handler (which puts) and the sync
handler (which drains) can each be given it at construction, whichever is built
first.
"""

from __future__ import annotations

import threading
from collections import deque

from shared.codec import Response, encode

RESPONSE_QUEUE_BYTES = 2 * 1024 * 1024
"""Bytes of responses queued at most; past this `put` refuses and producers wait."""


class ResponseQueue:
    """Encoded responses in order; `put` on the event loop, `drain` from any thread."""

    def __init__(self, *, max_bytes: int = RESPONSE_QUEUE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: deque[bytes] = deque()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, msg: Response) -> bool:
        """Queue a Response; False (nothing queued) while the queue is full. One
        response always fits an empty queue, whatever its size."""
        payload = encode(msg)
        with self._lock:
            if self._items and self._bytes + len(payload) > self.max_bytes:
                return False
            self._items.append(payload)
            self._bytes += len(payload)
        return True

    def drain(self) -> list[bytes]:
        """Take every queued response, oldest first."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._bytes = 0
        return items
