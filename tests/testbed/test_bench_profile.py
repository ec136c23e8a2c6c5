"""`python -m testbed.bench sync --py-spy PATH`: the profiler runs for exactly the
block it wraps (started with the cloud's pid, stopped with SIGINT, on which py-spy
writes its file), and a path that is not an executable is refused before anything
starts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from testbed import bench

# A stand-in for py-spy: records its arguments, writes --output when interrupted.
FAKE = """#!/bin/sh
out=""; pid=""
while [ $# -gt 0 ]; do
  case "$1" in --output) out="$2"; shift;; --pid) pid="$2"; shift;; esac; shift
done
trap 'echo "main;loop $pid" > "$out"; exit 0' INT
while true; do sleep 0.05; done
"""


def test_the_profiler_covers_the_block_and_writes_on_interrupt(tmp_path: Path) -> None:
    fake = tmp_path / "py-spy"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    out = tmp_path / "py-spy-create.txt"
    with bench.profiled(fake, os.getpid(), out):
        time.sleep(0.3)
        assert not out.exists()  # written only once stopped
    assert out.read_text().strip() == f"main;loop {os.getpid()}"


def test_no_profiler_no_process(tmp_path: Path) -> None:
    out = tmp_path / "p.txt"
    with bench.profiled(None, os.getpid(), out):
        pass
    assert not out.exists()


def test_py_spy_must_be_an_executable(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.main(["sync", "--nodes", "10", "--py-spy", str(tmp_path / "nowhere")])
    assert exc.value.code == 2
    assert "not an executable file" in capsys.readouterr().err
