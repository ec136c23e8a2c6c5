"""`edgecore join` over HTTPS: the token's third part pins the fleet CA (proposal 0002).

A small stdlib HTTPS server stands in for cloudcore's two calls (`GET /api/v1/ca`,
`POST /api/v1/join`), with a CA and server certificate made by `cryptography`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import ipaddress
import json
import ssl
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgecore.__main__ import build_parser, main, settings_from_args
from edgecore.agent import Agent
from edgecore.config import AgentSettings
from shared import seal

KEY = bytes(range(32))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str = "edgefed fleet CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_server_cert(ca_key: Any, ca: x509.Certificate) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("api")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _client_cert(ca_key: Any, ca: x509.Certificate, cn: str, *,
                 hours: tuple[float, float] = (-1, 24)) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + datetime.timedelta(hours=hours[0]))
            .not_valid_after(now + datetime.timedelta(hours=hours[1]))
            .sign(ca_key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def der_hash(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass
class FakeCloud:
    url: str
    ca: x509.Certificate
    joins: list[dict[str, Any]]
    renewals: list[dict[str, Any]]


@pytest.fixture
def https_cloud(tmp_path: Path) -> Iterator[FakeCloud]:
    ca_key, ca = make_ca()
    cert, key = make_server_cert(ca_key, ca)
    (tmp_path / "srv.crt").write_bytes(cert)
    (tmp_path / "srv.key").write_bytes(key)
    joins: list[dict[str, Any]] = []
    renewals: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def _json(self, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            assert self.path == "/api/v1/ca"
            self._json({"caCert": pem(ca), "caCertHash": "sha256:" + der_hash(ca)})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.endswith("/certificate"):
                name = self.path.split("/")[-2]
                k_up = seal.NodeKeys.derive(KEY).up
                if body["mac"] != seal.renew_mac(k_up, name, body["ts"]):
                    self.send_response(401)
                    self.end_headers()
                    return
                renewals.append(body)
                key, cert = _client_cert(ca_key, ca, name)
                self._json({"cert": cert.decode(), "key": key.decode(), "notAfter": 2e9})
                return
            joins.append(body)
            self._json({
                "node": {"metadata": {"name": body["name"], "labels": {}}},
                "broker": {"host": "broker.example", "port": 8883, "tls": True},
                "credentials": {"username": body["name"], "password": "pw"},
                "key": base64.b64encode(KEY).decode(), "caCert": pem(ca),
                "clientCert": {"cert": "CERT PEM", "key": "KEY PEM", "notAfter": 1.9e9}})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "srv.crt", tmp_path / "srv.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeCloud(f"https://127.0.0.1:{server.server_address[1]}", ca, joins, renewals)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_pinned_join_writes_key_ca_and_client_cert(https_cloud: FakeCloud, tmp_path: Path,
                                                   capsys) -> None:
    d = tmp_path / "edge"
    tok = f"abcdef.0123456789abcdef.{der_hash(https_cloud.ca)}"
    rc = main(["join", "--cloud", https_cloud.url, "--token", tok, "--name", "e1",
               "--state-dir", str(d)])
    assert rc == 0, capsys.readouterr().err
    assert https_cloud.joins[0]["token"] == tok  # the server accepts the pin part too
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    cfg = json.loads((d / "edgecore.json").read_text())
    assert base64.b64decode(cfg["key"]) == KEY
    assert cfg["tls"] is True and cfg["ca_file"] == str(d / "ca.crt")
    assert (d / "ca.crt").read_text() == pem(https_cloud.ca)
    assert stat.S_IMODE((d / "client.key").stat().st_mode) == 0o600
    assert cfg["client_cert"] == str(d / "client.crt") and cfg["cert_not_after"] == 1.9e9
    s = settings_from_args(build_parser().parse_args(["run", "--state-dir", str(d)]))
    assert s.node_key == KEY and s.tls and s.ca_file == d / "ca.crt"
    assert s.client_cert == d / "client.crt" and s.client_key == d / "client.key"


def test_a_cloud_whose_ca_is_not_the_pinned_one_is_refused(https_cloud: FakeCloud,
                                                          tmp_path: Path, capsys) -> None:
    _, other = make_ca("someone in the middle")
    d = tmp_path / "edge"
    rc = main(["join", "--cloud", https_cloud.url, "--token",
               f"abcdef.0123456789abcdef.{der_hash(other)}", "--name", "e1",
               "--state-dir", str(d)])
    err = capsys.readouterr().err
    assert rc == 1 and "not the one the token pins" in err and err.count("\n") == 1
    assert https_cloud.joins == [] and not d.exists()


def test_without_a_pin_the_ca_file_or_the_insecure_flag_is_needed(
        https_cloud: FakeCloud, tmp_path: Path, capsys, caplog) -> None:
    base = ["join", "--cloud", https_cloud.url, "--token", "abcdef.0123456789abcdef",
            "--name", "e1"]
    rc = main([*base, "--state-dir", str(tmp_path / "a")])
    assert rc == 1 and "pins no CA" in capsys.readouterr().err and https_cloud.joins == []
    # --ca-file: verified against it
    (tmp_path / "ca.pem").write_text(pem(https_cloud.ca))
    assert main([*base, "--state-dir", str(tmp_path / "b"), "--ca-file",
                 str(tmp_path / "ca.pem")]) == 0
    # a wrong --ca-file fails verification
    _, other = make_ca("other")
    (tmp_path / "other.pem").write_text(pem(other))
    rc = main([*base, "--state-dir", str(tmp_path / "c"), "--ca-file",
               str(tmp_path / "other.pem")])
    assert rc == 1 and "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err
    # insecure: works, loudly
    assert main([*base, "--state-dir", str(tmp_path / "d"),
                 "--insecure-skip-tls-verify"]) == 0
    assert "INSECURE JOIN" in caplog.text
    assert len(https_cloud.joins) == 2


async def test_the_agent_renews_its_client_certificate_when_a_third_is_left(
        https_cloud: FakeCloud, tmp_path: Path) -> None:
    """A certificate with under a third of its life left is renewed at once (signed
    with the node key), written over the old one, and the link told to reconnect."""
    import asyncio

    ca_key, ca = make_ca()
    key, cert = _client_cert(ca_key, ca, "e1", hours=(-20, 4))  # 4 of 24 h left
    d = tmp_path / "state"
    d.mkdir()
    (d / "client.crt").write_bytes(cert)
    (d / "client.key").write_bytes(key)
    (d / "ca.crt").write_text(pem(https_cloud.ca))
    s = AgentSettings(node="e1", state_dir=d, node_key=KEY, tls=True, ca_file=d / "ca.crt",
                      client_cert=d / "client.crt", client_key=d / "client.key",
                      cloud_url=https_cloud.url)
    agent = Agent(s)
    reconnects: list[int] = []

    class FakeLink:
        def reconnect(self) -> None:
            reconnects.append(1)

    task = asyncio.create_task(agent._renew_certificate(
        FakeLink(), seal.NodeKeys.derive(KEY)))  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):
            while not reconnects:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(https_cloud.renewals) == 1
    assert (d / "client.crt").read_bytes() != cert
    assert stat.S_IMODE((d / "client.key").stat().st_mode) == 0o600
    from edgecore.join import certificate_lifetime

    start, end = certificate_lifetime(d / "client.crt")
    assert end - start > 20 * 3600  # the fresh one: not due again for hours


RENEW_IN_A_FRESH_AGENT = """
import asyncio, json, sys
from pathlib import Path
from edgecore.renew import renew_in_child
from shared import seal

