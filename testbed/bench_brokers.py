"""`testbed bench brokers`: the broker tier, chosen by measurement (issue 14 part 1).

Holds N real MQTT sessions, each a simulated node (`testbed.simulator`) with the fleet's
security as `testbed up` runs it (TLS against the fleet CA of `cloudcore pki broker`, a
username and password per node, sealed messages with a node key), against each tier:

- `mosquitto`: several mosquitto processes, the 256 partitions spread over them in
  contiguous ranges (`testbed.broker.spread_partitions`); every broker knows every
  node's credentials (the password file cloudcore writes) and the proposal-0002 ACL.
  A node connects to its partition's broker (`--broker-map`). A mosquitto process holds
  at most its open-file limit of sessions (20,000 here), so the bench runs
  `ceil(N / --per-broker)` of them unless told (`--brokers`).
- `nats`: one cluster of Debian's nats-server with routes, JetStream (its MQTT listener
  needs it) and a TLS MQTT listener on every server; the same identities as NATS users
  with the same rules as subject permissions (`testbed.broker.nats_users`). A partition
  has a home server (the same contiguous ranges) and the others as fallbacks. A NATS
  server is one process with the same open-file limit, so `max(3, ceil(N / --per-broker))`
  servers unless told (`--nats-servers`).

The cloud side is this program: one MQTT connection per broker or server (a service
identity each) through `cloudcore.synchub.wire`, cloudcore's own client, subscribing the
`up` filters of the partitions homed there. For each tier and each N it measures:

- `connect`: seconds until every session is up;
- `idle`: broker CPU (% of one core) and RSS over `--idle` seconds with nothing sent,
  in all and per 1,000 sessions (and the brokers' RSS before any session);
- `fanin`: every node sends one report at once (SIGUSR1 to the simulators); seconds until
  the cloud has one from every node, messages per second, broker CPU seconds;
- `targeted`: the cloud sends every node its own sealed desired snapshot (gen 1, a pod
  of a DaemonSet) on its `down` topic at QoS 1, as a DaemonSet create does; seconds until
  the brokers acknowledged every publish, until every node applied it, until the cloud
  has every node's ack;
- what broke: error lines in the brokers' logs, the simulators' connect errors by kind.

It never waits silently: every second it checks that every broker and simulator process
is alive and that the awaited count moves; a dead process, or no progress for `--stall`
seconds, fails the run with the missing sessions named (how many per broker and per
simulator, some of their names, the simulators' connect errors, the brokers' open files
against their limit and the error lines of their logs). A failed run is recorded with
its error, and the next one runs. Every run is printed and written to
`WORKDIR/result.json` as it ends.

Runs over 20,000 sessions take most of this machine: wrap them in
`flock /tmp/edgefed-bigrun.lock ...` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cloudcore.auth.broker import mosquitto_acl
from cloudcore.auth.secrets import mosquitto_hash
from shared import seal, topics
from shared.codec import Ack, Desired, Report, decode, encode
from shared.errors import ProtocolError
from testbed.bench import _proc_usage
from testbed.broker import (
    BrokerSecurity,
    Mosquitto,
    NatsCluster,
    NatsSettings,
    broker_map,
    brokers_for,
    nats_users,
    spread_partitions,
)
from testbed.procs import Proc

if TYPE_CHECKING:  # imported where used: the package's import costs every `testbed`
    from cloudcore.synchub import wire  # command half a second (its parser imports us)

TIERS = ("mosquitto", "nats")
EPOCH = "bench-brokers"
_LOG_PROBLEMS = ("error", "too many open files", "refus", "denied", "not authori",
                 "out of memory", "unable", "violation", "limit")


_LOG_NOISE = ("plaintext passwords",  # nats-server: the users' passwords (see proposal 0007)
              "unexpected eof while reading", "tls handshake error: eof")  # port probes


class BenchFailure(Exception):
    """A run cannot go on; the message names what is missing and why."""


@dataclass(frozen=True)
class Settings:
    """One `bench brokers` invocation; sizes in sessions, times in seconds."""

    workdir: Path
    sessions: tuple[int, ...] = (20_000, 100_000)
    tiers: tuple[str, ...] = TIERS
    per_broker: int = 15_000  # sessions a broker process is sized for (fd limit 20,000)
    brokers: int | None = None  # mosquitto processes; None: ceil(N / per_broker)
    nats_servers: int | None = None  # None: max(3, ceil(N / per_broker))
    per_sim: int = 17_000  # sessions per simulator process (one fd each)
    rate: float = 400.0  # connects per second per simulator process
    idle_s: float = 20.0
    settle_s: float = 5.0  # after every session is up, before the idle window
    stall_s: float = 60.0  # no progress for this long fails the run
    timeout_s: float = 900.0  # a phase's hard limit
    window: int = 5_000  # QoS 1 publishes in flight per cloud connection
    nats: NatsSettings = field(default_factory=lambda: NatsSettings(mqtt_max_ack_pending=256))
    # nats-server gives each QoS 1 subscription max_ack_pending (default 1024) of a
    # session's 65,535 packet ids and refuses the 64th subscription: 256 lets the cloud
    # subscribe up to 255 partition filters on one connection

    def mosquittos(self, n: int) -> int:
        return self.brokers or brokers_for(n, per_broker=self.per_broker)

    def nats_count(self, n: int) -> int:
        return self.nats_servers or max(3, brokers_for(n, per_broker=self.per_broker))

    def sims(self, n: int) -> int:
        return brokers_for(n, per_broker=self.per_sim)


# --- the fleet's identities -----------------------------------------------------------


@dataclass
class Identities:
    """N nodes' keys and broker credentials, and the cloud's service identities."""

    names: list[str]
    keys: dict[str, bytes]
    passwords: dict[str, str]
    hashes: dict[str, str] = field(default_factory=dict)  # mosquitto's, made on first use

    @classmethod
    def make(cls, n: int, prefix: str = "sim") -> Identities:
        names = [f"{prefix}-{i}" for i in range(n)]
        return cls(names=names, keys={m: seal.new_node_key() for m in names},
                   passwords={m: secrets.token_urlsafe(18) for m in names})

    def mosquitto_passwd(self, services: dict[str, str]) -> str:
        if not self.hashes:
            self.hashes = {m: mosquitto_hash(pw) for m, pw in self.passwords.items()}
        lines = [f"{u}:{mosquitto_hash(pw)}" for u, pw in services.items()]
        lines += [f"{m}:{h}" for m, h in self.hashes.items()]
        return "".join(line + "\n" for line in lines)

    def keys_file(self, path: Path, names: list[str]) -> Path:
        """The simulator's `--keys` file for `names` (0600)."""
        doc = {m: {"key": base64.b64encode(self.keys[m]).decode(), "username": m,
                   "password": self.passwords[m]} for m in names}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        return path


