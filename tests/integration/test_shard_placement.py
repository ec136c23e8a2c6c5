"""Deployment placement once for the whole fleet, behind the global lease (issue 14,
proposal 0008; `cloudcore.cluster.bindings`), with real processes: a nats-server with
JetStream, a secure mosquitto, three `cloudcore --shard` processes and a simulated
fleet (`testbed.simulator`, the real protocol, sealed messages over TLS).

The count is taken from the nodes themselves: the simulator dumps every node's applied
desired set (its pod keys), so "exactly N pods fleet-wide" is what the edges hold, not
what a shard believes. The Deployment's pods have required hostname anti-affinity, so
N pods must sit on N distinct nodes: before this change each shard scheduled every
Deployment over the nodes it knew and each node ran what its owner had placed, so the
fleet ran anywhere between 0 and 3 x N of them.

Checked: a Deployment applied through a shard that is not the global holder runs
exactly N pods fleet-wide, on nodes of more than one shard, and every shard lists the
same node for each pod; kill -9 of the global holder, then a scale up through a
survivor: the new holder places the change (exactly the new N, the first pods left on
their nodes: it resumed from the bindings in KV, it did not place them again); a scale
down through the other survivor: exactly the new N; the new holder paused (SIGSTOP)
past its lease while the other takes over and places a scale up, then resumed: exactly
the new N.
"""

from __future__ import annotations

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
    GLOBAL_LOG,
    HEARTBEAT,
    ShardProc,
    pytestmark,  # noqa: F401  (needs nats-server and mosquitto)
    wait_for,
)

NODES = 18
SHARDS = ("P1", "P2", "P3")
APP = "web"


def deployment(replicas: int) -> dict[str, Any]:
    return spread_deployment(replicas, name=APP)


def test_deployment_placed_once_for_the_fleet_and_after_a_holder_kill(
        tmp_path: Path) -> None:
    with sharded_fleet(tmp_path, SHARDS, NODES, HEARTBEAT) as sf:
        shards = sf.shards

        def fleet_pods() -> dict[str, str]:
            return sf.pods(f"{APP}-")

        def placed(n: int) -> dict[str, str] | None:
            got = fleet_pods()
            return got if len(got) == n else None

        def settled(n: int, live: list[ShardProc], what: str) -> dict[str, str]:
            """Exactly n pods fleet-wide, for two looks 2 s apart, and every live
            shard lists each of them on that node."""
            def check() -> dict[str, str] | None:
                first = placed(n)
                time.sleep(2)
                again = placed(n)
                if first is None or first != again:
                    return None
                for s in live:
                    items = s.call(f"/api/v1/pods?labelSelector=app={APP}")["items"]
                    listed = {p["metadata"]["name"]: (p.get("status") or {}).get(
                        "nodeName") for p in items}
                    if listed != again:
                        return None
                return again
            try:
                return wait_for(what, check, 60, every=0.5)
            except AssertionError:
                print("fleet:", fleet_pods())
                for s in live:
                    items = s.call(f"/api/v1/pods?labelSelector=app={APP}")["items"]
                    print(s.name, sorted((p["metadata"]["name"], (p.get("status") or {})
                                          .get("nodeName")) for p in items))
                raise

        own = wait_for("every node Ready on one shard", lambda: one_owner_each(
            shards, NODES, spread=False), 60)
        holder, others = holder_and_others(shards)
        # the holder places over the nodes it sees Ready: the other shards' nodes
        # once their status summaries reached it (up to 2 s after they were Ready)
        wait_for("the holder sees every node Ready", lambda: [
            n for n in holder.nodes().values() if n["status"]["ready"] == "Ready"
        ] if len([n for n in holder.nodes().values()
                  if n["status"]["ready"] == "Ready"]) == NODES else None, 30)

        # 1. applied through a shard that does not place: exactly 6 on the fleet
        others[0].call("/api/v1/apply", {"documents": [deployment(6)]})
        first = settled(6, shards, "6 replicas fleet-wide")
        assert len(set(first.values())) == 6  # the anti-affinity held fleet-wide
        spread = {own[n] for n in first.values()}
        print(f"holder {holder.name}; 6 replicas on {sorted(first.items())}, "
              f"owners {sorted(spread)}")
        assert len(spread) >= 2, "all replicas on nodes of one shard"
        assert "places Deployment replicas and bare pods" in holder.log_text()
        for s in others:
            assert "places Deployment replicas and bare pods" not in s.log_text()

        # 2. kill -9 of the global holder, then a scale up through a survivor: the
        # new holder places the 3 new pods and leaves the first 6 where they are
        holder.proc.kill()
        survivors = others
        wait_for("a survivor holds the global lease",
                 lambda: [s for s in survivors if GLOBAL_LOG in s.log_text()], 30)
        wait_for("every node Ready on a survivor", lambda: one_owner_each(
            survivors, NODES, spread=False), 60)
        survivors[1].call("/api/v1/apply", {"documents": [deployment(9)]})
        second = settled(9, survivors, "9 replicas fleet-wide after the kill")
        assert len(set(second.values())) == 9
        assert {k: second[k] for k in first} == first, "the first pods moved"
        new_holder = [s for s in survivors if GLOBAL_LOG in s.log_text()]
        assert len(new_holder) == 1
        print(f"new holder {new_holder[0].name}; 9 replicas on {sorted(second.items())}")

        # 3. a scale down through the other survivor: exactly 4
        survivors[0].call("/api/v1/apply", {"documents": [deployment(4)]})
        third = settled(4, survivors, "4 replicas fleet-wide")
        assert all(second[k] == v for k, v in third.items())

        # 4. the holder paused (SIGSTOP) past its lease: the other takes the global
        # lease and places a scale to 7; the paused one resumes as a follower (its
        # late writes, if any, carry an older lease token and are refused): still
        # exactly 7, on the nodes the new holder chose
        paused = new_holder[0]
        other = next(s for s in survivors if s is not paused)
        assert paused.proc.popen is not None
        paused.proc.popen.send_signal(signal.SIGSTOP)
        try:
            wait_for(f"{other.name} holds the global lease", lambda: other.log_text(
                ).count(GLOBAL_LOG) > 0, 30)
            other.call("/api/v1/apply", {"documents": [deployment(7)]})
            wait_for("7 replicas fleet-wide while paused", lambda: placed(7), 60)
        finally:
            paused.proc.popen.send_signal(signal.SIGCONT)
        fourth = settled(7, survivors, "7 replicas fleet-wide after the pause")
        assert len(set(fourth.values())) == 7
        assert all(third[k] == v for k, v in fourth.items() if k in third)
        print(f"paused {paused.name}; 7 replicas on {sorted(fourth.items())}")