cfg = json.loads(sys.argv[1])
keys = seal.NodeKeys.derive(bytes(range(32)))
try:
    got = asyncio.run(renew_in_child(cfg["cloud"], name="e1", k_up=keys.up,
                                     cert_file=Path(cfg["cert"]), key_file=Path(cfg["key"]),
                                     ca_file=Path(cfg["ca"]), now=cfg["now"]))
    err = None
except Exception as exc:
    got, err = None, f"{type(exc).__name__}: {exc}"
print(json.dumps({"not_after": got, "error": err,
                  "held": sorted(m for m in ("urllib.request", "http.client", "email")
                                 if m in sys.modules)}))
"""


def _renew_in_a_fresh_process(https_cloud: FakeCloud, d: Path, cloud: str) -> dict[str, Any]:
    import subprocess
    import sys
    import time

    cfg = {"cloud": cloud, "cert": str(d / "client.crt"), "key": str(d / "client.key"),
           "ca": str(d / "ca.crt"), "now": time.time()}
    out = subprocess.run([sys.executable, "-c", RENEW_IN_A_FRESH_AGENT, json.dumps(cfg)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    got: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return got


def _state_due_for_renewal(tmp_path: Path, ca_pem: str) -> tuple[Path, bytes]:
    """A state dir with a client certificate 4 h from its end of 24 (due) and `ca_pem`
    as the CA to verify the cloud with: (the dir, the certificate)."""
    ca_key, ca = make_ca()
    key, cert = _client_cert(ca_key, ca, "e1", hours=(-20, 4))
    d = tmp_path / "state"
    d.mkdir()
    (d / "client.crt").write_bytes(cert)
    (d / "client.key").write_bytes(key)
    (d / "ca.crt").write_text(ca_pem)
    return d, cert


def test_the_renewal_runs_in_a_child_and_leaves_no_http_client_behind(
        https_cloud: FakeCloud, tmp_path: Path) -> None:
    # Issue 16: the renewal's urllib.request, http.client and email (1.1-1.9 MiB of RSS)
    # stayed in a mutual-TLS agent for good after its first renewal; the call is made
    # by `python -m edgecore.renew` now, the agent only waits for its answer.
    d, cert = _state_due_for_renewal(tmp_path, pem(https_cloud.ca))
    got = _renew_in_a_fresh_process(https_cloud, d, https_cloud.url)
    assert got["error"] is None, got
    assert len(https_cloud.renewals) == 1
    assert (d / "client.crt").read_bytes() != cert
    assert stat.S_IMODE((d / "client.key").stat().st_mode) == 0o600
    assert got["held"] == [], f"the renewing process holds {got['held']}"


def test_a_failed_renewal_in_the_child_says_why(https_cloud: FakeCloud, tmp_path: Path) -> None:
    _, ca = make_ca()  # not the CA of the cloud's server certificate
    d, cert = _state_due_for_renewal(tmp_path, pem(ca))
    got = _renew_in_a_fresh_process(https_cloud, d, https_cloud.url)
    assert got["not_after"] is None
    assert got["error"].startswith("JoinError") and "CERTIFICATE_VERIFY_FAILED" in got["error"]
    assert https_cloud.renewals == [] and (d / "client.crt").read_bytes() == cert
