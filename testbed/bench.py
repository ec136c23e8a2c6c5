"""`testbed bench sync|rollout`: a simulated fleet against one cloudcore and its brokers.

`sync` measures, in one run on this machine:
- time from `apply` of a DaemonSet until every node has applied and acked it
  (edge side, from the simulators' stats) and until cloudcore has recorded every ack;
- the same for an update of the DaemonSet's args (a delta to every node);
- messages and bytes on the wire per node-update (both directions);
- cloudcore CPU per node-update (CPU-ms of the cloudcore process during a phase divided
  by the nodes it updated) and RSS per 1,000 nodes (idle after registration, and after
  both phases). The wait for the acks scrapes the ack counter in /metrics and lists
  every node only to confirm (usually once): until issue 13 it listed every node
  every 0.5 s, and those lists were a good part of the CPU figure;
- the idle cost (`--idle S` seconds, default 60, after the update; `--steady` is the
  old name): with the fleet settled, reporting only (heartbeats every ~300 s per node)
  and nothing changing, per node per second the cloud's and the brokers' CPU (from /proc
  of each process), the bytes through the brokers' sockets and the MQTT payload bytes
  of the nodes, the messages per node per hour, and the cloud's CPU-ms per status
  report it handled (`_idle`, result key `idle`).

`--cloud-tree DIR` runs cloudcore (and `cloudcore pki broker`) with `PYTHONPATH=DIR`
(and `PYTHONSAFEPATH=1`, so the working directory does not shadow it), while the
simulators and this program stay on this checkout: the cloud of an old commit
(`git archive OLD | tar -x -C /tmp/before`) measured by the same bench, in one sitting
with the current one. Run it as `python -m testbed.bench sync --nodes N --cloud-tree DIR`
(the options of this module's own `main`).

`rollout` measures health-gated DaemonSet rollouts (cloudcore/fleet/rollout.py) with
simulators that report pods Running and Ready, except those whose command or args
contain `crash-now`, which they report in CrashLoopBackOff:
- a good update (batches of `maxUnavailable`): time until Complete with every pod
  available, the number of batches (from cloudcore's log), cloudcore CPU, messages;
- a bad update: time until cloudcore rolled it back, how many nodes ever got the bad
  template, and the time until every node is available at the good revision again.

Both share `simulated_fleet` (brokers, cloudcore, simulator processes, teardown), and so
does `testbed bench storm` (`testbed/bench_storm.py`). Sizes (issue 14, `plan`):
`ceil(nodes / 15,000)` mosquittos (`--brokers`), the extra ones sharing cloudcore's
password file, ACL and TLS files, cloudcore started with one `--broker NAME=URL` per broker
and each simulated node sent to its partition's broker by the cloud's own map (`GET
/api/v1/brokermap`); simulator processes by the open-file limit (20,000 here: at most
17,000 sessions each, at least two processes; `--procs`). A size that cannot work is
refused before anything starts. Every wait checks at each poll that cloudcore, every broker
and every simulator is alive and that the awaited count moves: a dead process or
`--stall` seconds without progress fails the bench with the missing sessions named per
simulator, each broker's open files against its limit and its log's complaints
(`SimFleet.diagnose`). `sync` also reports CPU per 1,000 nodes per process kind (cloud,
brokers, simulators), the RSS of every process, cloudcore's worst event-loop lag (its
`cloudcore_event_loop_lag_max_seconds`), and an audit of every node's applied gen against
the cloud's acked and desired gens; `result.json` lists the brokers and processes used.
`--mode` unset runs both fleets up to 20,000 nodes and the secure one above.

The fleet is secure by default, as `testbed up` runs it: every simulated node is joined
through the API first (`Fleet.join_many`: one multi-use join token, concurrent joins; the
simulators get the node keys and broker credentials in a `--keys` file), then
connects over TLS and seals every message. `bench sync --mode both` measures the secure
and the `--insecure` fleet (an anonymous broker, run only when asked for, with a
warning) in one run and prints them side by side, with the broker's memory per session.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import topics
from testbed.broker import BrokerSecurity, Mosquitto, broker_map, contract_partitions
from testbed.fleet import Fleet, FleetSettings
from testbed.procs import Proc

CLK_TCK = 100


def _proc_usage(pid: int) -> tuple[float, int]:
    """(cpu seconds, rss bytes) of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return cpu, rss


def _proc_io(pid: int) -> int:
    """Bytes a process read and wrote through syscalls (sockets included: for the broker,
    what crossed the wire, TLS records and MQTT framing included)."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(io["rchar"]) + int(io["wchar"])


def _stats(files: list[Path]) -> dict[str, Any]:
    """The simulators' counters summed; `gens` counts applies per gen (a node that
    applied two gens counts twice), `at_gen` nodes by the gen they are at now, `read`
    how many files could be read (a missing one is not an error here)."""
    total: dict[str, Any] = {"connected": 0, "gens": {}, "at_gen": {}, "msgs_in": 0,
                             "msgs_out": 0, "bytes_in": 0, "bytes_out": 0, "read": 0}
    for f in files:
        try:
            s = json.loads(f.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        total["read"] += 1
        for k in ("connected", "msgs_in", "msgs_out", "bytes_in", "bytes_out"):
            total[k] += int(s.get(k, 0))
        for key in ("gens", "at_gen"):
            for g, n in s.get(key, {}).items():
                total[key][int(g)] = total[key].get(int(g), 0) + int(n)
    return total


def nodes_past(stats: dict[str, Any], base: int) -> int:
    """Simulated nodes whose applied gen is above `base` now."""
    return sum(n for g, n in stats["at_gen"].items() if g > base)


def _ds(image_args: list[str]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "bench"},
            "spec": {"template": {"metadata": {"labels": {"app": "bench"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox",
                                                           "args": image_args}]}}}}


# --- sizing (issue 14) ------------------------------------------------------------------

PER_BROKER = 15_000
"""Sessions a mosquitto is sized for: its open-file limit (20,000 here) holds ~19,990,
and the rest is room to take a drained neighbour's partitions (proposal 0007)."""
SIM_FD_MARGIN = 3_000
"""File descriptors a simulator keeps beyond one per session (a 20,000 limit: 17,000
sessions a process, as `bench brokers` ran them)."""


class BenchFailure(RuntimeError):
    """The bench cannot go on; the message names what is missing and why."""


