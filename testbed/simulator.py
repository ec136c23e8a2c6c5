"""Fleet simulator: thousands of simulated edge nodes per process, for scale benchmarks.

Each simulated node is one real MQTT session speaking the real protocol
(`shared.codec`, `shared.topics`, `shared.delta.EdgeDesired`) to a real broker, so
cloudcore cannot tell it from an edgecore agent, except that nothing is persisted
and no container runs: a pod entry is reported Running as soon as its gen is
applied (optionally; with a crash marker, a pod whose command or args contain it is
reported crash-looping instead, to exercise health-gated rollouts; likewise an
`agent/-/release` entry is taken at once: the node reports that version Healthy, or
RolledBack if the version contains the crash marker, for AgentUpgrades). That is what a
benchmark of the cloud and the broker needs: the protocol's traffic and timing,
without the agent's disk and crun costs.

gmqtt is used, not aiomqtt: aiomqtt keeps a per-client timer task that costs about
21 % of a core idle at 12k sessions (DESIGN.md section 8), while a gmqtt session is
a transport, a protocol object and one keepalive `call_later`. Heartbeats for all
nodes are driven by one loop per process instead of one timer per node, for the
same reason.

Run one process per ~2,500-15,000 sessions (each session is one file descriptor;
the limit is 20,000 per process):

    python -m testbed.simulator --host 127.0.0.1 --port 1883 \\
        --prefix sim --start 0 --count 2500 --stats /tmp/sim-0.json

Node names are `{prefix}-{i}` for i in [start, start + count).

Secure fleets (proposal 0002): `--keys FILE` is a JSON object node -> base64 node key
(or node -> {"key": ..., "username": ..., "password": ...} to log in with the node's
broker credentials too), as a testbed gets them by joining the nodes; every message is
then sealed and checked as a real agent does (`shared.seal`), and a node missing from
the file is an error. `--tls --ca-file CA` connects over TLS. Without `--keys` the nodes
speak unsealed, as before, for an `--insecure` cloudcore.

A broker tier (issue 14): `--broker-map FILE` (`testbed.broker.broker_map`) connects each
node to its partition's first broker instead of `--host/--port`, and to the next one in
its list when a first connect fails. `--report-on-sigusr1`: SIGUSR1 makes every connected
node send one report at once (`testbed bench brokers` measures that fan-in). The stats
name what keeps sessions out: errors by kind, the last one, and some unconnected nodes.
They also count the desired messages received by kind (`snapshots_in`, `deltas_in`) and
sessions lost after they were up (`disconnects`). `--gens-file FILE`: on SIGUSR2 every
node's applied (epoch, gen) is written there (`testbed bench storm` checks that nothing
the cloud recorded as acked was lost).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import itertools
import json
import logging
import os
import random
import resource
import signal
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gmqtt
from gmqtt.mqtt.constants import MQTTv311

from shared import seal, topics
from shared.codec import (
    DOWN_LIMITS,
    Ack,
    Desired,
    Report,
    ReportAck,
    Resync,
    Will,
    decode,
    encode,
)
from shared.delta import LEFT_EPOCH, EdgeDesired, Outcome
from shared.entries import AGENT_RELEASE_KEY, BROKER_MAP_KEY, POD, split_key, status_value
from shared.errors import ProtocolError
from shared.models import ContainerStatus, PodStatus
from testbed.broker import parse_broker_map

log = logging.getLogger("testbed.simulator")


class GatedClient(gmqtt.Client):  # type: ignore[misc]
    """A gmqtt client whose every connection (the first and each of gmqtt's reconnects)
    opens through a semaphore shared by the process (`Simulator.connecting`).

    Why (issue 14's storm): when every broker restarts, each simulator process has
    thousands of sessions reconnecting within a few seconds. Opened all at once, their
    TLS handshakes share one process's CPU and progress together, so none finishes until
    nearly all do (at 20,000 nodes no session was back for 28 s, then 14,000 within 5 s),
    and the cloud sits idle meanwhile. A real device does its handshake on its own CPU;
    bounding the handshakes in flight lets a process finish them in turn, as devices
    would, and the cloud starts on the first ones at once. gmqtt's own reconnect delay is
    kept: the gate is taken after it, around `_create_connection` (gmqtt's one place that
    opens the transport and TLS), and released as soon as it returns."""

    def __init__(self, *args: Any, gate: asyncio.Semaphore, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gate = gate

    async def _create_connection(self, *args: Any, **kwargs: Any) -> Any:
        async with self._gate:
            return await super()._create_connection(*args, **kwargs)

CAPACITY = {"cpu": 4000, "memory": 8_589_934_592, "pods": 110}
AGENT_VERSION = "sim"


@dataclass(frozen=True)
class SimSettings:
    """How the simulated fleet behaves; every field is fixed for the process's life."""

    host: str = "127.0.0.1"  # broker address
    port: int = 1883  # broker port
    names: tuple[str, ...] = ()  # node names, also the MQTT client ids
    labels: dict[str, str] = field(default_factory=dict)  # node labels, reported on connect
    heartbeat: float = 30.0  # seconds between empty reports, jittered +-20 %
    connect_rate_per_s: float = 500.0  # new sessions opened per second
    report_pods: bool = False  # report each applied pod Running (the ack bench leaves it off)
    stats_path: Path | None = None  # JSON stats file, rewritten every `stats_interval`
    stats_interval: float = 1.0  # seconds
    keepalive: int = 600  # MQTT keepalive, seconds: the agent's default (edgecore.config
    # mqtt_keepalive_s); at 60 the pings were 10x an agent's idle traffic and half of a
    # simulator's CPU in `bench sync` at 100,000 nodes (issue 14)
    per_node_stats: bool = False  # add every node's timings and counters to the stats file
    max_connecting: int = 256  # connects in flight at once, the first ones and gmqtt's
    # reconnects alike (a slow broker must not pile up; see GatedClient)
    crash_marker: str | None = None  # with report_pods: a pod whose container command or
    # args contain this text is reported crashing (Running, not ready, CrashLoopBackOff)
    keys: dict[str, bytes] = field(default_factory=dict, repr=False)  # node -> node key;
    # empty: unsealed messages (an --insecure cloudcore); else every node must have one
    credentials: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)
    # node -> (broker username, password); empty: anonymous
    tls: bool = False  # connect over TLS
    ca_file: Path | None = None  # the CA the broker's certificate chains to (with tls)
    brokers: tuple[tuple[tuple[str, int], ...], ...] = ()  # partition -> (host, port)s a
    # node tries in turn (`--broker-map`); empty: every node uses host and port
    report_on_sigusr1: bool = False  # SIGUSR1: every connected node reports once, now
    gens_path: Path | None = None  # SIGUSR2: write every node's (epoch, gen) here


class SimNode:
    """One simulated edge: its desired state in memory, its counters and its session."""

    __slots__ = (
        "agent_upgrade",
        "agent_version",
        "applied_at",
        "bytes_in",
        "bytes_out",
        "client",
        "connected",
        "connects",
        "desired",
        "first_desired_at",
        "keys",
        "msgs_in",
        "msgs_out",
        "name",
        "next_heartbeat",
        "racked",
        "reacks",
        "resyncs",
        "seq",
        "sim",
    )

    def __init__(self, name: str, sim: Simulator) -> None:
        self.name = name
        self.sim = sim
        self.desired = EdgeDesired()
        key = sim.settings.keys.get(name)
        self.keys = seal.NodeKeys.derive(key) if key is not None else None
        self.seq = 0  # last report seq sent
        self.racked = 0  # highest seq the cloud acknowledged
        self.client: gmqtt.Client | None = None
        self.connected = False
        self.connects = 0
        self.next_heartbeat = 0.0
        self.first_desired_at: float | None = None
        self.applied_at: dict[int, float] = {}  # gen -> wall time it was applied
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.reacks = self.resyncs = 0
        self.agent_version = AGENT_VERSION
        self.agent_upgrade: dict[str, Any] | None = None

    # --- outgoing ----------------------------------------------------------------

    def send(self, msg: Ack | Report | Resync) -> int:
        """Publish `msg`; returns its bytes on the wire (0: not connected, not sent)."""
        if self.client is None or not self.connected:
            return 0  # the resync on the next connect brings the cloud up to date
        topic = topics.up(self.name)
        data = encode(msg)
        if self.keys is not None:
            data = seal.seal(self.keys.up, topic, data)
        self.client.publish(topic, data, qos=1)
        self.msgs_out += 1
        self.bytes_out += len(data)
        self.sim.msgs_out += 1
        self.sim.bytes_out += len(data)
        return len(data)

    def report(self, **fields: Any) -> int:
        self.seq += 1
        return self.send(
            Report(
                node=self.name,
                seq=self.seq,
                epoch=self.desired.epoch,
                gen=self.desired.gen,
                ts=time.time(),
                **fields,
            )
        )

    def node_status(self) -> dict[str, Any]:
        return {
            "capacity": dict(CAPACITY),
            "allocatable": dict(CAPACITY),
            "arch": "amd64",
            "os": "linux",
            "agentVersion": self.agent_version,
            "agentUpgrade": self.agent_upgrade,
            "labels": dict(self.sim.settings.labels),
            "heartbeat": self.sim.settings.heartbeat,
        }

    # --- gmqtt callbacks ------------------------------------------------------------

    def on_connect(self, client: gmqtt.Client, session_present: int, rc: int, props: Any) -> None:
        self.connected = True
        self.connects += 1
        self.sim.connected += 1
        if not session_present:
            # gmqtt does not resubscribe by itself; a fresh session needs it again.
            if client.subscriptions:
                for sub in client.subscriptions:
                    client.resubscribe(sub)
            else:
                client.subscribe(topics.down(self.name), qos=1)
        # The edge's opening: where it stands, then who it is (DESIGN.md section 3).
        self.resyncs += 1
        self.send(
            Resync(
                node=self.name,
                epoch=self.desired.epoch,
                gen=self.desired.gen,
                seq=self.seq,
                reason="connect",
            )
        )
        self.report(node_status=self.node_status())
        hb = self.sim.settings.heartbeat
        self.next_heartbeat = time.monotonic() + random.uniform(0.2 * hb, hb)

    def on_disconnect(self, client: gmqtt.Client, packet: Any, exc: Any = None) -> None:
        if self.connected:
            self.connected = False
            self.sim.connected -= 1
            self.sim.disconnects += 1

    def on_message(
        self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, props: Any
    ) -> int:
        self.msgs_in += 1
        self.bytes_in += len(payload)
        self.sim.msgs_in += 1
        self.sim.bytes_in += len(payload)
        try:
            if self.keys is not None:
                payload = seal.unseal(self.keys.down, topic, payload)
            msg = decode(payload, limits=DOWN_LIMITS)
        except ProtocolError as exc:
            self.sim.invalid += 1
            log.debug("%s: dropped a bad message: %s", self.name, exc)
            return 0
        if msg.node != self.name:
            self.sim.invalid += 1
            return 0
        if isinstance(msg, Desired):
            self.on_desired(msg)
        elif isinstance(msg, ReportAck):
            self.racked = max(self.racked, msg.seq)
            if msg.again:  # the cloud missed some of our reports: everything once more
                self.sim.report_again += 1
                self.full_report(self.desired.items)
        return 0

    def on_desired(self, msg: Desired) -> None:
        now = time.time()
        if msg.snapshot:
            self.sim.snapshots_in += 1
        else:
            self.sim.deltas_in += 1
        if self.first_desired_at is None:
            self.first_desired_at = now
            self.sim.first_desired += 1
        outcome = self.desired.classify(msg)
        if outcome is Outcome.REFUSED:
            self.resyncs += 1
            self.send(Resync(node=self.name, epoch=self.desired.epoch, gen=self.desired.gen,
                             seq=self.seq, reason=LEFT_EPOCH))
            return
        if outcome is Outcome.DUPLICATE:
            self.reacks += 1
            self.sim.reacks += 1
            self.send(
                Ack(node=self.name, epoch=self.desired.epoch or msg.epoch, gen=self.desired.gen)
            )
            return
        if outcome is Outcome.GAP:
            self.resyncs += 1
            self.sim.gaps += 1
            self.send(
                Resync(
                    node=self.name,
                    epoch=self.desired.epoch,
                    gen=self.desired.gen,
                    seq=self.seq,
                    reason="gap",
                )
            )
            return
        old = self.desired.items
        was, was_epoch = self.desired.gen, self.desired.epoch
        self.desired = self.desired.applied(msg)
        self.sim.moved_gen(was, self.desired.gen)
        self.applied_at[msg.gen] = now
        self.sim.record_applied(msg.gen, now)
        self.send(Ack(node=self.name, epoch=msg.epoch, gen=msg.gen))
        if msg.snapshot and was_epoch is not None and msg.epoch != was_epoch:
            self.full_report(old)  # a new owner (edgecore.sync.reporter)
            return
        if self.sim.settings.report_pods:
            pods = self.pod_changes(old, self.desired.items)
            if pods:
                self.report(pods=pods)
            self.release_changed(old.get(AGENT_RELEASE_KEY),
                                 self.desired.items.get(AGENT_RELEASE_KEY))

    def full_report(self, old: dict[str, Any]) -> None:
        """A snapshot under a new epoch (a shard took this node over), or a ReportAck
        asking `again`: one report marked `full` with the node status and every pod's
        status, as an agent sends it to a cloud that may lack reports (a new owner, one
        that missed some); pods the set no longer holds (in `old`), gone."""
        if self.sim.settings.report_pods:
            self.release_changed(old.get(AGENT_RELEASE_KEY),
                                 self.desired.items.get(AGENT_RELEASE_KEY), report=False)
            pods = self.pod_changes({}, self.desired.items)
            pods.update((k, None) for k in old
                        if k not in self.desired.items and split_key(k)[0] == POD)
        else:
            pods = {}
        size = self.report(node_status=self.node_status(), pods=pods, full=True)
        if size:
            self.sim.full_reports += 1
            self.sim.full_report_bytes += size

    def release_changed(self, old: Any, new: Any, *, report: bool = True) -> None:
        """A new `agent/-/release` entry: this simulated agent runs that version at once
        and reports it Healthy; a version containing the crash marker is reported
        RolledBack (the node stays at its version), as an agent whose new version
        crashed at start (shared.entries' agentUpgrade report)."""
        if new == old or not isinstance(new, dict) or not isinstance(new.get("version"), str):
            return
        version, previous = new["version"], self.agent_version
        marker = self.sim.settings.crash_marker
        if marker is not None and marker in version:
            self.agent_upgrade = {"version": version, "phase": "RolledBack",
                                  "message": "simulated: exit 3 at start",
                                  "previous": previous}
        else:
            self.agent_version = version
            self.agent_upgrade = {"version": version, "phase": "Healthy", "message": "",
                                  "previous": previous}
        if report:
            self.report(node_status={"agentVersion": self.agent_version,
                                     "agentUpgrade": self.agent_upgrade})

    def pod_changes(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
        """Statuses to report: new or changed pods Running at once (crashing, with a
        `crash_marker` in a container's command or args), removed pods gone (None)."""
        out: dict[str, Any] = {}
        marker = self.sim.settings.crash_marker
        for k, v in new.items():
            if split_key(k)[0] != POD or old.get(k) == v:
                continue
            spec = v.get("spec") if isinstance(v, dict) else None
            containers = [c for c in (spec or {}).get("containers") or [] if isinstance(c, dict)]
            now = time.time()
            crashing = marker is not None and any(
                marker in str(word)
                for c in containers
                for word in [*(c.get("command") or []), *(c.get("args") or [])]
            )
            if crashing:
                statuses = [
                    ContainerStatus(
                        name=c.get("name", "c"),
                        state="waiting",
                        ready=False,
                        reason="CrashLoopBackOff",
                        restart_count=1,
                    )
                    for c in containers
                ]
            else:
                statuses = [
                    ContainerStatus(
                        name=c.get("name", "c"), state="running", ready=True, started_at=now
                    )
                    for c in containers
                ]
            status = PodStatus(
                phase="Running",
                node_name=self.name,
                updated_at=now,
                revision=v.get("revision") if isinstance(v, dict) else None,
                container_statuses=statuses,
                ready=False if crashing else None,
            )
            out[k] = status_value(status)
        for k in old:
            if k not in new and split_key(k)[0] == POD:
                out[k] = None
        return out


class Simulator:
    """The fleet of one process: connects gradually, answers, beats, writes stats."""

    def __init__(self, settings: SimSettings) -> None:
        for name in settings.names:
            if not topics.valid_node_name(name):
                raise ValueError(f"names: {name!r} is not a valid node name (DNS-1123)")
        if settings.connect_rate_per_s <= 0:
            raise ValueError("connect_rate_per_s: must be positive")
        if settings.heartbeat <= 0:
            raise ValueError("heartbeat: must be positive seconds")
        if settings.crash_marker == "":
            raise ValueError("crash_marker: must not be empty (it would match every pod)")
        if settings.keys:
            missing = [n for n in settings.names if n not in settings.keys]
            if missing:
                raise ValueError(f"keys: no key for {len(missing)} node(s), e.g. {missing[0]!r}")
        self.settings = settings
        self._ssl: ssl.SSLContext | bool = False
        if settings.tls:
            self._ssl = ssl.create_default_context(
                cafile=str(settings.ca_file) if settings.ca_file else None)
        self.nodes = [SimNode(n, self) for n in settings.names]
        # kept as nodes change, not counted over every node at each stats write (that
        # was about a tenth of a simulator's CPU at 16,667 nodes; issue 14)
        self.at_gen: dict[int, int] = {}
        for n in self.nodes:
            self.at_gen[n.desired.gen] = self.at_gen.get(n.desired.gen, 0) + 1
        self.first_desired = 0  # nodes that have received a desired message
        self.connected = 0
        self.msgs_in = self.msgs_out = self.bytes_in = self.bytes_out = 0
        self.reacks = self.gaps = self.invalid = self.connect_failures = 0
        self.snapshots_in = self.deltas_in = 0  # desired messages received, by kind
        # reports of the whole status to a new owner (a snapshot under a new epoch)
        self.full_reports = self.full_report_bytes = 0
        self.report_again = 0  # ReportAcks that asked for a full report (a gap seen)
        self.disconnects = 0  # sessions lost after they were up (gmqtt reconnects them)
        if settings.max_connecting < 1:
            raise ValueError("max_connecting: at least 1")
        self.connecting = asyncio.Semaphore(settings.max_connecting)
        """Every session's connection opens through this (`GatedClient`)."""
        self.connect_errors: dict[str, int] = {}  # kind of first-connect failure -> count
        self.last_connect_error: str | None = None
        self.signalled_reports = 0  # reports sent on SIGUSR1
        self.acks: dict[int, int] = {}  # gen -> nodes that applied it
        self.gen_times: dict[int, list[float]] = {}  # gen -> [first, last] wall time applied
        self.started_at = time.time()
        self.all_connected_after: float | None = None  # seconds from start

    def moved_gen(self, was: int, now: int) -> None:
        """A node's applied gen went from `was` to `now` (`at_gen`)."""
        if was == now:
            return
        left = self.at_gen[was] - 1
        if left:
            self.at_gen[was] = left
        else:
            del self.at_gen[was]
        self.at_gen[now] = self.at_gen.get(now, 0) + 1

    def record_applied(self, gen: int, now: float) -> None:
        self.acks[gen] = self.acks.get(gen, 0) + 1
        span = self.gen_times.setdefault(gen, [now, now])
        span[1] = now

    # --- lifecycle -------------------------------------------------------------------

    def report_all(self) -> None:
        """Every connected node sends one (empty) report now: the fleet's fan-in."""
        for node in self.nodes:
            if node.connected:
                node.report()
                self.signalled_reports += 1

    def endpoint(self, node: SimNode, attempt: int) -> tuple[str, int]:
        """Where `node` connects on its `attempt`-th try: its partition's brokers in
        turn (`brokers`), else host and port."""
        if not self.settings.brokers:
            return self.settings.host, self.settings.port
        ends = self.settings.brokers[topics.partition_of(node.name)]
        return ends[attempt % len(ends)]

    async def run(self) -> None:
        """Connect every node (rate-limited), then serve until cancelled; disconnects on exit."""
        tasks: list[asyncio.Task[None]] = []
        if self.settings.report_on_sigusr1:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.report_all)
        if self.settings.gens_path is not None:
            path = self.settings.gens_path
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGUSR2, lambda: self.write_gens(path))
        try:
            async with asyncio.TaskGroup() as tg:
                tasks.append(tg.create_task(self._connect_all(), name="sim.connect"))
                tasks.append(tg.create_task(self._heartbeats(), name="sim.heartbeats"))
                if self.settings.stats_path is not None:
                    tasks.append(tg.create_task(self._stats_loop(), name="sim.stats"))
        finally:
            await self._disconnect_all()

    async def _connect_all(self) -> None:
        gate = asyncio.Semaphore(self.settings.max_connecting)
        interval = 1.0 / self.settings.connect_rate_per_s
        start = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        for i, node in enumerate(self.nodes):
            await gate.acquire()
            task = asyncio.create_task(self._connect(node, gate), name=f"sim.connect[{node.name}]")
            pending.add(task)
            task.add_done_callback(pending.discard)
            # Pace against the schedule, not per sleep, so timer slop does not add up.
            delay = start + (i + 1) * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        while pending:
            await asyncio.gather(*list(pending))
        self.all_connected_after = time.time() - self.started_at
        log.info("%d sessions connected in %.1f s", len(self.nodes), self.all_connected_after)

    async def _connect(self, node: SimNode, gate: asyncio.Semaphore) -> None:
        """First connect, retried with capped jittered backoff; gmqtt reconnects after that."""
        try:
            delay = 0.5
            attempt = 0
            while True:
                host, port = self.endpoint(node, attempt)
                will_topic = topics.will(node.name)
                will = encode(Will(node=node.name))
                if node.keys is not None:
                    will = seal.seal(node.keys.up, will_topic, will)
                client = GatedClient(
                    node.name,
                    clean_session=False,
                    will_message=gmqtt.Message(will_topic, will, qos=1),
                    gate=self.connecting,
                )
                creds = self.settings.credentials.get(node.name)
                if creds is not None:
                    client.set_auth_credentials(*creds)
                client.set_config(
                    {"reconnect_retries": -1, "reconnect_delay": random.uniform(1.0, 5.0)}
                )
                client.on_connect = node.on_connect
                client.on_message = node.on_message
                client.on_disconnect = node.on_disconnect
                node.client = client
                try:
                    await client.connect(
                        host,
                        port,
                        keepalive=self.settings.keepalive,
                        version=MQTTv311,
                        ssl=self._ssl,
                    )
                    return
                except (TimeoutError, OSError, gmqtt.MQTTConnectError) as exc:
                    self.connect_failures += 1
                    kind = f"{type(exc).__name__}: {exc}"[:120]
                    self.connect_errors[kind] = self.connect_errors.get(kind, 0) + 1
                    self.last_connect_error = f"{node.name} -> {host}:{port}: {kind}"
                    attempt += 1
                    log.debug("%s: connect failed: %s", node.name, exc)
                    with contextlib.suppress(Exception):
                        await client.disconnect()
                    node.client = None
                    await asyncio.sleep(random.uniform(0, delay))
                    delay = min(delay * 2, 10.0)
        finally:
            gate.release()

    async def _heartbeats(self) -> None:
        """One loop beats for every node, instead of one timer per node."""
        hb = self.settings.heartbeat
        tick = min(1.0, hb / 4)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for node in self.nodes:
                if node.connected and node.next_heartbeat <= now:
                    node.report()
                    node.next_heartbeat = now + random.uniform(0.8 * hb, 1.2 * hb)

    async def _stats_loop(self) -> None:
        assert self.settings.stats_path is not None
        while True:
            self.write_stats(self.settings.stats_path)
            await asyncio.sleep(self.settings.stats_interval)

    async def _disconnect_all(self) -> None:
        clients = [n.client for n in self.nodes if n.client is not None]
        for n in self.nodes:
            n.client = None

        async def close(c: gmqtt.Client) -> None:
            with contextlib.suppress(Exception):
                await c.disconnect()

        # Shielded and bounded: a cancelled run still says goodbye (no will storm),
        # but a dead broker cannot hold the process.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(
                asyncio.shield(asyncio.gather(*(close(c) for c in clients))), timeout=10
            )
        if self.settings.stats_path is not None:
            self.write_stats(self.settings.stats_path)

    # --- stats ---------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The figures a benchmark reads: sessions, per-gen applies, traffic, memory."""
        at_gen, first_desired = self.at_gen, self.first_desired
        missing = ([] if self.connected >= len(self.nodes) else
                   list(itertools.islice((n.name for n in self.nodes if not n.connected), 10)))
        applied = {str(g): c for g, c in sorted(self.acks.items())}
        out: dict[str, Any] = {
            "ts": time.time(),
            "pid": os.getpid(),
            "nodes": len(self.nodes),
            "connected": self.connected,
            "connect_failures": self.connect_failures,
            "connect_errors": dict(self.connect_errors),
            "last_connect_error": self.last_connect_error,
            "not_connected_sample": missing,
            "signalled_reports": self.signalled_reports,
            "started_at": self.started_at,
            "all_connected_after_s": self.all_connected_after,
            "first_desired": first_desired,
            # gen -> nodes that applied (and acked) it; "gens" is the name testbed.bench reads.
            "acks": applied,
            "gens": applied,
            "gen_times": {str(g): v for g, v in sorted(self.gen_times.items())},
            "at_gen": {str(g): c for g, c in sorted(at_gen.items())},
            "reacks": self.reacks,
            "gaps": self.gaps,
            "snapshots_in": self.snapshots_in,
            "deltas_in": self.deltas_in,
            "full_reports": self.full_reports,
            "full_report_bytes": self.full_report_bytes,
            "report_again": self.report_again,
            "disconnects": self.disconnects,
            "invalid": self.invalid,
            "msgs_in": self.msgs_in,
            "msgs_out": self.msgs_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "rss_bytes": rss_bytes(),
        }
        if self.settings.per_node_stats:
            out["per_node"] = {
                n.name: {
                    "connected": n.connected,
                    "connects": n.connects,
                    "first_desired_at": n.first_desired_at,
                    "applied_at": {str(g): t for g, t in n.applied_at.items()},
                    "gen": n.desired.gen,
                    "seq": n.seq,
                    "racked": n.racked,
                    "msgs_in": n.msgs_in,
                    "msgs_out": n.msgs_out,
                    "bytes_in": n.bytes_in,
                    "bytes_out": n.bytes_out,
                    "reacks": n.reacks,
                    "resyncs": n.resyncs,
                }
                for n in self.nodes
            }
        return out

    def write_gens(self, path: Path) -> None:
        """Every node's applied desired state, `{"ts", "nodes": {name: [epoch, gen]},
        "pods": {name: [its desired set's pod keys "pod/ns/name"]}, "maps": {name: its
        `broker/-/map` entry, if any}}`, atomically: what a
        benchmark checks against the cloud's acked gens (an update the cloud recorded as
        acked must be applied here), and what pods the fleet really runs."""
        doc = {"ts": time.time(),
               "nodes": {n.name: [n.desired.epoch, n.desired.gen] for n in self.nodes},
               "pods": {n.name: sorted(k for k in n.desired.items if k.startswith("pod/"))
                        for n in self.nodes},
               "maps": {n.name: n.desired.items[BROKER_MAP_KEY] for n in self.nodes
                        if BROKER_MAP_KEY in n.desired.items}}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, path)

    def write_stats(self, path: Path) -> None:
        """Atomically (write + rename), so a reader never sees half a file."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.stats()))
        os.replace(tmp, path)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


async def run_simulator(
    *,
    host: str,
    port: int,
    names: list[str],
    labels: dict[str, str],
    heartbeat: float,
    connect_rate_per_s: float,
    report_pods: bool,
    stats_path: Path | None,
    keepalive: int = 600,
    per_node_stats: bool = False,
    crash_marker: str | None = None,
    keys: dict[str, bytes] | None = None,
    credentials: dict[str, tuple[str, str]] | None = None,
    tls: bool = False,
    ca_file: Path | None = None,
    brokers: tuple[tuple[tuple[str, int], ...], ...] = (),
    report_on_sigusr1: bool = False,
    gens_path: Path | None = None,
) -> None:
    """Simulate `names` as edge nodes against the broker until cancelled."""
    settings = SimSettings(
        host=host,
        port=port,
        names=tuple(names),
        labels=dict(labels),
        heartbeat=heartbeat,
        connect_rate_per_s=connect_rate_per_s,
        report_pods=report_pods,
        stats_path=stats_path,
        keepalive=keepalive,
        per_node_stats=per_node_stats,
        crash_marker=crash_marker,
        keys=dict(keys or {}),
        credentials=dict(credentials or {}),
        tls=tls,
        ca_file=ca_file,
        brokers=brokers,
        report_on_sigusr1=report_on_sigusr1,
        gens_path=gens_path,
    )
    await Simulator(settings).run()


def load_keys(path: Path) -> tuple[dict[str, bytes], dict[str, tuple[str, str]]]:
    """A `--keys` file: node -> base64 key, or node -> {"key", "username", "password"}.
    Returns (keys, credentials); ValueError naming the node if an entry is malformed."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: must be a JSON object node -> key")
    keys: dict[str, bytes] = {}
    creds: dict[str, tuple[str, str]] = {}
    for node, entry in raw.items():
        b64 = entry.get("key") if isinstance(entry, dict) else entry
        try:
            key = base64.b64decode(str(b64), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"{path}: {node}: key is not base64") from None
        if len(key) != seal.KEY_BYTES:
            raise ValueError(f"{path}: {node}: a node key is {seal.KEY_BYTES} bytes")
        keys[node] = key
        if isinstance(entry, dict) and entry.get("username") and entry.get("password"):
            creds[node] = (str(entry["username"]), str(entry["password"]))
    return keys, creds


