"""Benchmark: where the fleet core's memory per node goes, by source file (issue 14,
proposal 0008 "What is not done": what per-partition state would save a shard).

    python -m testbed.bench_fleet_memory [--nodes 10000] [--daemonsets 2] [--top 12]

In one interpreter, over an in-memory store that keeps nothing (`testbed.bench_placement`'s
fleet, nodes and DaemonSets): registers N Ready nodes, then applies K DaemonSets and
commits; tracemalloc snapshots before, between and after give the bytes held per node by
the file that allocated them, for each phase. Python heap only (no allocator overhead, no RSS): a
breakdown, not a total. Prints JSON, asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tracemalloc
from typing import Any

from testbed.bench_placement import add_ready_nodes, bare_fleet, daemonset_doc


def _per_node(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, nodes: int,
              top: int) -> dict[str, Any]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    stats = after.compare_to(before, "filename")
    by_file = {s.traceback[0].filename.replace(root, ""): round(s.size_diff / nodes)
               for s in stats[:top] if s.size_diff}
    return {"bytes_per_node": round(sum(s.size_diff for s in stats) / nodes),
            "by_file": by_file}


def measure(nodes: int, daemonsets: int, top: int) -> dict[str, Any]:
    from shared.models import parse_object

    fleet = bare_fleet()
    tracemalloc.start(1)
    gc.collect()
    s0 = tracemalloc.take_snapshot()
    add_ready_nodes(fleet, nodes)
    fleet.commit()
    gc.collect()
    s1 = tracemalloc.take_snapshot()
    for k in range(daemonsets):
        fleet.apply([parse_object(daemonset_doc(k))])
    fleet.commit()
    gc.collect()
    s2 = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return {"nodes": nodes, "daemonsets": daemonsets, "load": os.getloadavg(),
            "nodes_registered": _per_node(s0, s1, nodes, top),
            "daemonsets_applied": _per_node(s1, s2, nodes, top)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--daemonsets", type=int, default=2)
    ap.add_argument("--top", type=int, default=12, help="files listed per phase")
    args = ap.parse_args(argv)
    if args.nodes < 1 or args.daemonsets < 0:
        ap.error("--nodes must be at least 1 and --daemonsets at least 0")
    print(json.dumps(measure(args.nodes, args.daemonsets, args.top), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
