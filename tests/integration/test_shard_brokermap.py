"""The partition -> broker map shared by shards (issue 14, proposal 0008;
`cloudcore.cluster.brokermap`) and the shards' broker identities in every shard's
broker files (`cloudcore.cluster.identities`), with real processes: a nats-server with
JetStream, two secure mosquittos (both read the password file and ACL of shard A, not
merged by hand; the second has a certificate from the same fleet CA), two `cloudcore
--shard` processes and a simulated fleet (`testbed.simulator`, the real protocol,
sealed messages over TLS).

Checked: each shard's broker password file and ACL hold both shards' identities (the
brokers read shard A's files as they are: B connects with its own identities, and its
nodes are Ready on it); a broker added through one shard is in the other's map, and both shards
connect to it; partitions moved through the other shard: the nodes of those partitions,
owned by either shard, hold the new list in their applied desired sets (each told by
its owner) and no other node does; two moves through the two shards at the same time
both land (the map's version counts both, the shards agree); moved back and the broker
removed through different shards: gone from both.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from integration.test_shard_objects import _status
from integration.test_shards import (
    HEARTBEAT,
    ShardProc,
    owners,
    pytestmark,  # noqa: F401  (needs nats-server and mosquitto)
    stop_sim_and_shards,
    wait_for,
)
from shared.topics import partition_of
from testbed.bench import join_all
from testbed.broker import BrokerSecurity, Mosquitto
from testbed.fleet import Fleet, FleetSettings
from testbed.natskv import NatsKV

NODES = 16


def test_broker_map_changed_through_any_shard(tmp_path: Path) -> None:
    fleet = Fleet(FleetSettings(nodes=0, workdir=tmp_path / "seed", use_netns=False,
                                with_registry=False, heartbeat_s=HEARTBEAT,
                                cloud_args=("--join-rate", "6000", "--join-burst", "100"),
                                )).start()
    shards: list[ShardProc] = []
    sim: subprocess.Popen[bytes] | None = None
    second: Mosquitto | None = None
    try:
        names = [f"sim-{i}" for i in range(NODES)]
        sim_args = join_all(fleet, names, keys_file=tmp_path / "keys.json", threads=2)
        assert fleet.cloud is not None and fleet.broker is not None
        fleet.cloud.stop()
        second = Mosquitto(security=BrokerSecurity(tls=True), workdir=tmp_path / "mq-1",
                           shared_auth=(fleet.broker.passwd, fleet.broker.acl))
        for f in ("ca.crt", "broker.crt", "broker.key"):
            shutil.copyfile(fleet.broker.tls_dir / f, second.tls_dir / f)
        second.start()
        url1 = f"mqtts://127.0.0.1:{second.port}"
        with NatsKV(rundir=tmp_path / "nats", ca_dir=fleet.cloud_state / "pki") as nats:
            shards = [ShardProc(n, workdir=tmp_path / "shards", seed=fleet.cloud_state,
                                fleet=fleet, nats=nats).start() for n in ("A", "B")]
            # every shard's broker files hold every shard's identities (published in
            # KV): the broker reads shard A's files as they are, no merge
            for s in shards:
                for t in shards:
                    wait_for(f"{s.name}'s broker files name {t.name}'s users", lambda s=s, t=t: (
                        s.passwd.exists() and s.acl.exists()
                        and f"_{t.name}_sub:" in s.passwd.read_text()
                        and f"_{t.name}_pub0\n" in s.acl.read_text()), 60)
            shutil.copyfile(shards[0].passwd, fleet.broker.passwd)  # in place: its group
            shutil.copyfile(shards[0].acl, fleet.broker.acl)
            for s in shards:
                wait_for(f"{s.name} ready", lambda s=s: s.call("/readyz"), 60)
            gens_file = tmp_path / "gens.json"
            sim_log = (tmp_path / "sim.log").open("wb")
            sim = subprocess.Popen(
                [sys.executable, "-m", "testbed.simulator", "--host", "127.0.0.1",
                 "--port", str(fleet.broker.port), "--prefix", "sim", "--count", str(NODES),
                 "--heartbeat", str(HEARTBEAT), "--rate", "50", *sim_args,
                 "--gens-file", str(gens_file)],
                stdout=sim_log, stderr=subprocess.STDOUT)
            sim_log.close()

            def maps() -> dict[str, dict[str, Any]]:
                """node -> the broker/-/map entry its applied desired set holds."""
                assert sim is not None
                gens_file.unlink(missing_ok=True)
                sim.send_signal(signal.SIGUSR2)
                wait_for("the simulator's gens file", gens_file.exists, 10, every=0.05)
                return dict(json.loads(gens_file.read_text())["maps"])

            def all_owned() -> dict[str, str] | None:
                o = owners(shards)
                if len(o) == NODES and all(len(v) == 1 for v in o.values()):
                    return {n: v[0] for n, v in o.items()}
                return None

            own = wait_for("every node Ready on one shard", all_owned, 60)
            a, b = shards
            assert {own[n] for n in own} == {"A", "B"}, own
            v0 = a.call("/api/v1/brokermap")["version"]
            assert b.call("/api/v1/brokermap")["version"] == v0

            # 1. a broker added through B: in A's map, and both shards connect to it
            got = b.call("/api/v1/brokermap/brokers", {"name": "mq-1", "url": url1})
            assert got["version"] == v0 + 1 and "mq-1" in got["brokers"]
            for s in shards:
                wait_for(f"{s.name} connected to mq-1", lambda s=s: s.call(
                    "/api/v1/brokermap")["brokers"].get("mq-1", {}).get("connected"), 30)
                assert s.call("/api/v1/brokermap")["version"] == v0 + 1

            # 2. the partitions of one node of each shard moved through A: those nodes
            # are told the new list by their owners, the others are not
            na = next(n for n in names if own[n] == "A")
            nb = next(n for n in names if own[n] == "B" and partition_of(n) != partition_of(na))
            moved = {partition_of(na), partition_of(nb)}
            got = a.call("/api/v1/brokermap/move", {"partitions": sorted(moved), "to": "mq-1"})
            assert got["version"] == v0 + 2
            told = [n for n in names if partition_of(n) in moved]

            def lists() -> bool:
                m = maps()
                return all(m.get(n, {}).get("version") == v0 + 2
                           and m[n]["urls"][0] == url1 for n in told)

            wait_for("the moved partitions' nodes hold the new list", lists, 30)
            m = maps()
            assert not [n for n in names if n not in told
                        and m.get(n, {}).get("version") == v0 + 2], m
            assert b.call("/api/v1/brokermap")["partitions"] == got["partitions"]

            # 3. two moves through the two shards at once: both land, one after the other
            others = sorted({partition_of(n) for n in names} - moved)[:2]
            answers: dict[str, Any] = {}

            def move(s: ShardProc, p: int) -> None:
                answers[s.name] = s.call("/api/v1/brokermap/move",
                                         {"partitions": [p], "to": "mq-1"})

            threads = [threading.Thread(target=move, args=(s, p))
                       for s, p in zip(shards, others, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(r["version"] for r in answers.values()) == [v0 + 3, v0 + 4], answers
            final = wait_for("both shards at the same map", lambda: _same(shards), 30)
            assert final["version"] == v0 + 4
            assert all(final["partitions"][p][0] == "mq-1" for p in [*moved, *others])

            # 4. moved back through B, removed through A: gone from both
            back = b.call("/api/v1/brokermap/move",
                          {"partitions": sorted({*moved, *others}), "to": "mq-0"})
            assert back["version"] == v0 + 5
            time.sleep(0.5)
            code, gone = _status(a, "/api/v1/brokermap/brokers/mq-1", method="DELETE")
            assert code == 200 and "mq-1" not in gone["brokers"], gone
            final = wait_for("mq-1 gone from both shards", lambda: _same(shards), 30)
            assert "mq-1" not in final["brokers"] and final["version"] == v0 + 6
            for s in shards:
                assert "not shared between shards" not in s.log_text()
    finally:
        stop_sim_and_shards(sim, shards)
        if second is not None:
            second.stop()
            second.remove()
        fleet.stop()


def _same(shards: list[ShardProc]) -> dict[str, Any] | None:
    views = [s.call("/api/v1/brokermap") for s in shards]
    keys = ("version", "partitions")
    first = {k: views[0][k] for k in keys}
    ok = all({k: v[k] for k in keys} == first for v in views) and \
        views[0]["brokers"].keys() == views[1]["brokers"].keys()
    return views[0] if ok else None
