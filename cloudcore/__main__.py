"""`cloudcore` console script: flags and CLOUDCORE_* env -> Settings -> service.run().

SIGTERM and SIGINT cancel the service task, which stops every component and
commits pending store writes; the exit code is 0 for a clean stop, 2 for bad
settings and 1 for a fatal error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cloudcore.config import Settings
from cloudcore.errors import CloudcoreError, ConfigError


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CLOUDCORE_{name}", default)


def _read_secret(path: Path, flag: str) -> str:
    """The first line of a secret file (a password is not passed on the command line,
    where `ps` shows it)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{flag}: cannot read {path}: {exc.strerror or exc}",
                          field=flag) from exc
    secret = text.splitlines()[0].strip() if text.strip() else ""
    if not secret:
        raise ConfigError(f"{flag}: {path} is empty", field=flag)
    return secret


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Build Settings from flags (which override CLOUDCORE_* env vars)."""
    d = Settings()
    p = argparse.ArgumentParser(prog="cloudcore", description="edgefed cloud federation service")
    p.add_argument("--state-dir", default=_env("STATE_DIR", str(d.store.state_dir)),
                   help="LMDB state directory")
    p.add_argument("--mqtt-host", default=_env("MQTT_HOST", d.mqtt.host))
    p.add_argument("--mqtt-port", type=int, default=int(_env("MQTT_PORT", str(d.mqtt.port))))
    p.add_argument("--mqtt-client-id", default=_env("MQTT_CLIENT_ID", d.mqtt.client_id))
    p.add_argument("--mqtt-username", default=_env("MQTT_USERNAME", "") or None,
                   help="cloudcore's own broker username (default: anonymous)")
    p.add_argument("--mqtt-password-file", metavar="FILE",
                   default=_env("MQTT_PASSWORD_FILE", "") or None,
                   help="file holding that user's password (first line)")
    p.add_argument("--publishers", type=int, default=int(_env("PUBLISHERS",
                                                              str(d.mqtt.publishers))))
    p.add_argument("--http-host", default=_env("HTTP_HOST", d.http.host))
    p.add_argument("--http-port", type=int, default=int(_env("HTTP_PORT", str(d.http.port))))
    p.add_argument("--heartbeat", type=float,
                   default=float(_env("HEARTBEAT", str(d.sync.heartbeat))),
                   help="default edge heartbeat, seconds (NotReady after 3x)")
    p.add_argument("--pod-eviction-timeout", type=float, metavar="SECONDS",
                   default=float(_env("POD_EVICTION_TIMEOUT",
                                      str(d.sync.pod_eviction_timeout))),
                   help="seconds a node may be NotReady before its Deployment replicas "
                        "move elsewhere (300; per-pod tolerationSeconds override it)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", d.log_level))
    p.add_argument("--auth", action="store_true",
                   default=_env("AUTH", "") not in ("", "0", "false"),
                   help="require bearer tokens on the API; creates a first admin token in "
                        "STATE_DIR/admin.token if there is none")
    p.add_argument("--auth-tokens", metavar="FILE", default=_env("AUTH_TOKENS", "") or None,
                   help="static API tokens, 'token,role[,name]' per line (turns auth on)")
    p.add_argument("--advertise-mqtt", metavar="HOST:PORT",
                   default=_env("ADVERTISE_MQTT", d.auth.advertise_mqtt),
                   help="broker address given to joining nodes (default: --mqtt-host:port)")
    p.add_argument("--join-token-ttl", type=float, metavar="SECONDS",
                   default=float(_env("JOIN_TOKEN_TTL", str(d.auth.join_token_ttl))),
                   help="default lifetime of join tokens")
    p.add_argument("--mosquitto-passwd", metavar="FILE",
                   default=_env("MOSQUITTO_PASSWD", "") or None,
                   help="keep this mosquitto password_file in sync with node credentials")
    a = p.parse_args(argv)
    s = Settings()
    s.store.state_dir = Path(a.state_dir)
    s.mqtt.host, s.mqtt.port, s.mqtt.client_id = a.mqtt_host, a.mqtt_port, a.mqtt_client_id
    s.mqtt.publishers = a.publishers
    s.mqtt.username = a.mqtt_username
    if a.mqtt_password_file:
        s.mqtt.password = _read_secret(Path(a.mqtt_password_file), "--mqtt-password-file")
    s.http.host, s.http.port = a.http_host, a.http_port
    s.sync.heartbeat = a.heartbeat
    s.sync.pod_eviction_timeout = a.pod_eviction_timeout
    s.log_level = a.log_level
    s.auth.enabled = bool(a.auth)
    s.auth.tokens_file = Path(a.auth_tokens) if a.auth_tokens else None
    s.auth.advertise_mqtt = a.advertise_mqtt
    s.auth.join_token_ttl = a.join_token_ttl
    s.auth.mosquitto_passwd = Path(a.mosquitto_passwd) if a.mosquitto_passwd else None
    return s


def backup_main(argv: Sequence[str]) -> int:
    """`cloudcore backup [--state-dir DIR] DEST`: a consistent copy of the LMDB store."""
    from cloudcore.errors import StoreError
    from cloudcore.store import backup

    p = argparse.ArgumentParser(prog="cloudcore backup",
                                description="copy the LMDB store (safe while cloudcore runs)")
    p.add_argument("--state-dir", default=_env("STATE_DIR", str(Settings().store.state_dir)))
    p.add_argument("--no-compact", action="store_true", help="copy pages as they are")
    p.add_argument("dest", help="new or empty directory for the copy")
    a = p.parse_args(argv)
    try:
        size = backup(Path(a.state_dir), Path(a.dest), compact=not a.no_compact)
    except StoreError as exc:
        print(f"cloudcore backup: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {a.state_dir} to {a.dest} ({size} bytes)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["backup"]:
        return backup_main(args[1:])
    try:
        settings = parse_args(argv).validate()
    except (ValueError, ConfigError) as exc:
        print(f"cloudcore: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        try:
            runner.run(_main(settings))
        except CloudcoreError as exc:
            print(f"cloudcore: {exc}", file=sys.stderr)
            return 1
    return 0


async def _main(settings: Settings) -> None:
    from cloudcore.service import run, tune_gc

    task = asyncio.create_task(run(settings, on_started=lambda _: tune_gc()), name="cloudcore")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise
        logging.getLogger("cloudcore").info("stopped")
    except ExceptionGroup as group:  # a task of the service's TaskGroup failed
        match, _ = group.split(CloudcoreError)
        if match is None:
            raise
        first: BaseException = match
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


if __name__ == "__main__":
    sys.exit(main())
