"""Protocol logic of the sync hub (DESIGN.md section 3), independent of MQTT.

Per node the hub keeps one `_Link`: at most one desired delta in flight. A change
while one is in flight only marks the link; the next delta goes out when the ack
arrives (or the retry timer fires) and, being "everything after acked", it carries
all changes made meanwhile: deltas collapse. Late acks are retried with the shared
jittered backoff; NotReady nodes are not retried at all (their agent resyncs when
it reconnects), so a fleet that is offline for days costs no traffic.

Every message is authenticated end to end (proposal 0002, `shared.seal`): one from a
node is unsealed with its k_up before anything unpacks it, one to a node is sealed
with its k_down, and Secret values in a node's delta are encrypted for that node as
the delta is built, so the in-memory desired set stays clear and one set serves every
send. A node without a key (never joined, or revoked) is dropped as `unknown_node`
and never registered, unless the hub runs `insecure`. A node's report cannot set
protected labels on itself (`cloudcore.fleet.nodes.Nodes.status`). An edge claiming a gen above ours
in our epoch (a forged message once accepted, a restored backup) gets its set under
a new epoch as a snapshot (`DesiredDrift`). An entry that does not fit the wire
limits is never sent: the rest of the node's delta goes, the pod is told why.

Reports are idempotent by seq. A new report is applied in memory, its seq is
enqueued to the store, and its ReportAck is sent only after the batch holding it
commits (group commit): a crash can lose a report we have not acked, never one we
have. A duplicate is re-acked the same way, with the highest processed seq.

Acks are cumulative, so only the ones that matter go out at once (issue 16,
proposal 0003): a report that is only telemetry waits for its ack, which comes with
the node's next ack (any other report, a duplicate), or after `LAZY_RACK_S`, or once
`LAZY_RACK_REPORTS` wait. An idle node thus costs one ReportAck every ten minutes
instead of one a minute; what waits is at most a few telemetry reports in the
edge's outbox, resent (and dropped here as duplicates) if the link breaks.

With several brokers (proposal 0007) each broker's subscriber hands its messages to
`handler_for(broker)`: an authenticated message records the broker the node was heard
on (`brokers.Routes`), and everything for that node goes back through that broker
(`send(..., broker)`), or through its partition's home while it has not been heard. A
last will that arrives through another broker than the one the node was last heard on
is ignored (counted as `stale_will`): the node lives on elsewhere, and it left that
broker without a clean DISCONNECT (a move is clean; a cut link is not).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from cloudcore.config import SyncSettings
from cloudcore.metrics import Metrics
from cloudcore.store import Store
from cloudcore.synchub.brokers import DEFAULT_BROKER, Routes
from cloudcore.synchub.ports import DesiredSource, NodeSink, Send
from cloudcore.synchub.requests import Requests
from shared import seal, topics
from shared.backoff import Backoff
from shared.brokermap import BrokerMap
from shared.codec import (
    DOWN_LIMITS,
    UP_LIMITS,
    Ack,
    Desired,
    Report,
    ReportAck,
    Request,
    Response,
    Resync,
    Will,
    check_depth,
    decode,
    encode,
    entry_fits,
)
from shared.delta import LEFT_EPOCH, NodeDesired, new_epoch
from shared.entries import POD, SECRET
from shared.errors import (
    AuthFailed,
    DecodeError,
    MessageTooLarge,
    ProtocolError,
    TooDeep,
    UnknownVersion,
)

log = logging.getLogger("cloudcore.synchub")

KeyLookup = Callable[[str], bytes | None]
"""node name -> its 32-byte node key, or None if it has none (not joined, revoked)."""

IN = "cloudcore_messages_in_total"
OUT = "cloudcore_messages_out_total"
LAZY_RACK_S = 600.0  # longest a telemetry-only report waits for its ReportAck, seconds
LAZY_RACK_REPORTS = 10  # ... or until this many wait
ACKS_PER_S = 1000.0  # a conservative rate for one aiomqtt subscriber (DESIGN.md: ~5k/s)
BACKLOG_WAIT = 0.5  # seconds retries wait while our own publish queue drains
QUEUE_AHEAD = 4096
"""Messages queued in our publishers beyond which a node's next delta is not built yet:
the node waits in `SyncHub._deferred` (its name only) and its delta is made when the
queue has room (`drain_deferred`), from its desired set as it is then. A rollout to
100,000 nodes held 100,000 sealed deltas in the queue at once (about 50 MB at its peak,
which the process keeps), and built them inside the fleet's commit (issue 14)."""
DRAIN_SLICE = 512  # deferred nodes sent per turn of the event loop
DRAIN_POLL = 0.02  # seconds between looks at the queue while nodes wait
DROPPED = "cloudcore_messages_dropped_total"
RESENT = "cloudcore_desired_resends_total"
DRIFT = "cloudcore_desired_drift_total"
UNDELIVERABLE = "cloudcore_desired_undeliverable_total"
LABELS_REFUSED = "cloudcore_node_labels_refused_total"
UNSENT = "cloudcore_messages_unsent_total"
REPORT_GAPS = "cloudcore_report_gaps_total"
REPORT_PROBES = "cloudcore_report_probes_total"
PROBE_QUIET_S = 2.0
"""After a broker that restarted is subscribed again, the hub asks the nodes there that
said nothing for their whole status (`broker_back`) once the reconnect wave has passed:
no new node's resync for this long, and ..."""
PROBE_HEARD_SHARE = 0.9
"""... at least this share of the nodes to ask heard from since the return (at 100,000
nodes the wave starts seconds after the return and lasts minutes; before it starts the
first condition holds too) ..."""
PROBE_MAX_WAIT_S = 60.0
"""If the wave has not passed this long after the return, there is no probe: the nodes
that reconnected before our subscriber have been connected since, and their telemetry
point (a minute) has been heard; the nodes not heard yet are mostly not connected, and
asking them would be tens of thousands of messages to nobody (the 100,000-node storm)."""
PROBE_SLICE = 1000
PROBE_MIN_INTERVAL_S = 60.0
"""At most one probe round per broker in this time: a broker restarting in a loop does
not make every node send its whole status each time."""
WAVE_QUIET_S = 60.0
"""A broker's reconnect wave (its sessions lost, its nodes coming back) goes on until no
node's resync came through it for this long (twice the agents' 30 s backoff cap) ..."""
WAVE_MAX_S = 1800.0
"""... or this long after the return at most. While it goes on, a node of that broker
not back yet does not go NotReady (`Liveness.deaf`'s hold)."""
WAVES_KEPT = 64
HOLD_RECHECK_S = 5.0
"""A node held because its broker cannot be heard is looked at again this much later."""
DEAF_HOLD_MAX_S = 600.0
"""A broker not heard for longer than this holds its nodes no more: they go NotReady as
their deadlines come (a broker gone for good, or one cloudcore cannot reach, shows)."""
_SECRET_PREFIX = SECRET + "/"
_DOWN = slice(-64, -32)  # of a cached `raw || k_down || k_up` (`SyncHub._keys_of`)
_UP = slice(-32, None)
_POD_PREFIX = POD + "/"
_ENTRY_DEPTH = DOWN_LIMITS.max_depth - 2  # message map > put map > entry
SHALLOW_REVISIONS = 4096
"""Pod revisions remembered as nesting within the limit (`SyncHub._within_depth`) at
most; then the memo starts over."""
_WHOLE_FITS = min(DOWN_LIMITS.max_str_bytes, DOWN_LIMITS.max_items,
                  DOWN_LIMITS.max_message_bytes - 1024)
