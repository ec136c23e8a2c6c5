"""Benchmark: one Deployment scaled to many replicas on a small fleet, against the real
cloudcore process (issue 16 part 4: `replicas: 100000` made `fedctl apply` time out,
stalled the API for about 2 minutes and grew cloudcore from 0.8 to 1.3 GB).

    python -m testbed.bench_scale [--nodes 10] [--replicas 100000] [--down 3]
        [--workdir DIR] [--insecure] [--quiet-wait 70] [--cloud-tree DIR] [--delete]

Starts a real fleet as `testbed bench` does (`testbed.bench.simulated_fleet`): mosquitto,
cloudcore as its own process, and `--nodes` simulated nodes (one real MQTT session each,
joined, reporting the pods they get Running). Then, for the scale-up and for the apply
back to `--down` replicas:

- the apply's answer time (`POST /api/v1/apply`, as `fedctl apply` sends it);
- the time until every pod exists (cloudcore's `cloudcore_pods` gauge, scraped every
  0.1 s) and until the Deployment's status counts them (`status.replicas`);
- the worst event-loop lag cloudcore reported meanwhile (`cloudcore_event_loop_lag_max_
  seconds`, its worst over the minute before each scrape: the bench first waits up to
  `--quiet-wait` seconds for the figure left by the fleet's start to fall below 50 ms,
  and prints what it was at the apply);
- the latency of `GET /api/v1/deployments/default/big` asked in a loop from another
  thread during the run (min / median / p90 / p99 / max, and how many);
- cloudcore's RSS before, after (3 s after the pods exist) and its peak (VmHWM).

With `--delete`, a third phase scales up to `--replicas` again and deletes the
Deployment (`DELETE /api/v1/deployments/default/big`): the answer time, the time until
no pod is left, the lag and the GET latency meanwhile (GETs then answer 404).

`--cloud-tree DIR` runs cloudcore from another checkout (`git archive OLD | tar -x -C
DIR`), to measure the code before a change with the same bench. The 1-minute load
average is printed beside the figures. A benchmark prints figures;
it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.error
from pathlib import Path
from typing import Any

from testbed.bench import LagWatch, simulated_fleet
from testbed.fleet import Fleet

NAME = "big"


def deployment(replicas: int) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": NAME}},
                     "template": {"metadata": {"labels": {"app": NAME}},
                                  "spec": {"containers": [{
                                      "name": "main", "image": "busybox",
                                      "args": ["sleep", "1d"],
                                      "resources": {"requests": {"cpu": "10m",
                                                                 "memory": "16Mi"}}}]}}}}


def memory(pid: int) -> dict[str, int]:
    """VmRSS, its anonymous and file-mapped parts (RssAnon: the heap; RssFile: mostly
    LMDB's map) and VmHWM of `pid`, bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


def load() -> float:
    return os.getloadavg()[0]


class Prober(threading.Thread):
    """GETs the Deployment in a loop (another thread, its own connections) and keeps
    each answer's latency."""

    def __init__(self, fleet: Fleet, path: str, *, pause: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.fleet, self.path, self.pause = fleet, path, pause
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                with self.fleet.urlopen(self.path, timeout=60) as r:
                    r.read()
            except urllib.error.HTTPError as exc:
                if exc.code != 404:  # before the apply, the Deployment is not there yet
                    self.failures.append(f"HTTP {exc.code}")
            except OSError as exc:
                self.failures.append(str(exc))
            self.latencies.append(time.perf_counter() - t)
            self.stop.wait(self.pause)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        if not lat:
            return {"gets": 0}

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))]

        return {"gets": len(lat), "failures": len(self.failures),
                "min_ms": lat[0] * 1e3, "median_ms": statistics.median(lat) * 1e3,
                "p90_ms": pct(0.9) * 1e3, "p99_ms": pct(0.99) * 1e3, "max_ms": lat[-1] * 1e3}


