"""Command line of the edge agent: `edgecore join`, `run` and `reset`.

`edgecore join --cloud URL --token T --state-dir D` writes `D/edgecore.json` (node
name, labels, broker address, credentials, node key, TLS files); `edgecore run
--state-dir D` (or `--config FILE`) then needs no other flag, and flags given override
the file. Without a node key `run` refuses to start unless `--insecure` (then messages
are not authenticated, and a loud warning says so): `edgecore run --insecure --name N
--state-dir D --mqtt-host H ...` is the keyless, throwaway form.

Parses and validates settings before anything starts (a bad flag is one clear
line on stderr and exit code 2, never a traceback), then runs the agent on the
standard asyncio loop (uvloop with `--event-loop uvloop`) until SIGTERM/SIGINT.
Stopping the agent does not stop containers.

`run` first restarts itself, same pid, under `python -OO -X no_debug_ranges` (LEAN_FLAGS,
about 1.2 MiB less RSS; `--plain-python` opts out), then hands over to the launcher
(`edgecore.upgrade.launcher`, proposal 0006): with no agent release installed it returns
at once and the installed agent runs here;
otherwise it runs the committed release (exec, same pid) or a release on trial. An
agent that prepared a trial ends with `RestartRequested` and execs the launcher again.
"""

from __future__ import annotations

# Only light modules up here: `run` hands over to the launcher before the agent is
# imported, and during an agent release's trial the launcher's process stays beside the
# trial agent for its lifetime holding whatever was imported here. asyncio (with ssl),
# the settings (shared's schema) and the agent come after the hand-over (issue 16).
import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecore import __version__
from edgecore.errors import ConfigError, EdgecoreError

if TYPE_CHECKING:
    import asyncio

    from edgecore.config import AgentSettings
    from edgecore.upgrade import RestartRequested

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
    _run_flags(run)
    join = sub.add_parser(
        "join", help="join a cloudcore with a join token and write STATE_DIR/edgecore.json",
        description="Trade a join token (fedctl token create) for this node's broker "
                    "credentials; write them with the name, labels and broker address to "
                    "STATE_DIR/edgecore.json (mode 0600), then optionally start the agent.")
    join.add_argument("--cloud", required=True, metavar="URL",
                      help="cloudcore API, e.g. https://cloud.example:8080")
    join.add_argument("--token", required=True,
                      help="join token ID.SECRET.PIN (PIN: sha256 of the fleet CA)")
    join.add_argument("--ca-file", type=Path, default=None, metavar="PEM",
                      help="verify the cloud against this CA instead of the token's pin")
    join.add_argument("--insecure-skip-tls-verify", action="store_true",
                      help="DANGEROUS: do not verify the cloud (also needed for http://)")
    join.add_argument("--name", default=None, help="node name (default: the host name)")
    join.add_argument("--label", action="append", type=_label, default=[], metavar="K=V",
                      help="node label; repeatable (the token's labels win)")
    join.add_argument("--state-dir", type=Path, default=Path("/var/lib/edgecore"),
                      help="agent state directory (/var/lib/edgecore)")
    join.add_argument("--arch", default=None, help="architecture to announce (this machine's)")
    join.add_argument("--broker", default=None, metavar="HOST:PORT",
                      help="use this broker address instead of the one cloudcore advertises")
    join.add_argument("--start", action="store_true", help="run the agent once joined")
    join.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (INFO)")
    reset = sub.add_parser(
        "reset", help="stop and remove this agent's containers and delete its state dir",
        description="Undo `edgecore join`: stop and remove the containers of "
                    "STATE_DIR/runtime, then delete STATE_DIR. The cloud keeps the node until "
                    "`fedctl node delete NAME`.")
    reset.add_argument("--state-dir", type=Path, default=Path("/var/lib/edgecore"),
                       help="agent state directory (/var/lib/edgecore)")
    reset.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    reset.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (WARNING)")
    return p


