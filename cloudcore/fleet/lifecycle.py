"""Node liveness deadlines (DESIGN.md 3: NotReady after 3 x heartbeat without a report).

Kept apart from the fleet so the clock logic is small and testable with a fake
clock. Deadlines live in a heap with lazy invalidation, so checking a fleet of
500k nodes every second costs only the nodes that actually expired.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class Liveness:
    """Tracks when each node must next be heard from."""

    def __init__(self, *, default_heartbeat: float, missed: int, now: float) -> None:
        self.default_heartbeat = default_heartbeat
        self.missed = missed
        self.started = now
        self._deadline: dict[str, float] = {}
        self._heartbeat: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._restarted: set[str] = set()
        """Nodes whose clock a `lost` return started again and that were not heard since."""

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
        self._restarted.discard(node)
        self._arm(node, now + self.window(node))

    def deaf(self, nodes: Iterable[str], now: float, *, deaf_s: float, lost: bool) -> int:
        """The cloud could not hear `nodes` for `deaf_s` seconds up to `now` (its
        subscriber's connection to their broker was down): silence then is no evidence.
        Each deadline moves `deaf_s` later; if what they sent meanwhile is gone and their
        sessions with it (`lost`: a broker restarted empty), their clocks start again at
        `now`, as at service start (`start`), since they must reconnect before they can
        be heard; once: a node not heard since an earlier such return had its window
        while we listened, so later ones move it by `deaf_s` only (a subscriber that drops
        again and again does not keep a silent node Ready). Nodes already expired stay
        so until heard. Returns how many moved."""
        moved = 0
        restarted = self._restarted
        for node in nodes:
            when = self._deadline.get(node)
            if when is None:
                continue
            if lost and node not in restarted:
                restarted.add(node)
                new = max(when + deaf_s, now + self.window(node))
            else:
                new = when + deaf_s
            if new > when:
                self._arm(node, new)
                moved += 1
        return moved

    def tracked(self) -> list[str]:
        """Nodes with a live deadline (not expired since last heard)."""
        return list(self._deadline)

    def forget(self, node: str) -> None:
        self._deadline.pop(node, None)
        self._heartbeat.pop(node, None)
        self._restarted.discard(node)

    def expired(self, now: float) -> list[str]:
        """Nodes whose deadline passed; each is returned once until heard again."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            when, node = heapq.heappop(self._heap)
            if self._deadline.get(node) == when:
                del self._deadline[node]
                self._restarted.discard(node)
                out.append(node)
        return out

    def _arm(self, node: str, when: float) -> None:
        self._deadline[node] = when
        heapq.heappush(self._heap, (when, node))
        if len(self._heap) > 4 * len(self._deadline) + 1024:
            self._heap = [(w, n) for n, w in self._deadline.items()]
            heapq.heapify(self._heap)
