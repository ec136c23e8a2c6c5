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


@dataclass
class MqttSettings:
    host: str = "127.0.0.1"
    """Broker host."""
    port: int = 1883
    """Broker port."""
    client_id: str = "cloudcore"
    """Prefix of the MQTT client ids; fixed so the broker keeps the subscriber's
    persistent session (clean_session false) and queued QoS 1 reports survive a restart."""
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
    username: str | None = None
    """cloudcore's own broker username (None: connect anonymously)."""
    password: str | None = field(default=None, repr=False)
    """Its password (from `--mqtt-password-file`; never logged or printed)."""


@dataclass
class HttpSettings:
    host: str = "127.0.0.1"
    """Address the API binds to."""
    port: int = 8080
    """API port; 0 picks a free one (the chosen port is printed)."""


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
    enabled: bool = False
    """Require bearer tokens on the API. Off by default so a local fleet and the tests
    work without tokens; `--auth` or `--auth-tokens FILE` turn it on."""
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
    """`host:port` of the broker as edge nodes reach it, returned by `POST /api/v1/join`.
    Empty: `mqtt.host:mqtt.port` (right only when nodes see the broker as cloudcore does)."""
    mosquitto_passwd: Path | None = None
    """If set, cloudcore (re)writes this mosquitto `password_file` whenever a node joins
    or is deleted (hashes in mosquitto's own `$7$` PBKDF2-SHA512 format). Reload the
    broker on change (see docs/operations.md)."""


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


@dataclass
class ForecastSettings:
    enabled: bool = True
    """Run the forecaster (needs onnxruntime and the model file; without them it is
    disabled with one log line and the scheduler places by requests only)."""
    interval: float = 60.0
    """Seconds between two batched forecasts of the fleet."""
    model_path: Path | None = None
    """The ONNX model; None = the shipped `models/forecaster.onnx`."""
    capacity_nodes: int = 10_000
    """Nodes the forecaster keeps history for (preallocated, 480 bytes each)."""


@dataclass
class Settings:
    store: StoreSettings = field(default_factory=StoreSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    sync: SyncSettings = field(default_factory=SyncSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    forecast: ForecastSettings = field(default_factory=ForecastSettings)
    log_level: str = "INFO"
    """Python logging level name."""

    def validate(self) -> Settings:
        """Raise ConfigError naming the first invalid field; returns self for chaining."""
        _positive("store.batch_interval", self.store.batch_interval)
        _positive("store.batch_max_ops", self.store.batch_max_ops)
        _positive("store.map_size", self.store.map_size)
        _port("mqtt.port", self.mqtt.port, allow_zero=False)
        _port("http.port", self.http.port, allow_zero=True)
        if not self.mqtt.host:
            raise ConfigError("mqtt.host must not be empty", field="mqtt.host")
        if not self.mqtt.client_id or len(self.mqtt.client_id) > 20:
            raise ConfigError("mqtt.client_id must be 1..20 characters", field="mqtt.client_id")
        for name in ("keepalive", "publishers", "publish_concurrency"):
            _positive(f"mqtt.{name}", getattr(self.mqtt, name))
        if self.mqtt.password is not None and not self.mqtt.username:
            raise ConfigError("mqtt password given without mqtt.username",
                              field="mqtt.username")
        if self.mqtt.username is not None and (
                not self.mqtt.username or any(c in self.mqtt.username for c in ":\n")):
            raise ConfigError("mqtt.username must be non-empty, without ':' or newlines",
                              field="mqtt.username")
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
        if self.auth.tokens_file is not None:
            self.auth.enabled = True
            if not Path(self.auth.tokens_file).is_file():
                raise ConfigError(f"auth.tokens_file: {self.auth.tokens_file} is not a file",
                                  field="auth.tokens_file")
        if self.auth.advertise_mqtt:
            self.broker_address()
        for name in ("max_page", "events", "watch_heartbeat"):
            _positive(f"api.{name}", getattr(self.api, name))
        _positive("forecast.interval", self.forecast.interval)
        _positive("forecast.capacity_nodes", self.forecast.capacity_nodes)
        if logging.getLevelName(self.log_level.upper()) not in range(60):
            raise ConfigError(f"log_level: unknown level {self.log_level!r}", field="log_level")
        return self

    def broker_address(self) -> tuple[str, int]:
        """The broker as nodes should reach it: `auth.advertise_mqtt` or mqtt host/port."""
        text = self.auth.advertise_mqtt
        if not text:
            return self.mqtt.host, self.mqtt.port
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"auth.advertise_mqtt must be host:port, got {text!r}",
                              field="auth.advertise_mqtt")
        return host.strip("[]"), int(port)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}", field=name)


def _port(name: str, value: int, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ConfigError(f"{name} must be in {low}..65535, got {value!r}", field=name)