def service_users(count: int) -> dict[str, str]:
    """One service identity per cloud connection (a client id is an identity; two
    connections with one id would take each other's session over)."""
    return {f"bench_cloud{i}": secrets.token_urlsafe(18) for i in range(count)}


def home_brokers(names: list[str], partitions: list[list[str]]) -> dict[str, int]:
    """broker name -> sessions homed there (a node's home is its partition's first)."""
    out: dict[str, int] = {}
    for m in names:
        b = partitions[topics.partition_of(m)][0]
        out[b] = out.get(b, 0) + 1
    return out


def nats_partitions(servers: list[str]) -> list[list[str]]:
    """partition -> servers: home by contiguous range, then the others as fallbacks."""
    spread = spread_partitions(len(servers))
    return [[servers[h]] + [s for j, s in enumerate(servers) if j != h] for h in spread]


def mosquitto_partitions(brokers: list[str]) -> list[list[str]]:
    """partition -> its one broker (a node of a mosquitto tier has no fallback yet: the
    next step's map moves a partition, proposal 0007)."""
    return [[brokers[h]] for h in spread_partitions(len(brokers))]


# --- the tiers --------------------------------------------------------------------------


class Tier(Protocol):
    kind: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def endpoints(self) -> dict[str, tuple[str, int]]: ...  # broker -> MQTT host, port
    def partitions(self) -> list[list[str]]: ...
    def pids(self) -> dict[str, int]: ...  # every live broker process
    def dead(self) -> list[str]: ...
    def log_tail(self, name: str, lines: int = 2000) -> str: ...
    @property
    def ca_file(self) -> Path: ...