def fd_limit() -> int:
    """The open-file limit a child process can lift itself to (the hard limit)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@dataclass(frozen=True)
class Plan:
    """How many brokers and simulator processes hold `nodes` sessions."""

    nodes: int
    brokers: int
    procs: int
    per_sim: int  # the most sessions one simulator process may hold

    @property
    def per_proc(self) -> int:
        return -(-self.nodes // self.procs)


def plan(nodes: int, *, brokers: int | None = None, procs: int | None = None,
         per_broker: int = PER_BROKER, per_sim: int | None = None,
         limit: int | None = None) -> Plan:
    """Brokers: `ceil(nodes / per_broker)` unless given. Simulator processes: enough
    that none holds more sessions than the open-file limit allows (`limit -
    SIM_FD_MARGIN`), and at least two (two cores) unless given. ValueError, naming the
    numbers, when a given count cannot work (a simulator would exit at once for want of
    file descriptors; a broker would refuse sessions past its limit)."""
    if nodes < 1:
        raise ValueError("--nodes: at least 1")
    limit = limit or fd_limit()
    cap = per_sim or max(1, limit - SIM_FD_MARGIN)
    if brokers is None:
        brokers = -(-nodes // per_broker)
    if brokers < 1:
        raise ValueError("--brokers: at least 1")
    if procs is None:
        procs = max(min(2, nodes), -(-nodes // cap))
    if procs < 1:
        raise ValueError("--procs: at least 1")
    per_proc = -(-nodes // procs)
    if per_proc + 64 > limit:
        raise ValueError(
            f"--procs {procs}: {per_proc} sessions per simulator process need about "
            f"{per_proc + 64} file descriptors, the limit is {limit}; use at least "
            f"{-(-nodes // (limit - 64))} processes (or leave --procs out)")
    per_b = -(-nodes // brokers)
    if per_b + 16 > limit:
        raise ValueError(
            f"--brokers {brokers}: about {per_b} sessions per broker, over the open-file "
            f"limit of {limit} (mosquitto refuses the rest); use at least "
            f"{-(-nodes // (limit - 16))} brokers (or leave --brokers out)")
    return Plan(nodes=nodes, brokers=brokers, procs=procs, per_sim=cap)


# --- the fleet -----------------------------------------------------------------------


class TierFleet(Fleet):
    """`testbed.fleet.Fleet` with `brokers` mosquittos (issue 14): mq-0 is the fleet's own
    broker; the others share its password file, ACL (which cloudcore keeps) and TLS
    files, and are started before cloudcore, which gets one `--broker NAME=URL` flag per
    broker (none with one broker: exactly the single-broker cloud). `listen_backlog`
    (`testbed.broker.Mosquitto`): every broker's after its first start, the extra
    brokers' from it (mq-0 first starts with mosquitto's own 100)."""

    def __init__(self, settings: FleetSettings, *, brokers: int,
                 listen_backlog: int | None = None) -> None:
        super().__init__(settings)
        self.broker_count = brokers
        self.listen_backlog = listen_backlog
        self.extra: list[Mosquitto] = []

    def start_cloud(self) -> None:
        if self.broker is not None:
            self.broker.listen_backlog = self.listen_backlog
        if self.broker_count > 1 and not self.extra:
            self._start_extra()
        super().start_cloud()

    def _start_extra(self) -> None:
        b0 = self.broker
        assert b0 is not None
        if not cloud_has_broker_flag():
            raise BenchFailure(
                f"{self.broker_count} brokers asked for, but this cloudcore has no --broker "
                "flag yet (issue 14 part 2, the multi-broker hub): run with --brokers 1 "
                f"(at most ~{PER_BROKER} nodes), or wait for that commit")
        for i in range(1, self.broker_count):
            if self.secure:
                mq = Mosquitto(workdir=self.workdir / f"mosquitto-{i}",
                               security=BrokerSecurity(), shared_auth=(b0.passwd, b0.acl),
                               listen_backlog=self.listen_backlog)
                for f in ("ca.crt", "broker.crt", "broker.key"):
                    shutil.copy(b0.tls_dir / f, mq.tls_dir / f)
            else:
                mq = Mosquitto(workdir=self.workdir / f"mosquitto-{i}", insecure=True,
                               listen_backlog=self.listen_backlog)
            self.extra.append(mq)
            mq.start()
        scheme = "mqtt" if self.s.insecure else "mqtts"
        flags: list[str] = []
        for name, mq in self.brokers.items():
            flags += ["--broker", f"{name}={scheme}://{mq.host}:{mq.port}"]
        self.s.cloud_args = (*self.s.cloud_args, *flags)

    @property
    def brokers(self) -> dict[str, Mosquitto]:
        """Every broker by name (mq-0, mq-1, ...), as cloudcore's flags name them."""
        assert self.broker is not None
        return {"mq-0": self.broker, **{f"mq-{i + 1}": mq for i, mq in enumerate(self.extra)}}

    def stop(self) -> None:
        if self.cloud:
            self.cloud.stop()
        for mq in self.extra:  # before mq-0, whose run directory holds the shared files
            mq.stop()
            mq.remove()
        self.extra.clear()
        super().stop()


_BROKER_FLAG: dict[str, bool] = {}


def cloud_has_broker_flag() -> bool:
    """Does the cloudcore these processes would run take `--broker NAME=URL`? (Its help,
    with this process's PYTHONPATH, so a `--cloud-tree` is asked too.)"""
    key = os.environ.get("PYTHONPATH", "")
    if key not in _BROKER_FLAG:
        r = subprocess.run([sys.executable, "-m", "cloudcore", "--help"], capture_output=True,
                           text=True, timeout=60, check=False)
        _BROKER_FLAG[key] = "--broker " in r.stdout or "--broker NAME" in r.stdout
    return _BROKER_FLAG[key]