def _run_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument("--config", type=Path, default=None, metavar="FILE",
                     help="config written by `edgecore join` (default: STATE_DIR/edgecore.json "
                          "if present); flags override it")
    run.add_argument("--name", default=None, help="node name (DNS-1123); required without "
                                                  "a config file")
    run.add_argument("--state-dir", required=True, type=Path, help="agent state directory")
    run.add_argument("--mqtt-host", default=None, help="broker host (127.0.0.1)")
    run.add_argument("--mqtt-port", type=int, default=None, help="broker port (1883)")
    run.add_argument("--mqtt-keepalive", type=int, default=600, help="keepalive seconds (600)")
    run.add_argument("--broker-move-jitter", type=float, default=60.0, metavar="SECONDS",
                     help="a broker move the map asks for waits a random 0..this (60)")
    run.add_argument("--broker-home-retry", type=float, default=300.0, metavar="SECONDS",
                     help="on a fallback broker, try the ones ahead every this (300)")
    run.add_argument("--insecure", action="store_true",
                     help="DANGEROUS: run without a node key; messages are not "
                          "authenticated and anyone with broker access controls the node")
    run.add_argument("--tls", action="store_true", default=None,
                     help="connect to the broker over TLS (default: as joined)")
    run.add_argument("--ca-file", type=Path, default=None, metavar="PEM",
                     help="CA the broker's certificate must chain to (default: as joined)")
    run.add_argument("--client-cert", type=Path, default=None, metavar="PEM",
                     help="client certificate for the broker (with --client-key)")
    run.add_argument("--client-key", type=Path, default=None, metavar="PEM",
                     help="private key of --client-cert")
    run.add_argument("--label", action="append", type=_label, default=[], metavar="K=V",
                     help="node label; repeatable")
    run.add_argument("--heartbeat", type=float, default=60.0,
                     help="liveness interval seconds (60; NotReady after 3x)")
    run.add_argument("--reconnect-max", type=float, default=None, metavar="SECONDS",
                     help="cap of the reconnect backoff (min(30, heartbeat))")
    run.add_argument("--op-timeout", type=float, default=None, metavar="SECONDS",
                     help="MQTT connect/publish timeout before the session is rebuilt "
                          "(heartbeat, within 5..15)")
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
    run.add_argument("--telemetry-point", type=int, default=60, metavar="SECONDS",
                     help="seconds aggregated into one telemetry point sent to the cloud "
                          "(60; at least --telemetry-sample)")
    run.add_argument("--reconcile-interval", type=float, default=5.0,
                     help="seconds between cheap checks for exited containers (5)")
    run.add_argument("--reconcile-resync", type=float, default=30.0,
                     help="seconds between full reconcile passes when nothing changed (30)")
    run.add_argument("--pull-report", type=float, default=10.0, metavar="SECONDS",
                     help="seconds between status reports of a pod whose image is being "
                          "pulled, with bytes and layers done (10)")
    run.add_argument("--image-gc-interval", type=float, default=600.0,
                     help="seconds between image garbage collections (600)")
    run.add_argument("--image-gc-max-unused", type=float, default=86400.0,
                     help="remove images unused for longer than this many seconds (86400)")
    run.add_argument("--image-gc-min-free-mib", type=int, default=1024,
                     help="below this free disk (MiB), remove least recently used images "
                          "until it is free again (1024)")
    run.add_argument("--pod-cidr", default="10.88.0.0/16",
                     help="IPv4 range of the pod network; the bridge takes its first address "
                          "(10.88.0.0/16)")
    run.add_argument("--pod-bridge", default="edgefed0",
                     help="bridge of the pod network, at most 15 characters (edgefed0); two "
                          "agents in one network namespace need different bridges and ranges")
    run.add_argument("--policy-cap", default="privileged",
                     choices=("privileged", "baseline", "restricted"),
                     help="the most this agent runs, whatever level the cloud admitted a pod "
                          "under (privileged: the cloud's level decides)")
    run.add_argument("--metrics-file", type=Path, default=None, metavar="PATH",
                     help="the agent's counters, Prometheus text format (STATE/metrics.prom)")
    run.add_argument("--metrics-interval", type=float, default=10.0, metavar="SECONDS",
                     help="seconds between rewrites of the metrics file (10)")
    run.add_argument("--scrape-interval", type=float, default=60.0, metavar="SECONDS",
                     help="seconds between scrapes of pods annotated prometheus.io/scrape "
                          "(60; 0: none)")
    run.add_argument("--agent-metrics", action="store_true",
                     help="send the agent's own metrics to the cloud every scrape round, "
                          "also when no pod is scraped (about 2 KB a round; off: they go "
                          "with the pods' batches only)")
    run.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                     help="the event loop (asyncio; uvloop if installed, 2 MiB more RSS)")
    run.add_argument("--release-key", action="append", type=Path, default=[], metavar="FILE",
                     help="trust agent releases signed with this ed25519 public key (base64 "
                          "of the raw key, or PEM); repeatable; added to the keys from join")
    run.add_argument("--release-pull-secret", type=Path, default=None, metavar="FILE",
                     help="registry auth file (docker config JSON) for release images "
                          "(STATE/agent/auth.json if present)")
    run.add_argument("--plain-python", action="store_true",
                     help="run on the interpreter as started, without "
                          f"{' '.join(LEAN_FLAGS)} (docstrings, asserts and a traceback's "
                          "column markers kept; about 1.3 MiB more RSS)")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (INFO)")


