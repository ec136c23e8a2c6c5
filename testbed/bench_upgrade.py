"""Benchmark: what the AgentUpgrade controller (cloudcore/fleet/upgrades.py) costs the
cloud's event loop over N nodes.

    python -m testbed.bench_upgrade [--nodes 10000] [--max-unavailable 10%] [--offline 5]

Over an in-memory store (nothing persisted), it registers N Ready nodes running agent
0.9.0 (`--offline` percent of them NotReady), tunes the collector as the cloudcore binary
does, applies one AgentUpgrade to 0.9.1 for every node and plays the agents: each
simulated second every told Ready node reports the new version and Healthy, then the
fleet ticks. It prints the CPU time of the apply (the first slice of a pass), of
each controller tick and of the desired sets' commit after it (median, p90, max: what
one liveness tick holds the loop for), the agents' reports, the ticks to Complete, and
the cost of a tick when nothing moves, after one node's status changed and after a node
joined. Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

from cloudcore.fleet import Fleet, Liveness
from cloudcore.scheduler import Scheduler
from cloudcore.service import tune_gc
from shared.entries import AGENT_RELEASE_KEY
from shared.models import parse_object
from testbed.bench_placement import NullStore


def _ms(samples: list[float]) -> str:
    s = sorted(samples)
    p90 = s[min(len(s) - 1, int(len(s) * 0.9))]
    return f"median {statistics.median(s) * 1e3:.1f} ms, p90 {p90 * 1e3:.1f} ms, " \
           f"max {s[-1] * 1e3:.1f} ms"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--max-unavailable", default="10%")
    p.add_argument("--offline", type=float, default=5.0, help="percent of nodes NotReady")
    a = p.parse_args()
    fleet = Fleet(store=NullStore(), scheduler=Scheduler(),
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    clock = [1000.0]
    fleet.upgrades.clock = lambda: clock[0]
    names = [f"node-{i:06d}" for i in range(a.nodes)]
    t0 = time.perf_counter()
    for n in names:
        fleet.register_node(n)
        fleet.node_status(n, {"agentVersion": "0.9.0", "arch": "amd64",
                              "allocatable": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
                              "labels": {"site": "bench"}})
        fleet.mark_ready(n)
    offline = names[:int(a.nodes * a.offline / 100)]
    for n in offline:
        fleet.mark_not_ready(n, reason="Bench", message="offline")
    print(f"{a.nodes} nodes registered in {time.perf_counter() - t0:.1f} s "
          f"({len(offline)} NotReady)")
    tune_gc()  # as the cloudcore binary does once the fleet is loaded
    mu: int | str = int(a.max_unavailable) if a.max_unavailable.isdigit() else a.max_unavailable
    doc = {"apiVersion": "edgefed.io/v1", "kind": "AgentUpgrade",
           "metadata": {"name": "agent-0.9.1"},
           "spec": {"version": "0.9.1", "image": "reg:5000/edgefed/agent:0.9.1",
                    "maxUnavailable": mu}}
    c0 = time.process_time()
    fleet.apply([parse_object(doc)])
    print(f"apply (the first slice of the owners' pass): "
          f"{(time.process_time() - c0) * 1e3:.1f} ms CPU")
    ticks: list[float] = []
    commits: list[float] = []
    reports: list[float] = []
    handled: set[str] = set()
    au = fleet.objects.agentupgrades["agent-0.9.1"]
    while au.status is None or au.status.phase != "Complete":
        c0 = time.process_time()
        for n, nd in fleet.desired.items():
            if n in handled or AGENT_RELEASE_KEY not in nd.items:
                continue
            if fleet.nodes[n].status.ready != "Ready":
                continue
            handled.add(n)
            fleet.node_status(n, {"agentVersion": "0.9.1", "agentUpgrade": {
                "version": "0.9.1", "phase": "Healthy", "message": "", "previous": "0.9.0"}})
        reports.append(time.process_time() - c0)
        clock[0] += 1.0
        c0 = time.process_time()
        fleet.upgrades.tick()
        c1 = time.process_time()
        fleet.commit()
        ticks.append(c1 - c0)
        commits.append(time.process_time() - c1)
        if len(ticks) > 100_000:
            break
    st = au.status
    print(f"Complete after {len(ticks)} ticks: {st.upgraded} upgraded, {st.waiting} waiting")
    print(f"controller tick (CPU): {_ms(ticks)}")
    print(f"then the desired sets' commit (CPU): {_ms(commits)}")
    print(f"agents' reports per tick (CPU): {_ms(reports)}")
    idle = []
    for _ in range(20):
        clock[0] += 1.0
        c0 = time.process_time()
        fleet.upgrades.tick()
        idle.append(time.process_time() - c0)
    print(f"idle tick (Complete, nothing changed): {_ms(idle)}")
    fleet.upgrades.node_changed(names[-1])
    c0 = time.process_time()
    fleet.upgrades.tick()
    print(f"tick after one node's status changed: {(time.process_time() - c0) * 1e3:.1f} ms "
          "CPU")
    fleet.register_node("node-joined")
    fleet.node_status("node-joined", {"agentVersion": "0.9.0", "labels": {"site": "bench"}})
    fleet.mark_ready("node-joined")
    c0 = time.process_time()
    fleet.upgrades.tick()
    print(f"tick after a node joined (it is told): {(time.process_time() - c0) * 1e3:.1f} ms "
          "CPU")


if __name__ == "__main__":
    main()
