"""Node liveness deadlines (DESIGN.md 3: NotReady after 3 x heartbeat without a report).

Kept apart from the fleet so the clock logic is small and testable with a fake
clock. Deadlines live in a heap with lazy invalidation, so checking a fleet of
500k nodes every second costs only the nodes that actually expired.
"""

from __future__ import annotations

import heapq


class Liveness:
    """Tracks when each node must next be heard from."""

    def __init__(self, *, default_heartbeat: float, missed: int, now: float) -> None:
        self.default_heartbeat = default_heartbeat
        self.missed = missed
        self.started = now
        self._deadline: dict[str, float] = {}
        self._heartbeat: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def set_heartbeat(self, node: str, seconds: float | None) -> None:
        if seconds is not None and seconds > 0:
            self._heartbeat[node] = float(seconds)

    def window(self, node: str) -> float:
        return self.missed * self._heartbeat.get(node, self.default_heartbeat)

    def start(self, node: str) -> None:
        """A node known from the store: its clock starts now (service start), not at
        its stored last_seen, so a restart never flaps the fleet to NotReady in bulk."""
        self._arm(node, self.started + self.window(node))

    def heard(self, node: str, now: float) -> None:
        self._arm(node, now + self.window(node))

    def forget(self, node: str) -> None:
        self._deadline.pop(node, None)
        self._heartbeat.pop(node, None)

    def expired(self, now: float) -> list[str]:
        """Nodes whose deadline passed; each is returned once until heard again."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            when, node = heapq.heappop(self._heap)
            if self._deadline.get(node) == when:
                del self._deadline[node]
                out.append(node)
        return out

    def _arm(self, node: str, when: float) -> None:
        self._deadline[node] = when
        heapq.heappush(self._heap, (when, node))
        if len(self._heap) > 4 * len(self._deadline) + 1024:
            self._heap = [(w, n) for n, w in self._deadline.items()]
            heapq.heapify(self._heap)
