"""The global work across shards with real processes (issue 14, proposal 0008): a
nats-server with JetStream, a secure mosquitto, three `cloudcore --shard` processes and
a simulated fleet (`testbed.simulator --report-pods`: each node reports its applied pods
Running at their revision).

- A staged DaemonSet update (RollingUpdate, maxUnavailable 4 of 18 nodes) applied
  through a shard that does not hold the global lease completes on every node: the
  holder sees the other shards' pods through their status summaries and its batches
  reach the other shards through KV (`cloudcore.cluster.rollouts`). Before, the
  rollout never went past its first batch.
- A drain, through a shard that neither holds the global lease nor owns the node, moves
  the Deployment's replica off the node fleet-wide, counted on the nodes' applied
  desired sets. Before, the pod came back to the drained node (the holder kept its
  binding).
"""

from __future__ import annotations

import json
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
SHARDS = ("G1", "G2", "G3")


def staged(args: list[str]) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "updateStrategy": {"type": "RollingUpdate",
                                        "rollingUpdate": {"maxUnavailable": 4}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{
                                      "name": "c", "image": "busybox",
                                      "command": ["sleep", "9999"], "args": args}]}}}}


def test_staged_rollout_and_drain_across_shards(tmp_path: Path) -> None:
    with sharded_fleet(tmp_path, SHARDS, NODES, HEARTBEAT) as sf:
        shards = sf.shards
        own = wait_for("every node Ready on one shard, nodes on every shard",
                       lambda: one_owner_each(shards, NODES), 150)
        holder, others = holder_and_others(shards)

        # 1. a staged DaemonSet update through a shard not holding the lease
        def ds_status() -> dict[str, Any]:
            got: dict[str, Any] = holder.call("/api/v1/daemonsets/default/agent")
            return got.get("status") or {}

        def complete(revision: str | None = None) -> dict[str, Any] | None:
            st = ds_status()
            ro = st.get("rollout") or {}
            if ro.get("phase") != "Complete" or st.get("updatedNumberScheduled") != NODES:
                return None
            if revision is not None and st.get("currentRevision") == revision:
                return None
            return st

        others[0].call("/api/v1/apply", {"documents": [staged(["v1"])]})
        first = wait_for("v1 Complete", complete, 60, every=0.5)
        t0 = time.monotonic()
        others[1].call("/api/v1/apply", {"documents": [staged(["v2"])]})
        try:
            done = wait_for("v2 rolled out on every node", lambda: complete(
                first["currentRevision"]), 120, every=0.5)
        except AssertionError:
            print("holder's status:", json.dumps(ds_status())[:2000])
            raise
        print(f"staged rollout over {NODES} nodes of 3 shards: {time.monotonic() - t0:.1f}"
              f" s; {done.get('rollout')}")
        r2 = done["updateRevision"]
        assert done["currentRevision"] == r2 and done["numberReady"] == NODES
        for s in shards:  # every shard shows every pod reported at the update
            # (other shards' pods come from their owners' status summaries, which
            # reach each shard on their own schedule: eventually, not at Complete)
            def at_update(s: Any = s) -> dict[str, Any] | None:
                items = s.call("/api/v1/pods?labelSelector=app=agent")["items"]
                revs = {p["metadata"]["name"]: (p.get("status") or {}).get("revision")
                        for p in items}
                return revs if len(revs) == NODES and set(revs.values()) == {r2} else None

            try:
                wait_for(f"{s.name} shows every pod at {r2}", at_update, 30, every=0.5)
            except AssertionError:
                items = s.call("/api/v1/pods?labelSelector=app=agent")["items"]
                print(s.name, {p["metadata"]["name"]: (p.get("status") or {}).get(
                    "revision") for p in items}, "owners:", own)
                raise

        # 2. a drain through a shard not holding the lease
        def fleet_pods() -> dict[str, str]:
            return sf.pods("web-")

        holder.call("/api/v1/apply", {"documents": [spread_deployment(6)]})
        placed = sf.settled_pods("web-", lambda p: len(p) == 6, "6 web replicas on the fleet")
        # a replica's node owned by a shard that does not hold the lease, drained
        # through the third shard (neither owner nor holder) when there is one
        node = next((n for n in sorted(placed.values()) if own[n] != holder.name),
                    placed["web-0"])
        via = next((s for s in others if s.name != own[node]), others[0])
        print(f"draining {node} (owned by {own[node]}) through {via.name}; "
              f"holder {holder.name}; replicas {placed}")
        via.call(f"/api/v1/nodes/{node}/drain", {})
        moved = sf.settled_pods("web-", lambda p: len(p) == 6 and node not in p.values(),
                                f"the replicas off {node}")
        assert all(moved[k] == v for k, v in placed.items() if v != node)
        time.sleep(3)  # they do not come back
        again = fleet_pods()
        assert again == moved, again