LEAN_FLAGS = ("-OO", "-X", "no_debug_ranges")
"""Interpreter flags `edgecore run` restarts itself with (issue 16): `-OO` leaves out
docstrings and asserts (the agent's asserts only narrow types for mypy; nothing it or
its libraries do reads a docstring), `-X no_debug_ranges` the column table behind a
traceback's `^^^^` markers. Together 1.2-1.4 MiB less RSS on an idle agent, whether the
modules come from compiled bytecode (`.opt-2.pyc`) or are compiled at start."""


def lean_argv(argv: Sequence[str] | None = None) -> list[str] | None:
    """The command that runs this process again under LEAN_FLAGS, or None if it already
    runs under them. `argv` is this interpreter's own command line (`sys.orig_argv`:
    the interpreter, its options, then `-m edgecore ...`, `-c ...` or a script such as
    the `edgecore` console script), so the restart keeps whatever it was started with."""
    if sys.flags.optimize >= 2 and "no_debug_ranges" in sys._xoptions:
        return None
    orig = list(sys.orig_argv if argv is None else argv)
    if orig[1:1 + len(LEAN_FLAGS)] == list(LEAN_FLAGS):
        return None  # restarted once already: never a loop, whatever the flags did
    return [sys.executable, *LEAN_FLAGS, *orig[1:]]


def _release_keys(args: argparse.Namespace, joined: tuple[str, ...]) -> tuple[bytes, ...]:
    """The trusted release keys: the joined config's and --release-key files'."""
    from shared.errors import ReleaseError
    from shared.release import load_public_key, parse_public_key

    try:
        keys = [parse_public_key(k) for k in joined]
        keys += [load_public_key(p) for p in getattr(args, "release_key", [])]
    except (ReleaseError, OSError) as exc:
        raise ConfigError(str(exc), field="release_key") from None
    return tuple(dict.fromkeys(keys))


