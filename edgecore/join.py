"""Joining a device to a cloudcore, and forgetting it again (`edgecore join` / `reset`).

`join` trades a join token for this node's broker credentials and its node key (the
contract is `POST /api/v1/join`, docs/proposals/0002-zero-trust.md) and writes them
with the node name, labels and broker address to `STATE_DIR/edgecore.json` (mode
0600, in a 0700 state dir), which `edgecore run --state-dir STATE_DIR` (or `--config
FILE`) then reads. The fleet CA goes to `STATE_DIR/ca.crt`, a client certificate (when
cloudcore issues them) to `client.crt`/`client.key`.

Trust: a token `ID.SECRET.PIN` pins the fleet CA (PIN = hex sha256 of its DER). `join`
fetches `GET /api/v1/ca` without verification, checks the hash against the pin, and
makes the join call verified against that CA; `--ca-file` gives the CA instead;
`--insecure-skip-tls-verify` (loud) skips all of it, and is needed for a plain
`http://` cloud too. The calls use urllib and ssl from the standard library: the
device needs no HTTP client package.

`reset` stops and removes the containers of this agent's runtime root and deletes
the state directory, so the device can join again (after `fedctl node delete`).

Errors are `JoinError` with a one-line message fit for a terminal.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecore.errors import EdgecoreError
from shared.errors import ReleaseError

if TYPE_CHECKING:
    import urllib.error

# `urllib.request` (with `http.client` and `email`), `tempfile`, `shutil` and `platform`
# are imported by the calls that use them: `edgecore run` imports this module for
# `JoinError` and the certificate renewal, and an idle agent must not carry them
# (issue 16; tests/edgecore/test_edge_footprint.py).

log = logging.getLogger(__name__)

CONFIG_NAME = "edgecore.json"
CA_NAME = "ca.crt"
CLIENT_CERT_NAME = "client.crt"
CLIENT_KEY_NAME = "client.key"
INSECURE_JOIN_WARNING = (
    "INSECURE JOIN (--insecure-skip-tls-verify): the cloudcore API is not verified, so "
    "whoever sits on the network path can hand this node a fake cloud, read its join "
    "token and its node key")
JOIN_TIMEOUT_S = 15.0
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
         "armv7l": "arm", "armv6l": "arm", "riscv64": "riscv64", "ppc64le": "ppc64le",
         "s390x": "s390x"}


class JoinError(EdgecoreError):
    """Joining, reading the joined config, or resetting failed; the message is one line."""


@dataclass(frozen=True)
class JoinedConfig:
    """What `edgecore join` wrote: everything `edgecore run` needs besides defaults."""

    name: str
    broker_host: str
    broker_port: int
    labels: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cloud: str | None = None
    key: str | None = field(default=None, repr=False)
    """The node key, base64 (32 bytes): authenticates every message (shared.seal)."""
    tls: bool = False
    """Connect to the broker with TLS (verified against `ca_file`)."""
    ca_file: str | None = None
    """The fleet CA (PEM), `STATE_DIR/ca.crt`."""
    client_cert: str | None = None
    """Client certificate (PEM) for the broker, when cloudcore issues them."""
    client_key: str | None = None
    """Its private key (PEM, mode 0600)."""
    cert_not_after: float | None = None
    """Expiry of the client certificate (Unix seconds)."""
    release_keys: tuple[str, ...] = ()
    """Public keys (base64 of raw ed25519) an agent release must be signed with
    (the join answer's `releaseKeys`, proposal 0006); empty: upgrades are refused."""
    brokers: tuple[str, ...] = ()
    """The brokers this node tries, home first, as URLs (the join answer's `brokers`,
    proposal 0007); empty (a config written before the broker tier): the one broker
    above (`broker_urls`)."""
    broker_map_version: int = 0
    """The broker map version `brokers` came from (0: none)."""

    def broker_urls(self) -> tuple[str, ...]:
        """`brokers`, or for an older config `[its broker]`."""
        if self.brokers:
            return self.brokers
        from shared.brokermap import url_of

        return (url_of(self.broker_host, self.broker_port, tls=self.tls),)

    def node_key(self) -> bytes | None:
        """The decoded node key, or None if the config has none."""
        if self.key is None:
            return None
        try:
            raw = base64.b64decode(self.key, validate=True)
        except (binascii.Error, ValueError):
            raise JoinError("key: not base64") from None
        if len(raw) != 32:
            raise JoinError(f"key: {len(raw)} bytes, a node key is 32")
        return raw

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "labels": self.labels, "cloud": self.cloud,
            "broker": {"host": self.broker_host, "port": self.broker_port},
        }
        if self.username is not None:
            out["credentials"] = {"username": self.username, "password": self.password}
        if self.key is not None:
            out["key"] = self.key
        if self.tls or self.ca_file:
            out["tls"] = self.tls
            out["ca_file"] = self.ca_file
        if self.client_cert is not None:
            out["client_cert"] = self.client_cert
            out["client_key"] = self.client_key
            out["cert_not_after"] = self.cert_not_after
        if self.release_keys:
            out["release_keys"] = list(self.release_keys)
        if self.brokers:
            out["brokers"] = list(self.brokers)
            out["broker_map_version"] = self.broker_map_version
        return out

    @classmethod
    def parse(cls, raw: Any, *, source: str) -> JoinedConfig:
        try:
            broker = raw.get("broker") or {}
            creds = raw.get("credentials") or {}
            labels = raw.get("labels") or {}
            if not isinstance(raw["name"], str) or not isinstance(labels, dict):
                raise TypeError("name must be text and labels a mapping")
            return cls(name=raw["name"], labels={str(k): str(v) for k, v in labels.items()},
                       broker_host=str(broker.get("host") or "127.0.0.1"),
                       broker_port=int(broker.get("port") or 1883),
                       username=creds.get("username"), password=creds.get("password"),
                       cloud=raw.get("cloud"), key=_opt_str(raw.get("key")),
                       tls=bool(raw.get("tls", False)), ca_file=_opt_str(raw.get("ca_file")),
                       client_cert=_opt_str(raw.get("client_cert")),
                       client_key=_opt_str(raw.get("client_key")),
                       cert_not_after=(float(raw["cert_not_after"])
                                       if raw.get("cert_not_after") is not None else None),
                       release_keys=tuple(_str_list(raw.get("release_keys"))),
                       brokers=_broker_urls(raw.get("brokers"), "brokers"),
                       broker_map_version=_version(raw.get("broker_map_version")))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise JoinError(f"{source}: not an edgecore config ({exc})") from None