def _tls_files(workdir: Path) -> Path:
    """The fleet CA and the brokers' certificate, by cloudcore's own subcommand."""
    out = workdir / "tls"
    if not (out / "broker.crt").is_file():
        r = subprocess.run([sys.executable, "-m", "cloudcore", "pki", "broker", "--state-dir",
                            str(workdir / "pki-state"), "--out", str(out), "--host",
                            "127.0.0.1", "--host", "localhost"],
                           capture_output=True, text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise BenchFailure(f"cloudcore pki broker failed: {r.stderr.strip()}")
    return out


class MosquittoTier:
    kind = "mosquitto"

    def __init__(self, *, count: int, workdir: Path, ids: Identities,
                 services: dict[str, str]) -> None:
        self.workdir = workdir
        self.tls = _tls_files(workdir)
        self.names = [f"mq-{i}" for i in range(count)]
        self.ids, self.services = ids, services
        self.brokers: dict[str, Mosquitto] = {}

    @property
    def ca_file(self) -> Path:
        return self.tls / "ca.crt"

    def start(self) -> None:
        passwd = self.ids.mosquitto_passwd(self.services)
        acl = mosquitto_acl(list(self.services))
        for name in self.names:
            mq = Mosquitto(security=BrokerSecurity(tls=True), workdir=self.workdir / name,
                           log_types=("error", "warning", "notice"))
            for f in ("ca.crt", "broker.crt", "broker.key"):
                shutil.copy(self.tls / f, mq.tls_dir / f)
            mq.passwd.write_text(passwd)
            mq.acl.write_text(acl)
            self.brokers[name] = mq
            mq.start()

    def stop(self) -> None:
        for mq in self.brokers.values():
            mq.stop()
            mq.remove()

    def endpoints(self) -> dict[str, tuple[str, int]]:
        return {n: (mq.host, mq.port) for n, mq in self.brokers.items()}

    def partitions(self) -> list[list[str]]:
        return mosquitto_partitions(self.names)

    def pids(self) -> dict[str, int]:
        return {n: mq.proc.pid for n, mq in self.brokers.items()
                if mq.proc is not None and mq.proc.poll() is None}

    def dead(self) -> list[str]:
        return [n for n, mq in self.brokers.items()
                if mq.proc is None or mq.proc.poll() is not None]

    def log_tail(self, name: str, lines: int = 2000) -> str:
        return self.brokers[name].log_tail(lines)


class NatsTier:
    kind = "nats"

    def __init__(self, *, count: int, workdir: Path, ids: Identities,
                 services: dict[str, str], settings: NatsSettings) -> None:
        self.tls = _tls_files(workdir)
        self.ids, self.services = ids, services
        shutil.rmtree(workdir / "nats", ignore_errors=True)
        self.cluster = NatsCluster(
            settings=dataclasses.replace(settings, servers=count), tls_dir=self.tls,
            users=nats_users(services=services, nodes=ids.passwords.items()),
            rundir=workdir / "nats")
        self.names = [self.cluster.name(i) for i in range(count)]

    @property
    def ca_file(self) -> Path:
        return self.tls / "ca.crt"

    def start(self) -> None:
        self.cluster.start(timeout=120)

    def stop(self) -> None:
        self.cluster.stop()

    def endpoints(self) -> dict[str, tuple[str, int]]:
        return {n: (self.cluster.host, p.mqtt) for n, p in zip(self.names, self.cluster.ports,
                                                                strict=True)}

    def partitions(self) -> list[list[str]]:
        return nats_partitions(self.names)

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in zip(self.names, self.cluster.procs, strict=True)
                if p is not None and p.poll() is None}

    def dead(self) -> list[str]:
        return [n for n, p in zip(self.names, self.cluster.procs, strict=True)
                if p is None or p.poll() is not None]

    def log_tail(self, name: str, lines: int = 2000) -> str:
        return self.cluster.log_tail(self.names.index(name), lines)


# --- process figures ------------------------------------------------------------------


def _usage(pids: dict[str, int]) -> dict[str, tuple[float, int]]:
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError, IndexError, ValueError):
            out[name] = _proc_usage(pid)
    return out


def _fds(pid: int) -> tuple[int, int | None]:
    """(open files, soft limit) of a process."""
    try:
        n = len(os.listdir(f"/proc/{pid}/fd"))
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return n, int(line.split()[3])
    except (OSError, ValueError, IndexError):
        return -1, None
    return n, None


def log_problems(text: str, limit: int = 8) -> list[str]:
    """The last `limit` distinct lines of a broker log that say something went wrong
    (timestamps and client addresses aside, so one cause repeated is one line)."""
    seen: dict[str, str] = {}
    for line in text.splitlines():
        low = line.lower()
        if any(p in low for p in _LOG_PROBLEMS) and not any(q in low for q in _LOG_NOISE):
            key = " ".join(w for w in line.split() if not any(c.isdigit() for c in w))[:160]
            seen.pop(key, None)
            seen[key] = line.strip()[:300]
    return list(seen.values())[-limit:]


