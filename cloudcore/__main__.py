"""`cloudcore` console script: flags and CLOUDCORE_* env -> Settings -> service.run().

SIGTERM and SIGINT cancel the service task, which stops every component and
commits pending store writes; the exit code is 0 for a clean stop, 2 for bad
settings and 1 for a fatal error.

Subcommands: `cloudcore backup DEST` copies the store; `cloudcore pki broker --out DIR
--host H...` writes a broker's TLS files from the fleet CA (making the CA if missing);
`cloudcore release publish --version V --image REF` builds, signs and pushes an agent
release (cloudcore/release.py).
"""

from __future__ import annotations

import os

# The online learner's matrix library would start one thread per core; on a loaded
# 2-core machine those threads slowed learning up to 20x (docs/benchmarks.md). One is
# enough: learning runs in its own worker thread beside the event loop.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cloudcore.config import Settings
from cloudcore.errors import CloudcoreError, ConfigError
from cloudcore.fleet.admission import PolicySettings


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CLOUDCORE_{name}", default)


def _env_flag(name: str) -> bool:
    return _env(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _env_list(name: str) -> list[str]:
    return [x.strip() for x in _env(name, "").split(",") if x.strip()]


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
    p.add_argument("--mqtt-username", default=_env("MQTT_USERNAME", d.mqtt.username),
                   help="cloudcore's service identity: it logs in as USER_sub and "
                        "USER_pub<i>, also its client ids (default cloudcore)")
    p.add_argument("--mqtt-password-file", metavar="FILE",
                   default=_env("MQTT_PASSWORD_FILE", "") or None,
                   help="file holding those identities' password (first line); default "
                        "with --mosquitto-passwd: made in STATE_DIR/mqtt.password")
    p.add_argument("--mqtt-tls", action="store_true", default=_env_flag("MQTT_TLS"),
                   help="connect to the broker over TLS, verifying it against the fleet "
                        "CA (or --mqtt-ca-file)")
    p.add_argument("--mqtt-ca-file", metavar="FILE", default=_env("MQTT_CA_FILE", "") or None,
                   help="CA bundle to verify the broker with (default STATE_DIR/pki/ca.crt)")
    p.add_argument("--mqtt-client-cert", action="store_true",
                   default=_env_flag("MQTT_CLIENT_CERT"),
                   help="present fleet-CA client certificates (CN = USER_sub, USER_pub<i>)")
    p.add_argument("--broker", action="append", metavar="NAME=URL",
                   default=_env_list("BROKER"),
                   help="a broker of the tier, e.g. mq-1=mqtts://mq-1.example:8883 "
                        "(repeatable): the partition -> broker map is spread over them on "
                        "first start, then kept in the store (fedctl brokers ...); none: "
                        "one broker mq-0 at --mqtt-host:port")
    p.add_argument("--publishers", type=int, default=int(_env("PUBLISHERS",
                                                              str(d.mqtt.publishers))))
    p.add_argument("--http-host", default=_env("HTTP_HOST", d.http.host))
    p.add_argument("--http-port", type=int, default=int(_env("HTTP_PORT", str(d.http.port))))
    p.add_argument("--api-san", action="append", metavar="NAME",
                   default=_env_list("API_SAN"),
                   help="extra DNS name or IP for the API's certificate (repeatable)")
    p.add_argument("--heartbeat", type=float,
                   default=float(_env("HEARTBEAT", str(d.sync.heartbeat))),
                   help="default edge heartbeat, seconds (NotReady after 3x)")
    p.add_argument("--pod-eviction-timeout", type=float, metavar="SECONDS",
                   default=float(_env("POD_EVICTION_TIMEOUT",
                                      str(d.sync.pod_eviction_timeout))),
                   help="seconds a node may be NotReady before its Deployment replicas "
                        "move elsewhere (300; per-pod tolerationSeconds override it)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", d.log_level))
    p.add_argument("--insecure", action="store_true", default=_env_flag("INSECURE"),
                   help="NO API auth (anonymous admin), plain HTTP, and a sync hub that "
                        "takes unsealed messages and unjoined nodes; warns at start")
    p.add_argument("--auth", action="store_true", default=False,
                   help="accepted for compatibility: API auth is on unless --insecure")
    p.add_argument("--auth-tokens", metavar="FILE", default=_env("AUTH_TOKENS", "") or None,
                   help="static API tokens, 'token,role[,name]' per line (turns auth on)")
    p.add_argument("--advertise-mqtt", metavar="[mqtts://]HOST:PORT",
                   default=_env("ADVERTISE_MQTT", d.auth.advertise_mqtt),
                   help="broker address given to joining nodes (default: --mqtt-host:port;"
                        " mqtts:// = TLS, mqtt:// = plain, none = as --mqtt-tls)")
    p.add_argument("--join-token-ttl", type=float, metavar="SECONDS",
                   default=float(_env("JOIN_TOKEN_TTL", str(d.auth.join_token_ttl))),
                   help="default lifetime of join tokens")
    p.add_argument("--mosquitto-passwd", metavar="FILE",
                   default=_env("MOSQUITTO_PASSWD", "") or None,
                   help="keep this mosquitto password_file: cloudcore's identities and "
                        "every joined node")
    p.add_argument("--mosquitto-acl", metavar="FILE",
                   default=_env("MOSQUITTO_ACL", "") or None,
                   help="write this mosquitto acl_file (each node only its own topics)")
    p.add_argument("--node-certs", action="store_true", default=_env_flag("NODE_CERTS"),
                   help="issue node client certificates at join (CN = node name, 90 days)")
    p.add_argument("--broker-cert-dir", metavar="DIR",
                   default=_env("BROKER_CERT_DIR", "") or None,
                   help="write the broker's TLS files (ca.crt, broker.crt, broker.key) here")
    p.add_argument("--broker-san", action="append", metavar="NAME",
                   default=_env_list("BROKER_SAN"),
                   help="name or IP in the broker's certificate (repeatable; default: the "
                        "advertised broker host, --mqtt-host, loopback)")
    p.add_argument("--join-rate", type=float, metavar="PER_MINUTE",
                   default=float(_env("JOIN_RATE", str(d.auth.join_rate))),
                   help="joins per minute per client address (burst --join-burst)")
    p.add_argument("--join-burst", type=int,
                   default=int(_env("JOIN_BURST", str(d.auth.join_burst))))
    p.add_argument("--default-pod-security", metavar="LEVEL",
                   default=_env("DEFAULT_POD_SECURITY", d.policy.default_level),
                   help="policy level of a namespace without the label "
                        "pod-security.kubernetes.io/enforce: privileged, baseline "
                        "(default) or restricted")
    p.add_argument("--host-path-allow", action="append", metavar="PREFIX[:rw]",
                   default=_env_list("HOST_PATH_ALLOW"),
                   help="hostPath prefix pods at baseline may mount, read-only unless "
                        ":rw (repeatable)")
    p.add_argument("--encryption-key-file", metavar="FILE",
                   default=_env("ENCRYPTION_KEY_FILE", "") or None,
                   help="keys for Secret values at rest (default STATE_DIR/encryption.keys,"
                        " made on first start)")
    p.add_argument("--placement", choices=("requests", "right-sizing"),
                   default=_env("PLACEMENT", d.forecast.placement),
                   help="right-sizing: admit cpu/memory by the p90 forecast where it is "
                        "trusted, by requests elsewhere (default requests)")
    p.add_argument("--placement-safety", type=float, metavar="FRACTION",
                   default=float(_env("PLACEMENT_SAFETY", str(d.forecast.placement_safety))),
                   help="right-sizing's margin above the p90, of allocatable (default 0.1)")
    p.add_argument("--placement-overcommit", type=float, metavar="FRACTION",
                   default=float(_env("PLACEMENT_OVERCOMMIT",
                                      str(d.forecast.placement_overcommit))),
                   help="right-sizing: how far a trusted node's requests may exceed its "
                        "allocatable (default 0.3 = 130%%)")
    p.add_argument("--forecast-interval", type=float, metavar="SECONDS",
                   default=float(_env("FORECAST_INTERVAL", str(d.forecast.interval))),
                   help="seconds between two batched forecasts of the fleet (60)")
    g = p.add_argument_group("scale-out shard (issue 14; docs/operations.md section 11)")
    g.add_argument("--shard", metavar="NAME", default=_env("SHARD", "") or None,
                   help="run as shard NAME of several sharing partition leases in NATS "
                        "JetStream KV (default: the embedded mode, every partition, no NATS)")
    g.add_argument("--nats", action="append", metavar="URL",
                   help="a NATS server tls://host:port (repeat for every server; "
                        "default: $CLOUDCORE_NATS, comma-separated)")
    g.add_argument("--nats-user", default=_env("NATS_USER", "") or None, metavar="USER")
    g.add_argument("--nats-password-file", metavar="FILE",
                   default=_env("NATS_PASSWORD_FILE", "") or None)
    g.add_argument("--nats-ca-file", metavar="FILE", default=_env("NATS_CA_FILE", "") or None,
                   help="CA of the NATS servers (default: the fleet CA)")
    g.add_argument("--nats-insecure", action="store_true", default=_env_flag("NATS_INSECURE"),
                   help="allow nats:// and no user (tests only; warns)")
    g.add_argument("--lease-period", type=float, metavar="SECONDS",
                   default=float(_env("LEASE_PERIOD", str(d.cluster.lease_period))),
                   help="seconds a partition lease lives without renewal (15)")
    g.add_argument("--nats-replicas", type=int, metavar="N",
                   default=int(_env("NATS_REPLICAS", str(d.cluster.replicas))),
                   help="KV bucket replicas when making them: 1 server 1, cluster 3")
    a = p.parse_args(argv)
    s = Settings()
    if a.shard is not None:
        s.cluster.shard = a.shard
        s.cluster.nats_urls = tuple(a.nats or _env_list("NATS"))
        s.cluster.nats_user = a.nats_user
        if a.nats_password_file:
            s.cluster.nats_password = _read_secret(Path(a.nats_password_file),
                                                   "--nats-password-file")
        s.cluster.nats_ca_file = Path(a.nats_ca_file) if a.nats_ca_file else None
        s.cluster.nats_insecure = bool(a.nats_insecure)
        s.cluster.lease_period = a.lease_period
        s.cluster.replicas = a.nats_replicas
    elif a.nats:
        raise ConfigError("--nats needs --shard NAME (the embedded mode uses no NATS)",
                          field="cluster.shard")
    s.store.state_dir = Path(a.state_dir)
    s.forecast.placement, s.forecast.placement_safety = a.placement, a.placement_safety
    s.forecast.placement_overcommit = a.placement_overcommit
    s.forecast.interval = a.forecast_interval
    s.mqtt.host, s.mqtt.port = a.mqtt_host, a.mqtt_port
    s.mqtt.publishers = a.publishers
    s.mqtt.brokers = _brokers(a.broker)
    s.mqtt.username = a.mqtt_username
    if a.mqtt_password_file:
        s.mqtt.password = _read_secret(Path(a.mqtt_password_file), "--mqtt-password-file")
    s.mqtt.tls = bool(a.mqtt_tls)
    s.mqtt.ca_file = Path(a.mqtt_ca_file) if a.mqtt_ca_file else None
    s.mqtt.client_cert = bool(a.mqtt_client_cert)
    s.http.host, s.http.port = a.http_host, a.http_port
    s.http.sans = list(a.api_san)
    s.insecure = bool(a.insecure)
    s.sync.heartbeat = a.heartbeat
    s.sync.pod_eviction_timeout = a.pod_eviction_timeout
    s.log_level = a.log_level
    s.auth.enabled = not s.insecure
    s.auth.tokens_file = Path(a.auth_tokens) if a.auth_tokens else None
    s.auth.advertise_mqtt = a.advertise_mqtt
    s.auth.join_token_ttl = a.join_token_ttl
    s.auth.mosquitto_passwd = Path(a.mosquitto_passwd) if a.mosquitto_passwd else None
    s.auth.mosquitto_acl = Path(a.mosquitto_acl) if a.mosquitto_acl else None
    s.auth.node_certs = bool(a.node_certs)
    s.auth.broker_cert_dir = Path(a.broker_cert_dir) if a.broker_cert_dir else None
    s.auth.broker_sans = list(a.broker_san)
    s.auth.join_rate, s.auth.join_burst = a.join_rate, a.join_burst
    s.policy = PolicySettings.from_flags(default_level=a.default_pod_security,
                                         host_path_allow=a.host_path_allow)
    s.store.encryption_key_file = (Path(a.encryption_key_file) if a.encryption_key_file
                                   else None)
    return s


