"""Joining a device to a cloudcore, and forgetting it again (`edgecore join` / `reset`).

`join` trades a join token for this node's broker credentials (the contract is
`POST /api/v1/join` in docs/cloudcore.md) and writes them with the node name,
labels and broker address to `STATE_DIR/edgecore.json` (mode 0600), which
`edgecore run --state-dir STATE_DIR` (or `--config FILE`) then reads. The call
uses urllib from the standard library: the device needs no HTTP client package.

`reset` stops and removes the containers of this agent's runtime root and deletes
the state directory, so the device can join again (after `fedctl node delete`).

Errors are `JoinError` with a one-line message fit for a terminal.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecore.errors import EdgecoreError

CONFIG_NAME = "edgecore.json"
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

    def dump(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name, "labels": self.labels, "cloud": self.cloud,
            "broker": {"host": self.broker_host, "port": self.broker_port},
        }
        if self.username is not None:
            out["credentials"] = {"username": self.username, "password": self.password}
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
                       cloud=raw.get("cloud"))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise JoinError(f"{source}: not an edgecore config ({exc})") from None


def default_name() -> str:
    """The host name made into a DNS-1123 node name."""
    name = re.sub(r"[^a-z0-9.-]+", "-", socket.gethostname().lower()).strip("-.")
    return name or "edge"


def local_arch() -> str:
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


def write_config(path: Path, cfg: JoinedConfig) -> None:
    """Write atomically with mode 0600 (it holds the broker password)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".edgecore-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cfg.dump(), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def request_join(cloud: str, *, token: str, name: str, labels: dict[str, str],
                 arch: str, timeout: float = JOIN_TIMEOUT_S) -> dict[str, Any]:
    """POST /api/v1/join; the decoded answer, or JoinError with the cloud's message."""
    url = cloud.rstrip("/") + "/api/v1/join"
    if not url.startswith(("http://", "https://")):
        raise JoinError(f"--cloud {cloud!r} must start with http:// or https://")
    body = json.dumps({"token": token, "name": name, "labels": labels, "arch": arch}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise JoinError(_http_error(exc, name=name)) from None
    except urllib.error.URLError as exc:
        raise JoinError(f"cannot reach cloudcore at {cloud}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise JoinError(f"cannot reach cloudcore at {cloud}: {exc}") from None
    except ValueError:
        raise JoinError(f"{url} did not answer JSON; is --cloud the cloudcore API?") from None
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
        return (f"name {name!r} is taken: {message} (pick another --name, or "
                f"fedctl node delete {name})")
    if exc.code == 422:
        return f"invalid join request: {message}"
    return f"cloudcore answered HTTP {exc.code}: {message}"


def join(*, cloud: str, token: str, name: str, labels: dict[str, str], state_dir: Path,
         arch: str | None = None, broker: tuple[str, int] | None = None) -> JoinedConfig:
    """Join and write `state_dir/edgecore.json`; refuses if the device already joined."""
    path = config_path(state_dir)
    if path.exists():
        old = load_config(path)
        raise JoinError(f"{path} exists: this device already joined as {old.name!r} "
                        f"(run `edgecore reset --state-dir {state_dir}` first)")
    answer = request_join(cloud, token=token, name=name, labels=labels,
                          arch=arch or local_arch())
    node_labels = dict(((answer.get("node") or {}).get("metadata") or {}).get("labels") or {})
    host, port = broker or (answer["broker"]["host"], int(answer["broker"]["port"]))
    creds = answer.get("credentials") or {}
    cfg = JoinedConfig(name=name, labels={**labels, **{k: v for k, v in node_labels.items()
                                                        if k in labels}},
                       broker_host=host, broker_port=port,
                       username=creds.get("username"), password=creds.get("password"),
                       cloud=cloud)
    write_config(path, cfg)
    return cfg


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
    shutil.rmtree(state_dir)