@dataclass
class SimFleet:
    """A running benchmark fleet: brokers, cloudcore and the simulator processes."""

    fleet: TierFleet
    nodes: int
    procs: int
    stats_files: list[Path]
    secure: bool = True
    sims: list[Proc] = field(default_factory=list)
    partitions: list[list[str]] = field(default_factory=list)  # partition -> broker names
    map_source: str = ""  # where the partition -> broker map came from
    stall_s: float = 60.0  # a wait without progress for this long fails the bench
    join_s: float = 0.0  # secure: joining every node through the API
    join_cloud_cpu_s: float = 0.0
    connect_s: float = 0.0  # from starting the simulators until every session is up
    registered_s: float = 0.0  # ... until cloudcore lists every node
    broker_rss_idle: int = 0  # bytes, before the simulators connect (all brokers)
    broker_rss_connected: int = 0  # ... once every session is up

    @property
    def cloud_pid(self) -> int:
        assert self.fleet.cloud is not None and self.fleet.cloud.pid is not None
        return self.fleet.cloud.pid

    @property
    def broker_pid(self) -> int:
        """mq-0's pid (the only broker below 15,000 nodes)."""
        assert self.fleet.broker is not None and self.fleet.broker.proc is not None
        return self.fleet.broker.proc.pid

    def broker_pids(self) -> dict[str, int]:
        return {n: mq.proc.pid for n, mq in self.fleet.brokers.items()
                if mq.proc is not None and mq.proc.poll() is None}

    def sim_pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.sims if p.alive() and p.pid is not None}

    def pids(self) -> dict[str, dict[str, int]]:
        """Every process of the bench by kind: cloud, brokers, simulators."""
        return {"cloud": {"cloudcore": self.cloud_pid}, "brokers": self.broker_pids(),
                "simulators": self.sim_pids()}

    def usage(self) -> dict[str, dict[str, tuple[float, int]]]:
        """(cpu seconds, rss bytes) of every process, by kind."""
        out: dict[str, dict[str, tuple[float, int]]] = {}
        for kind, pids in self.pids().items():
            out[kind] = {}
            for name, pid in pids.items():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    out[kind][name] = _proc_usage(pid)
        return out

    def stats(self) -> dict[str, Any]:
        """The simulators' counters, summed (each file is rewritten every second)."""
        return _stats(self.stats_files)

    def full_stats(self, timeout: float = 10.0) -> dict[str, Any]:
        """`stats()` once every simulator's file could be read (a baseline must not miss
        one: its nodes would count as progress later)."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            if st["read"] == len(self.stats_files) or time.monotonic() > deadline:
                if st["read"] != len(self.stats_files):
                    raise BenchFailure(self.diagnose("simulators' stats files unreadable"))
                return st
            time.sleep(0.2)

    def sim_stats(self) -> list[dict[str, Any]]:
        out = []
        for f in self.stats_files:
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, json.JSONDecodeError):
                out.append({})
        return out

    def homed(self) -> dict[str, int]:
        """broker -> sessions homed there by the map."""
        out: dict[str, int] = {}
        for i in range(self.nodes):
            b = self.partitions[topics.partition_of(f"sim-{i}")][0] if self.partitions \
                else "mq-0"
            out[b] = out.get(b, 0) + 1
        return out

    def diagnose(self, what: str) -> str:
        """What is missing and why, for a failure message: every broker (alive, open
        files against its limit, the problems its log names), every simulator (alive or
        its exit and last lines, sessions missing with examples and connect errors) and
        cloudcore (alive, or the end of its log)."""
        from testbed.bench_brokers import _fds, log_problems

        lines = [f"{what}:"]
        homed = self.homed()
        for name, mq in self.fleet.brokers.items():
            pid = mq.proc.pid if mq.proc is not None and mq.proc.poll() is None else None
            fds, lim = _fds(pid) if pid else (-1, None)
            probs = log_problems(mq.log_tail(2000))
            lines.append(f"  broker {name} ({mq.host}:{mq.port}): "
                         f"{'pid ' + str(pid) if pid else 'DEAD'}, {homed.get(name, 0)} "
                         f"sessions homed, {fds} open files (limit {lim})"
                         + ("; its log says:" if probs else ""))
            lines += [f"    {p}" for p in probs]
        for proc, st in zip(self.sims, self.sim_stats(), strict=True):
            missing = int(st.get("nodes", 0)) - int(st.get("connected", 0))
            state = "alive" if proc.alive() else \
                f"EXITED ({proc.popen.returncode if proc.popen else '?'})"
            lines.append(f"  {proc.name} ({state}): {st.get('connected', '?')}/"
                         f"{st.get('nodes', '?')} connected"
                         + (f", not connected e.g. {st.get('not_connected_sample')}, "
                            f"connect errors {st.get('connect_errors')}, last: "
                            f"{st.get('last_connect_error')}" if missing else ""))
            if not proc.alive():
                lines.append("    its log: " + proc.tail(5).replace("\n", "\n    "))
        cloud = self.fleet.cloud
        if cloud is not None and not cloud.alive():
            lines.append("  cloudcore EXITED; its log: "
                         + cloud.tail(10).replace("\n", "\n    "))
        return "\n".join(lines)

    def wait(self, *, what: str, count: Callable[[], float], target: float,
             timeout: float = 900.0, interval: float = 0.5) -> float:
        """Wait until `count() >= target`, checking at every poll that cloudcore, every
        broker and every simulator is alive and that the count moves: a dead process,
        no progress for `stall_s` or `timeout` in all raises BenchFailure naming the
        missing sessions and why (`diagnose`). Returns the seconds it took. A count that
        cannot be read (cloudcore busy) is no progress, not an error."""
        t0 = time.monotonic()
        last: float = -1.0
        last_move = t0
        while True:
            try:
                now_count = count()
            except (urllib.error.URLError, OSError, TimeoutError):
                now_count = last
            if now_count >= target:
                return time.monotonic() - t0
            now = time.monotonic()
            if now_count != last:
                last, last_move = now_count, now
            dead_b = [n for n, mq in self.fleet.brokers.items()
                      if mq.proc is None or mq.proc.poll() is not None]
            problem = None
            if self.fleet.cloud is None or not self.fleet.cloud.alive():
                problem = "cloudcore exited"
            elif dead_b:
                problem = f"broker process(es) died: {dead_b}"
            elif any(not p.alive() for p in self.sims):
                problem = f"simulator(s) exited: {[p.name for p in self.sims if not p.alive()]}"
            elif now - last_move > self.stall_s:
                problem = f"no progress for {self.stall_s:.0f} s"
            elif now - t0 > timeout:
                problem = f"not done after {timeout:.0f} s"
            if problem:
                shown = "?" if last < 0 else f"{last:g}"
                raise BenchFailure(self.diagnose(
                    f"{what}: {shown} of {target:g} after {now - t0:.0f} s; {problem}"))
            time.sleep(interval)


@contextmanager
def _cloud_pythonpath(tree: Path | None) -> Iterator[None]:
    """While the block runs, child processes import cloudcore (and shared) from `tree`:
    `PYTHONPATH=tree` and `PYTHONSAFEPATH=1` in this process's environment, which
    `testbed.fleet` passes to the processes it starts; restored on exit, before the
    simulators start. Nothing when `tree` is None."""
    if tree is None:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "PYTHONSAFEPATH")}
    os.environ["PYTHONPATH"] = str(tree)
    os.environ["PYTHONSAFEPATH"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _partitions(fleet: TierFleet) -> tuple[list[list[str]], str]:
    """partition -> broker names, home first: the cloud's own map (`GET
    /api/v1/brokermap`, proposal 0007) when it serves one, else the order its
    `BrokerMap.spread` gives the flags (`testbed.broker.contract_partitions`)."""
    names = list(fleet.brokers)
    try:
        doc = fleet.get("/api/v1/brokermap")
    except urllib.error.HTTPError as exc:
        if exc.code not in (404, 405):
            raise
        return contract_partitions(names), "proposal 0007's spread (the cloud serves no map)"
    m = doc.get("map", doc) if isinstance(doc, dict) else {}
    parts = m.get("partitions") if isinstance(m, dict) else None
    if not isinstance(parts, list) or len(parts) != topics.PARTITIONS or any(
            not isinstance(p, list) or not p or any(b not in fleet.brokers for b in p)
            for p in parts):
        raise BenchFailure(f"GET /api/v1/brokermap: no usable 'partitions' naming the "
                           f"bench's brokers {names}: {json.dumps(doc)[:300]}")
    return [list(p) for p in parts], "the cloud's map (GET /api/v1/brokermap)"


def _metrics(fleet: Fleet) -> dict[str, float]:
    """cloudcore's /metrics: every sample `name{labels}` -> value (one scrape)."""
    with fleet.urlopen("/metrics", timeout=30) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(val)
    return out


def _sum(m: dict[str, float], name: str, *labels: str) -> float:
    """Sum of the samples of `name` whose labels contain every `labels` text."""
    return sum(v for k, v in m.items()
               if (k == name or k.startswith(name + "{")) and all(t in k for t in labels))


def join_all(fleet: Fleet, names: list[str], *, keys_file: Path,
             threads: int = 8) -> list[str]:
    """Join every node of `names` through the API with one multi-use join token, as
    `Fleet.simulator_args` does, but over `threads` kept-alive HTTPS connections (one TLS
    handshake per thread, not per join: at 100,000 nodes the handshakes were most of the
    bench's own share of the join). Writes the simulators' `--keys` file (0600) and
    returns their arguments (keys, TLS against the fleet CA). RuntimeError naming the
    node and the answer when a join fails (429s are retried)."""
    assert fleet.ca_file is not None and fleet.broker is not None
    assert fleet.broker.ca_file is not None
    token = fleet.join_token(uses=len(names), ttl=7200, labels={})
    url = urllib.parse.urlsplit(fleet.api)
    ctx = ssl.create_default_context(cafile=str(fleet.ca_file))
    out: dict[str, Any] = {}
    lock = threading.Lock()

    def worker(part: list[str]) -> None:
        conn = http.client.HTTPSConnection(url.hostname or "127.0.0.1", url.port,
                                           context=ctx, timeout=120)
        got: dict[str, Any] = {}
        try:
            for name in part:
                body = json.dumps({"token": token, "name": name}).encode()
                for attempt in range(8):
                    try:
                        conn.request("POST", "/api/v1/join", body=body,
                                     headers={"content-type": "application/json"})
                        r = conn.getresponse()
                        data = r.read()
                    except (OSError, http.client.HTTPException):
                        conn.close()  # the next request opens a new connection
                        if attempt == 7:
                            raise
                        time.sleep(1 + attempt)
                        continue
                    if r.status == 429 and attempt < 7:
                        time.sleep(1 + attempt)
                        continue
                    if r.status != 200:
                        raise RuntimeError(f"join {name}: HTTP {r.status}: {data[:200]!r}")
                    doc = json.loads(data)
                    got[name] = {"key": doc["key"], **doc["credentials"]}
                    break
        finally:
            conn.close()
            with lock:
                out.update(got)

    errors: list[BaseException] = []

    def run(part: list[str]) -> None:
        try:
            worker(part)
        except BaseException as exc:  # reported below, with the node it failed on
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(names[i::threads],), daemon=True)
            for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise RuntimeError(f"joining {len(names)} nodes: {errors[0]}") from errors[0]
    fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(out, f)
    time.sleep(1.5)  # cloudcore rewrites the brokers' password file twice a second
    return ["--keys", str(keys_file), "--tls", "--ca-file", str(fleet.broker.ca_file)]


LAG_MAX = "cloudcore_event_loop_lag_max_seconds"
LAG = "cloudcore_event_loop_lag_seconds"


@contextmanager
def simulated_fleet(*, nodes: int, procs: int | None = None, workdir: Path,
                    secure: bool = True, sim_args: tuple[str, ...] = (),
                    cloud_tree: Path | None = None, brokers: int | None = None,
                    per_broker: int = PER_BROKER, per_sim: int | None = None,
                    rate: float = 500.0, stall_s: float = 60.0,
                    heartbeat_s: float = 300.0,
                    listen_backlog: int | None = None) -> Iterator[SimFleet]:
    """Start the brokers (`plan`: `ceil(nodes / per_broker)` unless `brokers`),
    cloudcore (from `cloud_tree` when given, see `_cloud_pythonpath`; one `--broker`
    flag per broker) and the simulator processes (sized by the open-file limit unless
    `procs`; `nodes` sessions in all, each node to its partition's broker by the
    cloud's map, with `sim_args` added; `listen_backlog`: the brokers', see `TierFleet`),
    joining every node first when `secure`; wait
    until every node is connected and registered, and stop everything on exit. Raises
    ValueError (a size that cannot work), BenchFailure (naming what is missing and why)
    or RuntimeError (a process did not start)."""
    p = plan(nodes, brokers=brokers, procs=procs, per_broker=per_broker, per_sim=per_sim)
    workdir = workdir.resolve()
    settings = FleetSettings(nodes=0, workdir=workdir, use_netns=False,
                             heartbeat_s=heartbeat_s, with_registry=False,
                             insecure=not secure,
                             # every join comes from this one address
                             cloud_args=("--join-rate", "1000000", "--join-burst", "1000000")
                             if secure else ())
    fleet = TierFleet(settings, brokers=p.brokers, listen_backlog=listen_backlog)
    stats = [workdir / f"sim-{i}.json" for i in range(p.procs)]
    for f in stats:
        f.unlink(missing_ok=True)
    # The workdir is the bench's scratch space: a cloud store left by an earlier run
    # (say of 10,000 nodes) would hold nodes that never connect now and never ack.
    for stale in ("cloud", "mosquitto", *(f"mosquitto-{i}" for i in range(1, 64))):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    sf = SimFleet(fleet=fleet, nodes=nodes, procs=p.procs, stats_files=stats, secure=secure,
                  stall_s=stall_s)
    try:
        with _cloud_pythonpath(cloud_tree):
            fleet.start()
        assert fleet.cloud is not None and fleet.cloud.pid is not None
        per = p.per_proc
        extra: list[str] = []
        if secure:
            c0, _ = _proc_usage(sf.cloud_pid)
            t_join = time.monotonic()
            extra = join_all(fleet, [f"sim-{i}" for i in range(nodes)],
                             keys_file=workdir / "keys.json")
            sf.join_s = time.monotonic() - t_join
            sf.join_cloud_cpu_s = _proc_usage(sf.cloud_pid)[0] - c0
        if p.brokers > 1:
            sf.partitions, sf.map_source = _partitions(fleet)
            mapfile = workdir / "broker-map.json"
            mapfile.write_text(json.dumps(broker_map(
                {n: f"{mq.host}:{mq.port}" for n, mq in fleet.brokers.items()},
                sf.partitions)))
            where = ["--broker-map", str(mapfile)]
        else:
            assert fleet.broker is not None
            where = ["--host", "127.0.0.1", "--port", str(fleet.broker.port)]
        sf.broker_rss_idle = sum(u[1] for u in sf.usage()["brokers"].values())
        t_conn = time.monotonic()
        for i in range(p.procs):
            count = min(per, nodes - i * per)
            argv = [sys.executable, "-m", "testbed.simulator", *where, "--prefix", "sim",
                    "--start", str(i * per), "--count", str(count), "--stats", str(stats[i]),
                    "--heartbeat", str(heartbeat_s), "--rate", str(rate),
                    "--gens-file", str(workdir / f"sim-{i}.gens.json"), *extra, *sim_args]
            sf.sims.append(
                Proc(f"sim-{i}", argv, log=workdir / "logs" / f"sim-{i}.log").start())
        sf.wait(what=f"{nodes} simulated sessions connected", count=lambda: sf.stats()[
            "connected"], target=nodes, timeout=max(600.0, nodes / 100))
        sf.connect_s = time.monotonic() - t_conn
        sf.wait(what=f"{nodes} nodes registered Ready",
                count=lambda: _sum(_metrics(fleet), "cloudcore_nodes", 'ready="Ready"'),
                target=nodes, timeout=max(600.0, nodes / 100))
        sf.registered_s = time.monotonic() - t_conn
        time.sleep(2)
        sf.broker_rss_connected = sum(u[1] for u in sf.usage()["brokers"].values())
        yield sf
    finally:
        for s in sf.sims:  # all at once: each closes its sessions, bounded at 10 s
            if s.alive() and s.popen is not None:
                s.popen.send_signal(signal.SIGTERM)
        for s in sf.sims:
            s.stop(timeout=30)
        fleet.stop()


@contextmanager
def stoppable() -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM raise KeyboardInterrupt (also when started
    in the background, where SIGINT comes ignored), so a stopped bench still stops its
    brokers, cloudcore and simulators; the old handlers are put back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in old:
        signal.signal(sig, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _mode_label(modes: tuple[str, ...] | None, nodes: int) -> tuple[str, ...]:
    """`--mode` unset: the secure fleet only (the fleet as deployed). The open broker of
    the insecure fleet runs only when asked for by name (`--mode insecure` or `both`),
    and says so in the log, as every open path of the project does."""
    if modes:
        if "insecure" in modes:
            asked = "both" if len(modes) > 1 else "insecure"
            print("bench sync: WARNING: the insecure fleet runs an ANONYMOUS broker with "
                  f"plain messages (asked for with --mode {asked})", file=sys.stderr, flush=True)
        return modes
    return ("secure",)


def bench_sync(*, nodes: int, procs: int | None = None, workdir: Path,
               modes: tuple[str, ...] | None = ("secure", "insecure"),
               cloud_tree: Path | None = None, steady_s: float = 60.0,
               brokers: int | None = None, per_broker: int = PER_BROKER,
               per_sim: int | None = None, rate: float = 500.0,
               stall_s: float = 60.0, py_spy: Path | None = None) -> int:
    """`testbed bench sync`: each of `modes` in turn (secure: auth, TLS and sealed
    messages; insecure: none of it), then both side by side; cloudcore from
    `cloud_tree` when given. Brokers and simulator processes as `plan` sizes them.
    With `py_spy` (a py-spy executable) each phase of the cloud is profiled into
    `py-spy-<phase>.txt` beside that mode's result."""
    modes = _mode_label(modes, nodes)
    try:
        p = plan(nodes, brokers=brokers, procs=procs, per_broker=per_broker, per_sim=per_sim)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        with stoppable():
            for mode in modes:
                print(f"== {mode} fleet of {nodes} simulated nodes, {p.brokers} broker(s), "
                      f"{p.procs} simulator process(es), cloudcore from "
                      f"{cloud_tree or 'this checkout'}, load "
                      f"{Path('/proc/loadavg').read_text().strip()}", flush=True)
                with simulated_fleet(nodes=nodes, procs=p.procs, workdir=workdir / mode,
                                     secure=mode == "secure", cloud_tree=cloud_tree,
                                     brokers=p.brokers, per_broker=per_broker,
                                     per_sim=per_sim, rate=rate, stall_s=stall_s) as sf:
                    results[mode] = _sync(sf, (workdir / mode).resolve(), steady_s=steady_s,
                                          py_spy=py_spy)
                    results[mode]["cloud_tree"] = str(cloud_tree or "this checkout")
    except (BenchFailure, TimeoutError, RuntimeError, ValueError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        (workdir / "result.json").write_text(json.dumps(
            {"ok": False, "error": str(exc), **results}, indent=2))
        return 1
    except KeyboardInterrupt:
        print("bench interrupted; everything it started is stopped", file=sys.stderr)
        (workdir / "result.json").write_text(json.dumps(
            {"ok": False, "error": "interrupted (Ctrl-C or SIGTERM)", **results}, indent=2))
        return 130
    out: dict[str, Any] = dict(results)
    if len(results) > 1:
        print("== side by side")
        print(json.dumps(_compare(results), indent=2))
        out = {"compare": _compare(results), **results}
    (workdir / "result.json").write_text(json.dumps({"ok": True, **out}, indent=2))
    print(f"result: {workdir / 'result.json'}")
    return 0


def _compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    keys = ("cloud_cpu_ms_per_node_update", "bytes_down_per_node", "bytes_up_per_node",
            "broker_wire_bytes_per_node", "all_nodes_applied_s", "cloud_recorded_all_acks_s")
    out: dict[str, Any] = {}
    for phase in ("create", "update"):
        out[phase] = {k: {m: r[phase][k] for m, r in results.items()} for k in keys}
    for k in ("broker_rss_kib_per_session", "connect_s", "cloud_rss_mb",
              "cloud_rss_mb_per_1000_nodes", "cloud_rss_idle_mb_per_1000_nodes", "idle"):
        out[k] = {m: r.get(k) for m, r in results.items()}
    return out


def _messages_in(fleet: Fleet, kind: str) -> float:
    """Messages of type `kind` (report, ack...) cloudcore has handled, from its metrics
    (`cloudcore_messages_in_total{type=...}`): one scrape, cheap beside a list of
    every node."""
    return _sum(_metrics(fleet), "cloudcore_messages_in_total", f'type="{kind}"')


def _reports_in(fleet: Fleet) -> float:
    return _messages_in(fleet, "report")


def _idle(sf: SimFleet, seconds: float) -> dict[str, Any]:
    """`seconds` of a settled fleet that only reports (its heartbeats, nothing changes):
    the idle cost of issue 14. Per node per second: the cloud's and the brokers' CPU
    (microseconds, from /proc of each process), the bytes through the brokers' sockets
    (/proc/PID/io: both legs, edge <-> broker <-> cloud, both directions, TLS records and
    MQTT framing included) and the sealed MQTT payload bytes the simulated nodes sent
    and received; also the messages per node per hour and the cloud's CPU-ms per status
    report it handled (`cloudcore_messages_in_total{type="report"}`)."""
    nodes = sf.nodes
    n0 = _reports_in(sf.fleet)
    st0 = sf.full_stats()
    u0 = sf.usage()
    io0 = {n: _proc_io(pid) for n, pid in sf.broker_pids().items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    u1 = sf.usage()
    io1 = {n: _proc_io(pid) for n, pid in sf.broker_pids().items() if n in io0}
    elapsed = time.monotonic() - t0
    time.sleep(1.2)  # the simulators' stats files are rewritten every second
    st1 = sf.full_stats()
    n1 = _reports_in(sf.fleet)
    reports = n1 - n0

    def cpu(kind: str) -> float:
        return sum(v[0] - u0.get(kind, {}).get(name, (v[0], 0))[0]
                   for name, v in u1.get(kind, {}).items())

    node_s = nodes * elapsed
    cloud_s, broker_s, sim_s = cpu("cloud"), cpu("brokers"), cpu("simulators")
    wire = sum(io1[n] - io0[n] for n in io1)
    msgs = st1["msgs_in"] + st1["msgs_out"] - st0["msgs_in"] - st0["msgs_out"]
    return {"seconds": round(elapsed, 1), "reports": int(reports),
            "cloud_cpu_s": round(cloud_s, 2),
            "cloud_cpu_pct": round(cloud_s / elapsed * 100, 1),
            "cloud_cpu_ms_per_report": round(cloud_s * 1000 / reports, 3)
            if reports else None,
            "cloud_cpu_us_per_node_s": round(cloud_s * 1e6 / node_s, 3),
            "broker_cpu_s": round(broker_s, 2),
            "broker_cpu_pct": round(broker_s / elapsed * 100, 1),
            "broker_cpu_us_per_node_s": round(broker_s * 1e6 / node_s, 3),
            "simulator_cpu_us_per_node_s": round(sim_s * 1e6 / node_s, 3),
            "broker_wire_bytes_per_node_s": round(wire / node_s, 3),
            "payload_bytes_down_per_node_s": round(
                (st1["bytes_in"] - st0["bytes_in"]) / node_s, 3),
            "payload_bytes_up_per_node_s": round(
                (st1["bytes_out"] - st0["bytes_out"]) / node_s, 3),
            "msgs_per_node_hour": round(msgs / node_s * 3600, 2),
            "load1": Path("/proc/loadavg").read_text().split()[0]}


class LagWatch:
    """The worst event-loop lag cloudcore reported over the scrapes made through `scrape`:
    `worst` from `cloudcore_event_loop_lag_max_seconds` (cloudcore's own worst over the
    minute before each scrape, so it may include up to a minute before the first one),
    `worst_sampled` from `cloudcore_event_loop_lag_seconds` (the lag at each scrape only)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.worst = 0.0
        self.worst_sampled = 0.0

    def scrape(self) -> dict[str, float]:
        m = _metrics(self.fleet)
        self.worst = max(self.worst, _sum(m, LAG_MAX))
        self.worst_sampled = max(self.worst_sampled, _sum(m, LAG))
        return m

    def reset(self) -> None:
        self.worst = self.worst_sampled = 0.0


def _kinds_delta(u0: dict[str, dict[str, tuple[float, int]]],
                 u1: dict[str, dict[str, tuple[float, int]]], nodes: int) -> dict[str, float]:
    """CPU seconds per 1,000 nodes of each process kind between two `usage()` readings."""
    out = {}
    for kind, procs in u1.items():
        cpu = sum(v[0] - u0.get(kind, {}).get(n, (v[0], 0))[0] for n, v in procs.items())
        out[kind] = round(cpu / nodes * 1000, 3)
    return out


def _rss(u: dict[str, dict[str, tuple[float, int]]]) -> dict[str, Any]:
    """RSS of every process (MB), and the sum per kind."""
    return {kind: {"each_mb": {n: round(v[1] / 2**20, 1) for n, v in procs.items()},
                   "sum_mb": round(sum(v[1] for v in procs.values()) / 2**20, 1)}
            for kind, procs in u.items()}


NODE_TABLE_FIELDS = ("metadata.name,spec.unschedulable,status.ackedGen,status.desiredGen,"
                     "status.lastSeen,status.ready")
"""The fields of `fedctl get nodes`, a view cloudcore keeps encoded from start to stop
(`cloudcore.fleet.projection.NODE_TABLE`). The bench lists nodes with exactly these: a
list of whole nodes made the cloud keep a second encoded copy of every node for ten
minutes (about 100 MB at 100,000 nodes, in the cloud RSS figure; issue 14)."""


def node_table(fleet: Fleet) -> list[dict[str, Any]]:
    """Every node, the fields of `NODE_TABLE_FIELDS` only."""
    return list(fleet.get(f"/api/v1/nodes?fields={NODE_TABLE_FIELDS}")["items"])


def cloud_past(fleet: Fleet, base: int) -> int:
    """Nodes the cloud lists with `ackedGen == desiredGen` above `base` (one list of every
    node: a node whose new desired state is not made yet does not count)."""
    return sum(1 for n in node_table(fleet)
               if int(n["status"].get("ackedGen", 0)) >= int(n["status"].get("desiredGen", 0))
               > base)


def after_deltas(sf: SimFleet) -> int:
    """Desired deltas the simulated nodes have received so far."""
    return sum(int(st.get("deltas_in", 0)) for st in sf.sim_stats())


def _recorded(sf: SimFleet, label: str, base: int, lag: LagWatch, *, acks_before: float,
              timeout: float) -> tuple[float, int]:
    """Wait until the cloud recorded every node's ack past `base`; the monotonic time it
    did and the node lists made to confirm it."""
    fleet, nodes = sf.fleet, sf.nodes
    lists = 0

    def cloud_acked() -> float:
        nonlocal lists
        lists += 1
        return cloud_past(fleet, base)

    # Wait on the ack counter (a metrics scrape), then confirm with a list of every
    # node: the cloud's CPU is the updates', not 20-50 lists of 15k nodes made by
    # this bench while it waits (as it was until issue 13).
    # a scrape costs the cloud a pass over every node's readiness: at most 2 a second
    # above 20,000 nodes (5 a second were ~2 % of its time at 100,000)
    sf.wait(what=f"{label}: the cloud received every node's ack",
            count=lambda: _sum(lag.scrape(), "cloudcore_messages_in_total", 'type="ack"')
            - acks_before, target=nodes, timeout=timeout,
            interval=0.2 if nodes <= 20_000 else 0.5)
    sf.wait(what=f"{label}: the cloud recorded every ack (ackedGen == desiredGen > {base})",
            count=cloud_acked, target=nodes, timeout=timeout, interval=1.0)
    return time.monotonic(), lists


@contextmanager
def profiled(py_spy: Path | None, pid: int, out: Path) -> Iterator[None]:
    """While the block runs, `py_spy record` samples process `pid` (50 a second, idle
    included, without pausing it) into `out` (collapsed stacks, one line per stack and
    its count: `flamegraph.pl` or a sort reads them). Nothing when `py_spy` is None."""
    if py_spy is None:
        yield
        return
    proc = subprocess.Popen(
        [str(py_spy), "record", "--nonblocking", "--idle", "--rate", "50", "--format",
         "raw", "--output", str(out), "--pid", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not out.is_file():
            print(f"py-spy wrote no profile to {out}: {err.decode(errors='replace')[-500:]}",
                  file=sys.stderr, flush=True)


def update_phase(sf: SimFleet, label: str, args: list[str], lag: LagWatch,
                 *, timeout: float = 900.0, py_spy: Path | None = None,
                 workdir: Path | None = None) -> dict[str, Any]:
    """Apply DaemonSet `bench` with `args` and wait until every node applied it (the
    simulators) and the cloud recorded every ack; the figures of that phase."""
    fleet, nodes = sf.fleet, sf.nodes
    before = sf.full_stats()
    # Every node is at one gen between phases; the phase is done for a node once it is
    # past the highest (counting applies instead let a node that got two deltas, as
    # a 100,000-node DaemonSet expanded in chunks can send, stand in for one that got
    # none yet).
    base = max(before["at_gen"], default=0)
    behind = nodes - before["at_gen"].get(base, 0)
    acks_before = _messages_in(fleet, "ack")
    before_deltas = after_deltas(sf)
    u0 = sf.usage()
    io0 = sum(_proc_io(pid) for pid in sf.broker_pids().values())
    lag.reset()
    profile = (workdir or Path(".")) / f"py-spy-{label}.txt"
    with profiled(py_spy, sf.cloud_pid, profile):
        t0 = time.monotonic()
        fleet.apply([_ds(args)])
        sf.wait(what=f"{label}: every node applied it (past gen {base})",
                count=lambda: nodes_past(sf.stats(), base), target=nodes,
                timeout=timeout, interval=0.2)
        edge_s = time.monotonic() - t0
        cloud_s = _recorded(sf, label, base, lag, acks_before=acks_before, timeout=timeout)
    time.sleep(1.2)  # the simulators' stats files are rewritten every second
    after = sf.stats()
    u1 = sf.usage()
    lag.scrape()
    io1 = sum(_proc_io(pid) for pid in sf.broker_pids().values())
    cloud_cpu = u1["cloud"]["cloudcore"][0] - u0["cloud"]["cloudcore"][0]
    return {
        "all_nodes_applied_s": round(edge_s, 2),
        "cloud_recorded_all_acks_s": round(cloud_s[0] - t0, 2),
        "msgs_per_node_update": round(
            (after["msgs_in"] + after["msgs_out"] - before["msgs_in"]
             - before["msgs_out"]) / nodes, 2),
        "bytes_down_per_node": round((after["bytes_in"] - before["bytes_in"]) / nodes),
        "bytes_up_per_node": round((after["bytes_out"] - before["bytes_out"]) / nodes),
        # both legs (cloud <-> broker <-> node), both directions, as the brokers'
        # sockets saw them: TLS records and MQTT framing included
        "broker_wire_bytes_per_node": round((io1 - io0) / nodes),
        "cloud_cpu_s_per_1000_nodes": round(cloud_cpu / nodes * 1000, 3),
        # the same figure read per node: CPU-ms per node-update
        "cloud_cpu_ms_per_node_update": round(cloud_cpu * 1000 / nodes, 3),
        "cpu_s_per_1000_nodes": _kinds_delta(u0, u1, nodes),
        "worst_loop_lag_ms": round(lag.worst * 1000, 1),
        "loop_lag_sampled_max_ms": round(lag.worst_sampled * 1000, 1),
        "node_lists_while_waiting": cloud_s[1],
        "gen_before": base,
        "nodes_behind_at_start": behind,
        "deltas_per_node": round((after_deltas(sf) - before_deltas) / nodes, 2),
        "load1": Path("/proc/loadavg").read_text().split()[0],
    }


def edge_gens(sf: SimFleet, *, timeout: float = 60.0) -> dict[str, tuple[str | None, int]]:
    """Every simulated node's applied (epoch, gen): SIGUSR2 to each simulator, which
    writes its `--gens-file`; BenchFailure if one does not answer."""
    files = [Path(str(f).removesuffix(".json") + ".gens.json") for f in sf.stats_files]
    t0 = time.time()
    for proc in sf.sims:
        if proc.alive() and proc.popen is not None:
            proc.popen.send_signal(signal.SIGUSR2)
    out: dict[str, tuple[str | None, int]] = {}
    for proc, f in zip(sf.sims, files, strict=True):
        deadline = time.monotonic() + timeout
        while True:
            try:
                doc = json.loads(f.read_text())
                if float(doc["ts"]) >= t0:
                    break
            except (OSError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline or not proc.alive():
                raise BenchFailure(sf.diagnose(f"{proc.name} wrote no gens file ({f})"))
            time.sleep(0.2)
        out.update({n: (e, int(g)) for n, (e, g) in doc["nodes"].items()})
    return out


def audit(sf: SimFleet) -> dict[str, Any]:
    """Every node's applied state (the simulators) against the cloud's record (the API's
    node list): `acked_lost` counts nodes whose applied gen is below the gen the cloud
    recorded as acked (an acknowledged update the edge no longer has: must be 0);
    `behind` nodes not (yet) at their desired gen; `epochs` how many desired-state
    epochs the nodes hold (one, unless some were sent a snapshot under a new epoch)."""
    edge = edge_gens(sf)
    cloud = {n["metadata"]["name"]: n.get("status", {}) for n in node_table(sf.fleet)}
    lost, behind, missing = [], [], []
    for name, (_, gen) in edge.items():
        st = cloud.get(name)
        if st is None:
            missing.append(name)
            continue
        if gen < int(st.get("ackedGen", 0)):
            lost.append(name)
        if gen < int(st.get("desiredGen", 0)):
            behind.append(name)
    epochs = {e for e, _ in edge.values()}
    return {"nodes_checked": len(edge), "acked_lost": len(lost), "acked_lost_e_g": lost[:10],
            "behind_desired": len(behind), "behind_e_g": behind[:10],
            "unknown_to_cloud": len(missing), "epochs": len(epochs),
            "all_applied": not lost and not behind and not missing
            and len(edge) == sf.nodes}


def describe_fleet(sf: SimFleet) -> dict[str, Any]:
    """The brokers and processes a run used, for its result."""
    homed = sf.homed()
    u = sf.usage()
    return {
        "brokers": [{"name": n, "address": f"{mq.host}:{mq.port}",
                     "pid": mq.proc.pid if mq.proc else None,
                     "listen_backlog": mq.listen_backlog or "100 (mosquitto's own)",
                     "sessions_homed": homed.get(n, 0)}
                    for n, mq in sf.fleet.brokers.items()],
        "broker_map": sf.map_source or "one broker: every partition",
        "processes": {kind: {n: {"pid": pid, "rss_mb": round(u[kind].get(n, (0, 0))[1]
                                                                / 2**20, 1)}
                             for n, pid in pids.items()}
                      for kind, pids in sf.pids().items()},
        "simulator_sessions_each": [int(s.get("nodes", 0)) for s in sf.sim_stats()],
        "fd_limit": fd_limit(),
        "cloud_broker_view": _cloud_view(sf),
    }


def _cloud_view(sf: SimFleet) -> dict[str, Any] | str:
    """Per broker, the sessions the cloud last heard there and whether it is connected
    (`GET /api/v1/brokermap`), or why there is none."""
    try:
        doc = sf.fleet.get("/api/v1/brokermap")
    except urllib.error.HTTPError as exc:
        return f"none: GET /api/v1/brokermap answered {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"none: {exc}"
    return {n: {k: b.get(k) for k in ("sessions", "connected", "homeOf")}
            for n, b in (doc.get("brokers") or {}).items() if isinstance(b, dict)}


def _sync(sf: SimFleet, workdir: Path, *, steady_s: float = 60.0,
          py_spy: Path | None = None) -> dict[str, Any]:
    fleet, nodes = sf.fleet, sf.nodes
    _, rss0 = _proc_usage(sf.cloud_pid)
    lag = LagWatch(fleet)
    results: dict[str, Any] = {"nodes": nodes, "simulator_processes": sf.procs,
                               "broker_processes": len(sf.fleet.brokers),
                               "secure": sf.secure,
                               "load_start": Path("/proc/loadavg").read_text().split()[0],
                               "connect_s": round(sf.connect_s, 1),
                               "registered_s": round(sf.registered_s, 1),
                               "cloud_rss_idle_mb": round(rss0 / 2**20, 1),
                               "cloud_rss_idle_mb_per_1000_nodes":
                                   round(rss0 / 2**20 / nodes * 1000, 2),
                               "broker_rss_idle_mb": round(sf.broker_rss_idle / 2**20, 1),
                               "broker_rss_connected_mb":
                                   round(sf.broker_rss_connected / 2**20, 1),
                               "broker_rss_kib_per_session": round(
                                   (sf.broker_rss_connected - sf.broker_rss_idle)
                                   / 1024 / nodes, 1)}
    if sf.secure:
        results["join_s"] = round(sf.join_s, 1)
        results["join_cloud_cpu_s_per_1000_nodes"] = round(
            sf.join_cloud_cpu_s / nodes * 1000, 2)
    for label, args in (("create", ["sleep", "1"]), ("update", ["sleep", "2"])):
        results[label] = update_phase(sf, label, args, lag, py_spy=py_spy, workdir=workdir)
    if steady_s > 0:
        results["idle"] = _idle(sf, steady_s)
    m = lag.scrape()
    cpu1, rss1 = _proc_usage(sf.cloud_pid)
    results["cloud_rss_mb"] = round(rss1 / 2**20, 1)
    results["cloud_rss_mb_per_1000_nodes"] = round(rss1 / 2**20 / nodes * 1000, 2)
    results["cloud_cpu_s_total"] = round(cpu1, 1)
    results["worst_loop_lag_ms"] = round(max(results["create"]["worst_loop_lag_ms"],
                                             results["update"]["worst_loop_lag_ms"]), 1)
    results["cloud_desired_sent"] = int(_sum(m, "cloudcore_messages_out_total",
                                             'type="desired"'))
    results["cloud_desired_resends"] = int(_sum(m, "cloudcore_desired_resends_total"))
    results["edge_snapshots_in"] = sum(int(s.get("snapshots_in", 0)) for s in sf.sim_stats())
    results["edge_deltas_in"] = sum(int(s.get("deltas_in", 0)) for s in sf.sim_stats())
    results["gaps"] = sum(int(s.get("gaps", 0)) for s in sf.sim_stats())
    results["invalid"] = sum(int(s.get("invalid", 0)) for s in sf.sim_stats())
    results["audit"] = audit(sf)
    results["rss"] = _rss(sf.usage())
    results.update(describe_fleet(sf))
    results["load_end"] = Path("/proc/loadavg").read_text().split()[0]
    print(json.dumps(results, indent=2), flush=True)
    idle = results.get("idle") or {}
    print(f"cloud CPU per node-update: create {results['create']['cloud_cpu_ms_per_node_update']}"
          f" ms, update {results['update']['cloud_cpu_ms_per_node_update']} ms; idle "
          f"({idle.get('seconds')} s, {idle.get('reports')} reports): per node per second "
          f"cloud {idle.get('cloud_cpu_us_per_node_s')} us CPU, brokers "
          f"{idle.get('broker_cpu_us_per_node_s')} us CPU and "
          f"{idle.get('broker_wire_bytes_per_node_s')} wire bytes, "
          f"{idle.get('cloud_cpu_ms_per_report')} cloud CPU-ms per status report; RSS per 1,000 "
          f"nodes: {results['cloud_rss_idle_mb_per_1000_nodes']} MB idle, "
          f"{results['cloud_rss_mb_per_1000_nodes']} MB after both phases; worst loop lag "
          f"{results['worst_loop_lag_ms']} ms; load {results['load_start']} -> "
          f"{results['load_end']}", flush=True)
    (workdir / "result.json").write_text(json.dumps(results, indent=2))
    return results


# --- rollout -------------------------------------------------------------------------

CRASH_MARKER = "crash-now"
"""The simulators report a pod whose command or args contain this as crash-looping."""
_BATCH_LINE = re.compile(
    r"rollout of DaemonSet/default/bench: (\d+) more pod\(s\) get revision (\S+)")


def batch_size(text: str) -> int | str:
    """`--batch` as maxUnavailable takes it: a number ("500") or a percentage ("10%")."""
    t = text.strip()
    if t.isdigit() and int(t) >= 1:
        return int(t)
    if t.endswith("%") and t[:-1].isdigit() and 1 <= int(t[:-1]) <= 100:
        return t
    raise ValueError(f"--batch: {text!r} is not a number >= 1 or a percentage from 1% to 100%")


def _rollout_ds(args: list[str], batch: int | str) -> dict[str, Any]:
    doc = _ds(args)
    doc["spec"].update({
        "minReadySeconds": 0,
        "updateStrategy": {"type": "RollingUpdate",
                           "rollingUpdate": {"maxUnavailable": batch},
                           "failureThreshold": 0, "autoRollback": True},
    })
    return doc


class _Watch:
    """Polls DaemonSet default/bench; remembers the highest updatedNumberScheduled seen
    and the last status (for the message of a timeout)."""

    def __init__(self, sf: SimFleet) -> None:
        self.sf = sf
        self.max_updated = 0
        self.last: dict[str, Any] = {}

    def until(self, cond: Callable[[dict[str, Any], dict[str, Any]], bool], *,
              timeout: float, what: str, interval: float = 0.2) -> float:
        """Poll until `cond(metadata, status)`; the monotonic time it first held.
        Raises TimeoutError (with the last status) or RuntimeError (cloudcore died)."""
        cloud = self.sf.fleet.cloud
        assert cloud is not None
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            try:
                ds = self.sf.fleet.get("/api/v1/daemonsets/default/bench")
            except (urllib.error.URLError, OSError) as exc:
                if not cloud.alive():
                    raise RuntimeError(f"cloudcore exited:\n{cloud.tail()}") from exc
            else:
                meta, status = ds.get("metadata", {}), ds.get("status") or {}
                self.last = status
                if status.get("observedGeneration") == meta.get("generation"):
                    self.max_updated = max(self.max_updated,
                                           int(status.get("updatedNumberScheduled", 0)))
                if cond(meta, status):
                    return now
            if now > deadline:
                raise TimeoutError(f"{what}: not reached after {timeout:g} s "
                                   f"(last status: {json.dumps(self.last)})")
            time.sleep(interval)


def _current(meta: dict[str, Any], status: dict[str, Any]) -> bool:
    return status.get("observedGeneration") == meta.get("generation")


def _phase(status: dict[str, Any]) -> str:
    return str((status.get("rollout") or {}).get("phase", "Complete"))


def _batches(log: Path, offset: int, revision: str) -> tuple[int, int]:
    """(batches, pods) cloudcore's log says were given `revision` after `offset`."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    sizes = [int(m[1]) for m in _BATCH_LINE.finditer(text) if m[2] == revision]
    return len(sizes), sum(sizes)


def bench_rollout(*, nodes: int, procs: int | None, batch: int | str, workdir: Path,
                  secure: bool = True) -> int:
    try:
        with simulated_fleet(nodes=nodes, procs=procs, workdir=workdir, secure=secure,
                             sim_args=("--report-pods", "--crash-marker", CRASH_MARKER)) as sf:
            _rollout(sf, batch, workdir.resolve())
        return 0
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        print(f"bench failed: cloudcore answered {exc.code}: {body}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"bench failed: cannot reach cloudcore: {exc.reason}", file=sys.stderr)
        return 1
    except (TimeoutError, RuntimeError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1


def _rollout(sf: SimFleet, batch: int | str, workdir: Path) -> None:
    fleet, nodes = sf.fleet, sf.nodes
    assert fleet.cloud is not None and fleet.broker is not None and fleet.broker.proc
    log = fleet.cloud.log
    broker_pid = fleet.broker.proc.pid
    watch = _Watch(sf)
    results: dict[str, Any] = {"nodes": nodes, "simulator_processes": sf.procs,
                               "batch": batch, "connect_s": round(sf.connect_s, 1),
                               "registered_s": round(sf.registered_s, 1)}

    # a. every node at v1 (the first template goes to every node at once)
    t0 = time.monotonic()
    fleet.apply([_rollout_ds(["sleep", "v1"], batch)])
    t1 = watch.until(
        lambda m, s: (_current(m, s) and _phase(s) == "Complete"
                      and s.get("numberAvailable", 0) == nodes),
        timeout=600, what=f"create: Complete with {nodes} pods available")
    rev1 = watch.last["updateRevision"]
    results["create"] = {"complete_s": round(t1 - t0, 2)}
    time.sleep(2)

    # b. a good update, in batches of maxUnavailable
    mark, before = log.stat().st_size, sf.stats()
    c0, b0 = _proc_usage(sf.cloud_pid)[0], _proc_usage(broker_pid)[0]
    t0 = time.monotonic()
    fleet.apply([_rollout_ds(["sleep", "v2"], batch)])
    t1 = watch.until(
        lambda m, s: (_current(m, s) and s.get("updateRevision") != rev1
                      and _phase(s) == "Complete" and s.get("numberAvailable", 0) == nodes
                      and s.get("currentRevision") == s.get("updateRevision")),
        timeout=900, what=f"good update: Complete with {nodes} pods available")
    c1, b1 = _proc_usage(sf.cloud_pid)[0], _proc_usage(broker_pid)[0]
    rev2 = watch.last["updateRevision"]
    time.sleep(1.5)  # the simulators' stats files are rewritten every second
    after = sf.stats()
    batches, pods = _batches(log, mark, rev2)
    complete_s = t1 - t0
    results["good_update"] = {
        "complete_s": round(complete_s, 2),
        "batches": batches,
        "pods_updated_in_batches": pods,
        "s_per_batch": round(complete_s / batches, 2) if batches else None,
        "cloud_cpu_s": round(c1 - c0, 2),
        "broker_cpu_s": round(b1 - b0, 2),
        "msgs_per_node": round((after["msgs_in"] + after["msgs_out"]
                                - before["msgs_in"] - before["msgs_out"]) / nodes, 2),
    }

    # c. a bad update: the first batch crash-loops, the rollout is rolled back
    mark, before = log.stat().st_size, sf.stats()
    c0, b0 = _proc_usage(sf.cloud_pid)[0], _proc_usage(broker_pid)[0]
    watch.max_updated = 0
    t0 = time.monotonic()
    fleet.apply([_rollout_ds(["sh", "-c", CRASH_MARKER], batch)])
    t1 = watch.until(lambda m, s: _current(m, s) and _phase(s) == "RolledBack",
                     timeout=600, what="bad update: RolledBack")
    failed = int((watch.last.get("rollout") or {}).get("failed", 0))
    rev_bad = watch.last["updateRevision"]
    t2 = watch.until(
        lambda m, s: (_current(m, s) and s.get("currentRevision") == rev2
                      and s.get("updatedNumberScheduled", 0) == 0
                      and s.get("numberAvailable", 0) == nodes),
        timeout=600, what=f"bad update: all {nodes} pods available at the good revision again")
    c1, b1 = _proc_usage(sf.cloud_pid)[0], _proc_usage(broker_pid)[0]
    time.sleep(1.5)
    after = sf.stats()
    batches, pods = _batches(log, mark, rev_bad)
    results["bad_update"] = {
        "rolled_back_s": round(t1 - t0, 2),
        "all_available_again_s": round(t2 - t0, 2),
        "batches": batches,
        "pods_given_bad_template": pods,
        "max_updated_seen": watch.max_updated,
        "failed_at_rollback": failed,
        "cloud_cpu_s": round(c1 - c0, 2),
        "broker_cpu_s": round(b1 - b0, 2),
        "msgs_per_node": round((after["msgs_in"] + after["msgs_out"]
                                - before["msgs_in"] - before["msgs_out"]) / nodes, 2),
    }
    cpu, rss = _proc_usage(sf.cloud_pid)
    results["cloud_rss_mb"] = round(rss / 2**20, 1)
    results["cloud_cpu_s_total"] = round(cpu, 1)
    print(json.dumps(results, indent=2))
    (workdir / "result.json").write_text(json.dumps(results, indent=2))


def main(argv: list[str] | None = None) -> int:
    """`python -m testbed.bench sync|rollout`: the benches with the options `testbed
    bench` does not carry (`--cloud-tree`)."""
    p = argparse.ArgumentParser(prog="python -m testbed.bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["sync", "rollout"])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--procs", type=int, default=None,
                   help="simulator processes (default: enough for the open-file limit, "
                        "at least 2)")
    p.add_argument("--brokers", type=int, default=None,
                   help="mosquitto processes (default: nodes / --per-broker, rounded up)")
    p.add_argument("--per-broker", type=int, default=PER_BROKER,
                   help="sessions a broker is sized for (default %(default)s)")
    p.add_argument("--rate", type=float, default=500.0,
                   help="connects per second per simulator process (default %(default)s)")
    p.add_argument("--stall", type=float, default=60.0,
                   help="fail a wait after this many seconds without progress")
    p.add_argument("--mode", choices=["both", "secure", "insecure"], default=None,
                   help="sync: secure (the default), insecure (an anonymous broker, only when "
                        "asked) or both side by side; rollout: secure unless insecure")
    p.add_argument("--batch", default="10%", help="rollout: maxUnavailable (10%%)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--cloud-tree", type=Path, default=None,
                   help="run cloudcore from this source tree (PYTHONPATH, the cloud only)")
    p.add_argument("--idle", "--steady", dest="idle", type=float, default=60.0,
                   help="sync: seconds of the idle phase (fleet settled, reports only) "
                        "after the update, for the idle cost per node; 0 skips it")
    p.add_argument("--py-spy", type=Path, default=None, metavar="PATH",
                   help="sync: profile cloudcore in each phase with this py-spy executable "
                        "(install it outside the project's venv); collapsed stacks in "
                        "WORKDIR/MODE/py-spy-PHASE.txt")
    a = p.parse_args(argv)
    tree = a.cloud_tree.resolve() if a.cloud_tree else None
    if tree is not None and not (tree / "cloudcore" / "__main__.py").is_file():
        p.error(f"--cloud-tree {a.cloud_tree}: no cloudcore/__main__.py there")
    if a.what == "rollout":
        try:
            batch = batch_size(a.batch)
        except ValueError as exc:
            p.error(str(exc))
        if tree is not None:
            p.error("--cloud-tree: sync only")
        return bench_rollout(nodes=a.nodes, procs=a.procs, batch=batch,
                             workdir=a.workdir or Path("var/bench-rollout"),
                             secure=a.mode != "insecure")
    modes = sync_modes(a.mode)
    if a.py_spy is not None and not os.access(a.py_spy, os.X_OK):
        p.error(f"--py-spy {a.py_spy}: not an executable file")
    return bench_sync(nodes=a.nodes, procs=a.procs, workdir=a.workdir or Path("var/bench"),
                      modes=modes, cloud_tree=tree, steady_s=a.idle, brokers=a.brokers,
                      per_broker=a.per_broker, rate=a.rate, stall_s=a.stall, py_spy=a.py_spy)


def sync_modes(mode: str | None) -> tuple[str, ...] | None:
    """`--mode` as `bench_sync` takes it (None: by the fleet's size, `_mode_label`)."""
    if mode is None:
        return None
    return ("secure", "insecure") if mode == "both" else (mode,)


if __name__ == "__main__":
    sys.exit(main())
