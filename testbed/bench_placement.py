"""Benchmark: what placing a Deployment's replicas costs over N nodes, with and without
affinity (issue 18).

    python -m testbed.bench_placement [--nodes 2000] [--daemonsets 2] [--replicas 10]
        [--runs 3] [--tree [LABEL=]DIR ...]

Each measurement runs in a fresh interpreter over an in-memory store (nothing is
persisted: the scheduler and the bind index are what is measured). It registers N Ready
nodes (labels `zone` z0..z49, `site`), applies K DaemonSets (so each node's view sums
K bound pods, as in a real fleet), then applies one Deployment of R replicas per
scenario and times `fleet.apply` (the R schedules over N nodes each, binds and the
commit), reported in CPU ms per replica (the process's CPU time, which a loaded shared
machine disturbs less than wall time; wall ms is printed beside it):

- `plain`: no affinity (what every tree can run; the regression check);
- `node-required`: required node affinity `zone In [z1..z5]`;
- `node-preferred`: preferred node affinity (weight 50) on `zone In [z7]`;
- `anti-hostname`: required pod anti-affinity on its own labels, `kubernetes.io/hostname`
  (one pass over the bound pods per replica);
- `plain-after-anti`: `plain` again while the anti-affinity replicas are bound (each
  plain pod checks their anti-affinity: the symmetric rule).

A tree whose pod schema has no `affinity` runs `plain` only. `--tree DIR` runs the
measuring interpreter with `PYTHONPATH=DIR` (and `PYTHONSAFEPATH=1`), so `git archive
OLD | tar -x -C /tmp/before` then `--tree before=/tmp/before --tree after=.` compares the
old and the new code in one sitting, alternating. The measuring part imports only
`cloudcore` and `shared` (from the tree). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCENARIOS = ("plain", "node-required", "node-preferred", "anti-hostname", "plain-after-anti")


class NullStore:
    """A Persister that keeps nothing (what is measured is the fleet core, not the store;
    also testbed.bench_upgrade's). Here, not in a shared bench module: with --tree this
    file runs against another tree's packages, which may not have such a module."""

    epoch = "bench"

    def put(self, db: str, key: str, value: Any) -> None:
        pass

    def put_later(self, db: str, key: str, producer: Any) -> None:
        pass

    def delete(self, db: str, key: str) -> None:
        pass


def _deployment(name: str, replicas: int, affinity: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{
        "name": "main", "image": "busybox", "args": ["sleep", "1d"],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}
    if affinity is not None:
        spec["affinity"] = affinity
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}}


def _affinity(scenario: str, name: str) -> dict[str, Any] | None:
    if scenario == "node-required":
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In",
                 "values": [f"z{i}" for i in range(1, 6)]}]}]}}}
    if scenario == "node-preferred":
        return {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "preference": {"matchExpressions": [
                {"key": "zone", "operator": "In", "values": ["z7"]}]}}]}}
    if scenario == "anti-hostname":
        return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": name}},
             "topologyKey": "kubernetes.io/hostname"}]}}
    return None


def bare_fleet() -> Any:
    """A fleet core over `NullStore`, with a default scheduler (also
    testbed.bench_fleet_memory's)."""
    from cloudcore.fleet import Fleet, Liveness
    from cloudcore.scheduler import Scheduler

    return Fleet(store=NullStore(), scheduler=Scheduler(),  # type: ignore[arg-type]
                 liveness=Liveness(default_heartbeat=30, missed=3, now=0))


def add_ready_nodes(fleet: Any, nodes: int) -> None:
    """`nodes` Ready nodes `edge-000000...` with capacity and `zone` / `site` labels."""
    for i in range(nodes):
        name = f"edge-{i:06d}"
        fleet.register_node(name)
        fleet.node_status(name, {
            "allocatable": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
            "capacity": {"cpu": 4000, "memory": 8 << 30, "pods": 110},
            "arch": "amd64", "labels": {"zone": f"z{i % 50}", "site": f"shop-{i % 1000}"},
            "heartbeat": 30})
        fleet.mark_ready(name)


