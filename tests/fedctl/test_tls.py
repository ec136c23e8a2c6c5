"""fedctl over HTTPS: it verifies cloudcore's certificate against the fleet CA given by
flag, environment or context, and a TLS failure is one line that says what to do.

A real TLS server (http.server wrapped in ssl) with a CA and a server certificate made
here with `cryptography`, as cloudcore's fleet CA is."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, *, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool,
          sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=1))
         .not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("edgefed fleet CA", ca_key, issuer="edgefed fleet CA", issuer_key=ca_key,
               ca=True)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _cert("another CA", other_key, issuer="another CA", issuer_key=other_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    srv = _cert("cloudcore", key, issuer="edgefed fleet CA", issuer_key=ca_key, ca=False,
                sans=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    (d / "ca.crt").write_bytes(_pem(ca))
    (d / "other.crt").write_bytes(_pem(other))
    (d / "api.crt").write_bytes(_pem(srv))
    (d / "api.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return {"ca": d / "ca.crt", "other": d / "other.crt", "cert": d / "api.crt",
            "key": d / "api.key"}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"name": "root", "role": "admin", "authEnabled": True}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(pki: dict[str, Path]) -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["cert"], pki["key"])
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def fed(*argv: str, env: dict[str, str] | None = None, home: Path
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fedctl", *argv], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": str(home),
                               **(env or {})})


def test_verified_against_the_fleet_ca(server: int, pki: dict[str, Path], tmp_path: Path
                                       ) -> None:
    url = f"https://127.0.0.1:{server}"
    r = fed("--server", url, "--certificate-authority", str(pki["ca"]), "whoami", home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "root (admin)"
    r = fed("--server", url, "whoami", env={"FEDCTL_CA": str(pki["ca"])}, home=tmp_path)
    assert r.returncode == 0, r.stderr


def test_unknown_ca_is_one_clear_line(server: int, pki: dict[str, Path], tmp_path: Path
                                      ) -> None:
    url = f"https://127.0.0.1:{server}"
    for extra in ([], ["--certificate-authority", str(pki["other"])]):
        r = fed("--server", url, *extra, "whoami", home=tmp_path)
        assert r.returncode == 1
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith(f"error: TLS: cloudcore's certificate at {url} is not "
                                   "signed by"), r.stderr
        assert "--certificate-authority" in r.stderr
    assert str(pki["other"]) in r.stderr


def test_wrong_host_is_named(server: int, pki: dict[str, Path], tmp_path: Path) -> None:
    url = f"https://localhost:{server}"  # the certificate is for 127.0.0.1 only
    r = fed("--server", url, "--certificate-authority", str(pki["ca"]), "whoami", home=tmp_path)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "is not valid for host 'localhost'" in r.stderr, r.stderr


def test_plain_http_to_a_tls_server_and_a_missing_ca_file(server: int, pki: dict[str, Path],
                                                          tmp_path: Path) -> None:
    r = fed("--server", f"http://127.0.0.1:{server}", "whoami", home=tmp_path)
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1
    assert "https://" in r.stderr, r.stderr
    r = fed("--server", f"https://127.0.0.1:{server}", "--certificate-authority",
            str(tmp_path / "nope.crt"), "whoami", home=tmp_path)
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_context_carries_the_ca_and_skip_verify_warns(server: int, pki: dict[str, Path],
                                                      tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{server}"
    # a context file of its own, as `testbed up` writes: FEDCTL_CONFIG, a relative CA path
    (tmp_path / "ca.crt").write_bytes(pki["ca"].read_bytes())
    conf = tmp_path / "fedctl.yaml"
    conf.write_text(f"current-context: testbed\ncontexts:\n  testbed:\n    server: {url}\n"
                    "    token: t0k3n\n    certificate-authority: ca.crt\n")
    r = fed("whoami", env={"FEDCTL_CONFIG": str(conf)}, home=tmp_path / "home")
    assert r.returncode == 0, r.stderr

    r = fed("config", "set-context", "lab", "--server", url, "--insecure-skip-tls-verify",
            "--use", env={"FEDCTL_CONFIG": str(conf)}, home=tmp_path)
    assert r.returncode == 0, r.stderr
    r = fed("config", "get-contexts", env={"FEDCTL_CONFIG": str(conf)}, home=tmp_path)
    assert "skip-verify" in r.stdout and "ca.crt" in r.stdout
    r = fed("whoami", env={"FEDCTL_CONFIG": str(conf)}, home=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: not verifying the TLS certificate" in r.stderr