"""A Desired of at most this many bytes needs no per-entry check (`_for_wire`)."""


@dataclass(slots=True)
class _Link:
    """Delivery state of one node's desired stream (memory only; rebuilt on resync).

    Only a node with something to track has one (issue 14, cloud RSS at 100,000 nodes):
    a delta in flight, attempts, or an epoch that is not the desired set's. A settled
    link (nothing in flight, no attempts, the edge in our epoch) is dropped
    (`SyncHub._settle`); a missing one reads as "assume ours", the same thing."""

    epoch: str | None = None  # the epoch the edge said it is in (None: it has none yet)
    epoch_known: bool = False  # False: not heard since start; assume ours
    inflight: int | None = None  # gen of the delta awaiting its ack (via `_set_inflight`)
    attempts: int = 0
    retry_at: float = 0.0  # when its ack is late; the heap entry with this time is live


@dataclass(slots=True)
class _Listen:
    """Nodes heard (a resync or a report) since a restarted broker came back."""

    since: float
    last_resync: float  # clock() when the last node not heard before sent its resync
    heard: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Wave:
    """A broker's nodes reconnecting after it lost their sessions (`broker_back`).

    Over once the broker has been heard (`heard_at`: any packet to our subscriber, pings
    answered included) `WAVE_QUIET_S` past the last resync through it: a stretch in
    which we could not hear the broker (our subscriber down, or the broker too busy to
    answer) is not quiet, since resyncs may be waiting there."""

    broker: str
    since: float
    last_back: float  # clock() of the last resync that came through the broker
    heard_at: Callable[[str], float | None] | None = None
    back: int = 0  # resyncs seen through it since

    def holds_until(self, now: float) -> float | None:
        cap = self.since + WAVE_MAX_S
        if now >= cap:
            return None
        quiet_end = self.last_back + WAVE_QUIET_S
        heard = now if self.heard_at is None else self.heard_at(self.broker)
        if heard is not None and heard >= quiet_end:
            return None
        return min(max(quiet_end, now + HOLD_RECHECK_S), cap)