def settings_from_args(args: argparse.Namespace) -> AgentSettings:
    """Settings of `run`: the joined config file (if any), overridden by the flags.

    Raises ConfigError for a bad value and JoinError for an unreadable config file.
    """
    from edgecore.config import AgentSettings
    from edgecore.join import JoinedConfig, config_path, load_config

    cfg: JoinedConfig | None = None
    path = getattr(args, "config", None)
    if path is not None:
        cfg = load_config(path)
    elif config_path(args.state_dir).is_file():
        cfg = load_config(config_path(args.state_dir))
    name = args.name or (cfg.name if cfg else None)
    if not name:
        raise ConfigError("is required (--name, or a config from `edgecore join`)",
                          field="node")
    node_key = cfg.node_key() if cfg else None
    ca_file = args.ca_file or (Path(cfg.ca_file) if cfg and cfg.ca_file else None)
    client_cert = args.client_cert or (Path(cfg.client_cert)
                                       if cfg and cfg.client_cert else None)
    client_key = args.client_key or (Path(cfg.client_key) if cfg and cfg.client_key else None)
    tls = args.tls if args.tls is not None else bool(cfg.tls if cfg else False)
    tls = tls or args.ca_file is not None or args.client_cert is not None
    settings = AgentSettings(
        node=name, state_dir=args.state_dir,
        labels={**(cfg.labels if cfg else {}), **dict(args.label)},
        mqtt_host=args.mqtt_host or (cfg.broker_host if cfg else "127.0.0.1"),
        mqtt_port=args.mqtt_port or (cfg.broker_port if cfg else 1883),
        # the joined broker list, unless a broker is named on the command line
        mqtt_brokers=(cfg.broker_urls() if cfg and not (args.mqtt_host or args.mqtt_port)
                      else ()),
        broker_map_version=cfg.broker_map_version if cfg else 0,
        broker_move_jitter_s=args.broker_move_jitter,
        broker_home_retry_s=args.broker_home_retry,
        mqtt_username=cfg.username if cfg else None,
        mqtt_password=cfg.password if cfg else None,
        # a plain agent keeps the fleet CA too: its list (now or after a map change) may
        # name mqtts:// brokers, verified against it
        node_key=node_key, tls=tls,
        ca_file=ca_file,
        client_cert=client_cert if tls else None, client_key=client_key if tls else None,
        cloud_url=cfg.cloud if cfg else None,
        mqtt_keepalive_s=args.mqtt_keepalive,
        heartbeat_s=args.heartbeat, insecure_registries=tuple(args.insecure_registry),
        reconnect_max_s=args.reconnect_max, op_timeout_s=args.op_timeout,
        outbox_budget_bytes=args.outbox_budget_mib * 1024 * 1024,
        capacity_cpu_millis=args.cpu_millis, capacity_memory_bytes=args.memory_bytes,
        capacity_pods=args.max_pods, devices=tuple(args.device),
        discover_accelerators=not args.no_discover_accelerators,
        log_max_bytes=args.log_max_bytes, log_keep=args.log_keep,
        telemetry_sample_s=args.telemetry_sample, telemetry_point_s=args.telemetry_point,
        reconcile_interval_s=args.reconcile_interval, reconcile_resync_s=args.reconcile_resync,
        pull_report_s=args.pull_report,
        image_gc_interval_s=args.image_gc_interval,
        image_gc_max_unused_s=args.image_gc_max_unused,
        image_gc_min_free_bytes=args.image_gc_min_free_mib * 1024 * 1024,
        metrics_file=args.metrics_file, metrics_interval_s=args.metrics_interval,
        scrape_interval_s=args.scrape_interval, agent_metrics=args.agent_metrics,
        pod_cidr=args.pod_cidr, pod_bridge=args.pod_bridge, policy_cap=args.policy_cap,
        event_loop=args.event_loop,
        release_keys=_release_keys(args, cfg.release_keys if cfg else ()),
        release_pull_secret=getattr(args, "release_pull_secret", None),
    )
    if node_key is None:
        if not getattr(args, "insecure", False):
            raise ConfigError("no node key: join first (`edgecore join`), or pass --insecure "
                              "to run with unauthenticated messages", field="node_key")
        log.warning("RUNNING INSECURE (--insecure): no node key, so messages from the cloud "
                    "are not authenticated: anyone with broker access can run anything on "
                    "this node")
    return settings


class _Signals:
    """SIGTERM and SIGINT for `_serve`: installed with `signal.signal` before the event
    loop starts (`_run`), and handed to the loop with `call_soon_threadsafe`. Not
    `loop.add_signal_handler`: it asks `inspect` whether the callback is a coroutine
    function, which loads `inspect`, `ast` and `dis` into every agent (about 0.6 MiB;
    issue 16, sixth round). Installed first, it also keeps `asyncio.run` from putting
    in its own SIGINT handler. A signal that comes before the loop runs stops the
    agent as soon as it starts."""

    SIGNALS = ("SIGTERM", "SIGINT")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: Any = None
        self._early: str | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        import signal

        for name in self.SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._received)

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def serve(self, loop: asyncio.AbstractEventLoop, stop: Any) -> None:
        """From now on a signal calls `stop(signame)` in `loop`."""
        self._loop, self._stop = loop, stop
        if self._early is not None:
            loop.call_soon(stop, self._early)

    def _received(self, signum: int, frame: object) -> None:
        import signal

        name = signal.Signals(signum).name
        if self._loop is None:
            self._early = name
        else:
            self._loop.call_soon_threadsafe(self._stop, name)


