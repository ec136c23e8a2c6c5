"""The agent's one settings object: every knob, its default and its unit, validated.

Built once (by `edgecore.__main__` from the command line, or by a test) and passed
explicitly to every component; nothing reads configuration from globals or the
environment behind the caller's back.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgecore.errors import ConfigError
from shared.brokermap import parse_url, url_of
from shared.errors import ObjectError
from shared.topics import valid_node_name

log = logging.getLogger("edgecore.config")

MiB = 1024 * 1024
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$|^[A-Za-z0-9.\-]+$")


@dataclass(frozen=True)
class AgentSettings:
    """Settings of one edge agent. Units are in the field names or the comments."""

    node: str
    """Node name (DNS-1123); also the MQTT client id and part of every topic."""
    state_dir: Path
    """Directory owned by the agent: LMDB cache in `cache/`, runtime root in `runtime/`."""
    labels: dict[str, str] = field(default_factory=dict)
    """Node labels reported to the cloud (used by nodeSelector). Default: none."""

    mqtt_host: str = "127.0.0.1"
    """Broker host name or address."""
    mqtt_port: int = 1883
    """Broker TCP port."""
    mqtt_brokers: tuple[str, ...] = ()
    """The brokers to try, in order, home first, as URLs (`mqtts://host:port`, or
    `mqtt://host:port` with `tls` off): the list `edgecore join` got (proposal 0007).
    Empty (default): `mqtt_host:mqtt_port` alone. A `broker/-/map` entry in the desired
    set replaces this list while it is there (`edgecore.link.brokers`)."""
    broker_map_version: int = 0
    """The broker map version `mqtt_brokers` came from (0: none, e.g. an old config)."""
    broker_home_retry_s: float = 300.0
    """Seconds (jittered by 20 %) between attempts to go back to a broker ahead in the
    list while the link is on a fallback."""
    broker_move_jitter_s: float = 60.0
    """When the broker list changes and the link's broker is no longer first, the move
    waits a random 0..this many seconds, so a partition's nodes do not all reconnect in
    the same second."""
    mqtt_username: str | None = None
    """Broker username (`edgecore join` writes the node's credentials); None: anonymous."""
    mqtt_password: str | None = field(default=None, repr=False)
    """Broker password, given with `mqtt_username`; never logged."""
    node_key: bytes | None = field(default=None, repr=False)
    """The node key (32 bytes, from `edgecore join`): every message to and from the cloud
    is authenticated with keys derived from it (shared.seal) and Secret values are
    opened with it. None: messages go unsealed, which only `edgecore run --insecure`
    allows (the CLI refuses otherwise); never logged."""
    tls: bool = False
    """Connect to the broker over TLS, verified against `ca_file` (or the system CAs)."""
    ca_file: Path | None = None
    """The fleet CA (PEM) that the broker's certificate must chain to; a plain agent
    (`tls` False) keeps it for the `mqtts://` brokers its list may name."""
    client_cert: Path | None = None
    """Client certificate (PEM) presented to the broker; with `client_key`."""
    client_key: Path | None = None
    """Private key (PEM) of `client_cert`."""
    cloud_url: str | None = None
    """The cloudcore API the node joined (from `edgecore join`); with a client
    certificate, the agent renews it there when a third of its lifetime is left."""
    mqtt_keepalive_s: int = 600
    """MQTT keepalive in seconds; the broker declares the session dead (and publishes the
    will) after 1.5x this without traffic. paho pings every keepalive whatever else was
    sent (eclipse-paho/paho.mqtt.python#813), and liveness comes from the telemetry
    points anyway (3 x heartbeat_s), so it is long: one ping exchange per 10 minutes
    (issue 16). A killed agent's will still goes out at once (its socket closes); a
    link that dies silently is NotReady in the cloud after 3 x heartbeat_s, and the
    agent notices within a minute (the next point's PUBACK times out)."""
    reconnect_initial_s: float = 0.5
    """First reconnect delay in seconds; doubles per failed attempt (jittered)."""
    reconnect_max_s: float | None = None
    """Cap of the reconnect delay in seconds; None (default): min(30, heartbeat_s), so
    after a long outage the agent retries at least once per heartbeat and a healed
    node is Ready again within about one heartbeat whatever the heartbeat is. The
    effective value is `reconnect_cap_s`."""
    op_timeout_s: float | None = None
    """Seconds one MQTT connect/subscribe/publish may take before the session is
    declared broken and rebuilt; None (default): the heartbeat, clamped to [5, 15] (not
    below 5 s, so a busy broker's slow PUBACK does not tear a healthy session down).
    Effective value: `op_timeout`."""

    heartbeat_s: float = 60.0
    """Liveness interval in seconds, told to the cloud (NotReady after 3x this without a
    message). An empty report goes out only when nothing else (a status, a telemetry
    point) went out for 1.5x this; with telemetry every 60 s an idle node sends none
    (issue 16). Checked every half interval, jittered by `heartbeat_jitter`."""
    heartbeat_jitter: float = 0.1
    """Fraction (0..0.5) by which each heartbeat interval is randomised."""
    report_batch_s: float = 0.5
    """Seconds the reporter waits to collect pod status changes into one report."""
    reconcile_interval_s: float = 5.0
    """Seconds between checks, when nothing wakes the reconciler, of whether a container
    exited (crun: one stat of conmon's exit directory, no process spawned); a full
    level-triggered pass follows if one did."""
    reconcile_resync_s: float = 30.0
    """Seconds between full reconcile passes (list every container) when nothing changed;
    new desired state, exits and due restarts still trigger a pass at once. Never
    shorter than reconcile_interval_s."""
    pull_report_s: float = 10.0
    """Seconds between pod status reports while an image is pulled (Pending /
    ContainerCreating "pulling IMAGE: 3.1 of 8.0 MiB, 1 of 2 layers (12 s)"); a pull
    that takes under 0.2 s is not reported at all."""
    outbox_budget_bytes: int = 64 * MiB
    """Bytes of unacknowledged reports kept in the LMDB outbox; over it, the oldest
    telemetry/heartbeats are dropped first, then old status reports, never the newest."""
    cache_map_bytes: int = 1024 * MiB
    """LMDB map size in bytes (address space, not RAM; a ceiling for the cache file)."""

    insecure_registries: tuple[str, ...] = ()
    """Registries (host:port) pulled from over plain HTTP / without TLS verification."""
    runtime_dir: Path | None = None
    """Runtime (crun) root; default `state_dir / "runtime"`."""

    capacity_cpu_millis: int | None = None
    """Override of the cpu capacity in millicores; default os.cpu_count() * 1000."""
    capacity_memory_bytes: int | None = None
    """Override of the memory capacity in bytes; default MemTotal of /proc/meminfo."""
    capacity_pods: int = 110
    """Maximum pods on this node (Kubernetes' default 110)."""

    crashloop_initial_s: float = 10.0
    """First CrashLoopBackOff delay in seconds; doubles per consecutive crash."""
    crashloop_max_s: float = 300.0
    """Cap of the CrashLoopBackOff delay in seconds (5 min as in Kubernetes)."""
    crashloop_reset_s: float = 600.0
    """A container that ran this many seconds before exiting resets its backoff."""

    devices: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Generic accelerator plugin: (resource name, device paths), e.g.
    (("example.com/npu", ("/dev/npu0", "/dev/npu1")),). Each path is one exclusive device,
    `HOST` or `HOST:CONTAINER`; a host path outside /dev appears as /dev/<basename>.
    Default: none (the built-in NVIDIA, DRI, Coral and Hailo plugins still run)."""
    discover_accelerators: bool = True
    """Run the built-in discovery plugins (NVIDIA, DRI render nodes, Coral, Hailo)."""
    dev_root: Path = Path("/dev")
    """Where the built-in plugins look for device nodes (tests point it elsewhere)."""

    telemetry_sample_s: float = 10.0
    """Seconds between cpu/memory samples of the node and every pod."""
    telemetry_point_s: int = 60
    """Seconds aggregated into one telemetry point (a multiple of telemetry_sample_s)."""

    image_gc_interval_s: float = 600.0
    """Seconds between image garbage collections (also run at once when a pull fails
    for lack of disk space); images of desired pods and of existing containers stay."""
    image_gc_max_unused_s: float = 86400.0
    """Images unused (not pulled or started) for longer than this many seconds go."""
    image_gc_min_free_bytes: int = 1024 * MiB
    """Below this many free bytes on the runtime root's filesystem, the least recently
    used unused images go until it is free again (or none is left)."""

    log_max_bytes: int = 4 * MiB
    """Bytes per container log file (conmon's --log-size-max); a container's logs use at
    most (log_keep + 1) x this on disk."""
    log_keep: int = 2
    """Rotated log files kept per container besides the live one."""
    pod_cidr: str = "10.88.0.0/16"
    """IPv4 range of the pod network; the bridge takes its first address."""
    pod_bridge: str = "edgefed0"
    """Name of the pod network's bridge (at most 15 characters)."""
    metrics_file: Path | None = None
    """The agent's counters in the Prometheus text format, rewritten every
    metrics_interval_s (None: `state_dir/metrics.prom`). Point node_exporter's
    textfile collector at its directory, or at a symlink to it."""
    metrics_interval_s: float = 10.0
    """Seconds between rewrites of the metrics file."""
    scrape_interval_s: float = 60.0
    """Seconds between scrapes of the pods annotated `prometheus.io/scrape: "true"`
    (edgecore.scrape); each round that has such a pod sends one batch, with the agent's
    own metrics, to the cloud (`agent_metrics`: every round). 0: no scraping and no
    batches."""
    agent_metrics: bool = False
    """Send the agent's own metrics every scrape round even when no pod of the node is
    annotated for scraping. Off by default: they are about 2 KB a round (300 bit/s at
    60 s, five times the rest of an idle node's link, issue 16); without this they go
    with the pods' batches only, and are always in the local metrics file."""
    scrape_timeout_s: float = 10.0
    """Seconds one pod's scrape may take."""
    scrape_max_body_bytes: int = 256 * 1024
    """Bytes read of one pod's metrics; a longer response is cut at a line boundary."""
    scrape_max_series_per_pod: int = 500
    """Series kept of one pod per scrape (the first ones in its exposition order)."""
    scrape_max_series_per_node: int = 2000
    """Series of all pods in one batch (the agent's own come on top)."""
    scrape_max_batch_bytes: int = 256 * 1024
    """Estimated encoded bytes of one batch (a report may hold 1 MiB)."""
    policy_cap: str = "privileged"
    """The most this agent runs whatever a pod entry says it was admitted under:
    privileged (trust the cloud's level), baseline or restricted."""
    log_rotate_interval_s: float = 10.0
    """Seconds between log rotation passes; a container writing more than log_max_bytes
    in this time loses output."""
    event_loop: str = "asyncio"
    """The event loop: asyncio (the standard library's) or uvloop (if installed). The
    agent waits on one socket and spawns short child processes, where uvloop is slower
    (2.5 against 1.0 ms to spawn and reap one, measured here), idles at the same CPU
    and costs 2.2 MiB more RSS (docs/edgecore.md, Memory)."""

    release_keys: tuple[bytes, ...] = field(default=(), repr=False)
    """Raw ed25519 public keys (32 bytes each) an agent release must be signed with
    (proposal 0006): the join answer's, plus `--release-key FILE`. Empty: every
    upgrade is refused with that reason."""
    release_pull_secret: Path | None = None
    """A registry auth file (docker config JSON, `{"auths": {...}}`) for pulling
    release images (None: `state_dir/agent/auth.json` if present, else no credentials)."""
    upgrade_check_s: float = 2.0
    """Seconds between looks at the desired `agent/-/release` entry."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def reconnect_cap_s(self) -> float:
        """The reconnect backoff cap in effect (see `reconnect_max_s`)."""
        if self.reconnect_max_s is not None:
            return self.reconnect_max_s
        return max(self.reconnect_initial_s, min(30.0, self.heartbeat_s))

    @property
    def broker_urls(self) -> tuple[str, ...]:
        """The join list in effect: `mqtt_brokers` (a TLS agent skips its plain
        entries), or `mqtt_host:mqtt_port` alone."""
        if self.mqtt_brokers:
            if self.tls:
                return tuple(u for u in self.mqtt_brokers if parse_url(u).tls)
            return self.mqtt_brokers
        return (url_of(self.mqtt_host, self.mqtt_port, tls=self.tls),)

    @property
    def op_timeout(self) -> float:
        """The MQTT operation timeout in effect (see `op_timeout_s`)."""
        if self.op_timeout_s is not None:
            return self.op_timeout_s
        return max(5.0, min(15.0, self.heartbeat_s))

    @property
    def agent_dir(self) -> Path:
        """Agent releases: `slots/<version>/` and `boot.json` (edgecore.upgrade)."""
        return self.state_dir / "agent"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def runtime_root(self) -> Path:
        return self.runtime_dir or self.state_dir / "runtime"

    @property
    def podnet_dir(self) -> Path:
        """The pod network's IPAM (ipam.json)."""
        return self.state_dir / "podnet"

    @property
    def metrics_path(self) -> Path:
        return self.metrics_file or self.state_dir / "metrics.prom"

    @property
    def seccomp_dir(self) -> Path:
        """Localhost seccomp profiles: `seccompProfile: {type: Localhost,
        localhostProfile: NAME}` reads `seccomp_dir / NAME` (the kubelet's
        `/var/lib/kubelet/seccomp`)."""
        return self.state_dir / "seccomp"

    @property
    def pods_dir(self) -> Path:
        """Per-pod directories: emptyDir, configMap and secret volumes."""
        return self.state_dir / "pods"

    def validate(self) -> None:
        """Raise `ConfigError` naming the first invalid field and its limit."""
        if not valid_node_name(self.node):
            raise ConfigError(
                "must be a lowercase DNS-1123 name (a-z, 0-9, '-', '.'; at most 253 chars)",
                field="node",
            )
        if not str(self.state_dir):
            raise ConfigError("must be a directory path", field="state_dir")
        for k, v in self.labels.items():
            if not _LABEL_KEY.match(k) or len(k) > 253:
                raise ConfigError(f"invalid label key {k!r}", field="labels")
            if not _LABEL_VALUE.match(v):
                raise ConfigError(
                    f"invalid value {v!r} for label {k!r} (at most 63 chars of [A-Za-z0-9-_.])",
                    field="labels",
                )
        if not self.mqtt_host:
            raise ConfigError("must not be empty", field="mqtt_host")
        _range("mqtt_port", self.mqtt_port, 1, 65535)
        plain = []
        for i, url in enumerate(self.mqtt_brokers):
            try:
                u = parse_url(url, f"mqtt_brokers[{i}]")
            except ObjectError as exc:
                raise ConfigError(exc.message, field="mqtt_brokers") from None
            if self.tls and not u.tls:
                plain.append(url)
        if plain and len(plain) == len(self.mqtt_brokers):
            raise ConfigError(f"every broker ({', '.join(plain)}) is plain MQTT and this "
                              "agent uses TLS (mqtts://)", field="mqtt_brokers")
        if plain:  # a mixed map: the TLS entries still reach the fleet
            log.warning("mqtt_brokers: skipping %s: plain MQTT, and this agent uses TLS "
                        "(its password would cross the network in clear)", ", ".join(plain))
        _range("broker_map_version", self.broker_map_version, 0, 1 << 62)
        _range("broker_home_retry_s", self.broker_home_retry_s, 0.01, 86400)
        _range("broker_move_jitter_s", self.broker_move_jitter_s, 0, 86400)
        if (self.mqtt_username is None) != (self.mqtt_password is None):
            raise ConfigError("username and password go together", field="mqtt_username")
        if self.node_key is not None and (not isinstance(self.node_key, bytes)
                                          or len(self.node_key) != 32):
            raise ConfigError("must be 32 bytes", field="node_key")
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError("client_cert and client_key go together", field="client_cert")
        if self.client_cert is not None and not self.tls:  # a plain agent may keep
            # ca_file: its map may list mqtts:// brokers (verified against it)
            raise ConfigError("client certificates need tls", field="tls")
        if self.event_loop not in ("asyncio", "uvloop"):
            raise ConfigError("must be asyncio or uvloop", field="event_loop")
        if self.policy_cap not in ("privileged", "baseline", "restricted"):
            raise ConfigError("must be privileged, baseline or restricted", field="policy_cap")
        if not self.pod_bridge or len(self.pod_bridge) > 15 or not all(
                c.isalnum() or c in "-_." for c in self.pod_bridge):
            raise ConfigError("must be 1..15 characters of [A-Za-z0-9-_.]", field="pod_bridge")
        try:
            net = ipaddress.ip_network(self.pod_cidr)
        except ValueError as exc:
            raise ConfigError(f"not an IPv4 range: {exc}", field="pod_cidr") from None
        if net.version != 4 or net.prefixlen > 28:
            raise ConfigError("must be an IPv4 range of /28 or larger", field="pod_cidr")
        _range("metrics_interval_s", self.metrics_interval_s, 0.1, 3600)
        if self.scrape_interval_s != 0:
            _range("scrape_interval_s", self.scrape_interval_s, 1, 86400)
        _range("scrape_timeout_s", self.scrape_timeout_s, 0.1, 600)
        _range("scrape_max_body_bytes", self.scrape_max_body_bytes, 1024, 16 * MiB)
        _range("scrape_max_series_per_pod", self.scrape_max_series_per_pod, 1, 15_000)
        _range("scrape_max_series_per_node", self.scrape_max_series_per_node, 0, 15_000)
        _range("scrape_max_batch_bytes", self.scrape_max_batch_bytes, 4096, 768 * 1024)
        _range("mqtt_keepalive_s", self.mqtt_keepalive_s, 5, 65535)
        _range("reconnect_initial_s", self.reconnect_initial_s, 0.01, 3600)
        if self.reconnect_max_s is not None:
            _range("reconnect_max_s", self.reconnect_max_s, self.reconnect_initial_s, 3600)
        if self.op_timeout_s is not None:
            _range("op_timeout_s", self.op_timeout_s, 0.5, 600)
        _range("heartbeat_s", self.heartbeat_s, 0.1, 86400)
        _range("heartbeat_jitter", self.heartbeat_jitter, 0, 0.5)
        _range("report_batch_s", self.report_batch_s, 0, 60)
        _range("reconcile_interval_s", self.reconcile_interval_s, 0.05, 3600)
        _range("outbox_budget_bytes", self.outbox_budget_bytes, 64 * 1024, 1 << 40)
        _range("cache_map_bytes", self.cache_map_bytes, 4 * MiB, 1 << 44)
        if self.outbox_budget_bytes > self.cache_map_bytes // 2:
            raise ConfigError(
                f"must be at most half of cache_map_bytes ({self.cache_map_bytes // 2})",
                field="outbox_budget_bytes",
            )
        for reg in self.insecure_registries:
            if not _HOSTPORT.match(reg):
                raise ConfigError(f"{reg!r} is not host or host:port", field="insecure_registries")
        if self.capacity_cpu_millis is not None:
            _range("capacity_cpu_millis", self.capacity_cpu_millis, 1, 1 << 32)
        if self.capacity_memory_bytes is not None:
            _range("capacity_memory_bytes", self.capacity_memory_bytes, MiB, 1 << 50)
        _range("capacity_pods", self.capacity_pods, 0, 10_000)
        _range("crashloop_initial_s", self.crashloop_initial_s, 0.01, 3600)
        _range("crashloop_max_s", self.crashloop_max_s, self.crashloop_initial_s, 86400)
        _range("crashloop_reset_s", self.crashloop_reset_s, 1, 86400)
        seen: set[str] = set()
        for entry in self.devices:
            if not (isinstance(entry, tuple) and len(entry) == 2):
                raise ConfigError(f"{entry!r} must be (resource, paths)", field="devices")
            resource, paths = entry
            if not _RESOURCE.match(resource) or resource in seen:
                raise ConfigError(
                    f"resource {resource!r} must be a unique domain/name such as "
                    "example.com/npu", field="devices")
            seen.add(resource)
            if not paths:
                raise ConfigError(f"resource {resource!r} has no device paths", field="devices")
            for path in paths:
                host, _, inside = path.partition(":")
                if not host.startswith("/") or (inside and not inside.startswith("/")):
                    raise ConfigError(
                        f"device {path!r} of {resource!r} must be HOST[:CONTAINER], absolute",
                        field="devices")
        _range("telemetry_sample_s", self.telemetry_sample_s, 0.01, 3600)
        _range("telemetry_point_s", self.telemetry_point_s, 1, 86400)
        if self.telemetry_point_s < self.telemetry_sample_s:
            raise ConfigError(
                f"must be at least telemetry_sample_s ({self.telemetry_sample_s})",
                field="telemetry_point_s")
        _range("reconcile_resync_s", self.reconcile_resync_s, 0.05, 86400)
        _range("pull_report_s", self.pull_report_s, 0.05, 3600)
        _range("image_gc_interval_s", self.image_gc_interval_s, 1, 86400 * 7)
        _range("image_gc_max_unused_s", self.image_gc_max_unused_s, 0, 86400 * 365)
        _range("image_gc_min_free_bytes", self.image_gc_min_free_bytes, 0, 1 << 50)
        _range("log_max_bytes", self.log_max_bytes, 4096, 1 << 40)
        _range("log_keep", self.log_keep, 1, 100)
        _range("log_rotate_interval_s", self.log_rotate_interval_s, 0.05, 3600)


def _range(name: str, value: float, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"must be a number, got {value!r}", field=name)
    if not lo <= value <= hi:
        raise ConfigError(f"{value!r} is outside [{lo}, {hi}]", field=name)
