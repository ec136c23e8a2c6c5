"""`testbed bench storm`: every broker killed with the fleet converged, then one cloudcore
shard (issue 14 part 4).

A simulated fleet as `testbed bench sync` starts it (`testbed.bench.simulated_fleet`:
`ceil(N / 15,000)` secure mosquittos sharing cloudcore's password file, ACL and TLS files,
cloudcore with one `--broker` flag per broker, simulator processes sized by the open-file
limit, every node joined), converged on a DaemonSet. Then:

1. kill -9 every broker at once. No will fires (the brokers die with the sessions);
   the brokers run without persistence, so every session and queued message is gone
   with them, the harsher case: each node comes back to an empty broker, subscribes
   again and resyncs.
2. While they are down, an update of the DaemonSet (a desired-state change the cloud
   cannot deliver yet).
3. `--down` seconds later, start every broker again on its port, with a listen backlog
   of `--listen-backlog` (4096; mosquitto's own is 100, which made the kernel drop most
   of a restarted broker's reconnects and TCP retry them for up to a minute:
   `testbed.broker`). The simulators reconnect through their connect gate
   (`testbed.simulator.GatedClient`), as many handshakes in flight per process as its
   first connects.

Measured from the brokers' return: seconds until every session is up again, until every
node applied the change made while the brokers were down, until the cloud recorded every
ack for it, and until the API lists every node Ready; how many of the nodes' resyncs the
cloud received (a node that reconnects before the cloud's subscriber has subscribed
again on the restarted broker publishes its resync to nobody: the broker drops it);
nodes ever NotReady or Unknown (the `cloudcore_nodes` gauge sampled twice a second, and
NodeNotReady events in the API since the kill); desired snapshots against deltas (the
simulators count what they receive by kind; cloudcore's metrics give the desired
messages sent and resent); acked updates lost (each node's applied gen against the gen
the cloud recorded as acked: must be 0); cloudcore's worst event-loop lag; CPU per
process kind and RSS of every process. Printed as JSON and written to
`WORKDIR/result.json`, with the brokers and processes used.

The timeline (`timeline_after_return`): every 2 s from the brokers' return, the
sessions up, the resyncs, reports and acks the cloud received so far, and each process
kind's CPU share (% of one core) over the interval; `reached` says when 50, 90 and 99 %
of the sessions were up and of the resyncs had reached the cloud, which tells whether
the simulators' reconnects or the cloud's handling of them set the pace.

The shard kill (`--shards N`, N >= 2), after the broker storm (or instead of it,
`--no-broker-storm`): the fleet moves onto N real `cloudcore --shard` processes and a
real nats-server with JetStream (`testbed.natskv.NatsKV`, TLS and a password): the
embedded cloud is stopped (the sessions stay on the brokers), each shard starts from a
copy of its state dir (nodes, credentials, fleet CA, tokens), the files in which each
shard keeps the brokers' password file and ACL are merged into the brokers' (a union:
the shards share their MQTT identities through KV, `edgefed_brokerusers`, so every
shard's files come to hold them all), and the bench waits until every node is Ready on exactly
one shard, has reported since, and has acked its owner's snapshot. Then kill -9 of the
shard holding the most nodes, and at once a DaemonSet update through a survivor's API.
Measured from the kill: seconds until the survivors hold all 256 partitions (from their
logs' lease changes), until every node of the killed shard is Ready on a survivor (their
node lists polled, about twice a second), until each of them reported to its new owner,
and until every node acked its owner's desired state with the update; nodes ever
NotReady (every poll of the survivors' lists, NodeNotReady events, "is NotReady" in their
logs); snapshots and deltas the nodes received (a node that changes owner gets one
snapshot: its new owner's epoch); acked updates lost (each node's applied gen against
its owner's acked gen: must be 0); CPU and RSS of the shards and NATS. In `shard_kill`
of the result, with its own `targets` (partitions taken within the lease period, none
NotReady, nothing lost).

Targets (issue 14): every node Ready within 60 s of the brokers' return (read here as:
Ready in the API and a report from it since the return, `all_ready_and_reported_s`),
none NotReady, no snapshot sent, nothing lost. The result has a `targets` block with
each one's figure and whether it was met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from testbed.bench import (
    PER_BROKER,
    BenchFailure,
    LagWatch,
    SimFleet,
    _cloud_pythonpath,
    _ds,
    _metrics,
    _proc_usage,
    _rss,
    _sum,
    audit,
    cloud_past,
    describe_fleet,
    edge_gens,
    nodes_past,
    plan,
    simulated_fleet,
    stoppable,
    update_phase,
)
from testbed.natskv import NatsKV
from testbed.ports import free_port
from testbed.procs import Proc

SHARD_KILL = {"run": False, "why": "not asked for: --shards N (at least 2) moves the fleet "
                                   "onto N real cloudcore shards after the broker storm and "
                                   "kills one. Nothing is measured or faked"}


LISTEN_BACKLOG = 4096
"""The brokers' listen backlog in the storm (`testbed.broker`: mosquitto's own is 100)."""

TIMELINE_EVERY = 2.0
TIMELINE_COLUMNS = ["s_since_return", "sessions_up", "cloud_resyncs_in_total",
                    "cloud_reports_in_total", "cloud_acks_in_total", "cloud_cpu_pct",
                    "brokers_cpu_pct", "simulators_cpu_pct", "load1"]


class Sampler:
    """Scrapes cloudcore's /metrics twice a second in a thread: the most nodes seen
    NotReady and Unknown at once (`cloudcore_nodes`), and the worst loop lag."""

    def __init__(self, sf: SimFleet, interval: float = 0.5) -> None:
        self.lag = LagWatch(sf.fleet)
        self.interval = interval
        self.not_ready = 0
        self.unknown = 0
        self.scrapes = 0
        self.failed = 0
        self.timeline: list[list[Any]] = []  # TIMELINE_COLUMNS, from the brokers' return
        self._sf: SimFleet | None = None
        self._t_back = 0.0
        self._u_last: tuple[float, dict[str, dict[str, tuple[float, int]]]] = (0.0, {})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="storm-sampler", daemon=True)

    def back(self, sf: SimFleet) -> None:
        """The brokers are back: from now on, a row of the timeline every
        `TIMELINE_EVERY` s (where the time goes: sessions up, resyncs and reports the
        cloud received, each process kind's CPU share)."""
        self._sf = sf
        self._t_back = time.monotonic()
        self._u_last = (self._t_back, sf.usage())

    def _row(self, m: dict[str, float]) -> None:
        sf = self._sf
        assert sf is not None
        now = time.monotonic()
        u = sf.usage()
        t_last, u_last = self._u_last
        # CPU ticks are 10 ms: over less than half a second the share is noise (None)
        cpu: dict[str, int | None] = {
            kind: round(sum(v[0] - u_last.get(kind, {}).get(name, (v[0], 0))[0]
                            for name, v in procs.items()) / (now - t_last) * 100)
            if now - t_last >= 0.5 else None for kind, procs in u.items()}
        self._u_last = (now, u)
        self.timeline.append([
            round(now - self._t_back, 1), int(sf.stats()["connected"]),
            int(_sum(m, "cloudcore_messages_in_total", 'type="resync"')),
            int(_sum(m, "cloudcore_messages_in_total", 'type="report"')),
            int(_sum(m, "cloudcore_messages_in_total", 'type="ack"')),
            cpu.get("cloud", 0), cpu.get("brokers", 0), cpu.get("simulators", 0),
            os.getloadavg()[0]])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                m = self.lag.scrape()
            except (urllib.error.URLError, OSError, TimeoutError):
                self.failed += 1
                continue
            self.scrapes += 1
            self.not_ready = max(self.not_ready,
                                 int(_sum(m, "cloudcore_nodes", 'ready="NotReady"')))
            self.unknown = max(self.unknown, int(_sum(m, "cloudcore_nodes", 'ready="Unknown"')))
            if self._sf is not None and (not self.timeline or time.monotonic()
                                         - self._t_back - self.timeline[-1][0]
                                         >= TIMELINE_EVERY):
                with contextlib.suppress(OSError, ValueError):
                    self._row(m)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts",
                "TCPReqQFullDoCookies")


