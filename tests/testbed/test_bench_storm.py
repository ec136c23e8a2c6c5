"""`testbed bench sync` over two brokers and `testbed bench storm` on small fleets
(issue 14 parts 3-4): real mosquittos sharing cloudcore's password file, ACL and TLS
files, a real cloudcore with one `--broker` flag per broker, real simulator processes
(secure: joined nodes, TLS, sealed messages). The results' shape and correctness fields
are asserted (every node applied, nothing acked lost, no snapshot after the storm),
never their timings. And a simulator that exits fails the bench at once, named."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from testbed.bench import BenchFailure, bench_sync, cloud_has_broker_flag, simulated_fleet
from testbed.bench_storm import bench_storm

pytestmark = [
    pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto")
                       .exists(), reason="mosquitto is not installed"),
    pytest.mark.timeout(280),
]
needs_tier = pytest.mark.skipif(not cloud_has_broker_flag(),
                                reason="cloudcore has no --broker flag (issue 14 part 2)")


@needs_tier
def test_sync_over_two_brokers(tmp_path: Path) -> None:
    assert bench_sync(nodes=240, brokers=2, workdir=tmp_path, modes=("secure",),
                      steady_s=0) == 0
    top = json.loads((tmp_path / "result.json").read_text())
    assert top["ok"] is True
    r = top["secure"]
    assert (r["nodes"], r["broker_processes"], r["simulator_processes"]) == (240, 2, 2)
    assert [b["name"] for b in r["brokers"]] == ["mq-0", "mq-1"]
    assert sum(b["sessions_homed"] for b in r["brokers"]) == 240
    assert all(b["sessions_homed"] > 0 for b in r["brokers"])
    assert r["broker_map"].startswith("the cloud's map")
    # the cloud heard every node on the broker the map homes it on
    view = r["cloud_broker_view"]
    assert {n: v["sessions"] for n, v in view.items()} == {
        b["name"]: b["sessions_homed"] for b in r["brokers"]}
    assert all(v["connected"] for v in view.values())
    for phase in ("create", "update"):
        assert r[phase]["msgs_per_node_update"] >= 2.0
        assert set(r[phase]["cpu_s_per_1000_nodes"]) == {"cloud", "brokers", "simulators"}
        assert r[phase]["worst_loop_lag_ms"] >= 0
    audit = r["audit"]
    assert audit["nodes_checked"] == 240 and audit["all_applied"] is True
    assert audit["acked_lost"] == 0 and audit["behind_desired"] == 0
    assert set(r["processes"]["brokers"]) == {"mq-0", "mq-1"}
    assert set(r["processes"]["simulators"]) == {"sim-0", "sim-1"}
    assert r["rss"]["cloud"]["sum_mb"] > 0 and r["gaps"] == 0 and r["invalid"] == 0


@needs_tier
def test_storm_kills_every_broker_and_loses_nothing(tmp_path: Path) -> None:
    assert bench_storm(nodes=200, brokers=2, workdir=tmp_path, down_s=2,
                       heartbeat_s=10) == 0
    r = json.loads((tmp_path / "result.json").read_text())
    assert r["ok"] is True and r["broker_processes"] == 2
    back = r["after_brokers_return"]
    assert set(back) == {"all_sessions_back_s", "change_applied_by_all_s",
                         "change_recorded_by_cloud_s", "all_ready_in_api_s",
                         "all_ready_and_reported_s"}
    # the sessions really were lost with the brokers, and came back
    assert r["messages"]["sessions_lost"] >= 200
    # the change made while the brokers were down reached every node, as a delta
    assert r["audit"]["all_applied"] is True and r["audit"]["acked_lost"] == 0
    assert r["audit"]["epochs"] == 1
    assert r["messages"]["edge_snapshots_received"] == 0
    assert r["messages"]["edge_deltas_received"] >= 200
    # reports lost to a broker with nobody subscribed: every gap the cloud saw, and every
    # node not heard shortly after the cloud's return, was asked again (at most once
    # each), and each node asked sent its full report
    m = r["messages"]
    assert 0 <= m["edge_report_again"] <= m["cloud_report_gaps"] + m["cloud_report_probes"]
    assert m["edge_full_reports_sent"] == m["edge_report_again"]  # no takeover here
    assert r["shard_kill"]["run"] is False and "--shards" in r["shard_kill"]["why"]
    # the timeline from the brokers' return saw every session come back
    tl = r["timeline_after_return"]
    assert tl["columns"][:2] == ["s_since_return", "sessions_up"]
    assert tl["rows"] and max(row[1] for row in tl["rows"]) == 200
    assert tl["reached"]["sessions_up_99pct_s"] is not None
    assert set(r["kernel_tcp_until_sessions_back"]) >= {"ListenOverflows", "TCPSynRetrans"}
    assert r["targets"]["nothing lost"]["met"] is True
    assert set(r["cpu_s_per_1000_nodes"]) == {"cloud", "brokers", "simulators"}


def test_a_simulator_that_exits_fails_the_bench_at_once(tmp_path: Path) -> None:
    # the simulators take the last --keys: a file that is not there makes them exit
    t0 = time.monotonic()
    with pytest.raises(BenchFailure) as exc, simulated_fleet(
            nodes=20, brokers=1, workdir=tmp_path, stall_s=120,
            sim_args=("--keys", str(tmp_path / "no-such-keys.json"))):
        pytest.fail("the fleet started with simulators that exit")
    msg = str(exc.value)
    assert "20 simulated sessions connected" in msg
    # whichever simulator the poll found gone first is named, with its exit and log
    assert re.search(r"simulator\(s\) exited: \['sim-[01]'", msg)
    assert re.search(r"sim-[01] \(EXITED \(1\)\)", msg) and "no-such-keys.json" in msg
    assert "broker mq-0" in msg
    assert time.monotonic() - t0 < 100  # named well before the 120 s stall
