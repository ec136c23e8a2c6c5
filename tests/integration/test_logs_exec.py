"""`fedctl logs` and `fedctl exec` end to end: fedctl -> API -> MQTT -> agent -> crun.

One real node (mosquitto, cloudcore, an agent in its network namespace, a busybox
pod that prints numbered lines), driven through the fedctl binary as a user would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.fleet import Fleet, FleetSettings

pytestmark = pytest.mark.integration

NEEDS = ("mosquitto", "crun", "conmon", "skopeo", "umoci", "docker-registry")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.skip("integration tests run real containers and need root")
    if missing := [b for b in NEEDS
                   if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]:
        pytest.fail(f"missing system packages: {missing} (make test installs them)")
    f = Fleet(FleetSettings(nodes=1, workdir=tmp_path_factory.mktemp("logs"), heartbeat_s=1.0))
    f.start()
    try:
        f.wait_nodes_ready(timeout=60)
        f.apply([echo_pod(f.image)])
        f.wait(lambda: _running(f), timeout=90, what="the echo pod Running")
        f.wait(lambda: b"line 3" in fedctl(f, "logs", "echo").stdout, timeout=30,
               what="three lines logged")
        yield f
    finally:
        f.stop()


def echo_pod(image: str) -> dict[str, Any]:
    script = "i=1; while [ $i -le 3 ]; do echo line $i; i=$((i+1)); done; exec sleep 3600"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "echo"},
            "spec": {"containers": [{"name": "main", "image": image,
                                     "command": ["sh", "-c", script]}]}}


def _running(f: Fleet) -> bool:
    pods = [p for p in f.pods() if p["metadata"]["name"] == "echo"]
    return bool(pods) and pods[0]["status"].get("phase") == "Running"


def fedctl(f: Fleet, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "fedctl", *args], capture_output=True,
                          timeout=timeout, check=False, env={**os.environ, **f.fedctl_env()})


def test_logs_tail_shows_the_last_lines(fleet: Fleet) -> None:
    r = fedctl(fleet, "logs", "echo", "--tail", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"line 2\nline 3\n"
    r = fedctl(fleet, "logs", "echo", "-c", "main", "--since", "1h")
    assert r.stdout == b"line 1\nline 2\nline 3\n"


def test_exec_prints_output_and_exits_with_its_code(fleet: Fleet) -> None:
    r = fedctl(fleet, "exec", "echo", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"hi\n"
    assert b"oops" in r.stderr


def test_follow_streams_new_output(fleet: Fleet) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "fedctl", "logs",
                             "echo", "-f", "--tail", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **fleet.fedctl_env()})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"line 3\n"
        time.sleep(0.5)
        r = fedctl(fleet, "exec", "echo", "--", "sh", "-c", "echo followed > /proc/1/fd/1")
        assert r.returncode == 0, r.stderr
        assert proc.stdout.readline() == b"followed\n"
    finally:
        proc.terminate()
        proc.wait(10)


def test_errors_are_clear(fleet: Fleet) -> None:
    r = fedctl(fleet, "logs", "nope")
    assert r.returncode != 0 and b"not found" in r.stderr
    r = fedctl(fleet, "exec", "echo", "-c", "side", "--", "true")
    assert r.returncode != 0 and b"no container 'side'" in r.stderr
