"""Agent self-upgrade on real agents (issue 16 part 3): `python -m testbed.bench_agent_upgrade`.

Starts a fleet (mosquitto, registry, cloudcore, `--nodes` agents in network namespaces)
with `--pods` busybox pods per node, then, as an operator does, publishes releases of
this checkout (`cloudcore release publish`) and rolls them out (`fedctl upgrade nodes
--max-unavailable 1`). Prints:

1. a good release: seconds from `fedctl upgrade nodes` until every node reports the new
   agentVersion and Healthy, and until the AgentUpgrade is Complete; per node, the
   seconds between the node's Downloading and Healthy as it reported them (polled);
2. the agent's memory (VmRSS, PSS from /proc, found as testbed.bench_edge finds it)
   before and after, same pid or not;
3. a release whose agent raises at start: seconds until the first node reports
   RolledBack and until the AgentUpgrade is Aborted;
4. whether any pod container changed (id, pid, creation time from `crun list`).

Prints figures, asserts nothing. Needs root and the integration test packages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.bench_edge import memory_mib
from testbed.fleet import Fleet, FleetSettings

ROOT = Path(__file__).resolve().parents[1]


def _status(f: Fleet, name: str) -> dict[str, Any]:
    return dict(f.get(f"/api/v1/nodes/{name}").get("status") or {})


def _containers(f: Fleet) -> dict[str, list[tuple[str, int, str]]]:
    out = {}
    for a in f.agents:
        res = subprocess.run(["crun", "--root", str(a.state_dir / "runtime" / "crun"), "list",
                              "--format", "json"], capture_output=True, text=True, check=True)
        out[a.name] = sorted((c["id"], c["pid"], c["created"]) for c in json.loads(res.stdout)
                             if c["status"] == "running")
    return out


def _source(work: Path, *, broken: bool) -> Path:
    src = work / ("broken" if broken else "good")
    if not src.exists():
        for pkg in ("edgecore", "shared"):
            shutil.copytree(ROOT / pkg, src / pkg,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if broken:
            main = src / "edgecore" / "__main__.py"
            main.write_text(main.read_text().replace(
                "def main(argv: Sequence[str] | None = None) -> int:\n",
                "def main(argv: Sequence[str] | None = None) -> int:\n"
                "    raise RuntimeError('broken on purpose')\n", 1))
    return src


def _publish(f: Fleet, work: Path, version: str, *, broken: bool = False) -> str:
    image = f"{f.registry.address}/edgefed/agent:{version}"
    subprocess.run([sys.executable, "-m", "cloudcore", "release", "publish", "--version",
                    version, "--image", image, "--source", str(_source(work, broken=broken)),
                    "--state-dir", str(f.cloud_state), "--insecure-registry"],
                   check=True, capture_output=True, cwd=ROOT)
    return image


def _memory(f: Fleet) -> dict[str, tuple[int | None, dict[str, float]]]:
    return {a.name: (a.proc.pid, memory_mib(a.proc.pid) if a.proc.pid else {})
            for a in f.agents}


def _phase(f: Fleet, version: str) -> str | None:
    obj = f.get(f"/api/v1/agentupgrades/agent-{version}")
    return (obj.get("status") or {}).get("phase")


def _roll(f: Fleet, version: str, image: str, *, until: str) -> dict[str, float]:
    """Start the upgrade; seconds until each node's phase first seen Downloading and
    `until`, and "all" / "object" (every node `until`, the AgentUpgrade done)."""
    seen: dict[str, float] = {}
    t0 = time.monotonic()
    f.fedctl("upgrade", "nodes", "--version", version, "--image", image,
             "--max-unavailable", "1", "--deadline", "60s")
    want = "Complete" if until == "Healthy" else "Aborted"
    deadline = t0 + 300
    while time.monotonic() < deadline:
        for a in f.agents:
            up = _status(f, a.name).get("agentUpgrade") or {}
            if up.get("version") != version:
                continue
            for phase in ("Downloading", until):
                if up.get("phase") == phase:
                    seen.setdefault(f"{a.name}.{phase}", time.monotonic() - t0)
        if until == "Healthy" and all(f"{a.name}.Healthy" in seen for a in f.agents):
            seen.setdefault("all", time.monotonic() - t0)
        if _phase(f, version) == want:
            seen["object"] = time.monotonic() - t0
            return seen
        time.sleep(0.2)
    seen["object"] = float("nan")
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--pods", type=int, default=5, help="busybox pods per node")
    ap.add_argument("--settle-s", type=float, default=20.0,
                    help="idle seconds before each memory reading")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_agent_upgrade runs real containers: run it as root")
    work = Path(tempfile.mkdtemp(prefix="bench-agent-upgrade-"))
    f = Fleet(FleetSettings(nodes=args.nodes, workdir=work / "fleet", heartbeat_s=5.0))
    f.start()
    try:
        f.wait_nodes_ready(timeout=60)
        f.apply([{"apiVersion": "apps/v1", "kind": "DaemonSet",
                  "metadata": {"name": f"sleep-{i}"},
                  "spec": {"selector": {"matchLabels": {"app": f"sleep-{i}"}},
                           "template": {"metadata": {"labels": {"app": f"sleep-{i}"}},
                                        "spec": {"containers": [{
                                            "name": "s", "image": f.image,
                                            "command": ["sleep", "1000000"]}]}}}}
                 for i in range(args.pods)])
        f.wait(lambda: sum((p.get("status") or {}).get("phase") == "Running"
                           for p in f.pods()) == args.nodes * args.pods,
               timeout=300, what="pods Running")
        before = _containers(f)
        time.sleep(args.settle_s)
        mem0 = _memory(f)
        good = _publish(f, work, "0.1.0-bench1")
        t = _roll(f, "0.1.0-bench1", good, until="Healthy")
        print(f"good release, {args.nodes} node(s) one at a time: all Healthy "
              f"{t.get('all', float('nan')):.1f} s, AgentUpgrade Complete {t['object']:.1f} s")
        for a in f.agents:
            d, h = t.get(f"{a.name}.Downloading"), t.get(f"{a.name}.Healthy")
            print(f"  {a.name}: Healthy at {h or float('nan'):.1f} s" + (
                f", Downloading seen at {d:.1f} s ({(h or 0) - d:.1f} s between)"
                if d is not None else " (Downloading too short to be seen by the poll)"))
        time.sleep(args.settle_s)
        mem1 = _memory(f)
        for a in f.agents:
            (p0, m0), (p1, m1) = mem0[a.name], mem1[a.name]
            print(f"  {a.name} memory: RSS {m0.get('VmRSS', 0):.1f} -> "
                  f"{m1.get('VmRSS', 0):.1f} MiB, PSS {m0.get('Pss', 0):.1f} -> "
                  f"{m1.get('Pss', 0):.1f} MiB; pid {p0} -> {p1}")
        bad = _publish(f, work, "0.1.0-bench-broken", broken=True)
        t = _roll(f, "0.1.0-bench-broken", bad, until="RolledBack")
        first = min(a.name for a in f.agents)
        print(f"broken release: {first} RolledBack at "
              f"{t.get(f'{first}.RolledBack', float('nan')):.1f} s, AgentUpgrade Aborted "
              f"{t['object']:.1f} s")
        after = _containers(f)
        changed = sum(len(set(before[n]) ^ set(after[n])) for n in before)
        print(f"pod containers: {sum(map(len, before.values()))} before, "
              f"{sum(map(len, after.values()))} after, {changed} changed (id, pid, created)")
    finally:
        f.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
