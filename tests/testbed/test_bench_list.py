"""testbed/bench_list.py keeps working as the API's list cache changes: run small, it
prints a figure for every command and run (no timing asserted: benchmarks print)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_list_runs_small() -> None:
    r = subprocess.run([sys.executable, "-m", "testbed.bench_list", "--nodes", "30",
                        "--runs", "2"], capture_output=True, text=True, timeout=240,
                       cwd=ROOT, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    for what in ("get nodes -o json", "get nodes (table)", "get nodes -o name"):
        for run in ("run 1 cold", "run 2 live"):
            assert any(what in x and run in x for x in r.stdout.splitlines()), r.stdout
    assert "(0.0 MB, 31 lines)" in r.stdout  # the table: a header and 30 nodes