# --- the cloud's side -------------------------------------------------------------------


class Cloud:
    """One connection per broker (a service identity each), subscribed to the `up` of the
    partitions homed there; records, per phase, the first message from each node."""

    def __init__(self, *, tier: Tier, services: dict[str, str], tls: ssl.SSLContext,
                 window: int, stall_s: float) -> None:
        self.tier, self.services, self.tls, self.window = tier, services, tls, window
        self.stall_s = stall_s
        self.conns: dict[str, wire.Connection] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.phase: str | None = None
        self.got: dict[str, tuple[float, bytes]] = {}
        self.received = 0
        self._inflight: dict[str, int] = {}
        self._room: dict[str, asyncio.Event] = {}

    def on_message(self, topic: str, payload: bytes) -> None:
        self.received += 1
        if self.phase is None:
            return
        node = topic.split("/", 4)[3] if topic.count("/") == 4 else ""
        if node not in self.got:
            self.got[node] = (time.monotonic(), payload)

    def begin(self, phase: str) -> None:
        self.phase = phase
        self.got = {}

    async def connect(self) -> None:
        from cloudcore.synchub import wire

        parts = self.tier.partitions()
        users = list(self.services)
        for i, (name, (host, port)) in enumerate(self.tier.endpoints().items()):
            user = users[i]
            filters = [topics.up_filter(p) for p in range(topics.PARTITIONS)
                       if parts[p][0] == name]

            def puback(mid: int, name: str = name) -> None:
                self._inflight[name] -= 1
                self._room[name].set()

            try:
                conn, _ = await wire.connect(host, port, client_id=user, username=user,
                                             password=self.services[user], clean_session=True,
                                             keepalive=300, tls=self.tls,
                                             on_message=self.on_message, on_puback=puback)
                # a few filters a SUBSCRIBE: nats-server makes a JetStream consumer for
                # each before its SUBACK, and cloudcore's client waits 10 s for one
                for i0 in range(0, len(filters), 4):
                    await conn.subscribe(filters[i0:i0 + 4])
            except (wire.ConnectionLost, OSError) as exc:
                raise BenchFailure(f"the cloud's connection to {name} ({host}:{port}) "
                                   f"failed: {exc}") from exc
            self.conns[name] = conn
            self._inflight[name] = 0
            self._room[name] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._keepalive(name, conn)))

    async def _keepalive(self, name: str, conn: wire.Connection) -> None:
        from cloudcore.synchub import wire

        with contextlib.suppress(wire.ConnectionLost):
            await conn.keepalive(300)

    async def publish(self, msgs: list[tuple[str, str, bytes]]) -> None:
        """(broker, topic, payload) at QoS 1, at most `window` unacknowledged per
        connection; returns once the brokers acknowledged every one."""
        mids = dict.fromkeys(self.conns, 0)
        for broker, topic, payload in msgs:
            conn = self.conns[broker]
            while self._inflight[broker] >= self.window:
                await self._pubacks(broker)
            if not conn.is_open:
                raise BenchFailure(f"the cloud's connection to {broker} closed while publishing")
            mids[broker] = mids[broker] % 65535 + 1
            self._inflight[broker] += 1
            conn.publish(topic, payload, mids[broker])
        while any(self._inflight.values()):
            await self._pubacks(next(b for b, n in self._inflight.items() if n))

    async def _pubacks(self, broker: str) -> None:
        """Wait for a PUBACK from `broker`; BenchFailure if its connection closes or it
        acknowledges nothing for `stall_s` seconds."""
        ev = self._room[broker]
        ev.clear()
        try:
            async with asyncio.timeout(self.stall_s):
                while not ev.is_set():
                    if not self.conns[broker].is_open:
                        raise BenchFailure(f"the cloud's connection to {broker} closed with "
                                           f"{self._inflight[broker]} publishes unacknowledged")
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await ev.wait()
        except TimeoutError:
            raise BenchFailure(f"{broker} acknowledged none of {self._inflight[broker]} "
                               f"publishes for {self.stall_s:.0f} s") from None

    def closed(self) -> list[str]:
        return [n for n, c in self.conns.items() if not c.is_open]

    async def close(self) -> None:
        for c in self.conns.values():
            c.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# --- one run ------------------------------------------------------------------------------


