"""Command line of the edge agent: `edgecore run --name N --state-dir D ...`.

Parses and validates settings before anything starts (a bad flag is one clear
line on stderr and exit code 2, never a traceback), then runs the agent on
uvloop until SIGTERM/SIGINT. Stopping the agent does not stop containers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from edgecore import __version__
from edgecore.config import AgentSettings
from edgecore.errors import ConfigError, EdgecoreError

log = logging.getLogger("edgecore")


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"label {text!r} must be key=value")
    return key, value


def _device(text: str) -> tuple[str, tuple[str, ...]]:
    from edgecore.devices import parse_device_flag

    try:
        return parse_device_flag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecore", description="edgefed edge agent")
    p.add_argument("--version", action="version", version=f"edgecore {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    run.add_argument("--name", required=True, help="node name (DNS-1123)")
    run.add_argument("--state-dir", required=True, type=Path, help="agent state directory")
    run.add_argument("--mqtt-host", default="127.0.0.1", help="broker host (127.0.0.1)")
    run.add_argument("--mqtt-port", type=int, default=1883, help="broker port (1883)")
    run.add_argument("--mqtt-keepalive", type=int, default=30, help="keepalive seconds (30)")
    run.add_argument("--label", action="append", type=_label, default=[], metavar="K=V",
                     help="node label; repeatable")
    run.add_argument("--heartbeat", type=float, default=30.0, help="heartbeat seconds (30)")
    run.add_argument("--insecure-registry", action="append", default=[], metavar="HOST:PORT",
                     help="registry reached without TLS; repeatable")
    run.add_argument("--outbox-budget-mib", type=int, default=64, help="outbox MiB (64)")
    run.add_argument("--cpu-millis", type=int, default=None, help="cpu capacity override")
    run.add_argument("--memory-bytes", type=int, default=None, help="memory capacity override")
    run.add_argument("--max-pods", type=int, default=110, help="pod capacity (110)")
    run.add_argument("--device", action="append", type=_device, default=[],
                     metavar="RESOURCE=PATH[,PATH...]",
                     help="accelerators of a resource, one exclusive device per path, e.g. "
                          "example.com/npu=/dev/npu0,/dev/npu1; repeatable")
    run.add_argument("--no-discover-accelerators", action="store_true",
                     help="skip the NVIDIA/DRI/Coral/Hailo discovery plugins")
    run.add_argument("--log-max-bytes", type=int, default=4 * 1024 * 1024,
                     help="bytes per container log file (4 MiB)")
    run.add_argument("--log-keep", type=int, default=2,
                     help="rotated log files kept per container (2)")
    run.add_argument("--telemetry-sample", type=float, default=10.0,
                     help="seconds between telemetry samples (10)")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (INFO)")
    return p


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    return AgentSettings(
        node=args.name, state_dir=args.state_dir, labels=dict(args.label),
        mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port, mqtt_keepalive_s=args.mqtt_keepalive,
        heartbeat_s=args.heartbeat, insecure_registries=tuple(args.insecure_registry),
        outbox_budget_bytes=args.outbox_budget_mib * 1024 * 1024,
        capacity_cpu_millis=args.cpu_millis, capacity_memory_bytes=args.memory_bytes,
        capacity_pods=args.max_pods, devices=tuple(args.device),
        discover_accelerators=not args.no_discover_accelerators,
        log_max_bytes=args.log_max_bytes, log_keep=args.log_keep,
        telemetry_sample_s=args.telemetry_sample,
    )


async def _serve(settings: AgentSettings) -> None:
    from edgecore.agent import Agent

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    stopping = False

    def stop(signame: str) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("%s: stopping the agent (containers keep running)", signame)
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        await Agent(settings).run()
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"edgecore: invalid setting {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.run(_serve(settings))
    except EdgecoreError as exc:
        log.error("edgecore stopped: %s", exc)
        return 1
    except Exception as exc:  # a component failed (an ExceptionGroup from the TaskGroup)
        log.error("edgecore failed", exc_info=exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