# --- command line -------------------------------------------------------------------


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for term in filter(None, text.split(",")):
        k, sep, v = term.partition("=")
        if not sep or not k:
            raise argparse.ArgumentTypeError(f"--labels: {term!r} is not KEY=VALUE")
        out[k] = v
    return out


def _raise_fd_limit(need: int) -> None:
    """Lift the soft open-file limit to the hard one; say so if it still is not enough."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if need + 64 > soft:
        raise SystemExit(
            f"--count {need} needs about {need + 64} file descriptors but the limit is {soft}; "
            "split the fleet over several processes"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m testbed.simulator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="broker host (default %(default)s)")
    p.add_argument("--port", type=int, default=1883, help="broker port (default %(default)s)")
    p.add_argument("--prefix", default="sim", help="node name prefix (default %(default)s)")
    p.add_argument("--start", type=int, default=0, help="first node index (default 0)")
    p.add_argument(
        "--count", type=int, default=2500, help="nodes in this process (default %(default)s)"
    )
    p.add_argument(
        "--labels",
        type=_labels,
        default={"testbed/simulated": "true"},
        help="node labels KEY=VALUE,... (default testbed/simulated=true; a node cannot set "
        "edgefed.io/ labels on itself)",
    )
    p.add_argument("--heartbeat", type=float, default=30.0, help="seconds (default %(default)s)")
    p.add_argument(
        "--rate", type=float, default=500.0, help="connects per second (default %(default)s)"
    )
    p.add_argument(
        "--keepalive", type=int, default=600,
        help="MQTT keepalive s (default %(default)s, the agent's default)"
    )
    p.add_argument("--report-pods", action="store_true", help="report applied pods Running")
    p.add_argument(
        "--crash-marker",
        default=None,
        metavar="TEXT",
        help="with --report-pods: report a pod whose container command or args contain TEXT "
        "as crashing (CrashLoopBackOff)",
    )
    p.add_argument(
        "--stats", type=Path, default=None, help="JSON stats file, rewritten every second"
    )
    p.add_argument("--per-node-stats", action="store_true", help="add per-node timings to --stats")
    p.add_argument(
        "--keys",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON node -> base64 node key (or -> {key, username, password}): seal and check "
        "every message; without it the nodes speak unsealed (an --insecure cloudcore)",
    )
    p.add_argument("--tls", action="store_true", help="connect to the broker over TLS")
    p.add_argument(
        "--ca-file", type=Path, default=None, help="with --tls: the CA of the broker's certificate"
    )
    p.add_argument(
        "--broker-map",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON partition -> broker map (testbed.broker.broker_map): each node connects to "
        "its partition's first broker, the next on a failed first connect (not --host/--port)",
    )
    p.add_argument(
        "--report-on-sigusr1",
        action="store_true",
        help="on SIGUSR1 every connected node sends one report at once (fan-in benchmarks)",
    )
    p.add_argument(
        "--gens-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="on SIGUSR2 write every node's applied (epoch, gen) to FILE (benchmarks check "
        "them against the cloud's acked gens)",
    )
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.count < 1 or args.start < 0:
        p.error("--count must be >= 1 and --start >= 0")
    if args.ca_file is not None and not args.tls:
        p.error("--ca-file needs --tls")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("gmqtt").setLevel(logging.INFO if args.verbose else logging.ERROR)
    _raise_fd_limit(args.count)
    names = [f"{args.prefix}-{i}" for i in range(args.start, args.start + args.count)]
    keys: dict[str, bytes] = {}
    creds: dict[str, tuple[str, str]] = {}
    if args.keys is not None:
        try:
            keys, creds = load_keys(args.keys)
        except (OSError, ValueError) as exc:
            print(f"error: --keys: {exc}", file=sys.stderr)
            return 1

    brokers: tuple[tuple[tuple[str, int], ...], ...] = ()
    if args.broker_map is not None:
        try:
            brokers = tuple(parse_broker_map(json.loads(args.broker_map.read_text())))
        except (OSError, ValueError) as exc:
            print(f"error: --broker-map: {exc}", file=sys.stderr)
            return 1

    async def serve() -> None:
        # SIGTERM (how the testbed stops us) cancels like Ctrl-C, so the sessions are
        # closed cleanly and the last stats are written.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await run_simulator(
                host=args.host,
                port=args.port,
                names=names,
                labels=args.labels,
                heartbeat=args.heartbeat,
                connect_rate_per_s=args.rate,
                report_pods=args.report_pods,
                stats_path=args.stats,
                keepalive=args.keepalive,
                per_node_stats=args.per_node_stats,
                crash_marker=args.crash_marker,
                keys=keys,
                credentials=creds,
                tls=args.tls,
                ca_file=args.ca_file,
                brokers=brokers,
                report_on_sigusr1=args.report_on_sigusr1,
                gens_path=args.gens_file,
            )

    coro = serve()
    try:
        if not args.no_uvloop:
            try:
                import uvloop
            except ImportError:
                uvloop = None  # type: ignore[assignment]
            if uvloop is not None:
                uvloop.run(coro)
                return 0
        asyncio.run(coro)
    except KeyboardInterrupt:
        pass
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