def tcp_counters() -> dict[str, int]:
    """The kernel's TCP counters that show a burst of connects refused at the listen
    queue (`/proc/net/netstat`, TcpExt; machine-wide): a connect whose handshake the
    kernel dropped is retried by the client's TCP 1, 2, 4, 8... s later."""
    try:
        rows = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()
                if line.startswith("TcpExt:")]
        head, vals = rows[0], rows[1]
    except (OSError, IndexError):
        return {}
    got = dict(zip(head[1:], vals[1:], strict=False))
    return {k: int(got[k]) for k in TCP_COUNTERS if k in got}


def _event_seq(sf: SimFleet) -> int:
    items = sf.fleet.get("/api/v1/events?type=Warning")["items"]
    return max((int(e.get("seq", 0)) for e in items), default=0)


def _not_ready_events(sf: SimFleet, after_seq: int) -> list[str]:
    """Nodes with a NodeNotReady event newer than `after_seq`."""
    items = sf.fleet.get("/api/v1/events?type=Warning")["items"]
    return sorted({str(e["object"]).removeprefix("Node/") for e in items
                   if int(e.get("seq", 0)) > after_seq and e.get("reason") == "NodeNotReady"})


def _edge_counts(sf: SimFleet) -> dict[str, int]:
    out: dict[str, int] = {}
    for st in sf.sim_stats():
        for k in ("snapshots_in", "deltas_in", "gaps", "disconnects", "invalid", "reacks",
                  "full_reports", "full_report_bytes", "report_again"):
            out[k] = out.get(k, 0) + int(st.get(k, 0))
    return out


def _cloud_counts(sf: SimFleet) -> dict[str, float]:
    m = _metrics(sf.fleet)
    return {"desired_sent": _sum(m, "cloudcore_messages_out_total", 'type="desired"'),
            "desired_resent": _sum(m, "cloudcore_desired_resends_total"),
            "desired_snapshots": _sum(m, "cloudcore_desired_snapshots_total"),
            "resyncs_in": _sum(m, "cloudcore_messages_in_total", 'type="resync"'),
            "acks_in": _sum(m, "cloudcore_messages_in_total", 'type="ack"'),
            "report_gaps": _sum(m, "cloudcore_report_gaps_total"),
            "report_probes": _sum(m, "cloudcore_report_probes_total")}


