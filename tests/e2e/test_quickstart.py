"""The README's quickstart, steps 1 to 3, as written (but on free ports and in tmp_path):
`testbed broker` (a TLS mosquitto from cloudcore's fleet CA, with the password file
and ACL cloudcore keeps), cloudcore with the flags it prints, fedctl handed the admin
token and the CA through a context, a one-use join token, and `edgecore join --start`
with nothing but that token. Real processes; no containers (step 4 pulls an image)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.ports import free_port
from testbed.procs import Proc


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in reversed(started):
        p.stop()


def _wait_for(path: Path, pattern: str, *, timeout: float = 30) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, path.read_text() if path.exists() else "")
        if m:
            return m
        time.sleep(0.1)
    raise AssertionError(f"{pattern!r} never appeared in {path}:\n"
                         f"{path.read_text() if path.exists() else ''}")


def test_quickstart_by_hand(tmp_path: Path, procs: list[Proc]) -> None:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is not installed (make test installs it)")
    bin_dir = Path(sys.executable).parent
    env = {"PATH": f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin",
           "FEDCTL_CONFIG": str(tmp_path / "fedctl.yaml"), "HOME": str(tmp_path)}
    state, port, http = tmp_path / "cloudcore", free_port(), free_port()

    # 1. the cloud: testbed broker, then cloudcore with the flags it prints
    broker = Proc("broker", [str(bin_dir / "testbed"), "broker", "--state-dir", str(state),
                             "--workdir", str(tmp_path / "broker"), "--port", str(port)],
                  log=tmp_path / "broker.log", env=env).start()
    procs.append(broker)
    flags = _wait_for(broker.log, r"cloudcore flags:  (.*)\n").group(1).split()
    assert "--mqtt-tls" in flags and "--mosquitto-passwd" in flags
    cloud = Proc("cloudcore", [str(bin_dir / "cloudcore"), *flags, "--http-port", str(http)],
                 log=tmp_path / "cloudcore.log", env=env).start()
    procs.append(cloud)
    _wait_for(cloud.log, r"subscriber connected")
    url = f"https://127.0.0.1:{http}"

    def fedctl(*argv: str) -> str:
        r = subprocess.run([str(bin_dir / "fedctl"), *argv], capture_output=True, text=True,
                           timeout=60, check=False, env=env)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    fedctl("config", "set-context", "local", "--server", url, "--use",
           "--token", (state / "admin.token").read_text().strip(),
           "--certificate-authority", str(state / "pki" / "ca.crt"))
    assert fedctl("whoami").endswith("(admin)")

    # 2. a one-use join token that pins the fleet CA
    token = fedctl("token", "create", "--ttl", "1h", "--labels", "edgefed.io/role=edge")
    assert len(token.split(".")) == 3

    # 3. on the device: join and start, given nothing but the token
    agent = Proc("edgecore", [str(bin_dir / "edgecore"), "join", "--cloud", url,
                              "--token", token, "--name", "shop-17",
                              "--state-dir", str(tmp_path / "edge"), "--start",
                              "--log-level", "INFO"],
                 log=tmp_path / "edgecore.log", env=env).start()
    procs.append(agent)
    fedctl("wait", "nodes", "shop-17", "--for", "Ready", "--timeout", "60s")
    node = json.loads(fedctl("get", "node", "shop-17", "-o", "json"))
    assert node["metadata"]["labels"]["edgefed.io/role"] == "edge"  # from the token
    conf = tmp_path / "edge" / "edgecore.json"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "edge").stat().st_mode & 0o777) == "0o700"
    assert os.path.exists(tmp_path / "edge" / "ca.crt")
