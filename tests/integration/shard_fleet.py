"""A sharded fleet of simulated nodes for the shard tests (issue 14): a seed cloudcore
joins the nodes, then real `cloudcore --shard` processes start from its state on a real
nats-server, the brokers read their files, and one `testbed.simulator` process runs the
nodes with pod reports and a gens file (`pods()` asks it what each node applied)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integration.test_shards import ShardProc, merge_broker_files, wait_for
from testbed.bench import join_all
from testbed.fleet import Fleet, FleetSettings
from testbed.natskv import NatsKV


@dataclass
class ShardedFleet:
    fleet: Fleet
    shards: list[ShardProc]
    sim: subprocess.Popen[bytes]
    gens_file: Path
    nats: NatsKV
    stats_file: Path  # the simulator's counters (`snapshots_in`, ...), every second

    def sim_stats(self) -> dict[str, Any]:
        got: dict[str, Any] = json.loads(self.stats_file.read_text())
        return got

    def pods(self, prefix: str) -> dict[str, str]:
        """pod name (starting with `prefix`) -> the node whose applied desired set holds
        it, asked of the simulated nodes now (a pod on two nodes fails the test at once)."""
        self.gens_file.unlink(missing_ok=True)
        self.sim.send_signal(signal.SIGUSR2)
        wait_for("the simulator's gens file", self.gens_file.exists, 10, every=0.05)
        out: dict[str, str] = {}
        for node, keys in json.loads(self.gens_file.read_text())["pods"].items():
            for k in keys:
                name = k.split("/")[2]
                if name.startswith(prefix):
                    assert name not in out, f"{name} on {out[name]} and {node}"
                    out[name] = node
        return out


@contextmanager
def sharded_fleet(tmp_path: Path, shard_names: tuple[str, ...], nodes: int,
                  heartbeat: float) -> Iterator[ShardedFleet]:
    """`nodes` simulated nodes `sim-0...` on shards `shard_names`, every shard ready;
    everything stopped on exit."""
    fleet = Fleet(FleetSettings(nodes=0, workdir=tmp_path / "seed", use_netns=False,
                                with_registry=False, heartbeat_s=heartbeat,
                                cloud_args=("--join-rate", "6000", "--join-burst", "100"),
                                )).start()
    shards: list[ShardProc] = []
    sim: subprocess.Popen[bytes] | None = None

    def stop_sim_and_shards() -> None:
        if sim is not None:
            sim.terminate()
            try:
                sim.wait(10)
            except subprocess.TimeoutExpired:
                sim.kill()
        for s in shards:  # all at once, so none takes over what another just released
            if s.proc.popen is not None and s.proc.popen.poll() is None:
                s.proc.popen.send_signal(signal.SIGTERM)
        for s in shards:
            s.proc.stop()

    try:
        names = [f"sim-{i}" for i in range(nodes)]
        sim_args = join_all(fleet, names, keys_file=tmp_path / "keys.json", threads=2)
        assert fleet.cloud is not None and fleet.broker is not None
        fleet.cloud.stop()
        with NatsKV(rundir=tmp_path / "nats", ca_dir=fleet.cloud_state / "pki") as nats:
            try:
                shards = [ShardProc(n, workdir=tmp_path / "shards", seed=fleet.cloud_state,
                                    fleet=fleet, nats=nats).start() for n in shard_names]
                for s in shards:
                    wait_for(f"{s.name} wrote its broker files",
                             lambda s=s: s.passwd.exists() and s.acl.exists(), 60)
                merge_broker_files(shards, fleet)
                for s in shards:
                    wait_for(f"{s.name} ready", lambda s=s: s.call("/readyz"), 60)
                gens_file = tmp_path / "gens.json"
                stats_file = tmp_path / "sim-stats.json"
                with (tmp_path / "sim.log").open("wb") as sim_log:
                    sim = subprocess.Popen(
                        [sys.executable, "-m", "testbed.simulator", "--host", "127.0.0.1",
                         "--port", str(fleet.broker.port), "--prefix", "sim", "--count",
                         str(nodes), "--heartbeat", str(heartbeat), "--rate", "50",
                         "--report-pods", *sim_args, "--gens-file", str(gens_file),
                         "--stats", str(stats_file)],
                        stdout=sim_log, stderr=subprocess.STDOUT)
                yield ShardedFleet(fleet, shards, sim, gens_file, nats, stats_file)
            finally:
                # the shards stop (releasing their leases) while NATS is still up, not
                # retrying into a stopped server until their timeouts
                stop_sim_and_shards()
    finally:
        stop_sim_and_shards()
        fleet.stop()
