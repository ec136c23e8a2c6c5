"""What the sync hub needs from the rest of cloudcore: two small protocols and a sink.

The hub speaks the sync protocol (DESIGN.md section 3); what it learns it hands to a
`NodeSink` (node lifecycle and reports: `cloudcore.fleet.Fleet` implements it), and
what it sends it takes from a `DesiredSource` (the per-node desired sets:
`cloudcore.fleet.desired.DesiredSets` implements it). Neither is imported here, so
the hub can be tested with small fakes and the fleet core can be sharded behind the
same two interfaces (issue 14).

What the hub publishes goes to a `Send` callable with the node's partition
(`shared.topics.partition_of`) and the name of the broker to send it through (where
the node was last heard, proposal 0007), so the transport picks its publisher without
parsing the topic again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from shared.delta import NodeDesired

Send = Callable[[int, str, bytes, str], None]
"""send(partition, topic, payload, broker): must not block."""

DesiredListener = Callable[[set[str]], None]
"""Told the nodes whose desired sets changed (after each commit)."""


class Wave(Protocol):
    """A broker's reconnect wave, as the hub tracks it (`Liveness.deaf` holds the
    clocks of its nodes not back yet while it goes on)."""

    def holds_until(self, now: float) -> float | None:
        """The earliest time the wave may be over; None once it is."""
        ...


class NodeSink(Protocol):
    """Node lifecycle and reports, as the hub feeds them."""

    def known(self, name: str) -> bool:
        """Whether the node is registered."""
        ...

    def is_deleted(self, name: str) -> bool:
        """Deleted through the API and not joined again: its messages are dropped."""
        ...

    def readiness(self, name: str) -> str | None:
        """"Ready", "NotReady" or "Unknown"; None for an unknown node."""
        ...

    def register_node(self, name: str) -> bool:
        """Create the node on first contact; True if it was new."""
        ...

    def node_status(self, name: str, status: dict[str, Any]) -> int:
        """Apply a report's node_status; returns how many labels were refused."""
        ...

    def pod_statuses(self, name: str, pods: dict[str, dict[str, Any] | None]) -> int:
        """Apply reported pod statuses; returns how many were ignored."""
        ...

    def add_telemetry(self, name: str, samples: list[dict[str, Any]]) -> None: ...

    def heard(self, name: str, now: float) -> None:
        """Any valid message: the node's liveness clock restarts (monotonic `now`)."""
        ...

    def deaf(self, select: Callable[[str], bool], now: float, *, deaf_s: float,
             lost: bool, wave: Wave | None = None) -> None:
        """The cloud could not hear the nodes `select` picks for `deaf_s` s up to `now`:
        their liveness deadlines move (`cloudcore.fleet.lifecycle.Liveness.deaf`), and
        with `wave`, those not back are held while it goes on."""
        ...

    def hold(self, hold: Callable[[str, float], float | None]) -> None:
        """While `hold(node, now)` gives a time, a node whose liveness deadline comes
        waits until then (`Liveness.hold`: its broker cannot be heard)."""
        ...

    def mark_ready(self, name: str) -> None:
        """A report arrived: Ready, last seen now."""
        ...

    def mark_not_ready(self, name: str, *, reason: str, message: str) -> bool: ...

    def expire(self, now: float) -> list[str]:
        """Nodes whose liveness deadline passed, now NotReady."""
        ...

    def undeliverable(self, name: str, key: str, reason: str) -> None:
        """A desired entry of the node cannot be sent: tell its pods why."""
        ...


class DesiredSource(Protocol):
    """Per-node desired sets, their acks, epochs and the report seqs."""

    def get(self, name: str) -> NodeDesired | None:
        """The node's desired set, or None if it has none."""
        ...

    def desired_for(self, name: str) -> NodeDesired:
        """The node's desired set, created empty if it has none."""
        ...

    def record_ack(self, name: str, epoch: str, gen: int) -> bool: ...

    def restart_epoch(self, name: str, epoch: str, *, why: str) -> NodeDesired: ...

    @property
    def report_seqs(self) -> Mapping[str, int]:
        """Every node's highest processed report seq (nodes that reported)."""
        ...

    def report_seq(self, name: str) -> int:
        """The highest report seq processed for the node (0: none)."""
        ...

    def set_report_seq(self, name: str, seq: int) -> None: ...

    def add_listener(self, listener: DesiredListener) -> None: ...