def _str_list(v: Any) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise TypeError(f"{v!r} must be a list of text")
    return v


def _broker_urls(v: Any, field: str) -> tuple[str, ...]:
    """A list of broker URLs in their stored form; ValueError naming `field` if any is
    not a broker URL."""
    from shared.brokermap import normal_url
    from shared.errors import ObjectError

    try:
        return tuple(normal_url(u, f"{field}[{i}]") for i, u in enumerate(_str_list(v)))
    except ObjectError as exc:
        raise ValueError(exc.message) from None


def _version(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TypeError(f"broker_map_version {v!r} must be a whole number >= 0")
    return v


def _opt_str(v: Any) -> str | None:
    if v is not None and not isinstance(v, str):
        raise TypeError(f"{v!r} must be text")
    return v


def default_name() -> str:
    """The host name made into a DNS-1123 node name."""
    name = re.sub(r"[^a-z0-9.-]+", "-", socket.gethostname().lower()).strip("-.")
    return name or "edge"


def local_arch() -> str:
    import platform

    machine = platform.machine().lower()
    return _ARCH.get(machine, machine or "amd64")


def config_path(state_dir: Path) -> Path:
    return state_dir / CONFIG_NAME


def load_config(path: Path) -> JoinedConfig:
    """Read a config written by `join`; JoinError if missing or malformed."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise JoinError(f"{path}: no such file (run `edgecore join` first)") from None
    except (OSError, ValueError) as exc:
        raise JoinError(f"{path}: cannot read: {exc}") from None
    return JoinedConfig.parse(raw, source=str(path))


def write_private(path: Path, text: str) -> None:
    """Write `text` atomically with mode 0600 in a 0700 directory."""
    import tempfile

    make_state_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_state_dir(state_dir: Path) -> None:
    """Create the state dir (and parents) and make it 0700: it holds keys."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)


def write_config(path: Path, cfg: JoinedConfig) -> None:
    """Write atomically with mode 0600 (it holds the broker password and node key)."""
    write_private(path, json.dumps(cfg.dump(), indent=2, sort_keys=True) + "\n")


# -- trust: the CA pin -------------------------------------------------------------------


def split_token(token: str) -> tuple[str, str | None]:
    """`ID.SECRET[.PIN]` -> (the token to send, the CA pin as lowercase hex or None)."""
    parts = token.strip().split(".")
    if len(parts) == 3:
        pin = parts[2].lower().removeprefix("sha256:")
        if not re.fullmatch(r"[0-9a-f]{64}", pin):
            raise JoinError("the token's third part must be the hex sha256 of the fleet CA")
        return token.strip(), pin
    return token.strip(), None


def ca_hash(pem: str) -> str:
    """Hex sha256 of the DER of a PEM certificate (what a token pins)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem)
    except ValueError as exc:
        raise JoinError(f"the cloud's CA is not a PEM certificate: {exc}") from None
    return hashlib.sha256(der).hexdigest()


def _unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fetch_pinned_ca(cloud: str, pin: str, *, timeout: float = JOIN_TIMEOUT_S) -> str:
    """GET /api/v1/ca without verification and return its PEM if its hash is `pin`."""
    answer = _call(cloud, "/api/v1/ca", None, _unverified(), timeout=timeout, name="")
    pem = answer.get("caCert") if isinstance(answer, dict) else None
    if not isinstance(pem, str):
        raise JoinError(f"{cloud}/api/v1/ca gave no caCert; is --cloud the cloudcore API?")
    got = ca_hash(pem)
    if got != pin:
        raise JoinError(f"the fleet CA of {cloud} (sha256 {got}) is not the one the token "
                        f"pins ({pin}): refusing to join (wrong cloud, or someone in the "
                        "middle)")
    return pem


def trust(cloud: str, *, token: str, ca_file: Path | None = None,
          insecure_skip_tls_verify: bool = False) -> tuple[ssl.SSLContext | None, str | None]:
    """The TLS context for the join call and the fleet CA PEM (if known), per the
    token's pin, `--ca-file` or the insecure flag."""
    if cloud.startswith("http://"):
        if not insecure_skip_tls_verify:
            raise JoinError(f"--cloud {cloud} is plain HTTP: the join token and the node key "
                            "would cross the network in clear; use https:// (or, for a "
                            "throwaway setup, --insecure-skip-tls-verify)")
        log.warning(INSECURE_JOIN_WARNING)
        return None, None
    if not cloud.startswith("https://"):
        raise JoinError(f"--cloud {cloud!r} must start with https:// (or http://)")
    if ca_file is not None:
        try:
            pem = ca_file.read_text()
        except OSError as exc:
            raise JoinError(f"--ca-file {ca_file}: {exc}") from None
        return ssl.create_default_context(cadata=pem), pem
    if insecure_skip_tls_verify:
        log.warning(INSECURE_JOIN_WARNING)
        return _unverified(), None
    _, pin = split_token(token)
    if pin is None:
        raise JoinError("the token pins no CA (ID.SECRET.PIN): pass --ca-file with the "
                        "fleet CA, or ask for a token from `fedctl token create`")
    pem = fetch_pinned_ca(cloud, pin)
    return ssl.create_default_context(cadata=pem), pem


def _call(cloud: str, path: str, body: dict[str, Any] | None, ctx: ssl.SSLContext | None,
          *, timeout: float, name: str) -> Any:
    import urllib.error
    import urllib.request

    url = cloud.rstrip("/") + path
    req = urllib.request.Request(
        url, data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise JoinError(_http_error(exc, name=name)) from None
    except urllib.error.URLError as exc:
        raise JoinError(f"cannot reach cloudcore at {cloud}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise JoinError(f"cannot reach cloudcore at {cloud}: {exc}") from None
    except ValueError:
        raise JoinError(f"{url} did not answer JSON; is --cloud the cloudcore API?") from None


def request_join(cloud: str, *, token: str, name: str, labels: dict[str, str],
                 arch: str, timeout: float = JOIN_TIMEOUT_S,
                 context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """POST /api/v1/join; the decoded answer, or JoinError with the cloud's message."""
    url = cloud.rstrip("/") + "/api/v1/join"
    if not url.startswith(("http://", "https://")):
        raise JoinError(f"--cloud {cloud!r} must start with http:// or https://")
    body = {"token": token, "name": name, "labels": labels, "arch": arch}
    answer = _call(cloud, "/api/v1/join", body, context, timeout=timeout, name=name)
    if not isinstance(answer, dict) or "broker" not in answer:
        raise JoinError(f"{url} gave an unexpected answer; is --cloud the cloudcore API?")
    return answer


def _http_error(exc: urllib.error.HTTPError, *, name: str) -> str:
    message = ""
    with contextlib.suppress(Exception):
        message = str(json.loads(exc.read()).get("error") or "")
    message = message or exc.reason or f"HTTP {exc.code}"
    if exc.code == 401:
        return f"join token rejected: {message} (ask an admin: fedctl token create)"
    if exc.code == 409:
        # A cloud that already says how to free the name gets no second copy of the hint.
        hint = ("" if "fedctl node delete" in message
                else f" (pick another --name, or fedctl node delete {name})")
        return f"name {name!r} is taken: {message}{hint}"
    if exc.code == 422:
        return f"invalid join request: {message}"
    return f"cloudcore answered HTTP {exc.code}: {message}"


def join(*, cloud: str, token: str, name: str, labels: dict[str, str], state_dir: Path,
         arch: str | None = None, broker: tuple[str, int] | None = None,
         ca_file: Path | None = None, insecure_skip_tls_verify: bool = False) -> JoinedConfig:
    """Join and write `state_dir/edgecore.json` (and ca.crt, client.crt/.key); refuses if
    the device already joined. See the module docstring for how the cloud is trusted."""
    path = config_path(state_dir)
    if path.exists():
        old = load_config(path)
        raise JoinError(f"{path} exists: this device already joined as {old.name!r} "
                        f"(run `edgecore reset --state-dir {state_dir}` first)")
    ctx, pinned = trust(cloud, token=token, ca_file=ca_file,
                        insecure_skip_tls_verify=insecure_skip_tls_verify)
    answer = request_join(cloud, token=token, name=name, labels=labels,
                          arch=arch or local_arch(), context=ctx)
    node_labels = dict(((answer.get("node") or {}).get("metadata") or {}).get("labels") or {})
    host, port = broker or (answer["broker"]["host"], int(answer["broker"]["port"]))
    try:
        # The node's broker list (proposal 0007); `--broker` replaces it with that one.
        brokers = () if broker else _broker_urls(answer.get("brokers"), "brokers")
        map_version = 0 if broker else _version(answer.get("broker_map_version"))
    except (TypeError, ValueError) as exc:
        raise JoinError(f"the cloud's answer holds an invalid broker list: {exc}") from None
    creds = answer.get("credentials") or {}
    key = answer.get("key")
    if key is not None:
        try:
            if len(base64.b64decode(key, validate=True)) != 32:
                raise ValueError
        except (binascii.Error, ValueError, TypeError):
            raise JoinError("the cloud's answer holds no valid node key") from None
    make_state_dir(state_dir)
    ca_pem = pinned or answer.get("caCert")
    ca_path = None
    if isinstance(ca_pem, str) and ca_pem.strip():
        ca_path = state_dir / CA_NAME
        write_private(ca_path, ca_pem)
        os.chmod(ca_path, 0o644)
    client_cert = client_key = None
    not_after = None
    cc = answer.get("clientCert")
    if isinstance(cc, dict) and cc.get("cert") and cc.get("key"):
        write_private(state_dir / CLIENT_CERT_NAME, str(cc["cert"]))
        write_private(state_dir / CLIENT_KEY_NAME, str(cc["key"]))
        client_cert = str(state_dir / CLIENT_CERT_NAME)
        client_key = str(state_dir / CLIENT_KEY_NAME)
        not_after = float(cc["notAfter"]) if cc.get("notAfter") is not None else None
    tls = bool((answer.get("broker") or {}).get("tls", False))
    release_keys = answer.get("releaseKeys") or []
    try:
        from shared.release import parse_public_key

        for k in release_keys:
            parse_public_key(k)
    except (ReleaseError, AttributeError, TypeError) as exc:
        raise JoinError(f"the cloud's answer holds an invalid release key: {exc}") from None
    cfg = JoinedConfig(name=name, labels={**labels, **{k: v for k, v in node_labels.items()
                                                        if k in labels}},
                       broker_host=host, broker_port=port,
                       username=creds.get("username"), password=creds.get("password"),
                       cloud=cloud, key=key, tls=tls,
                       ca_file=str(ca_path) if ca_path is not None else None,
                       client_cert=client_cert, client_key=client_key,
                       cert_not_after=not_after, release_keys=tuple(release_keys),
                       brokers=brokers, broker_map_version=map_version)
    write_config(path, cfg)
    return cfg


def renew_certificate(cloud: str, *, name: str, k_up: bytes, cert_file: Path, key_file: Path,
                      ca_file: Path | None, now: float,
                      timeout: float = JOIN_TIMEOUT_S) -> float | None:
    """`POST /api/v1/nodes/{name}/certificate`, authenticated by the node key (proposal
    0002); writes the new certificate and key over the old ones (0600, atomically) and
    returns the new expiry (Unix seconds) if the cloud said. JoinError on failure."""
    from shared.seal import renew_mac

    if cloud.startswith("https://"):
        ctx: ssl.SSLContext | None = ssl.create_default_context(
            cafile=str(ca_file) if ca_file else None)
    else:
        ctx = None
    ts = int(now)
    answer = _call(cloud, f"/api/v1/nodes/{name}/certificate",
                   {"ts": ts, "mac": renew_mac(k_up, name, ts)}, ctx, timeout=timeout,
                   name=name)
    if not isinstance(answer, dict) or not answer.get("cert") or not answer.get("key"):
        raise JoinError(f"{cloud}: the renewal answer holds no certificate")
    write_private(key_file, str(answer["key"]))
    write_private(cert_file, str(answer["cert"]))
    not_after = answer.get("notAfter")
    return float(not_after) if isinstance(not_after, int | float) else None


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*"
                       rb"-----END CERTIFICATE-----")


def certificate_lifetime(cert_file: Path) -> tuple[float, float]:
    """(notBefore, notAfter) of the first certificate in a PEM file, Unix seconds;
    ValueError if it holds none or it is malformed.

    Read with the standard library (the DER walk below): the agent calls this at
    start whenever it logs in with a client certificate, and cryptography's x509 would
    stay in its memory for good (11.8 MiB of RSS on this machine, issue 16)."""
    found = _PEM_CERT.search(cert_file.read_bytes())
    if found is None:
        raise ValueError(f"{cert_file}: no PEM certificate in it")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{cert_file}: the certificate is not base64") from None
    try:
        return der_validity(der)
    except ValueError as exc:
        raise ValueError(f"{cert_file}: {exc}") from None


def _der(buf: bytes, pos: int, want: int | None = None) -> tuple[int, int, int]:
    """The DER item at `pos`: (tag, start of its content, end of its content);
    ValueError if it runs past `buf` or (with `want`) has another tag."""
    if pos + 2 > len(buf):
        raise ValueError("the certificate is truncated")
    tag, size = buf[pos], buf[pos + 1]
    start = pos + 2
    if size & 0x80:
        count = size & 0x7F
        if not 1 <= count <= 4 or start + count > len(buf):
            raise ValueError("the certificate has a bad DER length")
        size = int.from_bytes(buf[start:start + count], "big")
        start += count
    end = start + size
    if end > len(buf):
        raise ValueError("the certificate is truncated")
    if want is not None and tag != want:
        raise ValueError(f"the certificate has DER tag {tag:#x} where {want:#x} belongs")
    return tag, start, end


_SEQUENCE, _INTEGER, _UTC_TIME, _GENERALIZED_TIME, _VERSION = 0x30, 0x02, 0x17, 0x18, 0xA0


def der_validity(der: bytes) -> tuple[float, float]:
    """(notBefore, notAfter) of a DER X.509 certificate (RFC 5280 4.1), Unix seconds."""
    import datetime

    _, pos, _ = _der(der, 0, _SEQUENCE)  # Certificate
    _, pos, tbs_end = _der(der, pos, _SEQUENCE)  # TBSCertificate
    tag, _, end = _der(der, pos)
    if tag == _VERSION:  # [0] EXPLICIT Version, absent in v1
        tag, _, end = _der(der, end)
    if tag != _INTEGER:
        raise ValueError("the certificate has no serial number")
    for _field in ("signature", "issuer"):
        _, _, end = _der(der, end, _SEQUENCE)
    _, pos, validity_end = _der(der, end, _SEQUENCE)
    if validity_end > tbs_end:
        raise ValueError("the certificate's validity runs past it")
    out = []
    for _bound in ("notBefore", "notAfter"):
        tag, start, pos = _der(der, pos)
        text = der[start:pos].decode("ascii", "replace")
        if tag == _UTC_TIME and len(text) == 13 and text.endswith("Z") and text[:12].isdigit():
            year = int(text[:2])
            text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"  # RFC 5280
        elif not (tag == _GENERALIZED_TIME and len(text) == 15 and text.endswith("Z")
                  and text[:14].isdigit()):
            raise ValueError(f"the certificate's {_bound} {text!r} is not a DER time")
        d = [int(text[i:i + 2]) for i in range(4, 14, 2)]
        try:
            at = datetime.datetime(int(text[:4]), *d, tzinfo=datetime.UTC)
        except ValueError:
            raise ValueError(f"the certificate's {_bound} {text!r} is not a date") from None
        out.append(at.timestamp())
    return out[0], out[1]


def looks_like_state_dir(state_dir: Path) -> bool:
    """Whether a directory is an agent's (guards `reset` against a mistyped path)."""
    return any((state_dir / p).exists() for p in (CONFIG_NAME, "cache", "runtime", "pods"))


async def remove_containers(runtime_root: Path) -> int:
    """Stop and remove every container under the runtime root; returns how many."""
    if not runtime_root.is_dir():
        return 0
    from edgecore.runtime import CrunRuntime

    runtime = CrunRuntime(runtime_root)
    states = await runtime.list()
    for st in states:
        if st.status in ("created", "running"):
            await runtime.stop(st.id, grace_s=5)
        await runtime.remove(st.id)
    return len(states)


def remove_state_dir(state_dir: Path) -> None:
    """Delete the state dir, after unmounting the pods' Secret tmpfs mounts under it."""
    import shutil

    from edgecore.reconciler.volumes import Volumes

    pods = state_dir / "pods"
    if pods.is_dir():
        Volumes(pods).sweep(set())
    shutil.rmtree(state_dir)


async def remove_pod_network(state_dir: Path) -> int:
    """Delete the network namespaces, veths and host ports of this agent's pods."""
    podnet = state_dir / "podnet"
    if not (podnet / "ipam.json").is_file():
        return 0
    from edgecore.podnet import PodNetwork

    try:
        cidr = str(json.loads((podnet / "ipam.json").read_text())["cidr"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return len(await PodNetwork(podnet, cidr=cidr).sweep(set()))
