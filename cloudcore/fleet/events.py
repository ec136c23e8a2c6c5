"""A bounded ring of fleet events (`GET /api/v1/events`, `fedctl events`).

Kubernetes-style events: scheduling decisions, pods that cannot be placed or that
fail, node Ready/NotReady changes, joins, cordons and drains. Memory only and
bounded: the ring answers "what happened lately", durable history belongs in logs.
A repeat of the newest event of the same object and reason with the same message
bumps its `count` instead of taking a new slot (as Kubernetes aggregates).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Literal

EventType = Literal["Normal", "Warning"]


class EventLog:
    def __init__(self, *, capacity: int = 10_000, clock: Callable[[], float]) -> None:
        self.capacity = capacity
        self.clock = clock
        self._ring: deque[dict[str, Any]] = deque()
        self._last: dict[tuple[str, str], dict[str, Any]] = {}
        self._seq = 0

    def add(self, *, type: EventType, reason: str, obj: str, message: str) -> None:
        """Record an event about `obj` (`Node/n1`, `Pod/default/web-0`, ...)."""
        now = self.clock()
        last = self._last.get((obj, reason))
        if last is not None and last["message"] == message and last["type"] == type:
            last["count"] += 1
            last["lastTimestamp"] = now
            return
        self._seq += 1
        ev = {"seq": self._seq, "type": type, "reason": reason, "object": obj,
              "message": message, "count": 1, "firstTimestamp": now, "lastTimestamp": now}
        if len(self._ring) >= self.capacity:
            old = self._ring.popleft()
            key = (old["object"], old["reason"])
            if self._last.get(key) is old:
                del self._last[key]
        self._ring.append(ev)
        self._last[(obj, reason)] = ev

    def __len__(self) -> int:
        return len(self._ring)

    def list(self, *, obj: str | None = None, limit: int | None = None,
             type: str | None = None) -> list[dict[str, Any]]:
        """Oldest first; `obj` is `name`, `kind/name` or `kind/namespace/name`
        (kind case-insensitive); `limit` keeps the newest."""
        match = _matcher(obj) if obj else None
        out = [dict(e) for e in self._ring
               if (match is None or match(e["object"])) and (type is None or e["type"] == type)]
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out


def _matcher(query: str) -> Callable[[str], bool]:
    parts = query.split("/")
    if len(parts) == 1:
        return lambda ref: ref.rsplit("/", 1)[-1] == query
    kind = parts[0].lower().rstrip("s")  # pods/x and pod/x alike
    if len(parts) == 2:
        return lambda ref: (ref.split("/", 1)[0].lower() == kind
                            and ref.rsplit("/", 1)[-1] == parts[1])
    want = "/".join(parts[1:])
    return lambda ref: (ref.split("/", 1)[0].lower() == kind
                        and ref.split("/", 1)[-1] == want)
