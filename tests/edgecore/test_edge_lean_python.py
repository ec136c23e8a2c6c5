"""`edgecore run` restarts itself under `-OO -X no_debug_ranges` (issue 16: 1.2-1.4 MiB
less RSS), in the same process, unless `--plain-python`; the agent then runs as before.
The memory itself is measured by `python -m testbed.bench_edge --footprint`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecore.__main__ import LEAN_FLAGS, lean_argv


def test_lean_argv_keeps_the_command_and_stops_once_lean() -> None:
    orig = ["/opt/edgefed/bin/python", "/opt/edgefed/bin/edgecore", "run", "--state-dir", "/s"]
    assert lean_argv(orig) == [sys.executable, *LEAN_FLAGS, *orig[1:]]
    assert lean_argv([orig[0], *LEAN_FLAGS, *orig[1:]]) is None  # restarted once already
    # under the flags: nothing to do (no exec loop)
    out = subprocess.run([sys.executable, *LEAN_FLAGS, "-c",
                          "from edgecore.__main__ import lean_argv; print(lean_argv())"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "None"


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _run_agent(tmp_path: Path, port: int, *extra: str) -> tuple[list[str], str]:
    """Start `python -m edgecore run` as a user would; once it has written its metrics
    file (it runs), return its command line (read from /proc: the same pid) and stop it."""
    state = tmp_path / "state"
    metrics = tmp_path / "metrics.prom"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFED_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecore", "run", "--insecure", "--name", "lean-1",
         "--state-dir", str(state), "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port),
         "--metrics-file", str(metrics), "--metrics-interval", "1",
         "--no-discover-accelerators", *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not metrics.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, f"the agent exited {proc.returncode}: {proc.stderr}"
        assert metrics.exists(), "the agent did not write its metrics file in 60 s"
        argv = _cmdline(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    return argv, err


@pytest.fixture
def runnable() -> None:
    if os.geteuid() != 0 or shutil.which("crun") is None:
        pytest.skip("a started agent runs crun: needs root and crun")


@pytest.mark.usefixtures("runnable")
def test_edgecore_run_restarts_itself_lean_and_runs(tmp_path: Path, mosquitto) -> None:
    argv, err = _run_agent(tmp_path, mosquitto.port)
    assert argv[1:1 + len(LEAN_FLAGS)] == list(LEAN_FLAGS), argv
    assert argv[1 + len(LEAN_FLAGS):1 + len(LEAN_FLAGS) + 3] == ["-m", "edgecore", "run"]
    assert "Traceback" not in err


@pytest.mark.usefixtures("runnable")
def test_plain_python_keeps_the_interpreter_as_started(tmp_path: Path, mosquitto) -> None:
    argv, _ = _run_agent(tmp_path, mosquitto.port, "--plain-python")
    assert "-OO" not in argv and "no_debug_ranges" not in argv
    assert argv[1:4] == ["-m", "edgecore", "run"]
