"""`python -m cloudcore.cluster member ...`: join the shard cluster, hold partition
leases, and print ownership as JSON lines (one per change) on stdout.

    python -m cloudcore.cluster member --nats tls://10.0.0.5:4222 --nats tls://... \\
        --name S1 --user cloudcore --password-file /etc/edgefed/nats.password \\
        --ca /var/lib/edgefed/pki/ca.crt [--lease-period 15] [--replicas 3]

Each line: `{"ts": <unix time>, "member", "instance", "event": "joined" | "change" |
"stopped" | "error", ...}`; a change carries `acquired`, `lost`, `partitions` (all
owned after it), `global` (holds the global lease), `reason`. SIGTERM or SIGINT stops
cleanly: every lease is announced lost, then released. Exit codes: 0 stopped, 2 bad
settings, 3 name taken, 4 NATS unavailable or refused. For a member that does not stop:
SIGUSR1 writes every asyncio task's stack to stderr, SIGUSR2 every thread's (also when
the event loop is blocked).

`cloudcore --shard NAME` runs the same membership inside the service
(`cloudcore.cluster.shard`); this command shows and tests ownership on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import faulthandler
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from cloudcore.cluster.errors import ClusterError, ConfigError, MemberNameTaken
from cloudcore.cluster.kv import KV, KVSettings
from cloudcore.cluster.leases import Change, LeaseSettings, Member

PASSWORD_ENV = "CLOUDCORE_NATS_PASSWORD"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cloudcore.cluster",
                                description="cloudcore shard membership on NATS JetStream KV")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("member", help="join, hold partition leases, print them as JSON lines")
    m.add_argument("--nats", action="append", required=True, metavar="URL",
                   help="a NATS server, tls://host:port (repeat for every server)")
    m.add_argument("--name", required=True, help="this member's name (unique while alive)")
    m.add_argument("--user", help="NATS user")
    m.add_argument("--password-file", type=Path,
                   help=f"file holding the NATS password (or set ${PASSWORD_ENV})")
    m.add_argument("--ca", type=Path, help="the fleet CA certificate (ca.crt)")
    m.add_argument("--insecure", action="store_true",
                   help="allow nats:// and no user/CA (warns; tests only)")
    m.add_argument("--lease-period", type=float, default=15.0,
                   help="seconds a lease lives without renewal (default 15)")
    m.add_argument("--margin", type=float, default=None,
                   help="seconds a holder gives up early (default lease period / 10)")
    m.add_argument("--replicas", type=int, default=1,
                   help="bucket replicas when creating them: 1 server 1, cluster 3")
    m.add_argument("--bucket-prefix", default="edgefed")
    m.add_argument("--log-level", default="WARNING")
    return p


def _print(doc: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _dump_tasks() -> None:
    for t in asyncio.all_tasks():
        print(f"--- task {t.get_name()}: {t!r}", file=sys.stderr)
        t.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def _member(args: argparse.Namespace) -> int:
    password = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--password-file: cannot read {args.password_file}: "
                              f"{exc.strerror}", field="password-file") from exc
    else:
        password = os.environ.get(PASSWORD_ENV) or None
    kv_settings = KVSettings(urls=tuple(args.nats), user=args.user, password=password,
                             ca_file=args.ca, insecure=args.insecure,
                             client_name=f"cloudcore-member-{args.name}")
    lease_settings = LeaseSettings(name=args.name, lease_period=args.lease_period,
                                   margin=args.margin, replicas=args.replicas,
                                   bucket_prefix=args.bucket_prefix)
    kv_settings.validate()
    lease_settings.validate()

    member: Member | None = None

    def head(event: str) -> dict[str, object]:
        return {"ts": time.time(), "member": args.name,
                "instance": member.instance if member else None, "event": event}

    async def on_change(c: Change) -> None:
        _print({**head("change"), "reason": c.reason, "acquired": sorted(c.acquired),
                "lost": sorted(c.lost), "partitions": sorted(c.owned),
                "global": c.holds_global, "global_acquired": c.global_acquired,
                "global_lost": c.global_lost})

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel if task else (lambda: None))
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    async with KV(kv_settings) as kv:
        member = Member(kv, lease_settings, on_change=on_change,
                        keepalive_kv=lambda: KV(dataclasses.replace(
                            kv_settings, client_name=f"{kv_settings.client_name}-keepalive")))

        async def announce() -> None:
            await member.joined.wait()
            _print({**head("joined"), "live": member.live_members(),
                    "pid": os.getpid()})

        announcer = asyncio.create_task(announce())
        try:
            await member.run()
        except asyncio.CancelledError:
            _print({**head("stopped"), "partitions": []})
            return 0
        finally:
            announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcer
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return asyncio.run(_member(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemberNameTaken as exc:
        _print({"ts": time.time(), "member": args.name, "event": "error", "error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except ClusterError as exc:
        _print({"ts": time.time(), "member": args.name, "event": "error", "error": str(exc)})
        print(f"error: {exc}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
