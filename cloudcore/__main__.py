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


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    """Build Settings from flags (which override CLOUDCORE_* env vars)."""
    d = Settings()
    p = argparse.ArgumentParser(prog="cloudcore", description="edgefed cloud federation service")
    p.add_argument("--state-dir", default=_env("STATE_DIR", str(d.store.state_dir)),
                   help="LMDB state directory")
    p.add_argument("--mqtt-host", default=_env("MQTT_HOST", d.mqtt.host))
    p.add_argument("--mqtt-port", type=int, default=int(_env("MQTT_PORT", str(d.mqtt.port))))
    p.add_argument("--mqtt-client-id", default=_env("MQTT_CLIENT_ID", d.mqtt.client_id))
    p.add_argument("--publishers", type=int, default=int(_env("PUBLISHERS",
                                                              str(d.mqtt.publishers))))
    p.add_argument("--http-host", default=_env("HTTP_HOST", d.http.host))
    p.add_argument("--http-port", type=int, default=int(_env("HTTP_PORT", str(d.http.port))))
    p.add_argument("--heartbeat", type=float,
                   default=float(_env("HEARTBEAT", str(d.sync.heartbeat))),
                   help="default edge heartbeat, seconds (NotReady after 3x)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", d.log_level))
    a = p.parse_args(argv)
    s = Settings()
    s.store.state_dir = Path(a.state_dir)
    s.mqtt.host, s.mqtt.port, s.mqtt.client_id = a.mqtt_host, a.mqtt_port, a.mqtt_client_id
    s.mqtt.publishers = a.publishers
    s.http.host, s.http.port = a.http_host, a.http_port
    s.sync.heartbeat = a.heartbeat
    s.log_level = a.log_level
    return s


def main(argv: Sequence[str] | None = None) -> int:
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
    from cloudcore.service import run

    task = asyncio.create_task(run(settings), name="cloudcore")
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
