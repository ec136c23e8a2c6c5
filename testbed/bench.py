"""`testbed bench sync`: a simulated fleet against one cloudcore and one mosquitto.

Measures, in one run on this machine:
- time from `apply` of a DaemonSet until every node has applied and acked it
  (edge side, from the simulators' stats) and until cloudcore has recorded every ack;
- the same for an update of the DaemonSet's args (a delta to every node);
- messages and bytes on the wire per node-update (both directions);
- cloudcore CPU seconds and RSS, per 1,000 nodes.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from testbed.broker import Mosquitto
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


def bench_sync(*, nodes: int, procs: int, workdir: Path) -> int:
    workdir = workdir.resolve()
    settings = FleetSettings(nodes=0, workdir=workdir, use_netns=False, heartbeat_s=300,
                             with_registry=False)
    fleet = Fleet(settings)
    sims: list[Proc] = []
    stats = [workdir / f"sim-{i}.json" for i in range(procs)]
    for f in stats:
        f.unlink(missing_ok=True)
    # The workdir is the bench's scratch space: a cloud store left by an earlier run
    # (say of 10,000 nodes) would hold nodes that never connect now and never ack.
    for stale in ("cloud", "mosquitto"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    try:
        fleet.workdir.mkdir(parents=True, exist_ok=True)
        fleet.broker = Mosquitto(workdir=workdir / "mosquitto").start()
        fleet.start_cloud()
        assert fleet.cloud is not None and fleet.cloud.pid is not None
        per = -(-nodes // procs)
        t_conn = time.monotonic()
        for i in range(procs):
            count = min(per, nodes - i * per)
            argv = [sys.executable, "-m", "testbed.simulator", "--host", "127.0.0.1",
                    "--port", str(fleet.broker.port), "--prefix", "sim", "--start",
                    str(i * per), "--count", str(count), "--stats", str(stats[i]),
                    "--heartbeat", "300"]
            sims.append(Proc(f"sim-{i}", argv, log=workdir / "logs" / f"sim-{i}.log").start())
        fleet.wait(lambda: _stats(stats)["connected"] >= nodes, timeout=600,
                   what=f"{nodes} simulated sessions connected", interval=1)
        connect_s = time.monotonic() - t_conn
        fleet.wait(lambda: len(fleet.nodes()) >= nodes, timeout=600,
                   what=f"{nodes} nodes registered", interval=1)
        registered_s = time.monotonic() - t_conn
        time.sleep(2)
        _, rss0 = _proc_usage(fleet.cloud.pid)
        results: dict[str, Any] = {"nodes": nodes, "simulator_processes": procs,
                                   "connect_s": round(connect_s, 1),
                                   "registered_s": round(registered_s, 1),
                                   "cloud_rss_idle_mb": round(rss0 / 2**20, 1)}
        for label, args in (("create", ["sleep", "1"]), ("update", ["sleep", "2"])):
            before = _stats(stats)
            gens_before = sum(before["gens"].values())
            c0, _ = _proc_usage(fleet.cloud.pid)
            t0 = time.monotonic()
            fleet.apply([_ds(args)])
            fleet.wait(lambda b=gens_before: sum(_stats(stats)["gens"].values()) >= b + nodes,
                       timeout=900, what=f"{label}: all {nodes} nodes applied", interval=0.2)
            edge_s = time.monotonic() - t0

            def cloud_acked() -> bool:
                return all(n["status"].get("ackedGen", 0) >= n["status"].get("desiredGen", 1)
                           for n in fleet.nodes())

            fleet.wait(cloud_acked, timeout=300, what=f"{label}: cloud recorded all acks",
                       interval=0.5)
            cloud_s = time.monotonic() - t0
            time.sleep(1)
            after = _stats(stats)
            c1, rss1 = _proc_usage(fleet.cloud.pid)
            results[label] = {
                "all_nodes_applied_s": round(edge_s, 2),
                "cloud_recorded_all_acks_s": round(cloud_s, 2),
                "msgs_per_node_update": round(
                    (after["msgs_in"] + after["msgs_out"] - before["msgs_in"]
                     - before["msgs_out"]) / nodes, 2),
                "bytes_down_per_node": round((after["bytes_in"] - before["bytes_in"]) / nodes),
                "bytes_up_per_node": round((after["bytes_out"] - before["bytes_out"]) / nodes),
                "cloud_cpu_s_per_1000_nodes": round((c1 - c0) / nodes * 1000, 3),
            }
        cpu1, rss1 = _proc_usage(fleet.cloud.pid)
        results["cloud_rss_mb"] = round(rss1 / 2**20, 1)
        results["cloud_rss_mb_per_1000_nodes"] = round(rss1 / 2**20 / nodes * 1000, 2)
        results["cloud_cpu_s_total"] = round(cpu1, 1)
        print(json.dumps(results, indent=2))
        (workdir / "result.json").write_text(json.dumps(results, indent=2))
        return 0
    except (TimeoutError, RuntimeError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for s in sims:
            s.stop()
        fleet.stop()