async def _serve(settings: AgentSettings, signals: _Signals) -> RestartRequested | None:
    """Run the agent until a signal (None) or until it asks to restart into an agent
    release on trial (the request)."""
    import asyncio

    from edgecore.agent import Agent
    from edgecore.upgrade import RestartRequested

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

    signals.serve(loop, stop)
    agent = Agent(settings)
    trimmer = asyncio.create_task(_trim_memory(agent.started), name="edgecore.trim")
    restart: RestartRequested | None = None
    try:
        try:
            await agent.run()
        except* RestartRequested as group:
            first = group.exceptions[0]
            assert isinstance(first, RestartRequested)
            restart = first
    except asyncio.CancelledError:
        if not stopping:
            raise
    finally:
        trimmer.cancel()
    return restart


DEFERRED_IMPORTS = ("urllib.request", "bz2", "lzma", "inspect")
"""Modules that libraries import at their top but the agent never calls:
paho-mqtt imports `urllib.request` (which loads `http.client` and 21 `email` modules)
for one proxy lookup that returns early without PySocks; `shutil` imports `bz2` and
`lzma` (with libbz2 and liblzma) for archive formats the agent never writes. About
1.4 MiB of RSS together (docs/edgecore.md, Memory). `asyncio` and `dataclasses` import
`inspect` (with `ast`, `_ast` and `dis`) for debug-mode checks, task reprs and
`loop.add_signal_handler` (which the agent does not use: `_Signals`), and for the
docstring `dataclasses` writes into a class without one
(`keep_dataclasses_off_inspect`). With `AGENT_DEFERRED_IMPORTS`: about 0.6 MiB of RSS
(`python -m testbed.bench_agent_floor`, issue 16, sixth round)."""

AGENT_DEFERRED_IMPORTS = ("msgspec.inspect",)
"""Deferred once this process is the agent (after the launcher's hand-over, which
must not import msgspec): `msgspec` imports its `msgspec.inspect` (type descriptions)
in its `__init__`, and `shared.pods` reads them only to word a validation error."""


def defer_unused_imports(names: Sequence[str] = DEFERRED_IMPORTS) -> None:
    """Put a placeholder for each of `names` into `sys.modules` that imports the real
    module on its first attribute access, so an `import` of it costs nothing until it
    is used (and behaves the same once it is). Call before anything imports them; a
    module already imported, or not installed, is left alone.

    Not `importlib.util.LazyLoader`: on CPython 3.11 the import statement itself reads
    the module's `__spec__` and so loads a lazily loaded module at once. Call after
    `block_unused_imports`: the placeholder of a submodule imports its package
    (`msgspec`), which would import a module still to be blocked."""
    import importlib
    import importlib.machinery
    import importlib.util
    from types import ModuleType

    for name in names:
        if name in sys.modules:
            continue
        parent, _, child = name.rpartition(".")
        if parent and parent not in sys.modules:
            # find_spec(name) would import the parent, and a package that imports this
            # submodule in its __init__ (msgspec) would load it: look in its folder
            # instead, and import the parent once the placeholder is in place
            outer = importlib.util.find_spec(parent)
            if outer is None or not outer.submodule_search_locations:
                continue
            spec = importlib.machinery.PathFinder.find_spec(
                name, list(outer.submodule_search_locations))
        else:
            spec = importlib.util.find_spec(name)
        if spec is None or not (spec.origin or "").endswith(".py"):
            continue  # not installed, or not a source module (creating it would load it)
        # __file__, __loader__ and the like set from the spec, nothing executed: a caller
        # that walks sys.modules for them (inspect.getmodule) does not load the module.
        stub = importlib.util.module_from_spec(spec)

        def load(attr: str, name: str = name, stub: ModuleType = stub) -> Any:
            if sys.modules.get(name) is stub:
                del sys.modules[name]
            real = importlib.import_module(name)
            stub.__dict__.update((k, v) for k, v in vars(real).items() if k != "__getattr__")
            stub.__dict__.pop("__getattr__", None)
            return getattr(real, attr)

        stub.__getattr__ = load  # type: ignore[method-assign]
        sys.modules[name] = stub
        if parent:
            setattr(importlib.import_module(parent), child, stub)


