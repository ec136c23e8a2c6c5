"""The one settings tree of the cloudcore binary.

Every field has a default, a unit and a reason in its docstring comment; CLI flags
and `CLOUDCORE_*` environment variables map onto it in `__main__`. `validate()` runs
before anything starts, so a bad value fails fast with the field's name instead of
half a service coming up. Settings are passed down explicitly; nothing reads them
from a global.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from cloudcore.errors import ConfigError
from cloudcore.fleet.admission import PolicySettings
from shared.brokermap import parse_url, valid_name
from shared.errors import ObjectError

log = logging.getLogger("cloudcore.config")


@dataclass
class StoreSettings:
    state_dir: Path = Path("./cloudcore-state")
    """Directory of the LMDB environment (created if missing)."""
    map_size: int = 4 * 1024**3
    """LMDB map size in bytes (address space, not disk); default 4 GiB."""
    batch_interval: float = 0.02
    """Seconds the writer waits to gather a batch before committing (group commit)."""
    batch_max_ops: int = 5000
    """Commit early once this many distinct puts/deletes are pending."""
    encryption_key_file: Path | None = None
    """Keys for Secret values at rest (`name:base64` lines; the first encrypts, all
    decrypt). None: `<state_dir>/encryption.keys`, created 0600 on first start."""


@dataclass
class MqttSettings:
    host: str = "127.0.0.1"
    """Broker host."""
    port: int = 1883
    """Broker port."""
    username: str = "cloudcore"
    """cloudcore's service identity on the broker (proposal 0002): its connections log
    in as `<username>_sub` and `<username>_pub<i>`, which are also their MQTT client ids
    (the broker runs with use_username_as_clientid). The `_` keeps them out of the node
    namespace. Fixed, so the broker keeps the subscriber's persistent session
    (clean_session false) and queued QoS 1 reports survive a restart."""
    password: str | None = field(default=None, repr=False)
    """The password of those identities (from `--mqtt-password-file`; never logged or
    printed). None with `auth.mosquitto_passwd` set: cloudcore makes one and keeps it in
    `<state_dir>/mqtt.password` (0600); None otherwise: log in without a password."""
    tls: bool = False
    """Connect to the broker over TLS (`--mqtt-tls`), verifying its certificate
    against `ca_file`."""
    ca_file: Path | None = None
    """CA bundle to verify the broker with; None: the fleet CA
    (`<state_dir>/pki/ca.crt`)."""
    client_cert: bool = False
    """Present a client certificate from the fleet CA (CN = the connection's identity),
    for a broker listener with require_certificate (`--mqtt-client-cert`)."""
    keepalive: int = 30
    """MQTT keepalive in seconds."""
    publishers: int = 1
    """Publisher connections (nodes are spread over them by partition)."""
    publish_concurrency: int = 256
    """QoS 1 publishes awaiting PUBACK at once, per publisher connection."""
    reconnect_base: float = 0.5
    """First reconnect delay in seconds (jittered, doubled per failure)."""
    reconnect_cap: float = 30.0
    """Longest reconnect delay in seconds."""
    brokers: dict[str, str] = field(default_factory=dict)
    """`--broker NAME=URL` (repeatable): the brokers of a tier (proposal 0007), name ->
    `mqtts://host:port` (`mqtt://` only with `--insecure`). Used to make the partition ->
    broker map on first start (`BrokerMap.spread`); afterwards the map in the store wins
    and a name it lacks is added (active, no partitions). cloudcore connects to each
    broker at its URL (the one `--advertise-mqtt` names at host/port above). Empty: one
    broker, `mq-0`, at host/port above, advertised as today."""

    def identity(self, role: str) -> str:
        """The login and client id of one connection: `sub`, or `pub<i>`."""
        return f"{self.username}_{role}"


@dataclass
class HttpSettings:
    host: str = "127.0.0.1"
    """Address the API binds to."""
    port: int = 8080
    """API port; 0 picks a free one (the chosen port is printed)."""
    sans: list[str] = field(default_factory=list)
    """Extra names and IP addresses for the API's certificate (`--api-san`), beside
    127.0.0.1, localhost, the bind address and this machine's host name."""


@dataclass
class SyncSettings:
    heartbeat: float = 30.0
    """Default edge heartbeat in seconds, for nodes that do not state their own.
    A node is NotReady after 3 x heartbeat without a report."""
    missed_heartbeats: int = 3
    """Heartbeats a node may miss before it is NotReady."""
    ack_timeout: float = 5.0
    """Seconds to wait for a desired ack before the first resend."""
    ack_timeout_cap: float = 120.0
    """Longest wait between resends of a desired delta (backoff cap), seconds."""
    liveness_interval: float = 1.0
    """How often liveness deadlines are checked, seconds."""
    log_interval: float = 60.0
    """Bad input from one node is logged at most once per this many seconds."""
    telemetry_points: int = 120
    """Telemetry samples kept in memory per node (for the forecaster)."""
    pod_eviction_timeout: float = 300.0
    """Seconds a node may be NotReady before its Deployment replicas are moved to other
    nodes (Kubernetes' default toleration, 5 min); a pod's own NoExecute toleration of
    node.kubernetes.io/unreachable or not-ready with tolerationSeconds overrides it.
    DaemonSet pods and pods pinned by nodeName never move. 0 moves them at once."""


@dataclass
class AuthSettings:
    enabled: bool = True
    """Require bearer tokens on the API (the default; `--insecure` turns it off and the
    API answers everyone as an anonymous admin)."""
    tokens_file: Path | None = None
    """Static API tokens, one `token,role[,name]` per line (`#` comments); roles are
    admin, operator and read-only. Read once at start."""
    bootstrap_admin: bool = True
    """With auth on and no admin token in the store, create one at start and write it
    to `<state_dir>/admin.token` (mode 0600)."""
    join_token_ttl: float = 24 * 3600.0
    """Default lifetime of a join token, seconds (`fedctl token create --ttl`)."""
    max_join_token_ttl: float = 365 * 24 * 3600.0
    """Longest lifetime a join token may be given, seconds."""
    advertise_mqtt: str = ""
    """`host:port`, `mqtts://host:port` (TLS) or `mqtt://host:port` (plain): the broker
    as edge nodes reach it, returned by `POST /api/v1/join`. Empty: `mqtt.host:mqtt.port`
    (right only when nodes see the broker as cloudcore does). Without a scheme, TLS as
    `mqtt.tls`."""
    mosquitto_passwd: Path | None = None
    """If set, cloudcore (re)writes this mosquitto `password_file` with its service
    identities and every joined node (mosquitto's `$7$` PBKDF2-SHA512 hashes), at most
    about twice a second after joins and deletes. Reload the broker on change (see
    docs/operations.md): that is also what closes a deleted node's session."""
    mosquitto_acl: Path | None = None
    """If set, cloudcore writes this mosquitto `acl_file` at start (proposal 0002)."""
    join_rate: float = 10.0
    """Joins per minute one client address may make (token bucket; 429 past it)."""
    join_burst: int = 20
    """Joins one client address may make at once before `join_rate` applies."""
    node_certs: bool = False
    """Issue node client certificates (CN = node name, 90 days) at join and renew them
    (`--node-certs`), for a broker listener with require_certificate and
    use_identity_as_username."""
    broker_cert_dir: Path | None = None
    """If set, write the broker's TLS files there at start (`ca.crt`, `broker.crt`,
    `broker.key`), as `cloudcore pki broker` does."""
    broker_sans: list[str] = field(default_factory=list)
    """Names and addresses in the broker's certificate; empty: the advertised broker
    host, mqtt.host, 127.0.0.1 and localhost."""


@dataclass
class ApiSettings:
    max_page: int = 10_000
    """Largest `limit` a list request may ask for. A list without `limit` returns
    everything in one answer (as before pagination existed)."""
    events: int = 10_000
    """Events kept in the in-memory ring (`GET /api/v1/events`)."""
    watch_heartbeat: float = 10.0
    """Seconds between BOOKMARK lines on an idle watch stream (lets clients and proxies
    see the stream is alive)."""
    max_body_bytes: int = 3 * 1024 * 1024
    """Largest request body, bytes (3 MiB, as kube-apiserver); larger gets 413 before
    it is parsed."""


@dataclass
class ForecastSettings:
    enabled: bool = True
    """Run the forecaster (needs onnxruntime and the model file; without them it is
    disabled with one log line and the scheduler places by requests only)."""
    interval: float = 60.0
    """Seconds between two batched forecasts of the fleet."""
    model_path: Path | None = None
    """The ONNX model; None = the shipped `models/forecaster_online.onnx`."""
    capacity_nodes: int = 10_000
    """Nodes the forecaster keeps history for (preallocated, 640 bytes each)."""
    online_learning: bool = True
    """Learn from the fleet's telemetry (`cloudcore.forecaster.online`); False = serve
    the shipped prior only."""
    placement: str = "requests"
    """`--placement`: "requests" (admit by requests; forecasts only refuse more) or
    "right-sizing" (admit cpu and memory by p90 + `placement_safety` on nodes whose
    forecast is trusted, by requests elsewhere; `cloudcore.scheduler.core`)."""
    placement_safety: float = 0.1
    """`--placement-safety`: right-sizing's margin above the p90, a fraction of
    allocatable (0..0.5; 0.1 is what `testbed.replay` chose on its training seeds)."""
    placement_overcommit: float = 0.3
    """`--placement-overcommit`: how far the requests of a trusted node's pods may
    exceed its allocatable under right-sizing (0.3 = 130 %; `cloudcore.scheduler.core`)."""


@dataclass
class ClusterSettings:
    """Scale-out mode (issue 14, proposal 0008): this process is one shard of several
    that share partition leases in NATS JetStream KV. `shard` None (the default) is the
    embedded mode: one process owns every partition, no NATS."""

    shard: str | None = None
    """This shard's member name ([A-Za-z0-9_-], unique among live shards); None: embedded."""
    nats_urls: tuple[str, ...] = ()
    """Every NATS server of the cluster, tls://host:port."""
    nats_user: str | None = None
    """NATS user of the shard."""
    nats_password: str | None = None
    """Its password (from `--nats-password-file`, never the command line)."""
    nats_ca_file: Path | None = None
    """The CA of the NATS servers' certificates; None: the fleet CA (`<state_dir>/pki/ca.crt`)."""
    nats_insecure: bool = False
    """Allow nats:// and no user (tests only; warns)."""
    lease_period: float = 15.0
    """Seconds a partition lease lives without renewal: a dead shard's partitions are
    taken over within this long. Keep it below 3 x heartbeat so no node goes NotReady."""
    replicas: int = 1
    """KV bucket replicas when the buckets are made: 1 on one server, 3 on a cluster."""
    bucket_prefix: str = "edgefed"
    """Buckets `<prefix>_members`, `<prefix>_leases`, `<prefix>_status`."""
    status_interval: float = 3.0
    """Seconds between two writes of each owned partition's liveness summary."""

    @property
    def enabled(self) -> bool:
        return self.shard is not None


@dataclass
class Settings:
    store: StoreSettings = field(default_factory=StoreSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    """Shard mode (`--shard`); the default is the embedded mode."""
    policy: PolicySettings = field(default_factory=PolicySettings)
    """Pod security: the default level of a namespace and the hostPath allowlist."""
    log_level: str = "INFO"
    """Python logging level name."""
    insecure: bool = False
    """`--insecure`: no API auth (anonymous admin), plain HTTP, and a sync hub that
    accepts unsealed messages and registers nodes that never joined. For a laptop
    experiment only; warned about loudly at every start."""

    def validate(self) -> Settings:
        """Raise ConfigError naming the first invalid field; returns self for chaining."""
        _positive("store.batch_interval", self.store.batch_interval)
        _positive("store.batch_max_ops", self.store.batch_max_ops)
        _positive("store.map_size", self.store.map_size)
        self.policy.validate()
        _port("mqtt.port", self.mqtt.port, allow_zero=False)
        _port("http.port", self.http.port, allow_zero=True)
        if not self.mqtt.host:
            raise ConfigError("mqtt.host must not be empty", field="mqtt.host")
        for name in ("keepalive", "publishers", "publish_concurrency"):
            _positive(f"mqtt.{name}", getattr(self.mqtt, name))
        if (not self.mqtt.username or len(self.mqtt.username) > 40
                or any(c in self.mqtt.username for c in ":#+/ \n")):
            raise ConfigError("mqtt.username must be 1..40 characters, without ':', '#', "
                              "'+', '/', spaces or newlines", field="mqtt.username")
        if self.mqtt.ca_file is not None and not Path(self.mqtt.ca_file).is_file():
            raise ConfigError(f"mqtt.ca_file: {self.mqtt.ca_file} is not a file",
                              field="mqtt.ca_file")
        if self.mqtt.client_cert and not self.mqtt.tls:
            raise ConfigError("mqtt.client_cert needs mqtt.tls", field="mqtt.client_cert")
        for name, url in self.mqtt.brokers.items():
            where = f"mqtt.brokers.{name}"
            if not valid_name(name):
                raise ConfigError(f"--broker {name}={url}: the name must be a DNS label "
                                  "(lower-case letters, digits, '-')", field=where)
            try:
                tls = parse_url(url, where).tls
            except ObjectError as exc:
                raise ConfigError(f"--broker {name}={url}: {exc.message}",
                                  field=where) from None
            if not tls and not self.insecure:
                raise ConfigError(f"--broker {name}={url}: a plain mqtt:// broker needs "
                                  "--insecure; use mqtts://", field=where)
        _positive("mqtt.reconnect_base", self.mqtt.reconnect_base)
        if self.mqtt.reconnect_cap < self.mqtt.reconnect_base:
            raise ConfigError("mqtt.reconnect_cap must be >= mqtt.reconnect_base",
                              field="mqtt.reconnect_cap")
        for name in ("heartbeat", "missed_heartbeats", "ack_timeout", "ack_timeout_cap",
                     "liveness_interval", "log_interval", "telemetry_points"):
            _positive(f"sync.{name}", getattr(self.sync, name))
        if not self.sync.pod_eviction_timeout >= 0:
            raise ConfigError("sync.pod_eviction_timeout must be >= 0, got "
                              f"{self.sync.pod_eviction_timeout!r}",
                              field="sync.pod_eviction_timeout")
        for name in ("join_token_ttl", "max_join_token_ttl"):
            _positive(f"auth.{name}", getattr(self.auth, name))
        if self.insecure:
            self.auth.enabled = False
        if self.auth.tokens_file is not None and not Path(self.auth.tokens_file).is_file():
            raise ConfigError(f"auth.tokens_file: {self.auth.tokens_file} is not a file",
                              field="auth.tokens_file")
        if self.auth.advertise_mqtt:
            self.broker_address()
        _positive("auth.join_rate", self.auth.join_rate)
        _positive("auth.join_burst", self.auth.join_burst)
        for name in ("max_page", "events", "watch_heartbeat", "max_body_bytes"):
            _positive(f"api.{name}", getattr(self.api, name))
        _positive("forecast.interval", self.forecast.interval)
        _positive("forecast.capacity_nodes", self.forecast.capacity_nodes)
        if self.forecast.placement not in ("requests", "right-sizing"):
            raise ConfigError(f"forecast.placement: {self.forecast.placement!r} is not "
                              "requests or right-sizing", field="forecast.placement")
        if not 0.0 <= self.forecast.placement_safety <= 0.5:
            raise ConfigError(f"forecast.placement_safety: {self.forecast.placement_safety} "
                              "is outside 0..0.5", field="forecast.placement_safety")
        if not 0.0 <= self.forecast.placement_overcommit <= 10.0:
            raise ConfigError(f"forecast.placement_overcommit: "
                              f"{self.forecast.placement_overcommit} is outside 0..10",
                              field="forecast.placement_overcommit")
        if self.cluster.enabled:
            self._validate_cluster()
        if logging.getLevelName(self.log_level.upper()) not in range(60):
            raise ConfigError(f"log_level: unknown level {self.log_level!r}", field="log_level")
        return self

    def _validate_cluster(self) -> None:
        c = self.cluster
        name = c.shard or ""
        if not name or len(name) > 32 or not all(ch.isalnum() or ch in "_-" for ch in name):
            raise ConfigError(f"cluster.shard: {name!r} must be 1-32 of [A-Za-z0-9_-]",
                              field="cluster.shard")
        if len(self.mqtt.username) + 1 + len(name) > 40:
            raise ConfigError(f"cluster.shard: mqtt.username {self.mqtt.username!r} and the "
                              f"shard name {name!r} together exceed 39 characters (the "
                              "shard's broker identities are <user>_<shard>_sub/pub<i>)",
                              field="cluster.shard")
        if not c.nats_urls:
            raise ConfigError("cluster.nats_urls: --shard needs at least one --nats URL",
                              field="cluster.nats_urls")
        _positive("cluster.lease_period", c.lease_period)
        _positive("cluster.status_interval", c.status_interval)
        if c.replicas < 1:
            raise ConfigError("cluster.replicas must be >= 1", field="cluster.replicas")
        # A node last heard up to a heartbeat before a kill, its partition taken within
        # a lease period, and its next report up to a heartbeat after that: it stays
        # within missed x heartbeat if lease_period < (missed - 2) x heartbeat.
        spare = (self.sync.missed_heartbeats - 2) * self.sync.heartbeat
        if c.lease_period >= spare:
            log.warning("cluster.lease_period %gs is not below (missed heartbeats - 2) x "
                        "heartbeat = %gs: nodes of a killed shard may go NotReady before "
                        "their partition is taken over", c.lease_period, spare)

    def broker_address(self) -> tuple[str, int]:
        """The broker as nodes should reach it: `auth.advertise_mqtt` or mqtt host/port."""
        host, port, _ = self.advertised_broker()
        return host, port

    def advertised_broker(self) -> tuple[str, int, bool]:
        """(host, port, tls) of the broker as joining nodes are told."""
        text = self.auth.advertise_mqtt
        if not text:
            return self.mqtt.host, self.mqtt.port, self.mqtt.tls
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "", text
        host, sep, port = rest.rpartition(":")
        if (scheme not in ("", "mqtt", "mqtts") or not sep or not host or not port.isdigit()
                or not 1 <= int(port) <= 65535):
            raise ConfigError("auth.advertise_mqtt must be host:port, mqtts://host:port or "
                              f"mqtt://host:port, got {text!r}", field="auth.advertise_mqtt")
        tls = self.mqtt.tls if not scheme else scheme == "mqtts"
        return host.strip("[]"), int(port), tls

    @property
    def pki_dir(self) -> Path:
        """Where the fleet CA and the API's certificate live: `<state_dir>/pki`."""
        return Path(self.store.state_dir) / "pki"


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}", field=name)


def _port(name: str, value: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ConfigError(f"{name} must be in {low}..65535, got {value!r}", field=name)
