"""Node liveness deadlines (DESIGN.md 3: NotReady after 3 x heartbeat without a report).

Kept apart from the fleet so the clock logic is small and testable with a fake
clock. Deadlines live in a heap with lazy invalidation, so checking a fleet of
500k nodes every second costs only the nodes that actually expired.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class Wave(Protocol):
    """A broker's reconnect wave: its nodes lost their sessions and are coming back."""

    def holds_until(self, now: float) -> float | None:
        """While the wave goes on: the earliest time it may be over (a node of it not
        back yet is looked at again then); None once it is over."""
        ...


@dataclass(frozen=True, slots=True)
class _Deaf:
    """A time the cloud could not hear the nodes `select` picks (`Liveness.deaf`)."""

    at: float
    deaf_s: float
    lost: bool
    select: Callable[[str], bool]
    wave: Wave | None = None


Hold = Callable[[str, float], "float | None"]
"""(node, now) -> until when the node's expiry waits (a time after `now`), or None: the
cloud cannot hear the node's broker right now (`Liveness.hold`)."""

MAX_DEAF_EVENTS = 256
"""Deaf times kept; a node armed before the oldest kept one misses only its shift."""


class Liveness:
    """Tracks when each node must next be heard from."""

    def __init__(self, *, default_heartbeat: float, missed: int, now: float) -> None:
        self.default_heartbeat = default_heartbeat
        self.missed = missed
        self.started = now
        self._deadline: dict[str, float] = {}
        self._since: dict[str, float] = {}
        """When each deadline was set, or last had the deaf times before it folded in."""
        self._heartbeat: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._deafs: list[_Deaf] = []
        self._restarted: set[str] = set()
        """Nodes whose clock a `lost` return started again and that were not heard since."""
        self._holds: list[Hold] = []

    def set_heartbeat(self, node: str, seconds: float | None) -> None:
        if seconds is not None and seconds > 0:
            self._heartbeat[node] = float(seconds)

    def window(self, node: str) -> float:
        return self.missed * self._heartbeat.get(node, self.default_heartbeat)

    def start(self, node: str) -> None:
        """A node known from the store: its clock starts now (service start), not at
        its stored last_seen, so a restart never flaps the fleet to NotReady in bulk."""
        self._arm(node, self.started + self.window(node), since=self.started)

    def heard(self, node: str, now: float) -> None:
        self._restarted.discard(node)
        self._arm(node, now + self.window(node), since=now)

    def deaf(self, select: Callable[[str], bool], now: float, *, deaf_s: float,
             lost: bool, wave: Wave | None = None) -> None:
        """The cloud could not hear the nodes `select` picks for `deaf_s` seconds up to
        `now` (its subscriber's connection to their broker was down): silence then is no
        evidence. Each such deadline moves `deaf_s` later; if what they sent meanwhile is
        gone and their sessions with it (`lost`: a broker restarted empty), their clocks
        start again at `now`, as at service start (`start`), since they must reconnect
        before they can be heard; once: a node not heard since an earlier such return
        had its window while we listened, so later ones move it by `deaf_s` only (a
        subscriber that drops again and again does not keep a silent node Ready). Nodes
        already expired stay so until heard.

        With `wave` (sessions `lost`: the broker's nodes must all reconnect), a node whose
        restarted clock runs out while the wave still goes on is not expired but looked
        at again when the wave may be over (`Wave.holds_until`): a broker whose nodes
        take longer than a window to come back (100,000 TLS reconnects on a loaded
        machine take minutes) flaps none of them NotReady, and one that stays silent
        goes NotReady once the wave is over.

        O(1) here: the shift is folded into a node's deadline when that deadline comes
        (`expired`), so a broker's return at 100,000 nodes does not hold the loop."""
        self._deafs.append(_Deaf(now, deaf_s, lost, select, wave if lost else None))
        if len(self._deafs) > MAX_DEAF_EVENTS:
            del self._deafs[0]

    def hold(self, hold: Hold) -> None:
        """While `hold(node, now)` gives a time, a node whose deadline comes is looked at
        again then instead of expiring: the cloud cannot hear its broker (our subscriber
        is down, or the broker answers nothing), so its silence is no evidence. When
        the hold ends, the deaf time is added by `deaf` at the subscriber's return."""
        self._holds.append(hold)

    def forget(self, node: str) -> None:
        self._deadline.pop(node, None)
        self._since.pop(node, None)
        self._heartbeat.pop(node, None)
        self._restarted.discard(node)

    def expired(self, now: float) -> list[str]:
        """Nodes whose deadline passed; each is returned once until heard again."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            when, node = heapq.heappop(self._heap)
            if self._deadline.get(node) != when:
                continue
            if self._deafs or self._holds:
                later = self._fold(node, when, now) if self._deafs else when
                if later <= now:
                    later = self._held(node, now)
                if later > now:
                    self._arm(node, later, since=now)
                    continue
            del self._deadline[node]
            self._since.pop(node, None)
            self._restarted.discard(node)
            out.append(node)
        return out

    def _fold(self, node: str, when: float, now: float) -> float:
        """`when` with the deaf times after the node's deadline was set applied, in order."""
        since = self._since.get(node, float("-inf"))
        for e in self._deafs:
            if e.at <= since or e.at > now or not e.select(node):
                continue
            if e.lost and node not in self._restarted:
                self._restarted.add(node)
                when = max(when + e.deaf_s, e.at + self.window(node))
            else:
                when += e.deaf_s
        return when

    def _held(self, node: str, now: float) -> float:
        """Until when `node`'s expiry waits (`now` if nothing holds it): the holds (its
        broker cannot be heard now), and the reconnect waves that restarted its clock and
        still go on."""
        until = now
        for hold in self._holds:
            end = hold(node, now)
            if end is not None and end > until:
                until = end
        if node in self._restarted:
            for e in self._deafs:
                if e.wave is None or not e.select(node):
                    continue
                end = e.wave.holds_until(now)
                if end is not None and end > until:
                    until = end
        return until

    def _arm(self, node: str, when: float, *, since: float) -> None:
        self._deadline[node] = when
        self._since[node] = since
        heapq.heappush(self._heap, (when, node))
        if len(self._heap) > 4 * len(self._deadline) + 1024:
            self._heap = [(w, n) for n, w in self._deadline.items()]
            heapq.heapify(self._heap)