class SyncHub:
    """Handles every message from the edges and sends them desired deltas and acks."""

    def __init__(self, *, nodes: NodeSink, desired: DesiredSource, store: Store,
                 settings: SyncSettings, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic,
                 keys: KeyLookup | None = None, insecure: bool = False,
                 routes: Routes | None = None) -> None:
        """`nodes` gets what the edges report (the fleet), `desired` gives what they
        should run (the fleet's desired sets); the hub subscribes to its changes.
        `keys(node)` gives a node's key (cloudcore passes `Auth.node_key`). Without
        a lookup the hub can authenticate nothing and runs insecure (a warning says
        so); `insecure` also accepts unsealed messages from nodes without a key.
        `routes` holds the broker map and where each node was last heard (default: one
        broker, `mq-0`)."""
        if keys is None and not insecure:
            log.warning("sync hub without node keys: messages are NOT authenticated "
                        "(insecure)")
            insecure = True
        self.keys = keys
        self.insecure = insecure
        self.routes = routes if routes is not None else Routes(
            BrokerMap.single(DEFAULT_BROKER, "mqtt://127.0.0.1:1883"))
        # node -> its key and the derived down and up keys, one 96-byte string
        # (raw || k_down || k_up: a third of the objects of a NodeKeys; issue 14)
        self._node_keys: dict[str, bytes] = {}
        self._undeliverable: dict[tuple[str, str], tuple[int, str]] = {}
        # pod revisions whose entries nest within the depth limit (`_within_depth`)
        self._shallow: set[str] = set()
        self.nodes = nodes
        self.desired = desired
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._send: Send | None = None
        self._backlog: Callable[[], int] | None = None
        self._links: dict[str, _Link] = {}
        # (retry_at, node), lazily pruned: an entry whose node's link no longer has
        # that retry_at (acked, resent, dropped) is skipped when it comes to the head
        self._retry: list[tuple[float, str]] = []
        self._in_flight = 0  # links with a delta awaiting its ack (live, unlike the heap)
        self._not_before = 0.0  # no retry before this: our own publish queue was full
        self._sleep_until = float("inf")  # when run_retries wakes by itself
        self._racks: dict[asyncio.Future[None], dict[str, int]] = {}
        # node -> (clock() the ack is due, seq, reports waiting): acks that can wait
        self._lazy: dict[str, tuple[float, int, int]] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self._backoff = Backoff(base=settings.ack_timeout, cap=settings.ack_timeout_cap)
        self._wake_retry = asyncio.Event()
        self._deferred: dict[str, None] = {}  # nodes whose delta waits for queue room, in order
        self.owns: Callable[[int], bool] | None = None
        """A shard's gate (proposal 0008): the partitions it holds the lease of. A
        message of a node in any other partition is dropped (`not_owned`) and nothing
        is sent to such a node. None: every partition (the embedded mode)."""
        metrics.describe(IN, "Valid messages received from edges, by type.")
        metrics.describe(OUT, "Messages sent to edges, by type.")
        metrics.describe(DROPPED, "Messages dropped as invalid, by reason.")
        metrics.describe(RESENT, "Desired deltas resent because the ack was late.")
        metrics.describe(DRIFT, "Nodes moved to a new epoch because they claimed a gen "
                                "above the cloud's (DesiredDrift).")
        metrics.describe(UNDELIVERABLE, "Desired entries left out of a message because "
                                        "they exceed the wire limits.")
        metrics.describe(LABELS_REFUSED, "Protected labels a node tried to set on itself.")
        metrics.describe(UNSENT, "Messages not sent to a node, by reason (no_key: the "
                                 "node has no key, e.g. revoked).")
        metrics.describe(REPORT_GAPS, "Reports that came after a gap in the node's report "
                                      "seqs; each asked the node to report everything again.")
        metrics.describe(REPORT_PROBES, "Nodes asked for their whole status after the "
                                        "broker they are on came back without our session.")
        self._again: set[str] = set()  # nodes whose next ReportAck asks for a full report
        self._asked: set[str] = set()  # nodes with a gap whose full report has not come
        self._listening: list[_Listen] = []  # nodes heard since a broker came back
        self._waves: list[_Wave] = []  # reconnect waves of brokers that lost sessions
        self._heard_at: Callable[[str], float | None] | None = None
        self._probes: set[asyncio.Task[int]] = set()
        self._probed_at: dict[str, float] = {}  # broker -> clock() of its last probe round
        self._gaps_unlogged = 0
        self._gaps_logged_at = -1e18
        desired.add_listener(self.desired_changed)
        self.requests = Requests(emit=self._emit)  # logs/exec: docs/proposals/0001

    def attach(self, send: Send, *, backlog: Callable[[], int] | None = None) -> None:
        """Set the transport: send(partition, topic, payload, broker) must not block.

        `backlog()` tells how many messages are still queued for the broker; while
        it is not zero an ack is not late yet (the delta may not even have left), so
        retries wait instead of queueing the same delta again.
        """
        self._send = send
        self._backlog = backlog

    # -- input ---------------------------------------------------------------------------

    def handler_for(self, broker: str) -> Callable[[str, bytes], None]:
        """The handler of the messages that arrive through `broker`."""
        def handle(topic: str, payload: bytes) -> None:
            self.handle(topic, payload, broker=broker)
        return handle

    def handle(self, topic: str, payload: bytes, *, broker: str | None = None) -> None:
        """Process one message from the broker (named `broker`: where the node was
        heard; None records nothing); never raises (bad input is dropped)."""
        try:
            self._handle(topic, payload, broker)
        except Exception:  # a bug must not take the hub down with it
            self.metrics.inc(DROPPED, reason="internal_error")
            log.exception("internal error handling a message on %s", topic)

    def _handle(self, topic: str, payload: bytes, broker: str | None) -> None:
        parsed = topics.parse(topic)
        if parsed is None or parsed[1] == "down":
            self._drop("?", "bad_topic", f"topic {topic[:200]!r} is not an up/will topic")
            return
        node, direction = parsed
        # one string per node name in every per-node dict, not one per message that
        # added it (each message's topic is split anew; issue 14)
        node = sys.intern(node)
        if self.owns is not None and not self.owns(topics.partition_of(node)):
            self.metrics.inc(DROPPED, reason="not_owned")  # in flight while unsubscribing
            return
        if len(payload) > UP_LIMITS.max_message_bytes + seal.TAG_BYTES:
            self._drop(node, "too_large", f"message of {len(payload)} bytes exceeds the "
                                          f"limit of {UP_LIMITS.max_message_bytes} bytes")
            return
        keys = self._keys_of(node)
        if keys is not None:
            try:
                payload = seal.unseal(keys[_UP], topic, payload)
            except AuthFailed as exc:
                if not self.insecure:
                    self._drop(node, "auth_failed", str(exc))
                    return
        elif not self.insecure:
            self._drop(node, "unknown_node", "the node has no key (it never joined, or "
                                             "was revoked)")
            return
        try:
            msg = decode(payload, limits=UP_LIMITS)
        except MessageTooLarge as exc:
            self._drop(node, "too_large", str(exc))
            return
        except UnknownVersion as exc:
            self._drop(node, "unknown_version", str(exc))
            return
        except (DecodeError, ProtocolError) as exc:
            self._drop(node, "decode_error", str(exc))
            return
        if msg.node != node:
            self._drop(node, "node_mismatch", f"message names node {msg.node!r}")
            return
        if direction == "will":
            if isinstance(msg, Will):
                last = self.routes.last_heard(node)
                if broker is not None and last is not None and last != broker:
                    self._drop(node, "stale_will", f"a last will through broker {broker} "
                                                   f"while the node is heard on {last}")
                    return
                self._on_will(node)
            else:
                self._drop(node, "unexpected_type", f"{msg.t} on the will topic")
            return
        if self.nodes.is_deleted(node):
            # deleted through the API while its session lives on: not re-registered
            self._drop(node, "deleted_node", "the node was deleted; it must join again")
            return
        if broker is not None:
            self.routes.heard(node, broker)
        if self._waves and broker is not None and isinstance(msg, Resync):
            self._wave_heard(broker)
        if self._listening and isinstance(msg, Report | Resync):
            # its resync (then its outbox) or a report: what it sent before is known to
            # us or shows as a gap; an ack alone says nothing of its reports
            for w in self._listening:
                if node not in w.heard:
                    w.heard.add(node)
                    if isinstance(msg, Resync):
                        w.last_resync = self.clock()
        if isinstance(msg, Report):
            self._on_report(node, msg)
        elif isinstance(msg, Ack):
            self._on_ack(node, msg)
        elif isinstance(msg, Resync):
            self._on_resync(node, msg)
        elif isinstance(msg, Response):
            self.requests.deliver(node, msg)
        else:
            self._drop(node, "unexpected_type", f"{msg.t} sent upstream")
            return
        self.metrics.inc(IN, type=msg.t)

    def _on_resync(self, node: str, msg: Resync) -> None:
        link = self._link(node)
        link.epoch, link.epoch_known = msg.epoch, True
        self._set_inflight(link, -1)  # hold sends triggered by registering: the reply covers them
        self.nodes.register_node(node)
        self.nodes.heard(node, self.clock())
        nd = self.desired.desired_for(node)
        last = self.desired.report_seq(node)
        if msg.seq < last:
            # Seqs only grow on a healthy edge: a smaller one means its state was
            # wiped, so forget what we processed or its new reports would be ignored.
            log.warning("node %s restarted its report stream (seq %d < %d)", node, msg.seq, last)
            self.desired.set_report_seq(node, 0)
        if nd.drifted(msg.epoch, msg.gen):
            nd = self._drift(node, msg.epoch, f"it reported gen {msg.gen} above the "
                                              f"cloud's {nd.gen} in epoch {msg.epoch}")
        elif msg.reason == LEFT_EPOCH and msg.epoch != nd.epoch:
            nd = self._drift(node, msg.epoch, f"it refused a snapshot under epoch "
                                              f"{nd.epoch}, which it had left")
        if msg.epoch == nd.epoch:
            self.desired.record_ack(node, msg.epoch, msg.gen)
        self._set_inflight(link, None)
        link.attempts = 0
        if msg.epoch != nd.epoch or msg.gen != nd.gen:
            self._send_delta(node, base=msg.gen)
        else:
            self._settle(node, link, nd)

    def _on_ack(self, node: str, msg: Ack) -> None:
        if not self.nodes.known(node):
            return
        self.nodes.heard(node, self.clock())
        nd = self.desired.desired_for(node)
        if nd.drifted(msg.epoch, msg.gen):
            self._drift(node, msg.epoch, f"it acked gen {msg.gen} above the cloud's {nd.gen}")
            self._send_delta(node, base=0)
            return
        self.desired.record_ack(node, msg.epoch, msg.gen)
        link = self._link(node)
        if msg.epoch == nd.epoch:
            link.epoch, link.epoch_known = nd.epoch, True
        if link.inflight is not None and nd.acked >= link.inflight:
            self._set_inflight(link, None)
            link.attempts = 0
        self._maybe_send(node)
        self._settle(node, link, nd)

    def _on_report(self, node: str, msg: Report) -> None:
        self.nodes.register_node(node)
        last = self.desired.report_seq(node)
        if msg.seq <= last:
            self.nodes.heard(node, self.clock())
            self.metrics.inc("cloudcore_reports_duplicate_total")
            # An agent that cannot persist a new report (full disk) beats with an acked
            # seq: proof of life for a NotReady node. Not for an Unknown one: after a
            # restart a duplicate may be the broker redelivering from before it.
            if self.nodes.readiness(node) == "NotReady":
                self.nodes.mark_ready(node)
            if node in self._asked:  # it resends what our ask acked: the ask may be lost
                self._again.add(node)
            self._lazy.pop(node, None)
            self._ack_report(node, last)
            return
        if msg.node_status:
            refused = self.nodes.node_status(node, msg.node_status)
            if refused:
                self.metrics.inc(LABELS_REFUSED, refused)
                self._drop_log(node, "labels_refused", f"{refused} protected label(s) "
                                                       "it reported for itself ignored")
        if msg.pods:
            ignored = self.nodes.pod_statuses(node, msg.pods)
            if ignored:
                self.metrics.inc("cloudcore_pod_statuses_ignored_total", ignored)
        if msg.telemetry:
            self.nodes.add_telemetry(node, msg.telemetry)
        if msg.full:
            self._again.discard(node)  # it holds everything: whatever was missed is moot
            self._asked.discard(node)
        elif msg.seq > last + 1:
            self._report_gap(node, last, msg.seq)
        nd = self.desired.desired_for(node)
        drifted = nd.drifted(msg.epoch, msg.gen)
        if drifted:
            nd = self._drift(node, msg.epoch,
                             f"it reported gen {msg.gen} above the cloud's {nd.gen}")
        elif msg.epoch == nd.epoch and msg.gen:
            self.desired.record_ack(node, msg.epoch, msg.gen)
            link = self._links.get(node)
            if link is not None and link.inflight is not None and nd.acked >= link.inflight:
                self._set_inflight(link, None)
                link.attempts = 0
        self.nodes.heard(node, self.clock())  # after node_status: it may set the heartbeat
        self.nodes.mark_ready(node)
        self.desired.set_report_seq(node, msg.seq)
        if node not in self._again and msg.telemetry and not msg.pods and (
                not msg.node_status or set(msg.node_status) == {"usage"}):
            self._ack_later(node, msg.seq, within=LAZY_RACK_S)
        else:
            self._lazy.pop(node, None)  # this ack covers the waiting ones (cumulative)
            self._ack_report(node, msg.seq)
        if drifted:
            self._send_delta(node, base=0)
        else:
            self._maybe_send(node)
            link = self._links.get(node)
            if link is not None:
                self._settle(node, link, nd)

    def _report_gap(self, node: str, last: int, seq: int) -> None:
        """Reports `last`+1 .. `seq`-1 never reached us (published while nothing was
        subscribed: a broker back before our subscriber, a partition between shards; or
        a node whose outbox dropped some offline, or a cloud without its memory of the
        node, `last` 0). Their statuses may be lost, so this report's ack asks the node
        to report everything again (`ReportAck.again`); its full report ends it."""
        self._again.add(node)
        self._asked.add(node)  # until its full report: a duplicate asks again (lost ask)
        self.metrics.inc(REPORT_GAPS)
        self._gaps_unlogged += 1
        now = self.clock()
        if now - self._gaps_logged_at >= self.settings.log_interval:
            log.info("report gaps: %d node(s) asked to report everything again (last: %s, "
                     "reports %d..%d missed)", self._gaps_unlogged, node, last + 1, seq - 1)
            self._gaps_logged_at, self._gaps_unlogged = now, 0

    def _drift(self, node: str, edge_epoch: str | None, why: str) -> NodeDesired:
        """The edge (in `edge_epoch`) holds a gen we never made: a new epoch for the
        node, counted; the caller sends the snapshot."""
        self.metrics.inc(DRIFT)
        nd = self.desired.restart_epoch(node, new_epoch(), why=why)
        link = self._link(node)
        link.epoch, link.epoch_known = edge_epoch, True
        self._set_inflight(link, None)
        link.attempts = 0
        return nd

    def _on_will(self, node: str) -> None:
        if not self.nodes.known(node):
            return
        self.metrics.inc(IN, type="will")
        self.nodes.mark_not_ready(node, reason="NodeLinkLost",
                                  message="the agent's MQTT session ended (last will)")
        link = self._links.get(node)
        if link is not None:
            self._set_inflight(link, None)  # the agent resyncs on reconnect; no retries meanwhile
            nd = self.desired.get(node)
            if nd is not None:
                self._settle(node, link, nd)

    # -- reports: group-committed acks ---------------------------------------------------

    def _ack_later(self, node: str, seq: int, *, within: float) -> None:
        """Ack `seq` (cumulative) within `within` seconds, or with the node's next ack."""
        now = self.clock()
        due, _, waiting = self._lazy.get(node, (now + within, 0, 0))
        due = min(due, now + within)
        if waiting + 1 >= LAZY_RACK_REPORTS or due <= now:
            self._lazy.pop(node, None)
            self._ack_report(node, seq)
            return
        self._lazy[node] = (due, seq, waiting + 1)

    def flush_acks(self, now: float) -> int:
        """Send the waiting acks that are due; returns how many went out."""
        due = [(node, seq) for node, (when, seq, _) in self._lazy.items() if when <= now]
        for node, seq in due:
            del self._lazy[node]
            self._ack_report(node, seq)
        return len(due)

    def _ack_report(self, node: str, seq: int) -> None:
        """Send ReportAck(seq) once everything enqueued so far is committed."""
        fut = self.store.durable()
        if fut.done():
            self._emit_rack(node, seq)
            return
        acks = self._racks.get(fut)
        if acks is None:
            acks = self._racks[fut] = {}
            fut.add_done_callback(self._committed)
        acks[node] = max(seq, acks.get(node, 0))

    def _committed(self, fut: asyncio.Future[None]) -> None:
        acks = self._racks.pop(fut, {})
        if fut.cancelled() or fut.exception() is not None:
            return  # not durable: the edges resend, and we process them again
        for node, seq in acks.items():
            self._emit_rack(node, seq)

    def _emit_rack(self, node: str, seq: int) -> None:
        again = node in self._again
        if again:
            self._again.discard(node)
        self._emit(node, ReportAck(node=node, seq=seq, again=again))

    # -- desired: one delta in flight per node -------------------------------------------

    def desired_changed(self, nodes: set[str]) -> None:
        """Fleet listener: these nodes' desired sets changed."""
        for node in nodes:
            self._maybe_send(node)

    def deferring(self) -> bool:
        """Whether `desired_changed` builds nothing now: every node it is told of waits
        in the deferred queue (nodes wait already, or the publish queue is full)."""
        return bool(self._deferred) or self._queue_full()

    def _queue_full(self) -> bool:
        return self._backlog is not None and self._backlog() >= QUEUE_AHEAD

    def _maybe_send(self, node: str, *, wait: bool = True) -> None:
        """Send the node its delta if it needs one and may get one now; with `wait`, it
        waits in turn behind others while the publish queue is full (`QUEUE_AHEAD`)."""
        nd = self.desired.get(node)
        if nd is None or nd.gen <= nd.acked:
            return
        if self.owns is not None and not self.owns(topics.partition_of(node)):
            return  # another shard's node
        link = self._links.get(node)
        if link is not None and link.inflight is not None:
            return  # sent after the ack, or by the retry timer: changes collapse
        if self.nodes.readiness(node) == "NotReady":
            return  # the agent resyncs when it comes back
        if wait and self.deferring():
            self._deferred[node] = None  # made when the queue has room, in turn
            if len(self._deferred) == 1:
                self._wake_retry.set()
            return
        self._send_delta(node, base=nd.acked)

    def drain_deferred(self, limit: int = DRAIN_SLICE) -> int:
        """Send the deltas of waiting nodes, oldest first, while our publish queue has
        room, at most `limit`; returns how many nodes left the wait."""
        done = 0
        while self._deferred and done < limit:
            if self._queue_full():
                break
            node = next(iter(self._deferred))
            del self._deferred[node]
            done += 1
            self._maybe_send(node, wait=False)  # checked again: acked, NotReady, owned
        return done

    def _send_delta(self, node: str, *, base: int) -> None:
        self._deferred.pop(node, None)  # a reply to the node itself goes now and covers it
        nd = self.desired.desired_for(node)
        link = self._link(node)
        epoch = link.epoch if link.epoch_known else nd.epoch
        self._emit(node, *self._for_wire(node, nd.delta(base, epoch)))
        self._set_inflight(link, nd.gen)
        # An ack is late only after the deltas queued before it could have been
        # answered: allow for the fleet-wide number in flight at the rate one
        # subscriber connection processes acks, so a rollout to 15,000 nodes does not
        # resend to nodes whose acks are merely waiting in our inbound queue.
        # One heap push per send (O(log n)); the loop is woken only when this retry is
        # due before it would wake anyway, not on every send of a rollout (issue 14).
        link.retry_at = (self.clock() + self._backoff.delay(link.attempts)
                         + self._in_flight / ACKS_PER_S)
        heapq.heappush(self._retry, (link.retry_at, node))
        if link.retry_at < self._sleep_until:
            self._sleep_until = link.retry_at
            self._wake_retry.set()

    def _settle(self, node: str, link: _Link, nd: NodeDesired) -> None:
        """Forget `link` if it has nothing to track (`_Link`): no delta in flight, no
        attempts, the edge in our epoch (or not heard: assumed ours)."""
        if (link.inflight is None and not link.attempts
                and (not link.epoch_known or link.epoch == nd.epoch)
                and self._links.get(node) is link):
            del self._links[node]

    def _set_inflight(self, link: _Link, gen: int | None) -> None:
        """Set the gen awaiting its ack (None: nothing), keeping the live count."""
        self._in_flight += (gen is not None) - (link.inflight is not None)
        link.inflight = gen

    def retry_due(self, now: float) -> int:
        """Resend deltas whose ack is late; returns how many were resent.

        While our own publish queue is not empty no ack is late yet: retries wait for
        one "not before" time (`BACKLOG_WAIT` on) instead of each being moved in the
        heap, so a wake-up during a burst costs nothing per entry (issue 14)."""
        sent = 0
        if now < self._not_before:
            return 0
        if self._retry and self._retry[0][0] <= now and self._backlog and self._backlog():
            self._not_before = now + BACKLOG_WAIT
            return 0
        while self._retry and self._retry[0][0] <= now:
            when, node = heapq.heappop(self._retry)
            link = self._links.get(node)
            if link is None or link.inflight is None or link.retry_at != when:
                continue
            nd = self.desired.get(node)
            if (nd is None or nd.acked >= nd.gen or self.nodes.readiness(node) == "NotReady"
                    or (self.owns is not None and not self.owns(topics.partition_of(node)))):
                self._set_inflight(link, None)
                if nd is not None:
                    self._settle(node, link, nd)
                continue
            link.attempts += 1
            self.metrics.inc(RESENT)
            self._send_delta(node, base=nd.acked)
            sent += 1
        return sent

    async def run_retries(self) -> None:
        """Work until cancelled: fire retry timers, and send the deferred deltas as the
        publish queue makes room (`drain_deferred`)."""
        while True:
            self._wake_retry.clear()
            self._sleep_until = float("-inf")  # sends meanwhile need no wake-up
            self.retry_due(self.clock())
            if self._deferred and self.drain_deferred() == DRAIN_SLICE:
                await asyncio.sleep(0)  # more room: go on after others had the loop
                continue
            now = self.clock()
            delay = DRAIN_POLL if self._deferred else 1.0
            if self._retry:
                due = max(self._retry[0][0], self._not_before)
                delay = min(delay, max(0.0, due - now))
            self._sleep_until = now + delay
            try:
                async with asyncio.timeout(delay):
                    await self._wake_retry.wait()
            except TimeoutError:
                pass

    async def run_liveness(self) -> None:
        """Work until cancelled: NotReady after missed heartbeats. The probe rounds
        `broker_back` starts end with it (they belong to the running service)."""
        try:
            while True:
                if self._waves:
                    self._waves_over(self.clock())
                for node in self.nodes.expire(self.clock()):
                    link = self._links.get(node)
                    if link is not None:
                        self._set_inflight(link, None)
                if self._lazy:
                    self.flush_acks(self.clock())
                await asyncio.sleep(self.settings.liveness_interval)
        finally:
            for task in list(self._probes):
                task.cancel()

    # -- helpers -------------------------------------------------------------------------

    def _link(self, node: str) -> _Link:
        link = self._links.get(node)
        if link is None:
            link = self._links[node] = _Link()
        return link

    def _keys_of(self, node: str) -> bytes | None:
        """The node's key and its derived down and up keys, `raw || k_down || k_up`
        (slice with `_DOWN`, `_UP`), cached while its key stays the same; None if it
        has none."""
        if self.keys is None:
            return None
        raw = self.keys(node)
        if raw is None:
            self._node_keys.pop(node, None)
            return None
        cached = self._node_keys.get(node)
        if cached is None or len(cached) != len(raw) + 64 or not cached.startswith(raw):
            derived = seal.NodeKeys.derive(raw)
            cached = self._node_keys[node] = bytes(raw) + derived.down + derived.up
        return cached

    def _for_wire(self, node: str, msg: Desired) -> tuple[Desired, bytes]:
        """The delta as it may leave, and its bytes: Secret values sealed for the node,
        and no entry that cannot be delivered (each reported once per change, on its
        pods). Encoded once: a message no longer than `_WHOLE_FITS` bytes that nests
        within the depth limit holds no string, array or entry over the limits (none
        is longer or deeper than the whole), so its entries need no check one by one."""
        if not msg.put:
            return msg, encode(msg)
        keys = (self._keys_of(node)
                if any(k.startswith(_SECRET_PREFIX) for k in msg.put) else None)
        if keys is not None:
            secret = seal.NodeKeys.derive(keys[:-64]).secret  # rare: not cached
            msg = msg.model_copy(update={"put": {
                k: seal.seal_secret(secret, node=node, entry_key=k, value=v)
                if k.startswith(_SECRET_PREFIX) else v for k, v in msg.put.items()}})
        payload = encode(msg)
        if len(payload) <= _WHOLE_FITS and self._within_depth(msg.put):
            return msg, payload
        put = dict(msg.put)
        for k, v in list(put.items()):
            reason = entry_fits(k, v, limits=DOWN_LIMITS)
            if reason is not None:
                del put[k]
                self._undeliverable_entry(node, k, reason)
        wire = msg.model_copy(update={"put": put}) if put != msg.put else msg
        payload = encode(wire)
        size = len(payload)
        if size > DOWN_LIMITS.max_message_bytes:
            # every entry fits alone, but not all together: leave out the largest
            # until the rest fits (they go once others are gone or smaller)
            sizes = {k: len(encode_value(v)) + len(k) for k, v in put.items()}
            for k in sorted(sizes, key=sizes.__getitem__, reverse=True):
                if size <= DOWN_LIMITS.max_message_bytes:
                    break
                del put[k]
                size -= sizes[k]
                self._undeliverable_entry(
                    node, k, f"the node's desired set exceeds the message limit of "
                             f"{DOWN_LIMITS.max_message_bytes} bytes")
            wire = msg.model_copy(update={"put": put})
            payload = encode(wire)
        return wire, payload

    def _within_depth(self, put: dict[str, Any]) -> bool:
        """True if every entry of `put` nests within `_ENTRY_DEPTH` levels, so the
        Desired around them nests within the limit (its other fields are flat).

        The cloud encodes these messages itself, so their depth is checked per entry
        rather than walked per message (issue 14: the walk of every delta was 4.6 % of
        the cloud in a 100,000-node create). A pod entry nests as deep as its spec
        (its name, uid, labels, annotations and policy are at most two levels, the
        spec's containers already three), and every pod of one revision has one spec
        (the revision is the spec's hash): its first entry is walked, the others of
        the revision, on every node, are not. Other entries (ConfigMaps, Secrets, the
        agent release, the broker map) are walked each time; they are few."""
        shallow = self._shallow
        for k, v in put.items():
            revision = v.get("revision") if k.startswith(_POD_PREFIX) and isinstance(
                v, dict) else None
            if revision is not None and revision in shallow:
                continue
            try:
                check_depth(encode_value(v), _ENTRY_DEPTH)
            except TooDeep:
                return False
            if isinstance(revision, str):
                if len(shallow) >= SHALLOW_REVISIONS:
                    shallow.clear()
                shallow.add(revision)
        return True

    def _undeliverable_entry(self, node: str, key: str, reason: str) -> None:
        self.metrics.inc(UNDELIVERABLE)
        nd = self.desired.get(node)
        kgen = nd.items[key][1] if nd is not None and key in nd.items else -1
        if self._undeliverable.get((node, key)) == (kgen, reason):
            return  # told once per change of the entry
        self._undeliverable[(node, key)] = (kgen, reason)
        if len(self._undeliverable) > 100_000:
            self._undeliverable.clear()
        log.warning("not sending %s to node %s: %s", key, node, reason)
        self.nodes.undeliverable(node, key, reason)

    def _emit(self, node: str, msg: Desired | ReportAck | Request,
              payload: bytes | None = None) -> None:
        """Seal and send `msg` (its bytes `payload` if the caller encoded it already)."""
        if self._send is None:
            log.debug("no transport yet; dropping %s to %s", msg.t, node)
            return
        topic = topics.down(node)
        if payload is None:
            payload = encode(msg)
        keys = self._keys_of(node)
        if keys is not None:
            payload = seal.seal(keys[_DOWN], topic, payload)
        elif not self.insecure:
            self.metrics.inc(UNSENT, reason="no_key")
            return
        partition = topics.partition_of(node)
        if self.owns is not None and not self.owns(partition):
            self.metrics.inc(UNSENT, reason="not_owned")  # the partition moved away
            return
        self._send(partition, topic, payload, self.routes.broker_for(node, partition))
        self.metrics.inc(OUT, type=msg.t)

    def _drop(self, node: str, reason: str, detail: str) -> None:
        self.metrics.inc(DROPPED, reason=reason)
        self._drop_log(node, reason, detail)

    def _drop_log(self, node: str, reason: str, detail: str) -> None:
        now = self.clock()
        key = (node, reason)
        if now - self._logged.get(key, -1e18) >= self.settings.log_interval:
            self._logged[key] = now
            log.warning("node %s: %s: %s", node, reason, detail)
            if len(self._logged) > 100_000:
                cutoff = now - self.settings.log_interval
                self._logged = {k: t for k, t in self._logged.items() if t >= cutoff}

    def restart_links(self, nodes: list[str]) -> None:
        """A shard took these nodes over (proposal 0008): forget their delivery state
        and treat their edges as in an epoch not ours, so the next message to each is a
        snapshot and deltas follow its ack."""
        for node in nodes:
            old = self._links.get(node)
            if old is not None:
                self._set_inflight(old, None)
            self._links[node] = _Link(epoch=None, epoch_known=True)
            self._lazy.pop(node, None)

    def broker_back(self, broker: str, deaf_s: float, lost: bool, *,
                    restarted: bool = False) -> None:
        """Our subscriber on `broker` is subscribed again after `deaf_s` s without it:
        the nodes we reach there were not heard meanwhile, which says nothing about them,
        so their liveness deadlines move (`Liveness.deaf`: by `deaf_s`, or, when what
        they published is `lost`, to a full window from now, as at our own start). A
        broker restart thus flaps no node NotReady that reconnects within its window.
        If the broker `restarted` (it lost the session it kept for us), the nodes that
        say nothing shortly after are asked for their whole status (`_probe`). Not for
        a shard's clean session (`lost` but not known `restarted`): there most nodes kept
        their sessions and lost nothing, and asking every one of them would load the
        cloud right when it just lost a connection; what they did lose shows as a gap
        at their next report."""
        routes = self.routes

        def on_it(node: str) -> bool:
            return routes.broker_for(node, topics.partition_of(node)) == broker

        now = self.clock()
        for going in self._waves:
            if going.broker == broker:
                going.last_back = max(going.last_back, now)  # could not hear it: not quiet
        wave = self._wave_started(broker, now) if lost else None
        self.nodes.deaf(on_it, now, deaf_s=deaf_s, lost=lost, wave=wave)
        log.info("broker %s: heard again after %.1f s%s; its nodes are given that "
                 "time before they count as silent", broker, deaf_s,
                 " (its sessions and their messages lost: a full window, and more while "
                 f"they keep coming back, until {WAVE_QUIET_S:.0f} s without one)"
                 if lost else "")
        if restarted and now - self._probed_at.get(broker, -1e18) >= PROBE_MIN_INTERVAL_S:
            self._probed_at[broker] = now
            # A node that reconnected before we subscribed again sent its resync and
            # reports to nobody, and says nothing more until its next report: ask the
            # ones not heard from shortly after our return for everything.
            w = _Listen(since=now, last_resync=now)
            self._listening.append(w)
            task = asyncio.get_running_loop().create_task(
                self._probe_when_quiet(w, on_it, broker),
                name=f"cloudcore.synchub.probe[{broker}]")
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    def listen_to(self, heard_at: Callable[[str], float | None], *, stall_s: float) -> None:
        """`heard_at(broker)`: clock() of the last packet our subscriber got from that
        broker (None while not subscribed). From now on, a node whose liveness deadline
        comes while its broker cannot be heard (not subscribed, or nothing from it for
        `stall_s`: the subscriber pings every keepalive / 2; at most `DEAF_HOLD_MAX_S`)
        waits: at 100,000 nodes a
        broker busy with a reconnect storm answered nothing for 47-58 s, and every node
        behind it went NotReady although the cloud, not the nodes, had gone deaf."""
        self._heard_at = heard_at
        started = self.clock()

        def hold(node: str, now: float) -> float | None:
            heard = heard_at(self.routes.broker_for(node, topics.partition_of(node)))
            deaf = now - (started if heard is None else heard)
            if deaf <= stall_s or deaf > DEAF_HOLD_MAX_S:
                return None
            return now + HOLD_RECHECK_S

        self.nodes.hold(hold)

    def _wave_started(self, broker: str, now: float) -> _Wave:
        """A reconnect wave on `broker` from `now` (one at a time per broker; waves over
        are dropped and logged)."""
        self._waves_over(now)
        for w in self._waves:
            if w.broker == broker:
                w.since = w.last_back = now  # the broker restarted again
                return w
        w = _Wave(broker, now, now, heard_at=self._heard_at)
        self._waves.append(w)
        del self._waves[:-WAVES_KEPT]
        return w

    def _wave_heard(self, broker: str) -> None:
        now = self.clock()
        for w in self._waves:
            if w.broker == broker and w.holds_until(now) is not None:
                w.last_back = now
                w.back += 1

    def _waves_over(self, now: float) -> None:
        keep = []
        for w in self._waves:
            if w.holds_until(now) is None:
                log.info("broker %s: reconnect wave over: %d resync(s) through it in %.0f s; "
                         "its nodes not back count as silent from now", w.broker, w.back,
                         w.last_back - w.since)
            else:
                keep.append(w)
        self._waves = keep

    async def _probe_when_quiet(self, w: _Listen, on_it: Callable[[str], bool],
                                broker: str) -> int:
        """Listen until the nodes' reconnects have passed (`PROBE_QUIET_S` without a new
        node's resync and `PROBE_HEARD_SHARE` of the nodes to ask heard; at most
        `PROBE_MAX_WAIT_S`: else no probe), then `_probe` those not heard."""
        try:
            candidates = await self._probe_candidates(on_it)
            while True:
                now = self.clock()
                if now - w.since >= PROBE_MAX_WAIT_S:
                    heard = len(candidates & w.heard)
                    log.info("broker %s: no probe: %d of %d node(s) heard %.0f s after its "
                             "return (the rest are heard through their own resync or "
                             "telemetry)", broker, heard, len(candidates), now - w.since)
                    return 0
                if now - w.last_resync >= PROBE_QUIET_S and \
                        len(candidates & w.heard) >= PROBE_HEARD_SHARE * len(candidates):
                    break
                await asyncio.sleep(0.5)
        finally:
            self._listening.remove(w)
        return self._probe(candidates - w.heard, broker)

    async def _probe_candidates(self, on_it: Callable[[str], bool]) -> set[str]:
        """The nodes a probe may ask: on the broker (`on_it`), known, reported before,
        in a partition this hub owns. In slices: a scan of 100,000 names."""
        out: set[str] = set()
        for i, (node, seq) in enumerate(list(self.desired.report_seqs.items()), 1):
            if i % PROBE_SLICE == 0:
                await asyncio.sleep(0)
            if seq < 1 or not on_it(node) or not self.nodes.known(node):
                continue
            if self.owns is not None and not self.owns(topics.partition_of(node)):
                continue
            out.add(node)
        return out

    def _probe(self, nodes: set[str], broker: str) -> int:
        """Ask each of `nodes` (on `broker`, reported before, not heard since our return)
        for its whole status (`ReportAck.again` with its last seq: it trims nothing new
        and answers with one `full` report). A node not connected yet does not get it
        (its session is gone) and is heard when its own resync arrives."""
        asked = 0
        for node in nodes:
            seq = self.desired.report_seq(node)
            if seq < 1:
                continue  # forgotten meanwhile (deleted, joined again, moved away)
            self._again.add(node)
            self._ack_report(node, seq)
            asked += 1
        self.metrics.inc(REPORT_PROBES, asked)
        log.info("broker %s: asked %d node(s) not heard since it came back for their "
                 "whole status", broker, asked)
        return asked

    def drop_links(self, nodes: list[str]) -> None:
        """A shard lost these nodes: no retries, no waiting acks, no route for them."""
        for node in nodes:
            link = self._links.pop(node, None)
            if link is not None:
                self._set_inflight(link, None)
            self._lazy.pop(node, None)
            self._deferred.pop(node, None)
            self._again.discard(node)
            self._asked.discard(node)
            self.routes.forget(node)

    def link_state(self, node: str) -> dict[str, Any]:
        """The node's delivery state: `epoch` the edge is taken to be in (ours when
        nothing says otherwise), the gen `inflight`, `attempts`, the `broker` it was
        last heard on."""
        link = self._links.get(node)
        if link is None or not link.epoch_known:
            nd = self.desired.get(node)
            epoch = nd.epoch if nd is not None else None
        else:
            epoch = link.epoch
        return {"epoch": epoch, "inflight": link.inflight if link else None,
                "attempts": link.attempts if link else 0,
                "broker": self.routes.last_heard(node)}


def encode_value(value: Any) -> bytes:
    """One desired value as msgpack (its share of a message's size)."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]