def storm(sf: SimFleet, *, down_s: float, timeout: float,
          brokers: bool = True) -> dict[str, Any]:
    """The brokers' storm on a running fleet (converged first); its figures (module
    docstring). `brokers=False`: the convergence only."""
    fleet, n = sf.fleet, sf.nodes
    res: dict[str, Any] = {"nodes": n, "broker_processes": len(fleet.brokers),
                           "simulator_processes": sf.procs, "down_s": down_s,
                           "load_start": Path("/proc/loadavg").read_text().strip(),
                           "connect_s": round(sf.connect_s, 1),
                           "registered_s": round(sf.registered_s, 1)}
    lag = LagWatch(fleet)
    res["converge"] = update_phase(sf, "converge (DaemonSet create)", ["sleep", "1"], lag,
                                   timeout=timeout)
    time.sleep(2)
    if not brokers:
        res["broker_storm"] = {"run": False, "why": "--no-broker-storm"}
        res.update(describe_fleet(sf))
        return res
    edge0, cloud0 = _edge_counts(sf), _cloud_counts(sf)
    seq0 = _event_seq(sf)
    base = max(sf.full_stats()["at_gen"], default=0)
    u0 = sf.usage()
    with Sampler(sf) as sampler:
        u_kill = sf.usage()  # the killed brokers' CPU ends here; new processes start at 0
        t_kill = time.monotonic()
        for mq in fleet.brokers.values():
            mq.kill()
        killed_s = time.monotonic() - t_kill
        # the desired-state change the cloud cannot deliver while the brokers are down
        fleet.apply([_ds(["sleep", "2"])])
        rest = down_s - (time.monotonic() - t_kill)
        if rest > 0:
            time.sleep(rest)
        t_back, t_back_wall = time.monotonic(), time.time()
        tcp0 = tcp_counters()
        for mq in fleet.brokers.values():
            mq.start()
        sampler.back(sf)
        res["brokers_down_s"] = round(t_back - t_kill, 2)
        res["brokers_killed_in_s"] = round(killed_s, 3)
        res["brokers_restarted_in_s"] = round(time.monotonic() - t_back, 2)
        waits: dict[str, float] = {}

        def since_back() -> float:
            return round(time.monotonic() - t_back, 2)

        sf.wait(what="after the storm: sessions connected again",
                count=lambda: sf.stats()["connected"], target=n, timeout=timeout)
        waits["all_sessions_back_s"] = since_back()
        tcp1 = tcp_counters()
        sf.wait(what="after the storm: every node applied the change made while the "
                     "brokers were down",
                count=lambda: nodes_past(sf.stats(), base), target=n,
                timeout=timeout)
        waits["change_applied_by_all_s"] = since_back()
        sf.wait(what="after the storm: the cloud recorded every ack of that change",
                count=lambda: cloud_past(fleet, base),
                target=n, timeout=timeout, interval=1.0)
        waits["change_recorded_by_cloud_s"] = since_back()
        def ready_and_heard() -> float:
            ready = heard = 0
            for x in fleet.nodes():
                st = x.get("status", {})
                if st.get("ready") == "Ready":
                    ready += 1
                    heard += float(st.get("lastSeen") or 0) >= t_back_wall
            if ready >= n and "all_ready_in_api_s" not in waits:
                waits["all_ready_in_api_s"] = since_back()
            return heard

        sf.wait(what="after the storm: every node Ready in the API and reported since the "
                     "brokers' return", count=ready_and_heard, target=n, timeout=timeout,
                interval=1.0)
        waits["all_ready_and_reported_s"] = since_back()
        time.sleep(1.2)  # the simulators' stats files are rewritten every second
    res["after_brokers_return"] = waits
    # until every session was back; machine-wide (other programs' connects count too)
    res["kernel_tcp_until_sessions_back"] = {k: tcp1[k] - tcp0[k] for k in tcp1 if k in tcp0}
    res["timeline_after_return"] = {"columns": TIMELINE_COLUMNS, "rows": sampler.timeline,
                                    "reached": _reached(sampler.timeline, n,
                                                        cloud0["resyncs_in"])}
    u1 = sf.usage()
    edge1, cloud1 = _edge_counts(sf), _cloud_counts(sf)
    not_ready_events = _not_ready_events(sf, seq0)
    res["not_ready"] = {"nodes_with_NodeNotReady_events": len(not_ready_events),
                        "e_g": not_ready_events[:10],
                        "most_NotReady_at_once": sampler.not_ready,
                        "most_Unknown_at_once": sampler.unknown,
                        "metric_scrapes": sampler.scrapes,
                        "metric_scrapes_failed": sampler.failed}
    res["messages"] = {
        "edge_snapshots_received": edge1["snapshots_in"] - edge0["snapshots_in"],
        "edge_deltas_received": edge1["deltas_in"] - edge0["deltas_in"],
        "edge_gaps": edge1["gaps"] - edge0["gaps"],
        "edge_reacks": edge1["reacks"] - edge0["reacks"],
        # reports published before the cloud's subscriber was back are lost; the cloud
        # sees the gap in their seqs and asks the node for everything again (once)
        "edge_report_again": edge1["report_again"] - edge0["report_again"],
        "edge_full_reports_sent": edge1["full_reports"] - edge0["full_reports"],
        "cloud_report_gaps": int(cloud1["report_gaps"] - cloud0["report_gaps"]),
        # nodes not heard shortly after their broker came back without the cloud's
        # session (their resync went to nobody), asked for everything
        "cloud_report_probes": int(cloud1["report_probes"] - cloud0["report_probes"]),
        "sessions_lost": edge1["disconnects"] - edge0["disconnects"],
        "cloud_desired_sent": int(cloud1["desired_sent"] - cloud0["desired_sent"]),
        "cloud_desired_resent": int(cloud1["desired_resent"] - cloud0["desired_resent"]),
        "cloud_resyncs_received": int(cloud1["resyncs_in"] - cloud0["resyncs_in"]),
        "cloud_acks_received": int(cloud1["acks_in"] - cloud0["acks_in"]),
        # cloudcore does not count snapshots apart from deltas (yet): the simulators'
        # count of what arrived is the figure; a cloud metric is used when it exists
        "cloud_snapshots_metric": "cloudcore_desired_snapshots_total"
        if cloud1["desired_snapshots"] or cloud0["desired_snapshots"] else "none in cloudcore",
    }
    res["audit"] = audit(sf)
    cpu = {kind: sum(v[0] - u0.get(kind, {}).get(name, (v[0], 0))[0]
                     for name, v in procs.items()) for kind, procs in u1.items()}
    cpu["brokers"] = sum(v[0] - u0["brokers"].get(name, (v[0], 0))[0]
                         for name, v in u_kill["brokers"].items()) \
        + sum(v[0] for v in u1["brokers"].values())
    res["cpu_s_per_1000_nodes"] = {kind: round(c / n * 1000, 3) for kind, c in cpu.items()}
    res["worst_loop_lag_ms"] = round(max(sampler.lag.worst, lag.worst) * 1000, 1)
    res["loop_lag_sampled_max_ms"] = round(
        max(sampler.lag.worst_sampled, lag.worst_sampled) * 1000, 1)
    res["rss"] = _rss(u1)
    ready_s = waits["all_ready_and_reported_s"]
    res["targets"] = {
        "every node Ready within 60 s of the brokers' return": {
            "figure_s": ready_s, "met": ready_s <= 60},
        "no node NotReady": {
            "figure": len(not_ready_events) + sampler.not_ready,
            "met": not not_ready_events and sampler.not_ready == 0},
        "no snapshot sent": {"figure": res["messages"]["edge_snapshots_received"],
                             "met": res["messages"]["edge_snapshots_received"] == 0},
        "nothing lost": {"figure": res["audit"]["acked_lost"],
                         "met": res["audit"]["acked_lost"] == 0},
    }
    res.update(describe_fleet(sf))
    res["load_end"] = Path("/proc/loadavg").read_text().strip()
    return res