def scale(fleet: Fleet, pid: int, replicas: int, *, timeout: float,
          delete: bool = False) -> dict[str, Any]:
    """Apply the Deployment with `replicas` and follow it until its pods exist and its
    status counts them (with `delete`: delete it and follow it until no pod is left);
    the figures of the module docstring."""
    lag = LagWatch(fleet)
    at_apply = lag.scrape()
    lag_before = lag.worst
    lag.reset()
    rss0 = memory(pid)
    prober = Prober(fleet, f"/api/v1/deployments/default/{NAME}")
    prober.start()
    load0 = load()
    t0 = time.perf_counter()
    if delete:
        fleet.delete(f"/api/v1/deployments/default/{NAME}")
        action, replicas = "deleted", 0
    else:
        action = fleet.apply([deployment(replicas)])["results"][0]["action"]
    answered = time.perf_counter() - t0
    made_at = status_at = None
    pods_at_answer = None
    while time.perf_counter() - t0 < timeout:
        m = lag.scrape()
        pods = int(m.get("cloudcore_pods", -1))
        if pods_at_answer is None:
            pods_at_answer = pods
        now = time.perf_counter() - t0
        if made_at is None and pods == replicas:
            made_at = now
        if made_at is not None and status_at is None and delete:
            status_at = now
        if made_at is not None and status_at is None:
            st = fleet.get(f"/api/v1/deployments/default/{NAME}").get("status") or {}
            if st.get("replicas") == replicas:
                status_at = now
        if made_at is not None and status_at is not None:
            break
        time.sleep(0.1)
    time.sleep(3)
    lag.scrape()
    prober.stop.set()
    prober.join()
    rss1 = memory(pid)
    return {
        "replicas": replicas, "action": action,
        "apply_answer_s": round(answered, 3), "pods_at_first_scrape": pods_at_answer,
        "all_pods_s": None if made_at is None else round(made_at, 2),
        "status_counts_them_s": None if status_at is None else round(status_at, 2),
        "worst_lag_ms": round(lag.worst * 1e3, 1),
        "worst_lag_sampled_ms": round(lag.worst_sampled * 1e3, 1),
        "lag_max_at_apply_ms": round(lag_before * 1e3, 1),
        "get_latency": {k: round(v, 1) if isinstance(v, float) else v
                        for k, v in prober.summary().items()},
        "rss_before_mb": round(rss0["VmRSS"] / 2**20, 1),
        "rss_after_mb": round(rss1["VmRSS"] / 2**20, 1),
        "anon_before_after_mb": [round(rss0["RssAnon"] / 2**20, 1),
                                 round(rss1["RssAnon"] / 2**20, 1)],
        "file_before_after_mb": [round(rss0["RssFile"] / 2**20, 1),
                                 round(rss1["RssFile"] / 2**20, 1)],
        "rss_peak_mb": round(rss1["VmHWM"] / 2**20, 1),
        "nodes_ready": int(at_apply.get('cloudcore_nodes{ready="Ready"}', 0)),
        "load_1m": [round(load0, 2), round(load(), 2)],
    }


def quiet(fleet: Fleet, wait: float) -> float:
    """Wait until cloudcore's worst lag of the last minute is below 50 ms (the fleet's
    start leaves its own), at most `wait` seconds; returns the figure."""
    end = time.monotonic() + wait
    while True:
        lag = LagWatch(fleet)
        lag.scrape()
        if lag.worst < 0.05 or time.monotonic() >= end:
            return lag.worst
        time.sleep(2)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=10, help="simulated nodes (default 10)")
    p.add_argument("--replicas", type=int, default=100_000, help="default 100000")
    p.add_argument("--down", type=int, default=3, help="then back to this many (default 3)")
    p.add_argument("--workdir", type=Path, default=None, help="default: a temporary one")
    p.add_argument("--insecure", action="store_true",
                   help="an --insecure cloudcore and unsealed nodes (default: secure)")
    p.add_argument("--quiet-wait", type=float, default=70.0,
                   help="seconds to wait for the start's lag to leave the 1-minute "
                        "window (default 70)")
    p.add_argument("--timeout", type=float, default=900.0, help="per phase, seconds")
    p.add_argument("--delete", action="store_true",
                   help="then scale up again and delete the Deployment")
    p.add_argument("--cloud-tree", type=Path, default=None,
                   help="run cloudcore from this checkout (default: this one)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        workdir = a.workdir or Path(tmp)
        with simulated_fleet(nodes=a.nodes, procs=1, workdir=workdir,
                             secure=not a.insecure, sim_args=("--report-pods",),
                             cloud_tree=a.cloud_tree) as sf:
            fleet, pid = sf.fleet, sf.cloud_pid
            print(f"{a.nodes} nodes Ready; cloudcore pid {pid}; waiting for a quiet loop",
                  flush=True)
            print(f"  lag max of the last minute: {quiet(fleet, a.quiet_wait) * 1e3:.0f} ms",
                  flush=True)
            for replicas in (a.replicas, a.down):
                result = scale(fleet, pid, replicas, timeout=a.timeout)
                print(json.dumps(result), flush=True)
            if a.delete:
                scale(fleet, pid, a.replicas, timeout=a.timeout)
                result = scale(fleet, pid, 0, timeout=a.timeout, delete=True)
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