class Run:
    """One tier at one size: start, measure, diagnose, stop."""

    def __init__(self, *, settings: Settings, tier_kind: str, ids: Identities) -> None:
        self.s = settings
        self.n = len(ids.names)
        self.ids = ids
        self.kind = tier_kind
        self.workdir = (settings.workdir / f"{tier_kind}-{self.n}").resolve()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True)
        count = settings.mosquittos(self.n) if tier_kind == "mosquitto" else \
            settings.nats_count(self.n)
        self.services = service_users(count)
        self.tier: Tier = (
            MosquittoTier(count=count, workdir=self.workdir, ids=ids, services=self.services)
            if tier_kind == "mosquitto" else
            NatsTier(count=count, workdir=self.workdir, ids=ids, services=self.services,
                     settings=settings.nats))
        self.sims: list[Proc] = []
        self.stats_files: list[Path] = []
        self.result: dict[str, Any] = {"tier": tier_kind, "sessions": self.n,
                                       "brokers": count, "simulator_processes": 0}

    # -- helpers --

    def sim_stats(self) -> list[dict[str, Any]]:
        out = []
        for f in self.stats_files:
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                out.append({})
        return out

    def connected(self) -> int:
        return sum(int(s.get("connected", 0)) for s in self.sim_stats())

    def applied(self, gen: int) -> tuple[int, float | None]:
        """(nodes that applied `gen`, wall time the last one did)."""
        n, last = 0, None
        for s in self.sim_stats():
            n += int(s.get("gens", {}).get(str(gen), 0))
            span = s.get("gen_times", {}).get(str(gen))
            if span:
                last = max(last or 0.0, float(span[1]))
        return n, last

    def diagnose(self, what: str) -> str:
        """What is missing and why, for a failure message."""
        lines = [f"{what}:"]
        homes = home_brokers(self.ids.names, self.tier.partitions())
        pids = self.tier.pids()
        for name in self.tier.endpoints():
            pid = pids.get(name)
            fds, limit = _fds(pid) if pid else (-1, None)
            probs = log_problems(self.tier.log_tail(name))
            lines.append(f"  broker {name}: {'pid ' + str(pid) if pid else 'DEAD'}, "
                         f"{homes.get(name, 0)} sessions homed, {fds} open files "
                         f"(limit {limit})" + ("; its log says:" if probs else ""))
            lines += [f"    {p}" for p in probs]
        for proc, st in zip(self.sims, self.sim_stats(), strict=True):
            missing = int(st.get("nodes", 0)) - int(st.get("connected", 0))
            state = "alive" if proc.alive() else f"EXITED ({proc.popen and proc.popen.returncode})"
            lines.append(f"  {proc.name} ({state}): {st.get('connected', '?')}/"
                         f"{st.get('nodes', '?')} connected"
                         + (f", not connected e.g. {st.get('not_connected_sample')}, "
                            f"connect errors {st.get('connect_errors')}, last: "
                            f"{st.get('last_connect_error')}" if missing else ""))
            if not proc.alive():
                lines.append("    its log: " + proc.tail(5).replace("\n", "\n    "))
        return "\n".join(lines)

    async def wait(self, *, what: str, count: Callable[[], int], target: int,
                   cloud: Cloud | None = None) -> float:
        """Wait until `count() >= target`, checking every second that every process lives
        and that the count moves; BenchFailure naming what is missing otherwise."""
        t0 = time.monotonic()
        last, last_move = -1, t0
        while True:
            now_count = count()
            if now_count >= target:
                return time.monotonic() - t0
            now = time.monotonic()
            if now_count != last:
                last, last_move = now_count, now
            problem = None
            if self.tier.dead():
                problem = f"broker process(es) died: {self.tier.dead()}"
            elif any(not p.alive() for p in self.sims):
                problem = f"simulator(s) exited: {[p.name for p in self.sims if not p.alive()]}"
            elif cloud is not None and cloud.closed():
                problem = f"the cloud's connection(s) closed: {cloud.closed()}"
            elif now - last_move > self.s.stall_s:
                problem = f"no progress for {self.s.stall_s:.0f} s"
            elif now - t0 > self.s.timeout_s:
                problem = f"not done after {self.s.timeout_s:.0f} s"
            if problem:
                raise BenchFailure(self.diagnose(
                    f"{what}: {now_count} of {target} after {now - t0:.0f} s; {problem}"))
            await asyncio.sleep(0.25)

    def start_sims(self) -> None:
        nsims = self.s.sims(self.n)
        per = -(-self.n // nsims)
        self.result["simulator_processes"] = nsims
        mapfile = self.workdir / "broker-map.json"
        mapfile.write_text(json.dumps(broker_map(
            {n: f"{h}:{p}" for n, (h, p) in self.tier.endpoints().items()},
            self.tier.partitions())))
        for i in range(nsims):
            names = self.ids.names[i * per:(i + 1) * per]
            stats = self.workdir / f"sim-{i}.json"
            self.stats_files.append(stats)
            keys = self.ids.keys_file(self.workdir / f"keys-{i}.json", names)
            argv = [sys.executable, "-m", "testbed.simulator", "--broker-map", str(mapfile),
                    "--prefix", "sim", "--start", str(i * per), "--count", str(len(names)),
                    "--stats", str(stats), "--heartbeat", "3600", "--keepalive", "300",
                    "--rate", str(self.s.rate), "--report-on-sigusr1", "--keys", str(keys),
                    "--tls", "--ca-file", str(self.tier.ca_file)]
            self.sims.append(Proc(f"sim-{i}", argv, log=self.workdir / f"sim-{i}.log").start())

    def stop(self) -> None:
        for p in self.sims:  # all at once: each closes its sessions, bounded at 10 s
            if p.alive() and p.popen is not None:
                p.popen.send_signal(signal.SIGTERM)
        for p in self.sims:
            p.stop(timeout=30)
        self.tier.stop()

    # -- the measurement --

    async def measure(self) -> dict[str, Any]:
        r = self.result
        t = time.monotonic()
        self.tier.start()
        r["brokers_started_s"] = round(time.monotonic() - t, 1)
        await asyncio.sleep(1)
        base = _usage(self.tier.pids())
        r["broker_rss_before_sessions_mb"] = round(sum(v[1] for v in base.values()) / 2**20, 1)
        tls = ssl.create_default_context(cafile=str(self.tier.ca_file))
        cloud = Cloud(tier=self.tier, services=self.services, tls=tls, window=self.s.window,
                      stall_s=self.s.stall_s)
        t = time.monotonic()
        await cloud.connect()
        r["cloud_subscribed_s"] = round(time.monotonic() - t, 1)
        try:
            r["sessions_homed"] = home_brokers(self.ids.names, self.tier.partitions())
            t = time.monotonic()
            self.start_sims()
            r["connect_s"] = round(await self.wait(
                what="sessions connected", count=self.connected, target=self.n,
                cloud=cloud), 1)
            r["connect_per_s"] = round(self.n / max(r["connect_s"], 0.1))
            await asyncio.sleep(self.s.settle_s)  # every node's opening resync and report
            r["idle"] = await self._idle(base)
            r["fanin"] = await self._fanin(cloud)
            r["targeted"] = await self._targeted(cloud)
            r["simulators"] = self._sims_figures()
        finally:
            r["problems"] = self._problems()
            await cloud.close()
        return r

    async def _idle(self, base: dict[str, tuple[float, int]]) -> dict[str, Any]:
        pids = self.tier.pids()
        u0 = _usage(pids)
        await asyncio.sleep(self.s.idle_s)
        u1 = _usage(pids)
        cpu = sum(u1[k][0] - u0[k][0] for k in u1 if k in u0)
        rss = sum(v[1] for v in u1.values())
        rss0 = sum(v[1] for v in base.values())
        per_k = self.n / 1000
        fds = {n: _fds(p)[0] for n, p in pids.items()}
        return {"seconds": self.s.idle_s,
                "broker_cpu_pct": round(cpu / self.s.idle_s * 100, 2),
                "broker_cpu_pct_per_1000_sessions": round(cpu / self.s.idle_s * 100 / per_k, 3),
                "broker_rss_mb": round(rss / 2**20, 1),
                "broker_rss_mb_per_1000_sessions": round((rss - rss0) / 2**20 / per_k, 2),
                "broker_rss_mb_each": {k: round(v[1] / 2**20, 1) for k, v in u1.items()},
                "broker_open_files": fds}

    async def _fanin(self, cloud: Cloud) -> dict[str, Any]:
        pids = self.tier.pids()
        u0 = _usage(pids)
        cloud.begin("fanin")
        t0 = time.monotonic()
        for p in self.sims:
            if p.popen is not None:
                p.popen.send_signal(signal.SIGUSR1)
        await self.wait(what="fan-in: a report from every node at the cloud",
                        count=lambda: len(cloud.got), target=self.n, cloud=cloud)
        last = max(ts for ts, _ in cloud.got.values())
        secs = last - t0
        u1 = _usage(pids)
        bad = self._check(cloud.got, Report)
        cloud.phase = None
        return {"all_arrived_s": round(secs, 2), "msgs_per_s": round(self.n / max(secs, 1e-3)),
                "broker_cpu_s": round(sum(u1[k][0] - u0[k][0] for k in u1 if k in u0), 1),
                "not_a_valid_report": bad}

    async def _targeted(self, cloud: Cloud) -> dict[str, Any]:
        parts = self.tier.partitions()
        t_build = time.monotonic()
        msgs = []
        for m in self.ids.names:
            msg = Desired(node=m, epoch=EPOCH, base=0, gen=1, snapshot=True,
                          put={f"pod/default/bench-{m}": {
                              "revision": "r1", "owner": "daemonset/default/bench",
                              "spec": {"containers": [{"name": "c", "image": "busybox",
                                                       "args": ["sleep", "3600"]}]}}})
            topic = topics.down(m)
            data = seal.seal(seal.NodeKeys.derive(self.ids.keys[m]).down, topic, encode(msg))
            msgs.append((parts[topics.partition_of(m)][0], topic, data))
        build_s = time.monotonic() - t_build
        pids = self.tier.pids()
        u0 = _usage(pids)
        cloud.begin("acks")
        t0, w0 = time.monotonic(), time.time()
        await cloud.publish(msgs)
        published_s = time.monotonic() - t0
        await self.wait(what="targeted: every node applied its desired snapshot",
                        count=lambda: self.applied(1)[0], target=self.n, cloud=cloud)
        applied_last = self.applied(1)[1]
        await self.wait(what="targeted: every node's ack at the cloud",
                        count=lambda: len(cloud.got), target=self.n, cloud=cloud)
        acks_s = max(ts for ts, _ in cloud.got.values()) - t0
        u1 = _usage(pids)
        bad = self._check(cloud.got, Ack)
        cloud.phase = None
        return {"message_bytes": len(msgs[0][2]), "build_s": round(build_s, 2),
                "published_s": round(published_s, 2),
                "all_applied_s": round(applied_last - w0, 2) if applied_last else None,
                "all_acks_at_cloud_s": round(acks_s, 2),
                "msgs_per_s": round(self.n / max(acks_s, 1e-3)),
                "broker_cpu_s": round(sum(u1[k][0] - u0[k][0] for k in u1 if k in u0), 1),
                "not_a_valid_ack": bad}

    def _check(self, got: dict[str, tuple[float, bytes]], kind: type) -> int:
        """Messages (first per node) that do not unseal, decode and match `kind`."""
        bad = 0
        for m, (_, payload) in got.items():
            key = self.ids.keys.get(m)
            try:
                if key is None:
                    raise ProtocolError("not a node of this fleet")
                msg = decode(seal.unseal(seal.NodeKeys.derive(key).up, topics.up(m), payload))
                if not isinstance(msg, kind) or (isinstance(msg, Ack) and msg.gen != 1):
                    bad += 1
            except ProtocolError:
                bad += 1
        return bad

    def _sims_figures(self) -> dict[str, Any]:
        sts = self.sim_stats()
        rss = sum(int(s.get("rss_bytes", 0)) for s in sts)
        return {"rss_mb": round(rss / 2**20), "rss_kib_per_session": round(rss / 1024 / self.n, 1),
                "connect_failures": sum(int(s.get("connect_failures", 0)) for s in sts)}

    def _problems(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.tier.endpoints():
            probs = log_problems(self.tier.log_tail(name))
            if probs:
                out[name] = probs
        for s in self.sim_stats():
            for kind, c in (s.get("connect_errors") or {}).items():
                out.setdefault("simulator connect errors", {})
                out["simulator connect errors"][kind] = \
                    out["simulator connect errors"].get(kind, 0) + c
        return out


async def _run(settings: Settings, kind: str, ids: Identities,
               into: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One run; its result is also appended to `into` at once, so an interrupted run
    (Ctrl-C, SIGTERM) is still reported, with what it was waiting for."""
    run = Run(settings=settings, tier_kind=kind, ids=ids)
    if into is not None:
        into.append(run.result)
    print(f"== {kind}: {run.n} sessions, {run.result['brokers']} broker processes, "
          f"load {Path('/proc/loadavg').read_text().split()[0]}", flush=True)
    try:
        await run.measure()
        run.result["ok"] = True
    except (BenchFailure, RuntimeError, OSError) as exc:
        run.result["ok"] = False
        run.result["error"] = str(exc)
        print(f"FAILED: {kind} at {run.n} sessions: {exc}", file=sys.stderr, flush=True)
    except asyncio.CancelledError:
        run.result["ok"] = False
        run.result["error"] = run.diagnose("interrupted (Ctrl-C or SIGTERM)")
        print(run.result["error"], file=sys.stderr, flush=True)
        raise
    finally:
        run.stop()
    return run.result


def bench_brokers(settings: Settings) -> int:
    """Every tier at every size; prints each run's JSON and keeps `result.json` current.
    0 if every run completed, 1 if any failed (its error is in the result)."""
    unknown = [t for t in settings.tiers if t not in TIERS]
    if unknown:
        print(f"error: unknown tier(s) {unknown}; known: {list(TIERS)}", file=sys.stderr)
        return 2
    settings.workdir.mkdir(parents=True, exist_ok=True)
    # Ctrl-C and SIGTERM stop the run in hand cleanly (its brokers and simulators stopped),
    # also when started in the background, where SIGINT comes ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    out = settings.workdir / "result.json"
    results: list[dict[str, Any]] = []
    for n in settings.sessions:
        t = time.monotonic()
        ids = Identities.make(n)
        print(f"-- {n} node identities made in {time.monotonic() - t:.1f} s", flush=True)
        for kind in settings.tiers:
            try:
                asyncio.run(_run(settings, kind, ids, into=results))
            except KeyboardInterrupt:
                _write(out, results)
                print(f"interrupted; result: {out}", file=sys.stderr)
                return 130
            print(json.dumps(results[-1], indent=2), flush=True)
            _write(out, results)
    print(f"result: {out}")
    return 0 if all(r.get("ok") for r in results) else 1


def _write(out: Path, results: list[dict[str, Any]]) -> None:
    out.write_text(json.dumps({"runs": results, "cores": os.cpu_count(),
                               "fd_limit": _fds(os.getpid())[1]}, indent=2))


def _ints(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(x.replace("_", "")) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated integers") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least one size, each >= 1")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options, shared by `testbed bench brokers` and `python -m testbed.bench_brokers`."""
    p.add_argument("--sessions", type=_ints, default=(20_000, 100_000),
                   help="comma-separated fleet sizes")
    p.add_argument("--tiers", default=",".join(TIERS),
                   help="comma-separated: mosquitto, nats")
    p.add_argument("--brokers", type=int, default=None,
                   help="mosquitto processes (default: sessions / --per-broker, rounded up)")
    p.add_argument("--nats-servers", type=int, default=None,
                   help="NATS cluster size (default: max(3, sessions / --per-broker))")
    p.add_argument("--per-broker", type=int, default=15_000,
                   help="sessions a broker process is sized for (the open-file limit is "
                        "20,000 per process)")
    p.add_argument("--per-sim", type=int, default=17_000,
                   help="sessions per simulator process")
    p.add_argument("--rate", type=float, default=400.0,
                   help="connects per second per simulator process")
    p.add_argument("--idle", type=float, default=None,
                   help="idle window, s (brokers: 20; sync: 60 after the update, the idle "
                        "cost per node, 0 skips it)")
    p.add_argument("--stall", type=float, default=60.0,
                   help="fail a phase after this many seconds without progress")
    p.add_argument("--nats-consumer-replicas", type=int, default=None,
                   help="NATS MQTT consumer_replicas (default: nats-server's)")
    p.add_argument("--nats-max-ack-pending", type=int, default=256,
                   help="NATS MQTT max_ack_pending per QoS 1 subscription (a session's "
                        "subscriptions share 65,535: nats-server's 1024 allows 63)")
    p.add_argument("--nats-consumer-memory", action="store_true",
                   help="NATS MQTT consumer_memory_storage true")


def settings_from(args: argparse.Namespace, workdir: Path) -> Settings:
    return Settings(workdir=workdir, sessions=tuple(args.sessions),
                    tiers=tuple(t for t in args.tiers.split(",") if t),
                    per_broker=args.per_broker, brokers=args.brokers,
                    nats_servers=args.nats_servers, per_sim=args.per_sim, rate=args.rate,
                    idle_s=20.0 if args.idle is None else args.idle,
                    stall_s=args.stall,
                    nats=NatsSettings(mqtt_consumer_replicas=args.nats_consumer_replicas,
                                      mqtt_consumer_memory=args.nats_consumer_memory,
                                      mqtt_max_ack_pending=args.nats_max_ack_pending))


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.bench_brokers", description=__doc__,
                                formatter_class=_Help)
    add_arguments(p)
    p.add_argument("--workdir", default="var/bench-brokers")
    args = p.parse_args(argv)
    return bench_brokers(settings_from(args, Path(args.workdir)))


if __name__ == "__main__":
    sys.exit(main())
