"""A packet capture of a secure fleet at work holds no Secret value and no credential.

tcpdump listens on every interface (the testbed bridge the agents reach the broker
and the registry over, and the loopback cloudcore and fedctl use) while two agents
join and a pod that mounts a Secret is applied and started. The capture must not
contain the Secret's value (plain or base64), any broker password (the nodes', or
cloudcore's own), a node key, the admin token or a join token's secret. As controls,
the registry's plain-HTTP traffic is captured too and is readable, and the same
scenario under `--insecure` does put the Secret value on the wire.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from testbed.fleet import Fleet, FleetSettings

pytestmark = pytest.mark.integration


def capture(tmp_path: Path, *, insecure: bool) -> tuple[bytes, dict[str, str]]:
    """Run the scenario under tcpdump: (the capture, {what: secret to look for})."""
    if os.geteuid() != 0:
        pytest.skip("capturing packets and running containers need root")
    if shutil.which("tcpdump") is None:
        pytest.fail("tcpdump is not installed (make test installs it)")
    value = "s3cr3t-" + uuid.uuid4().hex
    fleet = Fleet(FleetSettings(nodes=0, workdir=tmp_path / "fleet", heartbeat_s=1.0,
                                insecure=insecure))
    fleet.start()
    pcap = tmp_path / "fleet.pcap"
    tokens: list[str] = []
    try:
        assert fleet.broker is not None and fleet.registry is not None
        api_port = fleet.api.rsplit(":", 1)[1]
        reg_port = fleet.registry.address.rsplit(":", 1)[1]
        dump = subprocess.Popen(
            ["tcpdump", "-i", "any", "-U", "-s", "0", "-n", "-w", str(pcap),
             f"tcp port {fleet.broker.port} or tcp port {api_port} or tcp port {reg_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_listening(pcap, dump)
            for i in range(2):  # joins (HTTPS) and broker logins (MQTT over TLS) included
                name = f"edge-{i + 1}"
                if not insecure:
                    token = fleet.join_token(name=name)
                    tokens.append(token)
                    fleet.join(name, fleet.workdir / "nodes" / name, token=token)
                fleet.add_agent(i)
            fleet.wait_nodes_ready(timeout=60)
            fleet.apply([
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                 "stringData": {"password": value}},
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "app"},
                 "spec": {"nodeSelector": {"kubernetes.io/hostname": "edge-1"},
                          "containers": [{"name": "main", "image": fleet.image,
                                          "command": ["sleep", "3600"],
                                          "volumeMounts": [{"name": "db",
                                                            "mountPath": "/etc/db"}]}],
                          "volumes": [{"name": "db", "secret": {"secretName": "db"}}]}}])
            fleet.wait(lambda: fleet.get("/api/v1/pods/default/app")["status"].get("phase")
                       == "Running", timeout=90, what="pod app Running")
            # the value reached the pod (checked by its length: the value itself stays off
            # every wire, the exec request included)
            r = fleet.fedctl("exec", "app", "--", "sh", "-c",
                             'read v < /etc/db/password; echo "${#v}"', check=False)
            assert r.returncode == 0 and r.stdout.strip() == str(len(value)), r
            time.sleep(1)
        finally:
            dump.send_signal(signal.SIGINT)
            _, err = dump.communicate(timeout=30)
        assert b"captured" in err, err
        raw = pcap.read_bytes()
        secrets = {"the Secret value": value,
                   "the Secret value in base64": base64.b64encode(value.encode()).decode()}
        if not insecure:
            secrets["cloudcore's broker password"] = (
                fleet.cloud_state / "mqtt.password").read_text().strip()
            secrets["the admin token"] = fleet.admin_token or ""
            for a in fleet.agents:
                conf = fleet.node_config(a.name)
                secrets[f"{a.name}'s broker password"] = conf["credentials"]["password"]
                secrets[f"{a.name}'s node key"] = conf["key"]
            for t in tokens:
                secrets[f"join token {t.split('.')[0]}'s secret"] = t.split(".")[1]
    finally:
        fleet.stop()
    assert len(raw) > 50_000, f"the capture is too small to prove anything ({len(raw)} B)"
    assert b"/v2/" in raw, "control: the registry's plain HTTP was not captured"
    return raw, secrets


def test_the_wire_holds_no_secret_and_no_password(tmp_path: Path) -> None:
    raw, secrets = capture(tmp_path, insecure=False)
    found = [what for what, s in secrets.items() if s and s.encode() in raw]
    assert found == [], f"in clear on the wire: {found}"


def test_insecure_mode_puts_the_secret_on_the_wire(tmp_path: Path) -> None:
    """What --insecure gives up (docs/security.md), and proof the capture would see it."""
    raw, secrets = capture(tmp_path, insecure=True)
    assert secrets["the Secret value in base64"].encode() in raw


def _wait_listening(pcap: Path, dump: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """tcpdump creates the file once it has opened the interface."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dump.poll() is not None:
            raise RuntimeError(f"tcpdump exited: {dump.stderr.read() if dump.stderr else ''!r}")
        if pcap.exists():
            time.sleep(0.5)
            return
        time.sleep(0.05)
    raise TimeoutError("tcpdump did not start")
