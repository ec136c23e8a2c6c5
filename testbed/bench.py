"""`testbed bench sync|rollout`: a simulated fleet against one cloudcore and one mosquitto.

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
- a steady phase (`--steady S` seconds, default 60, after the update): the cloud's
  CPU-ms per node status report it handled (its `cloudcore_messages_in_total` reports)
  while the fleet only reports (heartbeats every ~300 s per node) and nothing changes.

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

Both share `simulated_fleet` (broker, cloudcore, simulator processes, teardown). The
fleet is secure by default, as `testbed up` runs it: every simulated node is joined
through the API first (`Fleet.join_many`: one multi-use join token, concurrent joins; the
simulators get the node keys and broker credentials in a `--keys` file), then
connects over TLS and seals every message. `bench sync` measures both the secure and
the `--insecure` fleet in one run and prints them side by side, with the broker's
memory per session.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import urllib.error
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    total: dict[str, Any] = {"connected": 0, "gens": {}, "msgs_in": 0, "msgs_out": 0,
                             "bytes_in": 0, "bytes_out": 0}
    for f in files:
        try:
            s = json.loads(f.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        for k in ("connected", "msgs_in", "msgs_out", "bytes_in", "bytes_out"):
            total[k] += int(s.get(k, 0))
        for g, n in s.get("gens", {}).items():
            total["gens"][int(g)] = total["gens"].get(int(g), 0) + int(n)
    return total


def _ds(image_args: list[str]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "bench"},
            "spec": {"template": {"metadata": {"labels": {"app": "bench"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox",
                                                           "args": image_args}]}}}}


@dataclass
class SimFleet:
    """A running benchmark fleet: mosquitto, cloudcore and the simulator processes."""

    fleet: Fleet
    nodes: int
    procs: int
    stats_files: list[Path]
    secure: bool = True
    sims: list[Proc] = field(default_factory=list)
    join_s: float = 0.0  # secure: joining every node through the API
    join_cloud_cpu_s: float = 0.0
    connect_s: float = 0.0  # from starting the simulators until every session is up
    registered_s: float = 0.0  # ... until cloudcore lists every node
    broker_rss_idle: int = 0  # bytes, before the simulators connect
    broker_rss_connected: int = 0  # ... once every session is up

    @property
    def cloud_pid(self) -> int:
        assert self.fleet.cloud is not None and self.fleet.cloud.pid is not None
        return self.fleet.cloud.pid

    @property
    def broker_pid(self) -> int:
        assert self.fleet.broker is not None and self.fleet.broker.proc is not None
        return self.fleet.broker.proc.pid

    def stats(self) -> dict[str, Any]:
        """The simulators' counters, summed (each file is rewritten every second)."""
        return _stats(self.stats_files)


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