def _brokers(flags: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for flag in flags:
        name, sep, url = flag.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not name or not url:
            raise ConfigError(f"--broker {flag!r}: expected NAME=URL, e.g. "
                              "mq-1=mqtts://mq-1.example:8883", field="mqtt.brokers")
        if name in out:
            raise ConfigError(f"--broker {name}: given twice", field="mqtt.brokers")
        out[name] = url
    return out


def backup_main(argv: Sequence[str]) -> int:
    """`cloudcore backup [--state-dir DIR] DEST`: a consistent copy of the LMDB store,
    and of the fleet CA (`DEST/pki`, 0700/0600): a store restored without its CA would
    leave every pinned token and node certificate pointing at a CA that is gone."""
    from cloudcore.errors import StoreError
    from cloudcore.store import backup

    p = argparse.ArgumentParser(prog="cloudcore backup",
                                description="copy the LMDB store (safe while cloudcore runs) "
                                            "and the fleet CA (DEST/pki)")
    p.add_argument("--state-dir", default=_env("STATE_DIR", str(Settings().store.state_dir)))
    p.add_argument("--no-compact", action="store_true", help="copy pages as they are")
    p.add_argument("dest", help="new or empty directory for the copy")
    a = p.parse_args(argv)
    try:
        size = backup(Path(a.state_dir), Path(a.dest), compact=not a.no_compact)
        ca = _backup_ca(Path(a.state_dir) / "pki", Path(a.dest) / "pki")
    except (StoreError, OSError) as exc:
        print(f"cloudcore backup: {exc}", file=sys.stderr)
        return 1
    print(f"backed up {a.state_dir} to {a.dest} ({size} bytes)")
    if ca:
        print(f"with the fleet CA and the release key in {Path(a.dest) / 'pki'}: restore "
              "them with the store, or every join token pin and node certificate stops "
              "working and nodes refuse new agent releases")
    return 0


def _backup_ca(src: Path, dst: Path) -> bool:
    """Copy the fleet CA (ca.crt, ca.key) and the agent release key (release.key, if
    made) beside the store copy, keeping them private."""
    if not (src / "ca.crt").is_file() or not (src / "ca.key").is_file():
        return False
    dst.mkdir(mode=0o700, parents=True, exist_ok=True)
    dst.chmod(0o700)
    names = [("ca.crt", 0o644), ("ca.key", 0o600)]
    if (src / "release.key").is_file():  # nodes trust only it for agent releases
        names.append(("release.key", 0o600))
    for name, mode in names:
        fd = os.open(dst / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write((src / name).read_bytes())
    return True


def pki_main(argv: Sequence[str]) -> int:
    """`cloudcore pki broker --out DIR --host H [--host H2]`: the broker's TLS files."""
    from cloudcore.auth.pki import FleetCA

    p = argparse.ArgumentParser(prog="cloudcore pki",
                                description="certificates from the fleet CA")
    sub = p.add_subparsers(dest="what", required=True)
    b = sub.add_parser("broker", help="write ca.crt, broker.crt, broker.key for a broker's "
                                      "TLS listener (creates the fleet CA if missing)")
    b.add_argument("--state-dir", default=_env("STATE_DIR", str(Settings().store.state_dir)))
    b.add_argument("--out", required=True, help="directory for the files")
    b.add_argument("--host", action="append", required=True,
                   help="DNS name or IP the broker is reached at (repeatable)")
    a = p.parse_args(argv)
    s = Settings()
    s.store.state_dir = Path(a.state_dir)
    try:
        ca = FleetCA.open(s.pki_dir)
        files = ca.write_broker_certs(Path(a.out), a.host)
    except (ConfigError, OSError) as exc:
        print(f"cloudcore pki: {exc}", file=sys.stderr)
        return 1
    for path in files.values():
        print(path)
    print(f"fleet CA {ca.hash}")
    return 0


def rotate_main(argv: Sequence[str]) -> int:
    """`cloudcore rotate-encryption-key [--state-dir DIR] [--encryption-key-file FILE]
    [--drop-old]`: a new key first in the key file, every Secret rewritten under it."""
    from cloudcore.errors import StoreError
    from cloudcore.store import rotate_encryption_key

    p = argparse.ArgumentParser(prog="cloudcore rotate-encryption-key",
                                description="put a new key first in the key file and "
                                            "rewrite every Secret under it (stop cloudcore "
                                            "first)")
    p.add_argument("--state-dir", default=_env("STATE_DIR", str(Settings().store.state_dir)))
    p.add_argument("--encryption-key-file", metavar="FILE",
                   default=_env("ENCRYPTION_KEY_FILE", "") or None)
    p.add_argument("--drop-old", action="store_true",
                   help="then remove every other key from the file")
    a = p.parse_args(argv)
    try:
        rot = rotate_encryption_key(
            Path(a.state_dir), drop_old=a.drop_old,
            key_file=Path(a.encryption_key_file) if a.encryption_key_file else None)
    except StoreError as exc:
        print(f"cloudcore rotate-encryption-key: {exc}", file=sys.stderr)
        return 1
    dropped = f"; removed keys {', '.join(rot.dropped)}" if rot.dropped else ""
    print(f"encrypting with key {rot.key}; rewrote {rot.rewritten} records{dropped}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["rotate-encryption-key"]:
        return rotate_main(args[1:])
    if args[:1] == ["backup"]:
        return backup_main(args[1:])
    if args[:1] == ["pki"]:
        return pki_main(args[1:])
    if args[:1] == ["release"]:
        from cloudcore.release import main as release_main

        return release_main(args[1:])
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
