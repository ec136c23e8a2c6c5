"""`python -m testbed.bench_agent_floor` runs and prints its steps (issue 16): a smoke
test of the benchmark program, not a check of its figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_floor_bench_prints_every_step_with_the_agents_code_then_tls_and_secrets() -> None:
    out = subprocess.run([sys.executable, "-m", "testbed.bench_agent_floor", "--runs", "1"],
                         cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=120).stdout
    result = json.loads(out.strip().splitlines()[-1])
    steps = [s["step"] for s in result["steps"]]
    assert steps[0].startswith("interpreter") and steps[5].startswith("+ edgecore.agent")
    assert "certificate" in steps[6] and "Secret" in steps[7], steps
    assert any("paho-mqtt" in s for s in steps) and any("TLS" in s for s in steps)
    rss = [s["rss_mib"][0] for s in result["steps"]]
    # each step adds what it imports; the agent's code cannot come for free
    assert 5 < rss[0] < rss[5] <= rss[-1] < 200, rss
    assert "left under the 28 MiB target" in out