@contextmanager
def simulated_fleet(*, nodes: int, procs: int, workdir: Path, secure: bool = True,
                    sim_args: tuple[str, ...] = (),
                    cloud_tree: Path | None = None) -> Iterator[SimFleet]:
    """Start mosquitto, cloudcore (from `cloud_tree` when given, see
    `_cloud_pythonpath`) and `procs` simulator processes (`nodes` sessions in all, with
    `sim_args` added), joining every node first when `secure`, wait until every node is
    connected and registered, and stop everything on exit. Raises TimeoutError or
    RuntimeError if it cannot."""
    workdir = workdir.resolve()
    settings = FleetSettings(nodes=0, workdir=workdir, use_netns=False, heartbeat_s=300,
                             with_registry=False, insecure=not secure,
                             # every join comes from this one address
                             cloud_args=("--join-rate", "1000000", "--join-burst", "1000000")
                             if secure else ())
    fleet = Fleet(settings)
    stats = [workdir / f"sim-{i}.json" for i in range(procs)]
    for f in stats:
        f.unlink(missing_ok=True)
    # The workdir is the bench's scratch space: a cloud store left by an earlier run
    # (say of 10,000 nodes) would hold nodes that never connect now and never ack.
    for stale in ("cloud", "mosquitto"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    sf = SimFleet(fleet=fleet, nodes=nodes, procs=procs, stats_files=stats, secure=secure)
    try:
        with _cloud_pythonpath(cloud_tree):
            fleet.start()
        assert fleet.cloud is not None and fleet.cloud.pid is not None
        assert fleet.broker is not None
        per = -(-nodes // procs)
        extra: list[str] = []
        if secure:
            c0, _ = _proc_usage(sf.cloud_pid)
            t_join = time.monotonic()
            extra = fleet.simulator_args([f"sim-{i}" for i in range(nodes)],
                                         keys_file=workdir / "keys.json")
            sf.join_s = time.monotonic() - t_join
            sf.join_cloud_cpu_s = _proc_usage(sf.cloud_pid)[0] - c0
        _, sf.broker_rss_idle = _proc_usage(sf.broker_pid)
        t_conn = time.monotonic()
        for i in range(procs):
            count = min(per, nodes - i * per)
            argv = [sys.executable, "-m", "testbed.simulator", "--host", "127.0.0.1",
                    "--port", str(fleet.broker.port), "--prefix", "sim", "--start",
                    str(i * per), "--count", str(count), "--stats", str(stats[i]),
                    "--heartbeat", "300", *extra, *sim_args]
            sf.sims.append(
                Proc(f"sim-{i}", argv, log=workdir / "logs" / f"sim-{i}.log").start())
        fleet.wait(lambda: _stats(stats)["connected"] >= nodes, timeout=600,
                   what=f"{nodes} simulated sessions connected", interval=1)
        sf.connect_s = time.monotonic() - t_conn
        fleet.wait(lambda: sum(1 for n in fleet.nodes()
                               if n.get("status", {}).get("ready") == "Ready") >= nodes,
                   timeout=600, what=f"{nodes} nodes registered", interval=1)
        sf.registered_s = time.monotonic() - t_conn
        time.sleep(2)
        _, sf.broker_rss_connected = _proc_usage(sf.broker_pid)
        yield sf
    finally:
        for s in sf.sims:
            s.stop()
        fleet.stop()


def bench_sync(*, nodes: int, procs: int, workdir: Path, modes: tuple[str, ...] = (
        "secure", "insecure"), cloud_tree: Path | None = None, steady_s: float = 60.0) -> int:
    """`testbed bench sync`: each of `modes` in turn (secure: auth, TLS and sealed
    messages; insecure: none of it), then both side by side; cloudcore from
    `cloud_tree` when given."""
    results: dict[str, Any] = {}
    try:
        for mode in modes:
            print(f"== {mode} fleet of {nodes} simulated nodes, cloudcore from "
                  f"{cloud_tree or 'this checkout'}, load "
                  f"{Path('/proc/loadavg').read_text().strip()}", flush=True)
            with simulated_fleet(nodes=nodes, procs=procs, workdir=workdir / mode,
                                 secure=mode == "secure", cloud_tree=cloud_tree) as sf:
                results[mode] = _sync(sf, (workdir / mode).resolve(), steady_s=steady_s)
                results[mode]["cloud_tree"] = str(cloud_tree or "this checkout")
    except (TimeoutError, RuntimeError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    if len(results) > 1:
        print("== side by side")
        print(json.dumps(_compare(results), indent=2))
        (workdir / "result.json").write_text(json.dumps(
            {"compare": _compare(results), **results}, indent=2))
    return 0


def _compare(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    keys = ("cloud_cpu_ms_per_node_update", "bytes_down_per_node", "bytes_up_per_node",
            "broker_wire_bytes_per_node", "all_nodes_applied_s", "cloud_recorded_all_acks_s")
    out: dict[str, Any] = {}
    for phase in ("create", "update"):
        out[phase] = {k: {m: r[phase][k] for m, r in results.items()} for k in keys}
    for k in ("broker_rss_kib_per_session", "connect_s", "cloud_rss_mb",
              "cloud_rss_mb_per_1000_nodes", "cloud_rss_idle_mb_per_1000_nodes", "steady"):
        out[k] = {m: r.get(k) for m, r in results.items()}
    return out


def _messages_in(fleet: Fleet, kind: str) -> float:
    """Messages of type `kind` (report, ack...) cloudcore has handled, from its metrics
    (`cloudcore_messages_in_total{type=...}`): one scrape, cheap beside a list of
    every node."""
    with fleet.urlopen("/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cloudcore_messages_in_total{") and f'type="{kind}"' in line)


def _reports_in(fleet: Fleet) -> float:
    return _messages_in(fleet, "report")


def _steady(sf: SimFleet, seconds: float) -> dict[str, Any]:
    """`seconds` of a settled fleet that only reports: the cloud's CPU-ms per node
    status report it handled, and its CPU share."""
    n0 = _reports_in(sf.fleet)
    c0, _ = _proc_usage(sf.cloud_pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    c1, _ = _proc_usage(sf.cloud_pid)
    elapsed = time.monotonic() - t0
    n1 = _reports_in(sf.fleet)
    reports = n1 - n0
    return {"seconds": round(elapsed, 1), "reports": int(reports),
            "cloud_cpu_s": round(c1 - c0, 2),
            "cloud_cpu_pct": round((c1 - c0) / elapsed * 100, 1),
            "cloud_cpu_ms_per_report": round((c1 - c0) * 1000 / reports, 3)
            if reports else None}


def _sync(sf: SimFleet, workdir: Path, *, steady_s: float = 60.0) -> dict[str, Any]:
    fleet, nodes, stats = sf.fleet, sf.nodes, sf.stats_files
    _, rss0 = _proc_usage(sf.cloud_pid)
    results: dict[str, Any] = {"nodes": nodes, "simulator_processes": sf.procs,
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
        before = _stats(stats)
        gens_before = sum(before["gens"].values())
        acks_before = _messages_in(fleet, "ack")
        c0, _ = _proc_usage(sf.cloud_pid)
        io0 = _proc_io(sf.broker_pid)
        t0 = time.monotonic()
        fleet.apply([_ds(args)])
        fleet.wait(lambda b=gens_before: sum(_stats(stats)["gens"].values()) >= b + nodes,
                   timeout=900, what=f"{label}: all {nodes} nodes applied", interval=0.2)
        edge_s = time.monotonic() - t0

        lists = 0

        def cloud_acked() -> bool:
            nonlocal lists
            lists += 1
            return all(n["status"].get("ackedGen", 0) >= n["status"].get("desiredGen", 1)
                       for n in fleet.nodes())

        # Wait on the ack counter (a metrics scrape), then confirm with a list of every
        # node: the cloud's CPU is the updates', not 20-50 lists of 15k nodes made by
        # this bench while it waits (as it was until issue 13).
        fleet.wait(lambda a=acks_before: _messages_in(fleet, "ack") >= a + nodes,
                   timeout=300, what=f"{label}: cloud received {nodes} acks", interval=0.2)
        fleet.wait(cloud_acked, timeout=300, what=f"{label}: cloud recorded all acks",
                   interval=1.0)
        cloud_s = time.monotonic() - t0
        time.sleep(1)
        after = _stats(stats)
        c1, rss1 = _proc_usage(sf.cloud_pid)
        io1 = _proc_io(sf.broker_pid)
        results[label] = {
            "all_nodes_applied_s": round(edge_s, 2),
            "cloud_recorded_all_acks_s": round(cloud_s, 2),
            "msgs_per_node_update": round(
                (after["msgs_in"] + after["msgs_out"] - before["msgs_in"]
                 - before["msgs_out"]) / nodes, 2),
            "bytes_down_per_node": round((after["bytes_in"] - before["bytes_in"]) / nodes),
            "bytes_up_per_node": round((after["bytes_out"] - before["bytes_out"]) / nodes),
            # both legs (cloud <-> broker <-> node), both directions, as the broker's
            # sockets saw them: TLS records and MQTT framing included
            "broker_wire_bytes_per_node": round((io1 - io0) / nodes),
            "cloud_cpu_s_per_1000_nodes": round((c1 - c0) / nodes * 1000, 3),
            # the same figure read per node: CPU-ms per node-update
            "cloud_cpu_ms_per_node_update": round((c1 - c0) * 1000 / nodes, 3),
            "node_lists_while_waiting": lists,
            "load1": Path("/proc/loadavg").read_text().split()[0],
        }
    if steady_s > 0:
        results["steady"] = _steady(sf, steady_s)
    cpu1, rss1 = _proc_usage(sf.cloud_pid)
    results["cloud_rss_mb"] = round(rss1 / 2**20, 1)
    results["cloud_rss_mb_per_1000_nodes"] = round(rss1 / 2**20 / nodes * 1000, 2)
    results["cloud_cpu_s_total"] = round(cpu1, 1)
    results["load_end"] = Path("/proc/loadavg").read_text().split()[0]
    print(json.dumps(results, indent=2), flush=True)
    steady = results.get("steady") or {}
    print(f"cloud CPU per node-update: create {results['create']['cloud_cpu_ms_per_node_update']}"
          f" ms, update {results['update']['cloud_cpu_ms_per_node_update']} ms; steady: "
          f"{steady.get('cloud_cpu_ms_per_report')} ms per node status report "
          f"({steady.get('reports')} reports in {steady.get('seconds')} s); RSS per 1,000 "
          f"nodes: {results['cloud_rss_idle_mb_per_1000_nodes']} MB idle, "
          f"{results['cloud_rss_mb_per_1000_nodes']} MB after both phases; load "
          f"{results['load_start']} -> {results['load_end']}", flush=True)
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


def bench_rollout(*, nodes: int, procs: int, batch: int | str, workdir: Path,
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
    bench` does not carry (`--cloud-tree`, `--steady`)."""
    p = argparse.ArgumentParser(prog="python -m testbed.bench",
                                description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["sync", "rollout"])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--procs", type=int, default=2, help="simulator processes")
    p.add_argument("--mode", choices=["both", "secure", "insecure"], default="both",
                   help="sync: secure, insecure or both side by side; rollout: secure "
                        "unless insecure")
    p.add_argument("--batch", default="10%", help="rollout: maxUnavailable (10%%)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--cloud-tree", type=Path, default=None,
                   help="run cloudcore from this source tree (PYTHONPATH, the cloud only)")
    p.add_argument("--steady", type=float, default=60.0,
                   help="sync: seconds of the steady (reports only) phase; 0 skips it")
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
    modes = ("secure", "insecure") if a.mode == "both" else (a.mode,)
    return bench_sync(nodes=a.nodes, procs=a.procs, workdir=a.workdir or Path("var/bench"),
                      modes=modes, cloud_tree=tree, steady_s=a.steady)


if __name__ == "__main__":
    sys.exit(main())