class _NoSignatures:
    """What `dataclasses` finds as its `inspect` in the lean agent. It asks `inspect` for
    one thing, the signature it writes as the docstring of a class that has none, and
    under `-OO` (the lean restart strips docstrings) that is every class. An empty one
    here, so the docstring is the bare class name, and `inspect` is not loaded for it.
    Not an exception: CPython 3.11.7 catches ValueError there, 3.11.2 (Debian 12's)
    does not."""

    @staticmethod
    def signature(obj: object) -> str:
        return ""


def keep_dataclasses_off_inspect() -> None:
    """Under `-OO` (the lean agent), give `dataclasses` `_NoSignatures` for `inspect`.
    With docstrings kept it never asks, and nothing is changed. Call after
    `defer_unused_imports`."""
    if sys.flags.optimize < 2:
        return
    import dataclasses

    dataclasses.inspect = _NoSignatures  # type: ignore[attr-defined]


BLOCKED_IMPORTS = ("typing_extensions",)
"""Optional modules kept out of the agent: on Python 3.11 (the floor, pyproject) msgspec
imports `typing_extensions` only if it is installed, for what `typing` has too, and
aiomqtt, paho-mqtt and cryptography only below 3.11; the agent's own code never. It is
there in a development venv or a system Python with python3-typing-extensions, and
cost the agent about 0.3 MiB (issue 16; an `edgecore[edge]` venv does not have it)."""


def block_unused_imports(names: Sequence[str] = BLOCKED_IMPORTS) -> None:
    """Make `import NAME` fail with ImportError for each of `names` not yet imported, as
    if it were not installed (the libraries above fall back to `typing` then)."""
    for name in names:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


RELEASED_AFTER_PARSING = ("argparse", "gettext", "locale", "edgecore.join", "shared.release")
"""The command line's modules: `run` needs them only to parse its flags, and afterwards
they held about 0.3 MiB of the agent's memory (issue 16). `locale` is gettext's: argparse
translates its messages through it when the parser is built. `edgecore.join` and
`shared.release` read the joined config and the release keys; the agent imports them
again only to renew a client certificate or to install an agent release."""


def release_modules(names: Sequence[str]) -> list[str]:
    """Let the real modules `names` go from memory once nothing needs them: each is
    replaced, in `sys.modules` and in every module's namespace that refers to it, by a
    placeholder (`defer_unused_imports`), so a later import or use loads it again and
    behaves as before. Returns the names replaced. What a caller still holds of a module
    (an object of one of its classes, one of its functions) keeps its namespace alive:
    release after dropping those."""
    from types import ModuleType

    old = {n: m for n in names if isinstance(m := sys.modules.get(n), ModuleType)}
    for name in old:
        del sys.modules[name]
    defer_unused_imports(tuple(old))
    for mod in list(sys.modules.values()):
        if not isinstance(mod, ModuleType):
            continue
        # not `mod.__dict__`: a lazily loaded module (importlib.util.LazyLoader) would load
        try:
            ns = object.__getattribute__(mod, "__dict__")
        except AttributeError:  # a module-like object without one (cffi's Lib)
            continue
        for key, value in list(ns.items()):
            for name, module in old.items():
                if value is module:
                    ns[key] = sys.modules[name]
    return [n for n in old if n in sys.modules]


def _libc() -> Any:
    """glibc through ctypes, or None (musl, other platforms): memory tuning is optional."""
    import ctypes

    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


MALLOC_ARENA_MAX = 1
"""glibc malloc arenas of `edgecore run`: by default each worker thread
(asyncio.to_thread) gets an arena of its own, and their fragments add to a small agent's
RSS. One, shared by the loop's thread and the workers (issue 16, fifth round; two before)."""