def daemonset_doc(k: int) -> dict[str, Any]:
    """DaemonSet `ds<k>`: one busybox container asking 5m cpu, on every node."""
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": f"ds{k}", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": f"ds{k}"}},
                     "template": {"metadata": {"labels": {"app": f"ds{k}"}},
                                  "spec": {"containers": [{
                                      "name": "main", "image": "busybox",
                                      "resources": {"requests": {"cpu": "5m"}}}]}}}}


def _measure(nodes: int, daemonsets: int, replicas: int) -> dict[str, Any]:
    from shared.models import PodSpec, parse_object

    fields = getattr(PodSpec, "__struct_fields__", None) or getattr(PodSpec, "model_fields", {})
    has_affinity = "affinity" in fields
    fleet = bare_fleet()
    add_ready_nodes(fleet, nodes)
    t = time.perf_counter()
    for k in range(daemonsets):
        fleet.apply([parse_object(daemonset_doc(k))])
    out: dict[str, Any] = {"nodes": nodes, "daemonsets": daemonsets, "replicas": replicas,
                           "daemonsets_s": round(time.perf_counter() - t, 3),
                           "ms_per_replica": {}}
    for scenario in SCENARIOS:
        if scenario != "plain" and not has_affinity:
            continue
        name = scenario.replace("-", "")
        doc = _deployment(name, replicas, _affinity(scenario, name))
        obj = parse_object(doc)
        t, c = time.perf_counter(), time.process_time()
        fleet.apply([obj])
        took, cpu = time.perf_counter() - t, time.process_time() - c
        placed = sum(1 for (ns, n), p in fleet.pods.items()
                     if n.startswith(name + "-") and p.status.node_name)
        out["ms_per_replica"][scenario] = round(1000 * took / replicas, 2)
        out.setdefault("cpu_ms_per_replica", {})[scenario] = round(1000 * cpu / replicas, 2)
        out.setdefault("placed", {})[scenario] = placed
    return out


def _run_tree(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1"}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure",
                        "--nodes", str(args.nodes), "--daemonsets", str(args.daemonsets),
                        "--replicas", str(args.replicas)],
                       env=env, capture_output=True, text=True, check=False, timeout=3600)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[len("RESULT "):]))
    raise RuntimeError(f"measuring {tree} failed:\n{r.stdout}\n{r.stderr}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=2000)
    ap.add_argument("--daemonsets", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tree", action="append", default=[],
                    help="[LABEL=]DIR: run cloudcore from DIR (repeatable; default: this "
                         "checkout); trees alternate within each run")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print("RESULT " + json.dumps(_measure(args.nodes, args.daemonsets, args.replicas)),
              flush=True)
        return
    trees = [(t.partition("=")[0], Path(t.partition("=")[2])) if "=" in t
             else (t, Path(t)) for t in args.tree] or [
                 ("this", Path(__file__).resolve().parents[1])]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in trees}
    for run in range(args.runs):
        for label, tree in trees:
            res = _run_tree(tree, args)
            results[label].append(res)
            print(f"run {run + 1} {label}: {json.dumps(res)}", flush=True)
    print(f"\n{args.nodes} nodes, {args.daemonsets} DaemonSets, {args.replicas} replicas per "
          f"scenario; CPU ms and wall ms per replica placed (median of {args.runs} runs; "
          "min..max)")
    for label, runs in results.items():
        for scenario in SCENARIOS:
            cpu = [r["cpu_ms_per_replica"][scenario] for r in runs
                   if scenario in r["cpu_ms_per_replica"]]
            wall = [r["ms_per_replica"][scenario] for r in runs
                    if scenario in r["ms_per_replica"]]
            if cpu:
                placed = runs[-1]["placed"][scenario]
                print(f"  {label:>8} {scenario:<17} cpu {statistics.median(cpu):8.2f} "
                      f"({min(cpu):.2f}..{max(cpu):.2f})  wall "
                      f"{statistics.median(wall):8.2f} ({min(wall):.2f}..{max(wall):.2f})"
                      f"  placed {placed}/{args.replicas}")


if __name__ == "__main__":
    main()
