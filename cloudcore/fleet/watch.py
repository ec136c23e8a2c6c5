"""Change notification for watch streams (`GET /api/v1/watch/{plural}`).

The fleet calls `touch(kind, key)` whenever it saves an object; each subscribed
`Watcher` collects the keys that changed since it last drained and wakes its stream,
which then reads the objects' *current* state. Changes coalesce (a node that
heartbeats ten times while a client is slow is sent once, as it is now): level-
triggered like the controller. A touch costs nothing when nobody watches the kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

Tombstone = Callable[[], dict[str, Any]] | None


class Watcher:
    """One stream's pending changes: key -> None (look it up) or the deleted object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.dirty: dict[Hashable, dict[str, Any] | None] = {}
        self.wake = asyncio.Event()
        self.closed = False

    def take(self) -> dict[Hashable, dict[str, Any] | None]:
        dirty, self.dirty = self.dirty, {}
        self.wake.clear()
        return dirty


class WatchHub:
    def __init__(self) -> None:
        self._by_kind: dict[str, set[Watcher]] = {}

    def subscribe(self, kind: str) -> Watcher:
        w = Watcher(kind)
        self._by_kind.setdefault(kind, set()).add(w)
        return w

    def unsubscribe(self, w: Watcher) -> None:
        self._by_kind.get(w.kind, set()).discard(w)

    def watching(self, kind: str) -> bool:
        return bool(self._by_kind.get(kind))

    def count(self) -> int:
        return sum(len(s) for s in self._by_kind.values())

    def touch(self, kind: str, key: Hashable, *, deleted: Tombstone = None) -> None:
        watchers = self._by_kind.get(kind)
        if not watchers:
            return
        tomb = deleted() if deleted is not None else None
        for w in watchers:
            w.dirty[key] = tomb
            w.wake.set()

    def close(self) -> None:
        """End every stream (service shutdown)."""
        for watchers in self._by_kind.values():
            for w in watchers:
                w.closed = True
                w.wake.set()
