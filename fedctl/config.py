"""Where fedctl finds cloudcore and which token it shows: flag, environment, config file.

Resolved once per invocation into a `Settings` value that is passed explicitly to
the commands; nothing reads the environment later.

The config file (`~/.config/edgefed/fedctl.yaml`) holds named contexts, like a
kubeconfig, plus the older top-level `server`/`token` keys:

    current-context: prod
    contexts:
      prod: {server: https://cloud.example.net:8080, token: abcd1234.xxxx}
      lab:  {server: http://127.0.0.1:8080}
    server: http://127.0.0.1:8080      # used when no context is selected

Precedence: `--server` / `--token` flags, then `$FEDCTL_SERVER` / `$FEDCTL_TOKEN`,
then the selected context (`--context`, `$FEDCTL_CONTEXT`, then `current-context`),
then the top-level keys, then the default server and no token.
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
ENV_TOKEN = "FEDCTL_TOKEN"
ENV_CONTEXT = "FEDCTL_CONTEXT"


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to reach cloudcore."""

    server: str = DEFAULT_SERVER  # base URL of cloudcore's HTTP API
    timeout: float = 10.0  # seconds per HTTP request (connect + read)
    token: str | None = None  # bearer token, if cloudcore has auth on
    context: str | None = None  # the context the values came from, if any


def config_path(env: dict[str, str] | None = None) -> Path:
    """`$XDG_CONFIG_HOME/edgefed/fedctl.yaml`, i.e. `~/.config/edgefed/fedctl.yaml` by default."""
    env = dict(os.environ) if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefed" / "fedctl.yaml"


def load_file(path: Path) -> dict[str, Any]:
    """The config file as a mapping ({} if it does not exist); errors name the file."""
    if not path.is_file():
        return {}
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FedctlError(f"cannot read config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FedctlError(f"config file {path}: expected a mapping with key 'server'")
    for key in ("server", "token", "current-context"):
        if data.get(key) is not None and not isinstance(data[key], str):
            what = "a URL string" if key == "server" else "a string"
            raise FedctlError(f"config file {path}: '{key}' must be {what}")
    contexts = data.get("contexts")
    if contexts is not None and not isinstance(contexts, dict):
        raise FedctlError(f"config file {path}: 'contexts' must be a mapping of name -> "
                          "{server, token}")
    for name, ctx in (contexts or {}).items():
        if not isinstance(ctx, dict) or not isinstance(ctx.get("server"), str):
            raise FedctlError(f"config file {path}: context {name!r} needs a 'server' URL")
    return data


def save_file(path: Path, data: dict[str, Any]) -> None:
    """Write the config file (mode 0600: it may hold tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False, default_flow_style=False)
    tmp.replace(path)


def check_server(server: str, *, what: str = "--server") -> str:
    server = server.rstrip("/")
    if not server.startswith(("http://", "https://")):
        raise UsageError(f"{what}: {server!r} is not an http:// or https:// URL")
    return server


def resolve(
    *,
    flag: str | None,
    timeout: float = 10.0,
    env: dict[str, str] | None = None,
    token: str | None = None,
    context: str | None = None,
) -> Settings:
    """Server, token and context from flags, environment and config file (module doc)."""
    env = dict(os.environ) if env is None else env
    data = load_file(config_path(env))
    chosen = context or env.get(ENV_CONTEXT) or data.get("current-context")
    ctx: dict[str, Any] = {}
    if chosen:
        ctx = (data.get("contexts") or {}).get(chosen) or {}
        if not ctx and (context or env.get(ENV_CONTEXT)):
            raise UsageError(f"--context: no context named {chosen!r} in {config_path(env)} "
                             "(see 'fedctl config get-contexts')")
    server = (flag or env.get(ENV_SERVER) or ctx.get("server") or data.get("server")
              or DEFAULT_SERVER)
    server = check_server(server)
    bearer = token or env.get(ENV_TOKEN) or ctx.get("token") or data.get("token") or None
    if timeout <= 0:
        raise UsageError("--request-timeout: must be a positive number of seconds")
    return Settings(server=server, timeout=timeout, token=bearer,
                    context=chosen if ctx else None)
