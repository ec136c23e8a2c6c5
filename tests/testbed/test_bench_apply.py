"""testbed/bench_apply.py keeps working as the fleet core changes: its measuring process,
run small on this checkout, applies every DaemonSet to every node and reports figures.
Nothing here asserts a timing (benchmarks print figures; conventions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import bench_apply

ROOT = Path(__file__).resolve().parents[2]


def test_measuring_process_on_this_tree() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "testbed" / "bench_apply.py"), "--measure",
         "--nodes", "40", "--daemonsets", "2", "--settle", "0"],
        capture_output=True, text=True, timeout=120, cwd="/", check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONSAFEPATH": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    results = [json.loads(line.split(" ", 1)[1]) for line in r.stdout.splitlines()
               if line.startswith("RESULT ")]
    assert len(results) == 1
    res = results[0]
    assert res["pods"] == 80
    assert [a["ds"] for a in res["applies"]] == [1, 2]
    assert res["rss_end"] > 0 and res["lag_samples"] > 0


def test_tree_needs_a_cloudcore(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no cloudcore/fleet"):
        bench_apply._tree(f"old={tmp_path}")
    assert bench_apply._tree(f"new={ROOT}") == ("new", ROOT)


def test_table_reports_a_process_killed_over_the_limit() -> None:
    killed = {"failed": True, "killed_over_rss": True, "rss_seen": 12 << 30, "rc": -9,
              "applies": [{"ds": 1, "wall_s": 15.0, "cpu_s": 14.0, "apply_call_s": 10.5,
                           "lag_max_ms": 13000.0}]}
    text = bench_apply._table([("before", 10, 1, 0.5, killed)])
    assert ">12288 (killed over --max-rss-gb, 1 DS done)" in text
    assert "13000" in text