# --- the shard kill (issue 14 part 4, second storm) ------------------------------------

HELD = re.compile(r"shard (\S+): .*: \+(\d+) -\d+ partitions, (\d+) held")
TOOK = re.compile(r"shard (\S+): took \d+ partition\(s\), \d+ node\(s\)")
"""A takeover's end: every taken node's snapshot pushed (after the partitions were held)."""
AWAY = "OwnedByAnotherShard"


class ShardProc:
    """One real `cloudcore --shard NAME` process started from a copy of the seed's state
    dir (same nodes, credentials, fleet CA and tokens), its broker files in that dir
    (merged into the brokers' by `merge_broker_files`), its API on a free port."""

    def __init__(self, name: str, *, workdir: Path, seed: Path, sf: SimFleet,
                 nats: NatsKV, lease_s: float) -> None:
        self.name = name
        self.state = workdir / "shards" / name
        shutil.rmtree(self.state, ignore_errors=True)
        shutil.copytree(seed, self.state)
        (self.state / "cloudcore.pid").unlink(missing_ok=True)
        self.passwd, self.acl = self.state / "broker.passwd", self.state / "broker.acl"
        fleet = sf.fleet
        assert fleet.broker is not None
        port = fleet.broker.port
        self.http_port = free_port()
        self.api = f"https://127.0.0.1:{self.http_port}"
        pwfile = nats.password_file()
        argv = [sys.executable, "-m", "cloudcore", "--state-dir", str(self.state),
                "--shard", name, "--nats-user", str(nats.user),
                "--nats-password-file", str(pwfile), "--lease-period", str(lease_s),
                "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--mqtt-tls",
                "--mosquitto-passwd", str(self.passwd), "--mosquitto-acl", str(self.acl),
                "--advertise-mqtt", f"mqtts://127.0.0.1:{port}",
                "--http-host", "127.0.0.1", "--http-port", str(self.http_port),
                "--heartbeat", str(fleet.s.heartbeat_s), *_broker_flags(fleet.s.cloud_args)]
        for url in nats.urls:
            argv += ["--nats", url]
        self.proc = Proc(f"cloudcore-{name}", argv,
                         log=workdir / "logs" / f"shard-{name}.log")
        self.token = (self.state / "admin.token").read_text().strip()
        self.ssl = ssl.create_default_context(cafile=str(self.state / "pki" / "ca.crt"))
        self.held = 0  # partitions, from its log's last lease change
        self.holds_global = False
        self.held_at = 0.0  # wall time of that change, from the log line
        self.took_at = 0.0  # wall time of its last takeover's end (`TOOK`)
        self.acquired_at = 0.0  # wall time of its last change that took partitions
        self._log_at = 0

    def start(self) -> ShardProc:
        self.proc.start()
        return self

    def call(self, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.api}{path}", data=data, headers={
            "Authorization": f"Bearer {self.token}", "content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout, context=self.ssl) as r:
            return json.loads(r.read())

    def metrics(self) -> dict[str, float]:
        req = urllib.request.Request(f"{self.api}/metrics",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=30, context=self.ssl) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, val = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(val)
        return out

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.call("/api/v1/nodes")["items"])

    def read_log(self) -> list[str]:
        """Lines added to its log since the last call; `held` and `holds_global` follow
        its lease changes ("+a -l partitions, n held[; holds the global lease]")."""
        try:
            with self.proc.log.open("rb") as f:
                f.seek(self._log_at)
                data = f.read()
        except OSError:
            return []
        cut = data.rfind(b"\n") + 1
        self._log_at += cut
        lines = data[:cut].decode(errors="replace").splitlines()
        for line in lines:
            m = HELD.search(line)
            if m and m.group(1) == self.name:
                self.held = int(m.group(3))
                self.holds_global = "holds the global lease" in line
                with contextlib.suppress(ValueError):  # the logging module's local time
                    self.held_at = datetime.strptime(
                        line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    if int(m.group(2)):
                        self.acquired_at = self.held_at
            m = TOOK.search(line)
            if m and m.group(1) == self.name:
                with contextlib.suppress(ValueError):
                    self.took_at = datetime.strptime(
                        line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        return lines

    def not_ready_logged(self) -> list[str]:
        text = self.proc.log.read_text(errors="replace") if self.proc.log.exists() else ""
        return [line for line in text.splitlines() if " is NotReady" in line]


def _broker_flags(cloud_args: tuple[str, ...]) -> list[str]:
    """The `--broker NAME=URL` flags the seed cloud was started with (several brokers)."""
    out: list[str] = []
    for i, a in enumerate(cloud_args):
        if a == "--broker" and i + 1 < len(cloud_args):
            out += [a, cloud_args[i + 1]]
    return out


def merge_broker_files(shards: list[ShardProc], passwd: Path, acl: Path) -> None:
    """The brokers' password file and ACL (the fleet's broker's, which the others share):
    every shard's MQTT identities (`<user>_<shard>_sub` / `_pub<i>`) and the nodes', the
    union of the files each shard keeps (each holds every shard's identities once they
    are shared through KV; the union also covers a shard that has not seen the others'
    yet)."""
    users: dict[str, str] = {}
    blocks: list[str] = []
    patterns: list[str] = []
    for s in shards:
        for line in s.passwd.read_text().splitlines():
            if ":" in line:
                users.setdefault(line.split(":", 1)[0], line)
        block: list[str] = []
        for line in [*s.acl.read_text().splitlines(), ""]:
            if line.startswith("pattern "):
                if line not in patterns:
                    patterns.append(line)
            elif line.strip():
                block.append(line)
            elif block:
                blocks.append("\n".join(block))
                block = []
    with open(passwd, "w") as f:  # in place: the file's owner and group stay
        f.write("\n".join(users.values()) + "\n")
    with open(acl, "w") as f:
        f.write("\n\n".join(dict.fromkeys(blocks)) + "\n\n" + "\n".join(patterns) + "\n")


class ShardCluster:
    """The fleet's cloud moved onto `count` shards: the seed cloudcore stopped (the
    simulated sessions stay on the brokers), a real nats-server with JetStream, `count`
    `cloudcore --shard` processes from copies of the seed's state, their identities
    merged into the brokers' files. `until` polls, failing at once (naming them) when a
    shard that was not killed, a broker or a simulator has exited."""

    def __init__(self, sf: SimFleet, *, count: int, lease_s: float, workdir: Path) -> None:
        self.sf = sf
        self.count = count
        self.lease_s = lease_s
        self.workdir = workdir
        self.nats: NatsKV | None = None
        self.shards: list[ShardProc] = []

    def __enter__(self) -> ShardCluster:
        fleet = self.sf.fleet
        assert fleet.cloud is not None and fleet.broker is not None
        try:
            fleet.cloud.stop(timeout=60)  # the seed's state is every shard's start
            self.nats = NatsKV(rundir=self.workdir / "nats",
                               ca_dir=fleet.cloud_state / "pki").start()
            self.shards = [ShardProc(f"S{i + 1}", workdir=self.workdir,
                                     seed=fleet.cloud_state, sf=self.sf, nats=self.nats,
                                     lease_s=self.lease_s).start()
                           for i in range(self.count)]
            for s in self.shards:
                self.until(f"shard {s.name} wrote its broker files",
                            lambda s=s: s.passwd.exists() and s.acl.exists(), 120)
            merge_broker_files(self.shards, fleet.broker.passwd, fleet.broker.acl)
            for mq in fleet.brokers.values():  # reload them now, not at the next watch
                if mq.proc is not None and mq.proc.poll() is None:
                    mq.proc.send_signal(signal.SIGHUP)
            for s in self.shards:
                self.until(f"shard {s.name} ready", lambda s=s: s.call("/readyz"), 120)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for s in self.shards:
            s.proc.stop(timeout=30)
        if self.nats is not None:
            self.nats.stop()

    def alive(self) -> list[ShardProc]:
        return [s for s in self.shards if s.proc.alive()]

    def check_alive(self, what: str) -> None:
        """BenchFailure naming them if a shard exited other than by the bench's kill -9,
        or a broker or a simulator exited."""
        dead = [s.name for s in self.shards if s.proc.popen is not None
                and not s.proc.alive() and s.proc.popen.returncode != -signal.SIGKILL]
        if dead:
            tails = "\n".join(f"--- {s.name}:\n{s.proc.tail(15)}" for s in self.shards
                              if s.name in dead)
            raise BenchFailure(f"{what}: shard(s) {dead} exited; their logs:\n{tails}")
        gone = [n for n, mq in self.sf.fleet.brokers.items()
                if mq.proc is None or mq.proc.poll() is not None]
        gone += [p.name for p in self.sf.sims if not p.alive()]
        if gone:
            raise BenchFailure(self.sf.diagnose(f"{what}: {gone} exited"))

    def until(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll `check` until it returns something true (that is returned); BenchFailure
        after `timeout` s with its last answer, or at once when a process exited."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_alive(what)
            try:
                last = check()
            except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
                last = exc
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.5)
        raise BenchFailure(f"{what}: not after {timeout:.0f} s (last: {last!r})")

    def view(self, shards: list[ShardProc] | None = None) -> dict[str, Any]:
        """One poll of every (given) shard's node list: node -> the shards that own it
        and see it Ready, the nodes some owner shows NotReady, and the owners' status of
        each node (the shard that holds its partition, not another's summary)."""
        owned: dict[str, list[str]] = {}
        not_ready: set[str] = set()
        status: dict[str, dict[str, Any]] = {}
        for s in shards or self.alive():
            for n in s.nodes():
                st = n.get("status") or {}
                name = n["metadata"]["name"]
                if str(st.get("reason") or "").startswith(AWAY):
                    if st.get("ready") == "NotReady":  # the owner's view, via KV
                        not_ready.add(name)
                    continue
                if st.get("ready") == "NotReady":
                    not_ready.add(name)
                if st.get("ready") == "Ready":
                    owned.setdefault(name, []).append(s.name)
                    status[name] = st
        return {"owned": owned, "not_ready": not_ready, "status": status}


def _shard_counts(shards: list[ShardProc]) -> dict[str, float]:
    out = {"desired_sent": 0.0, "desired_snapshots": 0.0, "resyncs_in": 0.0,
           "not_owned": 0.0}
    for s in shards:
        with contextlib.suppress(urllib.error.URLError, OSError, TimeoutError):
            m = s.metrics()
            out["desired_sent"] += _sum(m, "cloudcore_messages_out_total", 'type="desired"')
            out["desired_snapshots"] += _sum(m, "cloudcore_desired_snapshots_total")
            out["resyncs_in"] += _sum(m, "cloudcore_messages_in_total", 'type="resync"')
            out["not_owned"] += _sum(m, "cloudcore_messages_dropped_total",
                                     'reason="not_owned"')
    return out


def shard_kill(sf: SimFleet, *, shards: int, lease_s: float, workdir: Path,
               timeout: float) -> dict[str, Any]:
    """The fleet moved onto `shards` real shards, then kill -9 of the one holding the
    most nodes; its figures (module docstring)."""
    n = sf.nodes
    res: dict[str, Any] = {"run": True, "shards": shards, "lease_period_s": lease_s,
                           "load_start": Path("/proc/loadavg").read_text().strip()}
    t0 = time.monotonic()
    t0_wall = time.time()
    with ShardCluster(sf, count=shards, lease_s=lease_s, workdir=workdir) as cl:
        res["shards_started_s"] = round(time.monotonic() - t0, 1)
        assert cl.nats is not None

        def settled() -> bool:
            for s in cl.shards:
                s.read_log()
            v = cl.view()
            st = v["status"]
            return (sum(s.held for s in cl.shards) == 256 and len(v["owned"]) == n
                    and all(len(o) == 1 for o in v["owned"].values())
                    and all(float(x.get("lastSeen") or 0) >= t0_wall
                            and int(x.get("ackedGen", 0)) == int(x.get("desiredGen", -1)) > 0
                            for x in st.values()))

        cl.until(f"every node Ready on exactly one of {shards} shards, heard and acked",
                  settled, timeout)
        res["fleet_on_shards_s"] = round(time.monotonic() - t0, 1)
        time.sleep(2)
        before = cl.view()
        per_shard = {s.name: 0 for s in cl.shards}
        for owners in before["owned"].values():
            per_shard[owners[0]] += 1
        res["nodes_per_shard"] = per_shard
        res["partitions_per_shard"] = {s.name: s.held for s in cl.shards}
        victim = max(cl.shards, key=lambda s: per_shard[s.name])
        moved = {x for x, o in before["owned"].items() if o == [victim.name]}
        survivors = [s for s in cl.shards if s is not victim]
        res["killed"] = {"shard": victim.name, "nodes": len(moved),
                         "partitions": victim.held, "held_global_lease": victim.holds_global}
        edge0 = _edge_counts(sf)
        cloud0 = _shard_counts(survivors)
        seqs0 = {s.name: _shard_event_seq(s) for s in survivors}
        base_desired = {x: int(st.get("desiredGen", 0)) for x, st in before["status"].items()}
        u0 = _shard_usage(cl)
        ever_not_ready: set[str] = set()
        polls = failed = 0
        waits: dict[str, float] = {}
        time.sleep(1.0)
        t_kill, t_kill_wall = time.monotonic(), time.time()
        victim.proc.kill()

        def since() -> float:
            return round(time.monotonic() - t_kill, 2)

        # a desired-state change while the killed shard's partitions have no owner,
        # through a survivor's API (every shard gets it from the objects replica)
        survivors[0].call("/api/v1/apply", {"documents": [_ds(["sleep", "3"])]}, timeout=120)
        waits["change_applied_through_survivor_s"] = since()
        deadline = time.monotonic() + timeout
        while True:
            for s in survivors:
                s.read_log()
            if "partitions_held_by_survivors_s" not in waits and \
                    sum(s.held for s in survivors) == 256:
                # when the last survivor logged the change that took partitions (not when
                # this poll saw it; a later change that took none, such as the global
                # lease alone, is not when the partitions became held: CI saw one 10 ms
                # after the last takeover's push had ended)
                waits["partitions_held_by_survivors_s"] = round(
                    max(s.acquired_at for s in survivors) - t_kill_wall, 2)
            try:
                v = cl.view(survivors)
                polls += 1
            except (urllib.error.URLError, OSError, TimeoutError):
                failed += 1
                v = None
            if v is not None:
                ever_not_ready |= v["not_ready"]
                owned, st = v["owned"], v["status"]
                moved_ready = sum(1 for x in moved if len(owned.get(x, ())) == 1)
                if "moved_nodes_ready_on_survivor_s" not in waits and moved_ready == len(moved):
                    waits["moved_nodes_ready_on_survivor_s"] = since()
                heard = sum(1 for x in moved
                            if float(st.get(x, {}).get("lastSeen") or 0) >= t_kill_wall)
                if "moved_nodes_reported_to_survivor_s" not in waits and heard == len(moved):
                    waits["moved_nodes_reported_to_survivor_s"] = since()
                current = sum(1 for x, o in owned.items() if len(o) == 1
                              and int(st[x].get("ackedGen", 0))
                              == int(st[x].get("desiredGen", -1)) > 0
                              and (o != before["owned"].get(x)  # a new owner: new epoch
                                   or int(st[x]["desiredGen"]) > base_desired[x]))
                if "change_acked_by_all_s" not in waits and current == n:
                    waits["change_acked_by_all_s"] = since()
                if "partitions_held_by_survivors_s" in waits and \
                        "takeovers_pushed_by_survivors_s" not in waits and \
                        all(s.took_at >= s.acquired_at for s in survivors):
                    # the held partitions' nodes all sent their snapshots (the push runs
                    # after the partitions are held and announced)
                    waits["takeovers_pushed_by_survivors_s"] = round(
                        max(s.took_at for s in survivors) - t_kill_wall, 2)
                if len(waits) == 6:
                    break
            if time.monotonic() > deadline:
                raise BenchFailure(
                    f"shard kill: not done after {timeout:.0f} s: {sorted(waits)} done; "
                    f"survivors hold {sum(s.held for s in survivors)} of 256 partitions; "
                    f"their logs' ends:\n" + "\n".join(f"--- {s.name}:\n{s.proc.tail(8)}"
                                                       for s in survivors))
            cl.check_alive("shard kill")
            time.sleep(0.5)
        time.sleep(1.2)  # the simulators' stats files are rewritten every second
        edge1 = _edge_counts(sf)
        cloud1 = _shard_counts(survivors)
        u1 = _shard_usage(cl)
        events = sorted({x for s in survivors for x in _shard_not_ready(s, seqs0[s.name])})
        logged = [line for s in survivors for line in s.not_ready_logged()]
        res["after_kill"] = waits
        res["not_ready"] = {"nodes_seen_NotReady_polled": len(ever_not_ready),
                            "e_g": sorted(ever_not_ready)[:10],
                            "nodes_with_NodeNotReady_events": len(events),
                            "not_ready_log_lines": len(logged), "polls": polls,
                            "polls_failed": failed}
        res["messages"] = {
            "edge_snapshots_received": edge1["snapshots_in"] - edge0["snapshots_in"],
            "edge_deltas_received": edge1["deltas_in"] - edge0["deltas_in"],
            "edge_gaps": edge1["gaps"] - edge0["gaps"],
            # one report of the whole status per moved node (a new owner, issue 14)
            "edge_full_reports_sent": edge1["full_reports"] - edge0["full_reports"],
            "edge_full_report_bytes": edge1["full_report_bytes"] - edge0["full_report_bytes"],
            "survivors_desired_sent": int(cloud1["desired_sent"] - cloud0["desired_sent"]),
            "survivors_resyncs_received": int(cloud1["resyncs_in"] - cloud0["resyncs_in"]),
            "survivors_dropped_not_owned": int(cloud1["not_owned"] - cloud0["not_owned"])}
        res["audit"] = _shard_audit(sf, cl, survivors)
        res["cpu_s_per_1000_nodes"] = {
            k: round((u1[k][0] - u0.get(k, (u1[k][0], 0))[0]) / n * 1000, 3)
            for k in u1 if k != victim.name}
        res["rss_mb"] = {k: round(v[1] / 2**20, 1) for k, v in u1.items()}
        res["load_end"] = Path("/proc/loadavg").read_text().strip()
        took = waits["partitions_held_by_survivors_s"]
        nr = len(ever_not_ready) + len(events) + len(logged)
        res["targets"] = {
            "partitions taken over within the lease period": {
                "figure_s": took, "lease_s": lease_s, "met": took <= lease_s},
            "no node NotReady": {"figure": nr, "met": nr == 0},
            "nothing lost": {"figure": res["audit"]["acked_lost"],
                             "met": res["audit"]["acked_lost"] == 0},
        }
    return res


def _shard_usage(cl: ShardCluster) -> dict[str, tuple[float, int]]:
    out: dict[str, tuple[float, int]] = {}
    pids = {s.name: s.proc.pid for s in cl.alive()}
    if cl.nats is not None:
        pids.update({f"nats-{i}": pid for i, pid in enumerate(cl.nats.pids())})
    for name, pid in pids.items():
        if pid is not None:
            with contextlib.suppress(OSError, IndexError, ValueError):
                out[name] = _proc_usage(pid)
    return out


def _shard_event_seq(s: ShardProc) -> int:
    items = s.call("/api/v1/events?type=Warning")["items"]
    return max((int(e.get("seq", 0)) for e in items), default=0)


def _shard_not_ready(s: ShardProc, after_seq: int) -> set[str]:
    items = s.call("/api/v1/events?type=Warning")["items"]
    return {str(e["object"]).removeprefix("Node/") for e in items
            if int(e.get("seq", 0)) > after_seq and e.get("reason") == "NodeNotReady"}


def _shard_audit(sf: SimFleet, cl: ShardCluster, survivors: list[ShardProc]) -> dict[str, Any]:
    """`audit` against each node's owner among the survivors: acked lost (applied gen
    below the owner's acked gen, or another epoch than the owner's acked one)."""
    edge = edge_gens(sf)
    v = cl.view(survivors)
    lost, behind, missing = [], [], []
    for name, (_, gen) in edge.items():
        st = v["status"].get(name)
        if st is None or len(v["owned"].get(name, ())) != 1:
            missing.append(name)
            continue
        if gen < int(st.get("ackedGen", 0)):
            lost.append(name)
        if gen < int(st.get("desiredGen", 0)):
            behind.append(name)
    return {"nodes_checked": len(edge), "acked_lost": len(lost), "acked_lost_e_g": lost[:10],
            "behind_desired": len(behind), "behind_e_g": behind[:10],
            "without_one_owner": len(missing), "epochs": len({e for e, _ in edge.values()}),
            "all_applied": not lost and not behind and not missing and len(edge) == sf.nodes}


def _reached(rows: list[list[Any]], n: int, resyncs0: float) -> dict[str, Any]:
    """From the timeline: seconds after the return when 50, 90 and 99 % of the sessions
    were up and of the nodes' resyncs had reached the cloud (which side is slow)."""
    out: dict[str, Any] = {}
    for pct in (50, 90, 99):
        want = n * pct / 100
        out[f"sessions_up_{pct}pct_s"] = next((r[0] for r in rows if r[1] >= want), None)
        out[f"cloud_resyncs_{pct}pct_s"] = next(
            (r[0] for r in rows if r[2] - resyncs0 >= want), None)
    return out


def bench_storm(*, nodes: int, workdir: Path, procs: int | None = None,
                brokers: int | None = None, per_broker: int = PER_BROKER,
                per_sim: int | None = None, rate: float = 500.0, stall_s: float = 60.0,
                down_s: float = 5.0, heartbeat_s: float = 60.0, timeout: float = 900.0,
                cloud_tree: Path | None = None, shards: int = 0, lease_s: float = 15.0,
                broker_storm: bool = True, listen_backlog: int = LISTEN_BACKLOG) -> int:
    """Start the fleet, run the storm (the brokers' unless `broker_storm=False`, then
    with `shards` >= 2 the shard kill), print and write the result; 0 if it ran (targets
    missed are figures, not failures), 1 if it could not finish (the error names what
    was missing and why), 2 for a size or option that cannot work."""
    try:
        p = plan(nodes, brokers=brokers, procs=procs, per_broker=per_broker, per_sim=per_sim)
        if shards == 1 or shards < 0:
            raise ValueError(f"--shards {shards}: 0 (no shard kill) or at least 2 (one is "
                             "killed, the others take its partitions)")
        if shards and shutil.which("nats-server") is None:
            raise ValueError("--shards needs nats-server (apt-get install nats-server)")
        if shards and lease_s <= 0:
            raise ValueError("--lease-period: must be positive")
        if not broker_storm and not shards:
            raise ValueError("--no-broker-storm without --shards: nothing to run")
        if listen_backlog < 0:
            raise ValueError(f"--listen-backlog {listen_backlog}: 0 (mosquitto's own, 100) "
                             "or more")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "result.json"
    not_reached = SHARD_KILL if not shards else {
        "run": False, "why": f"--shards {shards} asked for, but the bench stopped before it"}
    print(f"== storm: {nodes} simulated nodes, {p.brokers} broker(s) (listen backlog "
          f"{listen_backlog or 100}), {p.procs} simulator process(es), heartbeat "
          f"{heartbeat_s:g} s, "
          + (f"brokers down {down_s:g} s" if broker_storm else "no broker storm")
          + (f", then {shards} shards (lease {lease_s:g} s) and one killed" if shards
             else "")
          + f", load {Path('/proc/loadavg').read_text().strip()}", flush=True)
    try:
        with stoppable(), simulated_fleet(
                nodes=nodes, procs=p.procs, workdir=workdir, secure=True,
                cloud_tree=cloud_tree, brokers=p.brokers, per_broker=per_broker,
                per_sim=per_sim, rate=rate, stall_s=stall_s, heartbeat_s=heartbeat_s,
                listen_backlog=listen_backlog or None) as sf:
            res = storm(sf, down_s=down_s, timeout=timeout, brokers=broker_storm)
            res["shard_kill"] = dict(SHARD_KILL)
            if shards:
                # the broker storm's figures are kept whatever the shard kill does
                out.write_text(json.dumps({"ok": False, "error": "shard kill under way",
                                           **res}, indent=2))
                print(f"== shard kill: the fleet moves onto {shards} shards", flush=True)
                try:
                    with _cloud_pythonpath(cloud_tree):
                        res["shard_kill"] = shard_kill(sf, shards=shards, lease_s=lease_s,
                                                       workdir=workdir.resolve(),
                                                       timeout=timeout)
                except (BenchFailure, OSError, RuntimeError, ValueError) as exc:
                    print(f"shard kill failed: {exc}", file=sys.stderr)
                    res["shard_kill"] = {"run": True, "ok": False, "error": str(exc)}
                    out.write_text(json.dumps({"ok": False, **res}, indent=2))
                    print(json.dumps(res, indent=2), flush=True)
                    return 1
    except (BenchFailure, TimeoutError, RuntimeError, ValueError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        out.write_text(json.dumps({"ok": False, "error": str(exc),
                                   "shard_kill": not_reached}, indent=2))
        return 1
    except KeyboardInterrupt:
        print("bench interrupted; everything it started is stopped", file=sys.stderr)
        out.write_text(json.dumps({"ok": False, "error": "interrupted (Ctrl-C or SIGTERM)",
                                   "shard_kill": not_reached}, indent=2))
        return 130
    res = {"ok": True, **res}
    print(json.dumps(res, indent=2), flush=True)
    out.write_text(json.dumps(res, indent=2))
    print(summary(res, out), flush=True)
    return 0


def summary(res: dict[str, Any], out: Path) -> str:
    """The result in two lines."""
    lines = []
    if "targets" in res:
        missed = [k for k, v in res["targets"].items() if v["met"] is False]
        back = res["after_brokers_return"]
        lines.append(
            f"broker storm: every node Ready and reported {back['all_ready_and_reported_s']} s "
            f"after the brokers' return, change applied by all in "
            f"{back['change_applied_by_all_s']} s; "
            f"{res['messages']['edge_snapshots_received']} snapshots, "
            f"{res['messages']['edge_deltas_received']} deltas, "
            f"{res['audit']['acked_lost']} acked updates lost; targets missed: "
            f"{missed or 'none'}")
    k = res["shard_kill"]
    if k.get("run"):
        a = k["after_kill"]
        missed = [t for t, v in k["targets"].items() if v["met"] is False]
        lines.append(
            f"shard kill: {k['killed']['shard']} ({k['killed']['nodes']} nodes, "
            f"{k['killed']['partitions']} partitions) killed -9; partitions held by "
            f"survivors {a['partitions_held_by_survivors_s']} s after (lease "
            f"{k['lease_period_s']:g} s), their nodes' snapshots pushed "
            f"{a.get('takeovers_pushed_by_survivors_s')} s, its nodes Ready on a survivor "
            f"{a['moved_nodes_ready_on_survivor_s']} s, NotReady "
            f"{k['targets']['no node NotReady']['figure']}, acked lost "
            f"{k['audit']['acked_lost']}; targets missed: {missed or 'none'}")
    else:
        lines.append(f"shard kill: not run ({k['why']})")
    lines.append(f"result: {out}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `python -m testbed.bench_storm` (`testbed bench storm` carries the
    sizing ones)."""
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--procs", type=int, default=None,
                   help="simulator processes (default: by the open-file limit, at least 2)")
    p.add_argument("--brokers", type=int, default=None,
                   help="mosquitto processes (default: nodes / --per-broker, rounded up)")
    p.add_argument("--per-broker", type=int, default=PER_BROKER)
    p.add_argument("--rate", type=float, default=500.0,
                   help="connects per second per simulator process")
    p.add_argument("--stall", type=float, default=60.0,
                   help="fail a wait after this many seconds without progress")
    p.add_argument("--down", type=float, default=5.0,
                   help="seconds the brokers stay down")
    p.add_argument("--heartbeat", type=float, default=60.0,
                   help="the simulated nodes' heartbeat, s (NotReady after 3x without a "
                        "report)")
    p.add_argument("--timeout", type=float, default=900.0, help="a wait's hard limit, s")
    p.add_argument("--cloud-tree", type=Path, default=None,
                   help="run cloudcore from this source tree (PYTHONPATH, the cloud only)")
    p.add_argument("--shards", type=int, default=0,
                   help="after the broker storm, move the fleet onto this many real "
                        "`cloudcore --shard` processes (a real nats-server) and kill -9 "
                        "the one holding most nodes (default 0: no shard kill)")
    p.add_argument("--lease-period", type=float, default=15.0,
                   help="the shards' partition lease period, s (cloudcore's default)")
    p.add_argument("--no-broker-storm", dest="broker_storm", action="store_false",
                   help="skip the broker storm (with --shards: the shard kill only)")
    p.add_argument("--listen-backlog", type=int, default=LISTEN_BACKLOG,
                   help="the brokers' listen backlog after their first start (a listen() "
                        "shim, testbed.broker; the kernel caps it at net.core.somaxconn); "
                        "0: mosquitto's own, 100 (default %(default)s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.bench_storm",
                                description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--workdir", type=Path, default=Path("var/bench-storm"))
    a = p.parse_args(argv)
    tree = a.cloud_tree.resolve() if a.cloud_tree else None
    if tree is not None and not (tree / "cloudcore" / "__main__.py").is_file():
        p.error(f"--cloud-tree {a.cloud_tree}: no cloudcore/__main__.py there")
    return bench_storm(nodes=a.nodes, workdir=a.workdir, procs=a.procs, brokers=a.brokers,
                       per_broker=a.per_broker, rate=a.rate, stall_s=a.stall, down_s=a.down,
                       heartbeat_s=a.heartbeat, timeout=a.timeout, cloud_tree=tree,
                       shards=a.shards, lease_s=a.lease_period,
                       broker_storm=a.broker_storm, listen_backlog=a.listen_backlog)


if __name__ == "__main__":
    sys.exit(main())
