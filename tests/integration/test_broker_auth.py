"""The broker as cloudcore keeps it: cloudcore writes mosquitto's password file (its own
service identities and every joined node, hashed) and ACL; the broker reloads them;
revoking a node refuses its credentials and closes its session at once.

Real mosquitto, cloudcore and edgecore processes (the testbed's secure fleet, no
registry, no containers)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from testbed.fleet import Fleet, FleetSettings


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(FleetSettings(nodes=1, workdir=tmp_path / "fleet", heartbeat_s=1.0,
                            with_registry=False, use_netns=False))
    f.start()
    try:
        f.wait_nodes_ready(timeout=30)
        yield f
    finally:
        f.stop()


async def _login(f: Fleet, username: str, password: str) -> str:
    assert f.broker is not None
    try:
        async with aiomqtt.Client("127.0.0.1", f.broker.port, username=username,
                                  password=password, tls_context=f.broker_tls(), timeout=5,
                                  identifier="ignored"):
            return "ok"
    except aiomqtt.MqttError as exc:
        return str(exc)


def test_cloudcore_keeps_the_password_file_and_acl(fleet: Fleet) -> None:
    assert fleet.broker is not None
    passwd = fleet.broker.passwd.read_text()
    users = {line.split(":", 1)[0] for line in passwd.splitlines() if line}
    assert users >= {"cloudcore_sub", "cloudcore_pub0", "edge-1"}
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in passwd.splitlines()
               if line)
    cloud_pw = (fleet.cloud_state / "mqtt.password").read_text().strip()
    node_pw = fleet.node_config("edge-1")["credentials"]["password"]
    assert cloud_pw not in passwd and node_pw not in passwd
    acl = fleet.broker.acl.read_text()
    assert "user cloudcore_sub" in acl and "pattern read fed/v1/+/%u/down" in acl
    assert "pattern write fed/v1/+/%u/up" in acl and "pattern write fed/v1/+/%u/will" in acl
    assert fleet.broker.reloads >= 1
    assert asyncio.run(_login(fleet, "edge-1", node_pw)) == "ok"
    assert asyncio.run(_login(fleet, "edge-1", "wrong")) != "ok"


def test_deleting_a_node_refuses_its_credentials_and_closes_its_session(fleet: Fleet) -> None:
    assert fleet.broker is not None
    a = fleet.agent("edge-1")
    node_pw = fleet.node_config("edge-1")["credentials"]["password"]
    mark = len(a.proc.log.read_text())
    r = fleet.fedctl("node", "delete", "edge-1")
    assert "deleted" in r.stdout

    def gone() -> bool:
        return "edge-1:" not in fleet.broker.passwd.read_text()  # type: ignore[union-attr]
    fleet.wait(gone, timeout=10, what="edge-1 out of the password file")
    # the broker reloads and drops the session; the agent cannot log in again
    fleet.wait(lambda: "Not authorized" in a.proc.log.read_text()[mark:], timeout=20,
               what="the agent refused by the broker")
    assert asyncio.run(_login(fleet, "edge-1", node_pw)) != "ok"
    time.sleep(2)
    nodes = {n["metadata"]["name"] for n in fleet.nodes()}
    assert "edge-1" not in nodes  # its reports (if any got out) register nothing


def test_a_bad_password_file_fails_fast(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cloudcore", "--state-dir", str(tmp_path / "s"),
                        "--mqtt-password-file", str(tmp_path / "missing")],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "--mqtt-password-file" in r.stderr and "missing" in r.stderr


def test_node_certificates_and_their_revocation(tmp_path: Path) -> None:
    """The stronger option: nodes log in with client certificates from the fleet CA (the
    broker's require_certificate listener); deleting a node puts its certificate on the
    CRL and the broker refuses it."""
    f = Fleet(FleetSettings(nodes=1, workdir=tmp_path / "fleet", heartbeat_s=1.0,
                            with_registry=False, use_netns=False, node_certs=True))
    f.start()
    try:
        f.wait_nodes_ready(timeout=30)
        conf = f.node_config("edge-1")
        assert f.broker is not None and conf["broker"]["port"] == f.broker.cert_port
        assert Path(conf["client_cert"]).is_file() and conf["tls"] is True
        a = f.agent("edge-1")
        mark = len(a.proc.log.read_text())
        f.fedctl("node", "delete", "edge-1")
        f.wait(lambda: "certificate revoked" in a.proc.log.read_text()[mark:], timeout=20,
               what="the broker refusing edge-1's revoked certificate")
    finally:
        f.stop()
