"""`testbed.bench_fleet_memory` on a small fleet: each phase says what it holds per node,
by the file that allocated it (the desired sets grow once DaemonSets are there)."""

from __future__ import annotations

import json

from testbed.bench_fleet_memory import main, measure


def test_the_breakdown_names_the_desired_sets_once_daemonsets_are_applied(capsys) -> None:
    got = measure(300, 2, 40)
    registered, applied = got["nodes_registered"], got["daemonsets_applied"]
    assert registered["bytes_per_node"] > 0 and applied["bytes_per_node"] > 0
    desired = "cloudcore/fleet/desired.py"
    assert applied["by_file"].get(desired, 0) > registered["by_file"].get(desired, 0)
    assert main(["--nodes", "50", "--daemonsets", "0", "--top", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["daemonsets"] == 0 and len(out["nodes_registered"]["by_file"]) <= 3
