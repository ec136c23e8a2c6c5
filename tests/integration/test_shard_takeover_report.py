"""The report gap at takeover, closed (issue 14), with real processes: a nats-server with
JetStream, a secure mosquitto, two `cloudcore --shard` processes and a simulated fleet
(tests/integration/shard_fleet.py).

An AgentUpgrade of every node at once (failureThreshold 0) is applied through the shard
holding the global lease; the other shard is killed (kill -9) the moment its own API
shows one of its nodes at the new version, that is right after it stored the node's
Healthy report and, most likely, before its next node summary (every 2 s) carried it to
the survivor. Before the fix such a report was lost with the shard: the node stayed in
progress on the survivor and failed at its health deadline, aborting the AgentUpgrade.
Now the takeover snapshot (a new epoch) makes each moved node report its whole status
once, so the survivor sees every node at the version and the AgentUpgrade completes
with none failed; the simulator counts one full report per moved node.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from integration.shard_fleet import agent_upgrade, one_owner_each, sharded_fleet, versions
from integration.test_shards import (
    GLOBAL_LOG,
    HEARTBEAT,
    pytestmark,  # noqa: F401  (needs nats-server and mosquitto)
    wait_for,
)

NODES = 12
SHARDS = ("R1", "R2")
VERSION = "1.2.3"
DEADLINE = 40  # the AgentUpgrade's health deadline, seconds


def test_a_report_the_killed_owner_never_shared_reaches_the_new_owner(tmp_path: Path) -> None:
    with sharded_fleet(tmp_path, SHARDS, NODES, HEARTBEAT) as sf:
        shards = sf.shards
        owner = wait_for("every node Ready on one shard, nodes on both",
                         lambda: one_owner_each(shards, NODES, strict=True), 150)
        wait_for("every node's agent version on every shard", lambda: all(
            set(versions(s).values()) == {"sim"} for s in shards), 60, every=0.5)
        holder = next(s for s in shards if GLOBAL_LOG in s.log_text())
        victim = next(s for s in shards if s is not holder)
        moved = sorted(n for n, s in owner.items() if s == victim.name)
        full_before = sf.sim_stats().get("full_reports", 0)
        holder.call("/api/v1/apply", {"documents": [agent_upgrade(
            VERSION, batch=NODES, deadline=DEADLINE)]})

        def victim_saw_one() -> dict[str, str | None] | None:
            v = versions(victim)
            return v if any(v.get(n) == VERSION for n in moved) else None

        at_kill = wait_for("one of the victim's nodes upgraded, on the victim",
                           victim_saw_one, 60, every=0.02)
        victim.proc.kill()
        killed = time.monotonic()
        seen_by_holder = versions(holder)  # the victim's summaries as last written
        unshared = [n for n in moved
                    if at_kill.get(n) == VERSION and seen_by_holder.get(n) != VERSION]

        def complete() -> dict[str, Any] | None:
            au = holder.call(f"/api/v1/agentupgrades/agent-{VERSION}").get("status") or {}
            v = versions(holder)
            if au.get("phase") == "Complete" and set(v.values()) == {VERSION} \
                    and len(v) == NODES:
                return au
            if au.get("phase") in ("Aborted", "Failed"):
                raise AssertionError(f"the AgentUpgrade ended {au.get('phase')}: "
                                     f"{json.dumps(au)[:1500]}")
            return None

        try:
            au = wait_for("the AgentUpgrade Complete with every node at the version on "
                          "the survivor", complete, DEADLINE + 30, every=0.5)
        except AssertionError:
            print(f"{victim.name} killed; {len(unshared)} node(s) upgraded on it but not "
                  f"in its summary: {unshared}; on {holder.name}:",
                  json.dumps(holder.call(f"/api/v1/agentupgrades/agent-{VERSION}"))[:1500],
                  versions(holder))
            raise
        took = time.monotonic() - killed
        wait_for("the simulator's stats written after the takeover", lambda: sf.sim_stats()
                 .get("full_reports", 0) - full_before >= len(moved), 10, every=0.5)
        stats = sf.sim_stats()
        full = stats["full_reports"] - full_before
        print(f"{victim.name} killed with {len(moved)} of {NODES} nodes; "
              f"{len(unshared)} upgraded on it but not yet in its summary at the kill "
              f"({unshared}); Complete on {holder.name} {took:.1f} s after the kill; "
              f"full reports {full}, {stats['full_report_bytes']} bytes in all "
              f"({stats['full_report_bytes'] / max(full, 1):.0f} per report)")
        assert au["failed"] == 0 and au["upgraded"] == NODES
        assert full == len(moved)  # one full report per moved node, no more
