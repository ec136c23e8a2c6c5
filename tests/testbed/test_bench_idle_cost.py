"""`testbed bench sync`'s idle cost (issue 14): after the two phases, a window with the
fleet settled gives the cloud's and the brokers' CPU and bytes per node per second.
`--idle S` sets the window from both command lines (0 skips it), and a small real fleet
(mosquitto, cloudcore, simulators) fills every figure from /proc and the simulators'
counters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from testbed import __main__ as testbed_cli
from testbed import bench, bench_brokers


def _captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake(**kwargs: Any) -> int:
        seen.update(kwargs)
        return 0

    monkeypatch.setattr(bench, "bench_sync", fake)
    return seen


def test_idle_window_from_both_command_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _captured(monkeypatch)
    assert bench.main(["sync", "--nodes", "10", "--idle", "7.5"]) == 0
    assert seen["steady_s"] == 7.5
    assert bench.main(["sync", "--nodes", "10", "--steady", "0"]) == 0  # the old name
    assert seen["steady_s"] == 0
    assert bench.main(["sync", "--nodes", "10"]) == 0
    assert seen["steady_s"] == 60.0
    for argv, want in ((["bench", "sync", "--idle", "12"], 12.0),
                       (["bench", "sync"], 60.0), (["bench", "sync", "--idle", "0"], 0.0)):
        seen.clear()
        assert testbed_cli.main(argv) == 0
        assert seen["steady_s"] == want
    # the brokers bench keeps its own default window
    args = testbed_cli.build_parser().parse_args(["bench", "brokers"])
    assert bench_brokers.settings_from(args, Path("x")).idle_s == 20.0
    args = testbed_cli.build_parser().parse_args(["bench", "brokers", "--idle", "3"])
    assert bench_brokers.settings_from(args, Path("x")).idle_s == 3.0


@pytest.mark.skipif(shutil.which("mosquitto") is None
                    and not Path("/usr/sbin/mosquitto").exists(),
                    reason="mosquitto is not installed")
@pytest.mark.timeout(280)
def test_idle_cost_of_a_settled_fleet(tmp_path: Path) -> None:
    nodes, window = 40, 4.0
    assert bench.bench_sync(nodes=nodes, workdir=tmp_path, modes=("secure",),
                            steady_s=window) == 0
    r = json.loads((tmp_path / "result.json").read_text())["secure"]
    idle = r["idle"]
    assert window <= idle["seconds"] < window + 5
    node_s = nodes * idle["seconds"]
    # per node per second, from the same /proc readings as the totals
    assert idle["cloud_cpu_s"] > 0  # its loops run even when nothing moves
    assert idle["cloud_cpu_us_per_node_s"] == pytest.approx(
        idle["cloud_cpu_s"] * 1e6 / node_s, rel=0.05, abs=0.01)
    assert idle["broker_cpu_us_per_node_s"] == pytest.approx(
        idle["broker_cpu_s"] * 1e6 / node_s, rel=0.05, abs=0.01)
    for k in ("broker_wire_bytes_per_node_s", "payload_bytes_down_per_node_s",
              "payload_bytes_up_per_node_s", "msgs_per_node_hour",
              "simulator_cpu_us_per_node_s"):
        assert idle[k] >= 0, k
    assert float(idle["load1"]) >= 0
    assert r["audit"]["all_applied"] is True


def test_simulated_nodes_keep_the_agents_mqtt_keepalive() -> None:
    """The simulators' idle traffic is an agent's: their default keepalive (pings) is
    the agent's default, on both ways of starting them."""
    from edgecore.config import AgentSettings
    from testbed import simulator

    agent = AgentSettings.__dataclass_fields__["mqtt_keepalive_s"].default
    assert simulator.SimSettings().keepalive == agent
    assert simulator.parse_args(["--host", "h", "--prefix", "n", "--count", "1"]
                                ).keepalive == agent
