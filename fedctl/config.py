"""Where fedctl finds cloudcore, which token it shows and which CA it trusts: flag,
environment, config file.

Resolved once per invocation into a `Settings` value that is passed explicitly to
the commands; nothing reads the environment later.

The config file (`$FEDCTL_CONFIG`, else `~/.config/edgefed/fedctl.yaml`) holds named
contexts, like a kubeconfig, plus the older top-level `server`/`token` keys:

    current-context: prod
    contexts:
      prod: {server: https://cloud.example.net:8080, token: abcd1234.xxxx,
             certificate-authority: prod-ca.crt}
      lab:  {server: https://127.0.0.1:8080, insecure-skip-tls-verify: true}
    server: https://127.0.0.1:8080     # used when no context is selected

Precedence: `--server` / `--token` / `--certificate-authority` flags, then
`$FEDCTL_SERVER` / `$FEDCTL_TOKEN` / `$FEDCTL_CA`, then the selected context
(`--context`, `$FEDCTL_CONTEXT`, then `current-context`), then the top-level keys, then
the default server and no token. A relative `certificate-authority` in the file is
relative to the file's directory (as in a kubeconfig).

TLS: an https server is verified against `certificate-authority` (cloudcore's fleet CA,
served at `/api/v1/ca`) when one is set, else against the system's CA bundle;
`insecure-skip-tls-verify` (or the flag) turns verification off, with a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fedctl.errors import FedctlError, UsageError

DEFAULT_SERVER = "https://127.0.0.1:8080"
ENV_SERVER = "FEDCTL_SERVER"
ENV_TOKEN = "FEDCTL_TOKEN"
ENV_CONTEXT = "FEDCTL_CONTEXT"
ENV_CA = "FEDCTL_CA"
ENV_CONFIG = "FEDCTL_CONFIG"


@dataclass(frozen=True)
class Settings:
    """Everything a command needs to reach cloudcore."""

    server: str = DEFAULT_SERVER  # base URL of cloudcore's HTTP API
    timeout: float = 10.0  # seconds per HTTP request (connect + read)
    token: str | None = None  # bearer token, if cloudcore has auth on
    context: str | None = None  # the context the values came from, if any
    ca_file: Path | None = None  # PEM CA bundle an https server is verified against
    insecure_skip_tls_verify: bool = False  # True: https without verification (warns)


def config_path(env: dict[str, str] | None = None) -> Path:
    """`$FEDCTL_CONFIG` if set, else `$XDG_CONFIG_HOME/edgefed/fedctl.yaml`, i.e.
    `~/.config/edgefed/fedctl.yaml` by default."""
    env = dict(os.environ) if env is None else env
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
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
    for where, m in [("", data), *((f"context {n!r}: ", c) for n, c in (contexts or {}).items())]:
        if m.get("certificate-authority") is not None and not isinstance(
                m["certificate-authority"], str):
            raise FedctlError(f"config file {path}: {where}'certificate-authority' must be "
                              "the path of a PEM file")
        if m.get("insecure-skip-tls-verify") is not None and not isinstance(
                m["insecure-skip-tls-verify"], bool):
            raise FedctlError(f"config file {path}: {where}'insecure-skip-tls-verify' must be "
                              "true or false")
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


def _ca_path(value: str, *, base: Path | None, what: str) -> Path:
    """The CA file, relative to `base` (the config file's directory) if given; it must
    exist, so a typo is one clear line and not a TLS failure later."""
    p = Path(value).expanduser()
    if base is not None and not p.is_absolute():
        p = base / p
    if not p.is_file():
        raise UsageError(f"{what}: CA file {str(p)!r} does not exist")
    return p


def resolve(
    *,
    flag: str | None,
    timeout: float = 10.0,
    env: dict[str, str] | None = None,
    token: str | None = None,
    context: str | None = None,
    ca_file: str | None = None,
    insecure_skip_tls_verify: bool = False,
) -> Settings:
    """Server, token, CA and context from flags, environment and config file (module doc)."""
    env = dict(os.environ) if env is None else env
    path = config_path(env)
    data = load_file(path)
    chosen = context or env.get(ENV_CONTEXT) or data.get("current-context")
    ctx: dict[str, Any] = {}
    if chosen:
        ctx = (data.get("contexts") or {}).get(chosen) or {}
        if not ctx and (context or env.get(ENV_CONTEXT)):
            raise UsageError(f"--context: no context named {chosen!r} in {path} "
                             "(see 'fedctl config get-contexts')")
    server = (flag or env.get(ENV_SERVER) or ctx.get("server") or data.get("server")
              or DEFAULT_SERVER)
    server = check_server(server)
    bearer = token or env.get(ENV_TOKEN) or ctx.get("token") or data.get("token") or None
    if timeout <= 0:
        raise UsageError("--request-timeout: must be a positive number of seconds")
    ca: Path | None = None
    if ca_file:
        ca = _ca_path(ca_file, base=None, what="--certificate-authority")
    elif env.get(ENV_CA):
        ca = _ca_path(env[ENV_CA], base=None, what=f"${ENV_CA}")
    elif ctx.get("certificate-authority") or (not ctx and data.get("certificate-authority")):
        value = ctx.get("certificate-authority") or data["certificate-authority"]
        ca = _ca_path(value, base=path.parent, what=f"config file {path}")
    insecure = insecure_skip_tls_verify or bool(
        ctx.get("insecure-skip-tls-verify") if ctx else data.get("insecure-skip-tls-verify"))
    return Settings(server=server, timeout=timeout, token=bearer,
                    context=chosen if ctx else None, ca_file=ca,
                    insecure_skip_tls_verify=insecure)