MALLOC_THRESHOLD = 128 * 1024
"""Bytes from which glibc serves an allocation with its own mmap (M_MMAP_THRESHOLD), and
of free heap top it hands back at once (M_TRIM_THRESHOLD). Both start at 128 KiB but
by default grow with every larger block freed (up to 32 and 64 MiB), so a burst of
large buffers (pod starts, a snapshot) leaves them in the heap; set, they stay fixed."""


def _tune_malloc() -> None:
    """glibc's malloc for a small, long-running agent (MALLOC_ARENA_MAX,
    MALLOC_THRESHOLD): about 0.1 MiB less RSS with 20 pods, 0.15 less anonymous memory
    (issue 16, fifth round; docs/benchmarks.md). Called once this process is the agent,
    before the agent's imports and before any thread exists. The same settings made
    through `GLIBC_TUNABLES` at the lean restart (from the interpreter's first
    allocation) measured no better, and would be inherited by the processes it spawns."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, MALLOC_ARENA_MAX)  # M_ARENA_MAX
        libc.mallopt(-3, MALLOC_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, MALLOC_THRESHOLD)  # M_TRIM_THRESHOLD


async def _trim_memory(started: asyncio.Event, *, every_s: float = 60.0) -> None:
    """Once the agent has started (the imports and the start leave free
    heap behind), then every `every_s`: collect garbage and hand free heap back to the OS."""
    import asyncio
    import gc

    libc = _libc()
    await started.wait()
    await asyncio.sleep(5)
    while True:
        gc.collect()
        if libc is not None:
            libc.malloc_trim(0)
        await asyncio.sleep(every_s)


def prepare_imports() -> None:
    """What every `edgecore` command does to its imports first, in this order: block
    (typing_extensions, if installed, would load inspect), defer (before argparse, whose
    help formatter imports shutil), and keep dataclasses off inspect under `-OO`."""
    block_unused_imports()
    defer_unused_imports()
    keep_dataclasses_off_inspect()


def main(argv: Sequence[str] | None = None) -> int:
    prepare_imports()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "run":
        if argv is None and not args.plain_python:
            lean = lean_argv()
            if lean is not None:
                # Same pid, so systemd, the testbed and the launcher see no difference.
                sys.stdout.flush()
                sys.stderr.flush()
                os.execv(lean[0], lean)
        _hand_over(args.state_dir, list(sys.argv[1:] if argv is None else argv))
        # this process is the agent now; before the agent's imports
        _tune_malloc()
        release_modules(("edgecore.upgrade.launcher",))
        if lean_argv() is None:  # the lean agent's own process (not a caller's, a test's)
            from edgecore.lean import lighten_library_imports

            # msgspec is imported by deferring its msgspec.inspect, with decimal stood in
            lighten_library_imports(lambda: defer_unused_imports(AGENT_DEFERRED_IMPORTS))
        # elsewhere, or where decimal was imported already (then no stand-in, and
        # msgspec not imported yet); a no-op after the line above
        defer_unused_imports(AGENT_DEFERRED_IMPORTS)
    from edgecore.join import JoinError

    if args.command == "reset":
        return _reset(args)
    try:
        if args.command == "join":
            settings = _join(args)
            if settings is None:
                return 0
        else:
            settings = settings_from_args(args)
    except ConfigError as exc:
        print(f"edgecore: invalid setting {exc}", file=sys.stderr)
        return 2
    except JoinError as exc:
        print(f"edgecore: {exc}", file=sys.stderr)
        return 1
    del args  # the parsed flags (an argparse object) are in `settings` now
    release_modules(RELEASED_AFTER_PARSING)
    return _run(settings)


def _hand_over(state_dir: Path, args: list[str]) -> None:
    """The launcher's turn (an agent release to run instead, a trial to roll back);
    returns when the installed agent runs in this process, holding nothing of the
    launcher's but its module (released next)."""
    from edgecore.upgrade import launched
    from edgecore.upgrade.launcher import launch

    if not launched():
        launch(state_dir, args)


