"""Where fedctl finds cloudcore: flag, then environment, then config file, then default.

Resolved once per invocation into a `Settings` value that is passed explicitly to
the commands; nothing reads the environment later.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedctl.errors import FedctlError, UsageError

DEFAULT_SERVER = "http://127.0.0.1:8080"
ENV_SERVER = "FEDCTL_SERVER"


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to reach cloudcore."""

    server: str = DEFAULT_SERVER  # base URL of cloudcore's HTTP API
    timeout: float = 10.0  # seconds per HTTP request (connect + read)


def config_path(env: dict[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/edgefed/fedctl.yaml`, i.e. `~/.config/edgefed/fedctl.yaml` by default."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefed" / "fedctl.yaml"


def _from_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FedctlError(f"cannot read config file {path}: {exc}") from exc
    if data is None:
        return None
    if not isinstance(data, dict):
        raise FedctlError(f"config file {path}: expected a mapping with key 'server'")
    server = data.get("server")
    if server is not None and not isinstance(server, str):
        raise FedctlError(f"config file {path}: 'server' must be a URL string")
    return server


def resolve(
    *, flag: str | None, timeout: float = 10.0, env: dict[str, str] | None = None
) -> Settings:
    """The server URL from `--server`, `$FEDCTL_SERVER`, the config file, or the default."""
    env = dict(os.environ) if env is None else env
    server = flag or env.get(ENV_SERVER) or _from_file(config_path(env)) or DEFAULT_SERVER
    server = server.rstrip("/")
    if not server.startswith(("http://", "https://")):
        raise UsageError(f"--server: {server!r} is not an http:// or https:// URL")
    if timeout <= 0:
        raise UsageError("--request-timeout: must be a positive number of seconds")
    return Settings(server=server, timeout=timeout)
