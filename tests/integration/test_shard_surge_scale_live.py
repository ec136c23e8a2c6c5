"""A Deployment scaled while its maxSurge rollout is under way, with real processes
(issue 14, proposal 0008): a nats-server with JetStream, a secure mosquitto, three
`cloudcore --shard` processes and a simulated fleet reporting its pods Running.

maxSurge 2, maxUnavailable 0, minReadySeconds 3 over 6 replicas (one per node); the
update applied through a shard not holding the global lease, then, once the rollout is
under way, the same Deployment applied with 4 replicas through another such shard
while the third is stopped (SIGSTOP, about 1 s: it then reads the holder's latest steps and
the scale together, as a shard whose watches lag). Only the holder changes the pod
count during the rollout (the other shards take its pod sets), so the rollout completes
with exactly 4 pods at the update on the fleet's nodes, never more than 6 + 2 seen
running, and every shard's API lists the same 4 pods and says Complete.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from integration.shard_fleet import (
    holder_and_others,
    one_owner_each,
    sharded_fleet,
    spread_deployment,
)
from integration.test_shards import (
    HEARTBEAT,
    pytestmark,  # noqa: F401  (needs nats-server and mosquitto)
    wait_for,
)

NODES = 18
SHARDS = ("S1", "S2", "S3")
REPLICAS, SCALED, SURGE = 6, 4, 2
PAUSE_S = 1.0
"""How long a shard not holding the lease is stopped (SIGSTOP) while the holder goes on
and the scale is applied: it then reads the holder's steps and the scale together, as
a shard whose watches lag would (less than the lease expiry, 2.7 s: it keeps its
partitions)."""


def deployment(args: list[str], replicas: int = REPLICAS) -> dict[str, Any]:
    doc = spread_deployment(replicas)
    doc["spec"]["template"]["spec"]["containers"][0]["args"] = args
    doc["spec"].update({"minReadySeconds": 3, "strategy": {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": SURGE, "maxUnavailable": 0}}})
    return doc


def listed(s: Any) -> dict[str, str | None]:
    """The web pods shard `s` lists: name -> the revision reported."""
    items = s.call("/api/v1/pods?labelSelector=app=web")["items"]
    return {p["metadata"]["name"]: (p.get("status") or {}).get("revision") for p in items}


def test_a_scale_during_a_maxsurge_rollout_across_shards(tmp_path: Path) -> None:
    with sharded_fleet(tmp_path, SHARDS, NODES, HEARTBEAT) as sf:
        shards = sf.shards
        wait_for("every node Ready on one shard, nodes on every shard",
                 lambda: one_owner_each(shards, NODES), 150)
        holder, others = holder_and_others(shards)

        def dep_status() -> dict[str, Any]:
            got: dict[str, Any] = holder.call("/api/v1/deployments/default/web")
            return got.get("status") or {}

        def complete(replicas: int, previous: str | None = None) -> dict[str, Any] | None:
            st = dep_status()
            if (st.get("rollout") or {}).get("phase") != "Complete" \
                    or st.get("updatedReplicas") != replicas or st.get("replicas") != replicas:
                return None
            if previous is not None and st.get("currentRevision") == previous:
                return None
            return st

        others[0].call("/api/v1/apply", {"documents": [deployment(["v1"])]})
        first = wait_for("v1 Complete", lambda: complete(REPLICAS), 90, every=0.5)
        t0 = time.monotonic()
        others[1].call("/api/v1/apply", {"documents": [deployment(["v2"])]})

        def under_way() -> dict[str, Any] | None:
            st = dep_status()
            ro = st.get("rollout") or {}
            if st.get("updateRevision") != first["currentRevision"] \
                    and ro.get("phase") == "Progressing" and st.get("updatedReplicas"):
                return st
            return None

        wait_for("the v2 rollout under way", under_way, 60, every=0.2)
        lagging = others[1]
        os.kill(lagging.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(PAUSE_S - 0.3)  # the holder's steps meanwhile
            others[0].call("/api/v1/apply", {"documents": [deployment(["v2"], SCALED)]})
            time.sleep(0.3)
        finally:
            os.kill(lagging.proc.pid, signal.SIGCONT)
        at_scale = dep_status()
        assert (at_scale.get("rollout") or {}).get("phase") != "Complete", at_scale
        most = 0

        def done() -> dict[str, Any] | None:
            nonlocal most
            most = max(most, len(sf.pods("web-")))
            return complete(SCALED, first["currentRevision"])

        try:
            st = wait_for(f"v2 rolled out at {SCALED} replicas", done, 150, every=0.5)
        except AssertionError:
            print("holder's status:", json.dumps(dep_status())[:2000])
            for s in shards:
                print(s.name, sorted(listed(s)))
            raise
        r2 = st["updateRevision"]
        print(f"maxSurge rollout of {REPLICAS} replicas scaled to {SCALED} mid-way over "
              f"3 shards: {time.monotonic() - t0:.1f} s; at most {most} pods seen "
              f"running; {st.get('rollout')}")
        assert most <= REPLICAS + SURGE, most
        running = sf.settled_pods("web-", lambda p: len(p) == SCALED,
                                  f"{SCALED} web pods on the fleet's nodes")
        # every shard lists the same pods, those the nodes run, at the update
        for s in shards:
            wait_for(f"{s.name} lists the {SCALED} pods running, at the update", lambda s=s: (
                listed(s) == dict.fromkeys(running, r2)), 30, every=0.5)
            wait_for(f"{s.name} shows the rollout Complete", lambda s=s: (
                (s.call("/api/v1/deployments/default/web").get("status") or {}).get(
                    "rollout", {}).get("phase") == "Complete"), 30, every=0.5)
