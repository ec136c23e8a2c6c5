"""What scraping pods' metrics on the device costs (issue 17): `python -m testbed.bench_scrape`.

Prints, with a real fleet of one node (mosquitto, registry, cloudcore, one agent in
its network namespace, real crun): the agent's memory (VmRSS, its peak, PSS) and CPU
over `--idle-s` with `--pods` busybox pods running but not annotated, then with the
same number of pods annotated `prometheus.io/scrape` each serving `--series` series
(`httpd -f`), scraped every `--interval` seconds; the size of the last batch the
agent estimated, and the size of cloudcore's `/metrics/edge` and how long it took
to serve. A program that prints figures, not a timed test. Needs root.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.bench_edge import agent_pid, idle_cpu, load, memory_mib
from testbed.fleet import Fleet, FleetSettings


def pod(name: str, image: str, *, series: int, scraped: bool) -> dict[str, Any]:
    lines = "".join(f'bench_series{{i=\\"{i}\\"}} {i}\\n' for i in range(series))
    script = (f'mkdir -p /tmp/www && printf "# TYPE bench_series gauge\\n{lines}" > '
              "/tmp/www/metrics && exec httpd -f -p 9102 -h /tmp/www")
    ann = {"prometheus.io/scrape": "true", "prometheus.io/port": "9102"} if scraped else {}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"bench": "scrape"}, "annotations": ann},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "web", "image": image, "command": ["sh", "-c", script]}]}}


def running(f: Fleet, n: int, *, scraped: bool) -> Any:
    want = "true" if scraped else None

    def check() -> bool:
        pods = f.pods("bench=scrape")
        return (sum(p["status"].get("phase") == "Running" for p in pods) == n
                and all((p["metadata"].get("annotations") or {}).get("prometheus.io/scrape")
                        == want for p in pods))
    return check


def figures(f: Fleet, label: str, idle_s: float) -> None:
    pid = agent_pid(f)
    cpu, kids = idle_cpu(pid, idle_s)
    m = memory_mib(pid)
    print(f"edgecore, {label}: RSS {m['VmRSS']:.1f} MiB (peak {m['VmHWM']:.1f}), PSS "
          f"{m['Pss']:.1f} MiB; CPU {cpu:.2f} % of a core (+ {kids:.2f} % in processes it "
          f"spawned) over {idle_s:g} s; {load()}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--series", type=int, default=100, help="series each pod serves")
    ap.add_argument("--interval", type=float, default=10.0, help="agent's scrape interval")
    ap.add_argument("--idle-s", type=float, default=60.0, help="measuring window")
    ap.add_argument("--settle-s", type=float, default=15.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_scrape runs real containers: run it as root")
    # SIGTERM (e.g. from `timeout`) must still stop the fleet and its containers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench_scrape: terminated"))
    workdir = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    f = Fleet(FleetSettings(nodes=1, workdir=workdir, heartbeat_s=60.0,
                            agent_args=("--scrape-interval", str(args.interval))))
    f.start()
    try:
        f.wait_nodes_ready(timeout=60)
        print(f"{args.pods} pods of {args.series} series, scraped every {args.interval:g} s; "
              f"{load()}", flush=True)
        for scraped in (False, True):
            # new names for the annotated ones: annotations are part of the pod, and a
            # pod deleted and made again at once under its name may stay Pending
            names = [f"{'scraped' if scraped else 'plain'}-{i}" for i in range(args.pods)]
            f.apply([pod(n, f.image, series=args.series, scraped=scraped) for n in names])
            f.wait(running(f, args.pods, scraped=scraped), timeout=300, what="pods Running")
            if scraped:
                f.wait(lambda: f.urlopen("/metrics/edge").read().count(b"bench_series{")
                       == args.pods * args.series, timeout=120 + 3 * args.interval,
                       what="every pod's series at /metrics/edge")
            time.sleep(args.settle_s)
            figures(f, f"{args.pods} pods, {'scraped' if scraped else 'not annotated'}",
                    args.idle_s)
            if not scraped:
                for n in names:  # annotations are part of the pod: recreate them
                    f.delete(f"/api/v1/pods/default/{n}")
                f.wait(lambda: not f.pods("bench=scrape"), timeout=120, what="pods gone")
        t0 = time.perf_counter()
        with f.urlopen("/metrics/edge") as r:
            text = r.read()
        took = time.perf_counter() - t0
        batch = [ln for ln in text.decode().splitlines()
                 if ln.startswith("edgecore_scrape_batch_bytes{")]
        lines = text.count(b"\n")
        print(f"/metrics/edge: {len(text):,} bytes, {lines:,} lines, served in "
              f"{took * 1000:.0f} ms; the agent's last batch: "
              f"{batch[0].rsplit(' ', 1)[1] if batch else '?'} bytes (estimated)", flush=True)
    finally:
        f.stop()


if __name__ == "__main__":
    main()