def _join(args: argparse.Namespace) -> AgentSettings | None:
    """`edgecore join`: the settings to run with if `--start`, else None."""
    import json

    from edgecore.config import AgentSettings
    from edgecore.join import config_path, join, remove_state_dir

    name = args.name or _default_name()
    broker = None
    if args.broker:
        host, sep, port = args.broker.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"{args.broker!r} must be HOST:PORT", field="broker")
        broker = (host, int(port))
    labels = dict(args.label)
    # Check the name and labels here, before the token is spent on a doomed join.
    AgentSettings(node=name, state_dir=args.state_dir, labels=labels)
    existed = args.state_dir.exists()
    try:
        cfg = join(cloud=args.cloud, token=args.token, name=name, labels=labels,
                   state_dir=args.state_dir, arch=args.arch, broker=broker,
                   ca_file=args.ca_file,
                   insecure_skip_tls_verify=args.insecure_skip_tls_verify)
    except BaseException:
        if not existed and args.state_dir.exists() and not any(args.state_dir.iterdir()):
            remove_state_dir(args.state_dir)
        raise
    path = config_path(args.state_dir)
    print(f"joined {args.cloud} as node {cfg.name!r}; broker {cfg.broker_host}:"
          f"{cfg.broker_port}" + (f" as user {cfg.username!r}" if cfg.username else ""))
    print(f"wrote {path} (mode 0600; it holds the broker password and the node key)")
    if cfg.key is None:
        print("warning: the cloud gave no node key; `edgecore run` needs --insecure")
    if not args.start:
        print(f"start the agent with: edgecore run --state-dir {args.state_dir}")
        return None
    print("starting the agent")
    sys.stdout.flush()
    # An agent upgrade restarts through `edgecore run`, never through this join.
    from edgecore.upgrade import ENV_LAUNCHER

    os.environ[ENV_LAUNCHER] = json.dumps([sys.executable, "-m", "edgecore", "run",
                                           "--state-dir", str(args.state_dir)])
    return settings_from_args(build_parser().parse_args(
        ["run", "--state-dir", str(args.state_dir), "--config", str(path)]))


def _default_name() -> str:
    from edgecore.join import default_name

    return default_name()


def _reset(args: argparse.Namespace) -> int:
    import asyncio

    from edgecore.join import (
        JoinError,
        looks_like_state_dir,
        remove_containers,
        remove_pod_network,
        remove_state_dir,
    )
    from edgecore.runtime.errors import ContainerRuntimeError

    d: Path = args.state_dir
    if not d.exists():
        print(f"edgecore: {d} does not exist; nothing to reset", file=sys.stderr)
        return 0
    if not looks_like_state_dir(d):
        print(f"edgecore: {d} is not an edgecore state directory (no edgecore.json, cache/ "
              "or runtime/); refusing to delete it", file=sys.stderr)
        return 1
    if not args.yes:
        if not sys.stdin.isatty():
            print("edgecore: reset deletes the containers and state of this agent; pass --yes",
                  file=sys.stderr)
            return 1
        answer = input(f"Stop and remove this agent's containers and delete {d}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("aborted")
            return 1
    try:
        removed = asyncio.run(remove_containers(d / "runtime"))
        asyncio.run(remove_pod_network(d))
        remove_state_dir(d)
    except (ContainerRuntimeError, JoinError, OSError) as exc:
        print(f"edgecore: reset failed: {exc}", file=sys.stderr)
        return 1
    print(f"removed {removed} container(s) and {d}")
    return 0


def _run(settings: AgentSettings) -> int:
    import asyncio

    _tune_malloc()  # again for `join --start`; before any thread exists
    signals = _Signals()
    signals.install()
    try:
        if settings.event_loop == "uvloop":
            try:
                import uvloop
            except ImportError:
                log.error("edgecore: --event-loop uvloop, but uvloop is not installed")
                return 2
            restart = uvloop.run(_serve(settings, signals))
        else:
            restart = asyncio.run(_serve(settings, signals))
    except EdgecoreError as exc:
        log.error("edgecore stopped: %s", exc)
        return 1
    except Exception as exc:  # a component failed (an ExceptionGroup from the TaskGroup)
        log.error("edgecore failed", exc_info=exc)
        return 1
    finally:
        signals.restore()
    if restart is not None:
        from edgecore.upgrade.launcher import restart_into_launcher

        log.info("%s (containers keep running)", restart)
        restart_into_launcher()
    return 0


if __name__ == "__main__":
    sys.exit(main())
