"""Kubernetes-shaped objects: Node, Pod, DaemonSet, Deployment, ConfigMap, Secret,
Namespace.

Field names follow Kubernetes (camelCase on the wire and in YAML, snake_case in
Python). Every model forbids unknown fields, so a field edgefed does not implement
is named in an error instead of being dropped silently; `parse_object` turns
pydantic's errors into one readable `ObjectError` with the dotted field path.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import hashlib
import json
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared.errors import ObjectError, UnsupportedField
from shared.kinds import API_VERSIONS, CLUSTER_KINDS  # noqa: F401 (re-exported)
from shared.quantity import parse_resource
from shared.topics import valid_node_name

MAX_NAME = 253


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, alias_generator=to_camel, frozen=False
    )

    def dump(self) -> dict[str, Any]:
        """JSON-able dict with Kubernetes field names, defaults left out."""
        out = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
        for key in _identity_fields(type(self)):
            out = {to_camel(key): getattr(self, key), **out}
        return out


@functools.cache
def _identity_fields(cls: type[_Model]) -> tuple[str, ...]:
    """Which of api_version and kind a model has (`model_fields` is a slow descriptor
    in pydantic 2.11+, and `dump` runs for every pod entry of every rollout)."""
    return tuple(k for k in ("api_version", "kind") if k in cls.model_fields)


def _check_name(v: str) -> str:
    if not valid_node_name(v):
        raise ValueError(
            "must be a lowercase DNS-1123 name: a-z, 0-9, '-' and '.', "
            f"starting and ending with a letter or digit, at most {MAX_NAME} characters"
        )
    return v


class ObjectMeta(_Model):
    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None

    _name = field_validator("name", "namespace")(_check_name)


class EnvVar(_Model):
    name: str
    value: str = ""


class ContainerPort(_Model):
    container_port: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Literal["TCP", "UDP"] = "TCP"
    host_port: int | None = Field(default=None, ge=1, le=65535)


class ResourceRequirements(_Model):
    requests: dict[str, str | int | float] = Field(default_factory=dict)
    limits: dict[str, str | int | float] = Field(default_factory=dict)

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, v: dict[str, str | int | float]) -> dict[str, str | int | float]:
        for name, q in v.items():
            try:
                parse_resource(name, q, field=name)
            except ObjectError as exc:
                raise ValueError(exc.message) from None
        return v

    def request(self, name: str) -> int:
        """Requested amount (limits stand in for missing requests, as in Kubernetes)."""
        q = self.requests.get(name, self.limits.get(name))
        return 0 if q is None else parse_resource(name, q, field=name)

    def limit(self, name: str) -> int | None:
        q = self.limits.get(name)
        return None if q is None else parse_resource(name, q, field=name)


def _abs_path(v: str) -> str:
    """An absolute, normalised path without '..' and not '/' (a mount point)."""
    parts = v.split("/")
    if not v.startswith("/") or "\x00" in v or ".." in parts or not v.strip("/"):
        raise ValueError(f"{v!r} must be an absolute path without '..', not '/'")
    return v


def _rel_path(v: str) -> str:
    """A relative path of a projected file: no leading '/', no '..' component."""
    parts = v.split("/")
    if not v or v.startswith("/") or "\x00" in v or ".." in parts or "" in parts:
        raise ValueError(f"{v!r} must be a relative path without '..' or empty parts")
    return v


class VolumeMount(_Model):
    """Where a pod volume appears in a container (`subPath` is not supported)."""

    name: str
    mount_path: str
    read_only: bool = False

    _path = field_validator("mount_path")(_abs_path)


class HostPathVolumeSource(_Model):
    path: str
    type: Literal["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket",
                  "CharDevice", "BlockDevice"] | None = None

    @field_validator("path")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/") or "\x00" in v or ".." in v.split("/"):
            raise ValueError(f"{v!r} must be an absolute host path without '..'")
        return v


class EmptyDirVolumeSource(_Model):
    """A scratch directory that lives as long as the pod is on the node (no options yet)."""


class KeyToPath(_Model):
    key: str = Field(min_length=1, max_length=253)
    path: str = Field(max_length=1024)

    _path = field_validator("path")(_rel_path)


class ConfigMapVolumeSource(_Model):
    name: str
    items: list[KeyToPath] | None = None
    optional: bool = False

    _name = field_validator("name")(_check_name)


class SecretVolumeSource(_Model):
    secret_name: str
    items: list[KeyToPath] | None = None
    optional: bool = False

    _name = field_validator("secret_name")(_check_name)


class Volume(_Model):
    """A pod volume: exactly one of hostPath, emptyDir, configMap, secret."""

    name: str
    host_path: HostPathVolumeSource | None = None
    empty_dir: EmptyDirVolumeSource | None = None
    config_map: ConfigMapVolumeSource | None = None
    secret: SecretVolumeSource | None = None

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _one_source(self) -> Volume:
        n = sum(x is not None for x in (self.host_path, self.empty_dir, self.config_map,
                                         self.secret))
        if n != 1:
            raise ValueError(f"volume {self.name!r} must have exactly one of hostPath, "
                             f"emptyDir, configMap, secret (has {n})")
        return self


class ExecAction(_Model):
    command: list[str] = Field(min_length=1)


class TCPSocketAction(_Model):
    port: int | str


class HTTPGetAction(_Model):
    path: str = "/"
    port: int | str
    scheme: Literal["HTTP"] = "HTTP"

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() or ord(c) < 32 for c in v):
            raise ValueError(f"{v!r} must start with '/' and contain no spaces")
        return v


class Probe(_Model):
    """A container probe (Kubernetes semantics); the agent runs it in the pod's network
    namespace, so it reaches the container on 127.0.0.1 as Kubernetes' probes reach the
    pod IP."""

    exec: ExecAction | None = None
    tcp_socket: TCPSocketAction | None = None
    http_get: HTTPGetAction | None = None
    initial_delay_seconds: int = Field(default=0, ge=0, le=86400)
    period_seconds: int = Field(default=10, ge=1, le=86400)
    timeout_seconds: int = Field(default=1, ge=1, le=3600)
    failure_threshold: int = Field(default=3, ge=1, le=1000)
    success_threshold: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        n = sum(x is not None for x in (self.exec, self.tcp_socket, self.http_get))
        if n != 1:
            raise ValueError(f"a probe needs exactly one of exec, tcpSocket, httpGet (has {n})")
        return self

    def port(self) -> int | str | None:
        if self.tcp_socket is not None:
            return self.tcp_socket.port
        if self.http_get is not None:
            return self.http_get.port
        return None


CAPABILITY = r"^[A-Z][A-Z0-9_]{0,63}$"
"""A Linux capability as Kubernetes writes it (`NET_ADMIN`; `CAP_NET_ADMIN` is accepted
too, and `ALL` in `drop` means every capability)."""
MAX_ID = 2**32 - 2
"""The largest user or group id (2**32 - 1 is the kernel's "no id")."""


def _localhost_profile(v: str | None) -> str | None:
    """A seccomp profile file relative to the node's profile directory."""
    if v is None:
        return v
    parts = v.split("/")
    if not v or v.startswith("/") or "\x00" in v or ".." in parts or "" in parts:
        raise ValueError(f"{v!r} must be a relative path without '..' or empty parts")
    return v


class SeccompProfile(_Model):
    """Kubernetes' seccompProfile: RuntimeDefault (edgefed's default when unset),
    Unconfined (no filter; only where the policy level allows) or Localhost (a profile
    file under the node's seccomp directory, named by `localhostProfile`)."""

    type: Literal["RuntimeDefault", "Unconfined", "Localhost"]
    localhost_profile: str | None = Field(default=None, max_length=1024)

    _profile = field_validator("localhost_profile")(_localhost_profile)

    @model_validator(mode="after")
    def _profile_iff_localhost(self) -> SeccompProfile:
        if (self.type == "Localhost") != (self.localhost_profile is not None):
            raise ValueError("localhostProfile is required with type Localhost and "
                             "allowed only with it")
        return self


class Capabilities(_Model):
    """Capabilities added to or dropped from the runtime's default set."""

    add: list[str] = Field(default_factory=list)
    drop: list[str] = Field(default_factory=list)

    @field_validator("add", "drop")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.match(CAPABILITY, name):
                raise ValueError(f"{name!r} is not a capability name such as NET_ADMIN")
        return v


class SecurityContext(_Model):
    """A container's securityContext (Kubernetes' fields edgefed implements). Unset
    fields take the pod's `securityContext`, then the runtime's safe defaults; the
    namespace's policy level (`shared.policy`) decides which values may run."""

    run_as_user: int | None = Field(default=None, ge=0, le=MAX_ID)
    run_as_group: int | None = Field(default=None, ge=0, le=MAX_ID)
    run_as_non_root: bool | None = None
    read_only_root_filesystem: bool | None = None
    privileged: bool | None = None
    allow_privilege_escalation: bool | None = None
    capabilities: Capabilities | None = None
    seccomp_profile: SeccompProfile | None = None

    @model_validator(mode="after")
    def _escalation(self) -> SecurityContext:
        if self.privileged and self.allow_privilege_escalation is False:
            raise ValueError("allowPrivilegeEscalation cannot be false when privileged "
                             "is true")
        return self

    def user(self) -> str | None:
        """The runtime's "uid[:gid]" or None (the image's user); container level only
        (`shared.policy.effective` merges in the pod's securityContext)."""
        if self.run_as_user is None:
            return None
        if self.run_as_group is None:
            return str(self.run_as_user)
        return f"{self.run_as_user}:{self.run_as_group}"


class PodSecurityContext(_Model):
    """A pod's securityContext: defaults for every container, plus the pod-wide groups."""

    run_as_user: int | None = Field(default=None, ge=0, le=MAX_ID)
    run_as_group: int | None = Field(default=None, ge=0, le=MAX_ID)
    run_as_non_root: bool | None = None
    fs_group: int | None = Field(default=None, ge=0, le=MAX_ID)
    supplemental_groups: list[int] = Field(default_factory=list, max_length=64)
    seccomp_profile: SeccompProfile | None = None

    @field_validator("supplemental_groups")
    @classmethod
    def _groups(cls, v: list[int]) -> list[int]:
        for g in v:
            if not 0 <= g <= MAX_ID:
                raise ValueError(f"group {g} is outside 0..{MAX_ID}")
        return v


class Container(_Model):
    name: str
    image: str = Field(min_length=1, max_length=1024)
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    working_dir: str | None = None
    ports: list[ContainerPort] = Field(default_factory=list)
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    volume_mounts: list[VolumeMount] = Field(default_factory=list)
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    security_context: SecurityContext | None = None

    _name = field_validator("name")(_check_name)

    @model_validator(mode="after")
    def _mounts_and_probes(self) -> Container:
        paths = [m.mount_path.rstrip("/") for m in self.volume_mounts]
        if len(set(paths)) != len(paths):
            raise ValueError(f"container {self.name!r}: duplicate volumeMounts mountPath")
        names = {p.name for p in self.ports if p.name}
        for kind, probe in (("livenessProbe", self.liveness_probe),
                            ("readinessProbe", self.readiness_probe),
                            ("startupProbe", self.startup_probe)):
            port = probe.port() if probe is not None else None
            if isinstance(port, str) and port not in names:
                raise ValueError(f"container {self.name!r}: {kind} port {port!r} names no "
                                 "container port")
            if isinstance(port, int) and not 1 <= port <= 65535:
                raise ValueError(f"container {self.name!r}: {kind} port {port} is outside "
                                 "1..65535")
        if self.startup_probe is not None and self.startup_probe.success_threshold != 1:
            raise ValueError(f"container {self.name!r}: startupProbe successThreshold must be 1")
        if self.liveness_probe is not None and self.liveness_probe.success_threshold != 1:
            raise ValueError(f"container {self.name!r}: livenessProbe successThreshold must be 1")
        return self

    def probe_port(self, port: int | str) -> int:
        """A probe's port as a number (a name is looked up in `ports`)."""
        if isinstance(port, int):
            return port
        return next(p.container_port for p in self.ports if p.name == port)


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class Taint(_Model):
    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class PodSpec(_Model):
    containers: list[Container] = Field(min_length=1)
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    node_selector: dict[str, str] = Field(default_factory=dict)
    node_name: str | None = None
    tolerations: list[Toleration] = Field(default_factory=list)
    host_network: bool = False
    """Share the node's network namespace (only where the policy level allows); false:
    the pod gets its own network namespace and address (status.podIP)."""
    host_users: bool = True
    """Kubernetes' default: the pod's user ids are the host's. false: a user namespace
    maps the pod's ids (root included) to an unprivileged range of the host's."""
    security_context: PodSecurityContext | None = None
    termination_grace_period_seconds: int = Field(default=10, ge=0, le=3600)
    volumes: list[Volume] = Field(default_factory=list)

    @field_validator("containers")
    @classmethod
    def _unique(cls, v: list[Container]) -> list[Container]:
        names = [c.name for c in v]
        if len(set(names)) != len(names):
            raise ValueError("container names must be unique within a pod")
        return v

    @model_validator(mode="after")
    def _mounts_name_volumes(self) -> PodSpec:
        names = [v.name for v in self.volumes]
        if len(set(names)) != len(names):
            raise ValueError("volume names must be unique within a pod")
        for c in self.containers:
            for m in c.volume_mounts:
                if m.name not in names:
                    raise ValueError(f"container {c.name!r}: volumeMount {m.name!r} names no "
                                     f"volume of the pod (volumes: {', '.join(names) or 'none'})")
        pod = self.security_context
        for c in self.containers:
            sc = c.security_context
            user = _first(sc and sc.run_as_user, pod and pod.run_as_user)
            group = _first(sc and sc.run_as_group, pod and pod.run_as_group)
            non_root = _first(sc and sc.run_as_non_root, pod and pod.run_as_non_root)
            if group is not None and user is None:
                raise ValueError(f"container {c.name!r}: runAsGroup needs runAsUser too "
                                 "(at pod or container level; edgefed sets both or neither)")
            if non_root and user == 0:
                raise ValueError(f"container {c.name!r}: runAsNonRoot is true but runAsUser "
                                 "is 0")
        return self

    def volume(self, name: str) -> Volume:
        return next(v for v in self.volumes if v.name == name)

    def requests(self) -> dict[str, int]:
        """Summed requests of all containers, by resource name."""
        total: dict[str, int] = {}
        for c in self.containers:
            for name in {*c.resources.requests, *c.resources.limits}:
                total[name] = total.get(name, 0) + c.resources.request(name)
        return total


def _first(*values: Any) -> Any:
    """The first value that is not None (a container's field over its pod's)."""
    return next((v for v in values if v is not None), None)


class PodTemplateMeta(_Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(_Model):
    metadata: PodTemplateMeta = Field(default_factory=PodTemplateMeta)
    spec: PodSpec


class LabelSelector(_Model):
    match_labels: dict[str, str] = Field(default_factory=dict)

    def matches(self, labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels.items())


class LastState(_Model):
    """How the previous instance of a container ended (Kubernetes' lastState.terminated)."""

    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: float | None = None
    finished_at: float | None = None


class ContainerStatus(_Model):
    name: str
    state: Literal["waiting", "running", "terminated"] = "waiting"
    ready: bool = False
    restart_count: int = 0
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    started: bool | None = None  # startup probe passed (None: not reported)
    last_state: LastState | None = None


PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]


class PodStatus(_Model):
    phase: PodPhase = "Pending"
    reason: str | None = None
    message: str | None = None
    node_name: str | None = None
    container_statuses: list[ContainerStatus] = Field(default_factory=list)
    revision: str | None = None
    updated_at: float | None = None
    ready: bool | None = None  # Running and every container ready (None: not reported)
    pod_ip: str | None = Field(default=None, alias="podIP")
    """The pod's own address (None: hostNetwork, or not reported yet)."""


class Pod(_Model):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Pod"] = "Pod"
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus = Field(default_factory=PodStatus)


def _count_or_percent(v: int | str, *, low: int) -> int | str:
    if isinstance(v, bool):
        raise ValueError("must be a number or a percentage such as '10%'")
    if isinstance(v, int):
        if v < low:
            raise ValueError(f"must be at least {low}")
        return v
    text = v.strip()
    if not text.endswith("%") or not text[:-1].isdigit() or not low <= int(text[:-1]) <= 100:
        raise ValueError(f"must be a number or a percentage from {low}% to 100%, not {v!r}")
    return text


def resolve_count(v: int | str, total: int, *, round_up: bool) -> int:
    """A count-or-percentage of `total` (percentages rounded up or down, as Kubernetes
    does for maxUnavailable (down, at least 1) and for thresholds)."""
    if isinstance(v, int):
        return v
    pct = int(v[:-1])
    whole, rest = divmod(pct * total, 100)
    return whole + (1 if round_up and rest else 0)


class RollingUpdate(_Model):
    """Kubernetes' `rollingUpdate`: `maxUnavailable` nodes are updated at a time."""

    max_unavailable: int | str = 1

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable(cls, v: int | str) -> int | str:
        return _count_or_percent(v, low=1)


class UpdateStrategy(_Model):
    """How a template change reaches the pods. Kubernetes' fields plus edgefed's
    health gate: `failureThreshold` failed updated pods are tolerated (a number or a
    percentage of the pods); one more aborts the rollout, and with `autoRollback`
    (default) every updated pod goes back to the last template that rolled out."""

    type: Literal["RollingUpdate"] = "RollingUpdate"
    rolling_update: RollingUpdate = Field(default_factory=RollingUpdate)
    failure_threshold: int | str = 0
    auto_rollback: bool = True

    @field_validator("failure_threshold")
    @classmethod
    def _failure_threshold(cls, v: int | str) -> int | str:
        return _count_or_percent(v, low=0)


class RolloutStatus(_Model):
    """Where the rollout of the workload's template stands (edgefed's)."""

    phase: Literal["Complete", "Progressing", "Paused", "RolledBack", "Aborted"] = "Complete"
    message: str | None = None
    failed: int = 0
    offline: int = 0  # pods on nodes that are not Ready (they neither block nor fail it)


class WorkloadStatus(_Model):
    """DaemonSet status, with Kubernetes' field names, computed by cloudcore."""

    observed_generation: int | None = None
    desired_number_scheduled: int = 0
    updated_number_scheduled: int = 0
    number_ready: int = 0
    number_available: int = 0
    current_revision: str | None = None  # the template that last rolled out everywhere
    update_revision: str | None = None  # spec.template's
    rollout: RolloutStatus = Field(default_factory=RolloutStatus)


class DaemonSetSpec(_Model):
    selector: LabelSelector = Field(default_factory=LabelSelector)
    template: PodTemplate
    update_strategy: UpdateStrategy | None = None
    """None: a template change reaches every node at once (edgefed's default, unlike
    Kubernetes, which rolls one node at a time)."""
    min_ready_seconds: int = Field(default=0, ge=0, le=86_400)
    progress_deadline_seconds: int = Field(default=600, ge=1, le=7 * 86_400)
    """An updated pod not Ready within this long (on a Ready node) counts as failed."""
    paused: bool = False


class DaemonSet(_Model):
    api_version: Literal["apps/v1"] = "apps/v1"
    kind: Literal["DaemonSet"] = "DaemonSet"
    metadata: ObjectMeta
    spec: DaemonSetSpec
    status: WorkloadStatus | None = None


class DeploymentStatus(_Model):
    """Deployment status, with Kubernetes' field names, computed by cloudcore."""

    observed_generation: int | None = None
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    current_revision: str | None = None  # edgefed: the template that last rolled out
    update_revision: str | None = None  # edgefed: spec.template's
    rollout: RolloutStatus = Field(default_factory=RolloutStatus)


class DeploymentSpec(_Model):
    replicas: int = Field(default=1, ge=0, le=100_000)
    selector: LabelSelector = Field(default_factory=LabelSelector)
    template: PodTemplate
    strategy: UpdateStrategy | None = None
    """Kubernetes' `strategy` (RollingUpdate only; `Recreate` is refused), with the
    same health gate as a DaemonSet's `updateStrategy`. None: every replica at once."""
    min_ready_seconds: int = Field(default=0, ge=0, le=86_400)
    progress_deadline_seconds: int = Field(default=600, ge=1, le=7 * 86_400)
    paused: bool = False


class Deployment(_Model):
    api_version: Literal["apps/v1"] = "apps/v1"
    kind: Literal["Deployment"] = "Deployment"
    metadata: ObjectMeta
    spec: DeploymentSpec
    status: DeploymentStatus | None = None


class ConfigMap(_Model):
    api_version: Literal["v1"] = "v1"
    kind: Literal["ConfigMap"] = "ConfigMap"
    metadata: ObjectMeta
    data: dict[str, str] = Field(default_factory=dict)


class Secret(_Model):
    """A v1 Secret: `data` values are base64, `stringData` plain text (merged over data).

    Delivered to a node as a `secret/{ns}/{name}` desired entry (shared.entries) only
    when a pod there mounts it. Cloudcore stores it normalised (`normalised()`:
    stringData folded into data) and redacts the values in lists and watches.
    """

    api_version: Literal["v1"] = "v1"
    kind: Literal["Secret"] = "Secret"
    metadata: ObjectMeta
    type: str = "Opaque"
    data: dict[str, str] = Field(default_factory=dict)
    string_data: dict[str, str] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _base64(cls, v: dict[str, str]) -> dict[str, str]:
        for k, value in v.items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"data[{k!r}] is not valid base64") from None
        return v

    def decoded(self) -> dict[str, bytes]:
        """Every key's bytes (stringData wins over data, as in Kubernetes)."""
        out = {k: base64.b64decode(v) for k, v in self.data.items()}
        out.update({k: v.encode() for k, v in self.string_data.items()})
        return out

    def normalised(self) -> Secret:
        """The same secret with stringData folded into data (as Kubernetes stores it)."""
        if not self.string_data:
            return self
        data = {k: base64.b64encode(v).decode() for k, v in self.decoded().items()}
        return self.model_copy(update={"data": data, "string_data": {}})


class NamespaceMeta(_Model):
    """Metadata of a cluster-scoped object: no namespace."""

    name: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None

    _name = field_validator("name")(_check_name)


class Namespace(_Model):
    """A v1 Namespace (cluster-scoped). Objects may name a namespace that has no
    Namespace object (as `default` is implicit); this records labels for it."""

    api_version: Literal["v1"] = "v1"
    kind: Literal["Namespace"] = "Namespace"
    metadata: NamespaceMeta


class NodeCondition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition: float | None = None


class NodeSpec(_Model):
    taints: list[Taint] = Field(default_factory=list)
    unschedulable: bool = False


class NodeStatus(_Model):
    capacity: dict[str, int] = Field(default_factory=dict)
    allocatable: dict[str, int] = Field(default_factory=dict)
    arch: str = "amd64"
    os: str = "linux"
    agent_version: str | None = None
    ready: Literal["Ready", "NotReady", "Unknown"] = "Unknown"
    reason: str | None = None
    last_seen: float | None = None
    desired_gen: int = 0
    acked_gen: int = 0
    usage: dict[str, float] = Field(default_factory=dict)


class Node(_Model):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Node"] = "Node"
    metadata: ObjectMeta
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)


Workload = DaemonSet | Deployment | Pod
KINDS: dict[str, type[_Model]] = {
    "Pod": Pod,
    "DaemonSet": DaemonSet,
    "Deployment": Deployment,
    "ConfigMap": ConfigMap,
    "Secret": Secret,
    "Namespace": Namespace,
    "Node": Node,
}
# API_VERSIONS and CLUSTER_KINDS come from the one kind table (shared/kinds.py),
# re-exported here for the modules that import them from the models.


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_object(doc: Any) -> _Model:
    """Validate one Kubernetes-style document into its model.

    Raises `UnsupportedField` for fields edgefed does not implement and
    `ObjectError` for anything else wrong, always naming the field.
    """
    if not isinstance(doc, dict):
        raise ObjectError("a document must be a mapping with apiVersion, kind and metadata")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ObjectError(
            f"unsupported kind {kind!r}; supported: {', '.join(sorted(KINDS))}", field="kind"
        )
    want = API_VERSIONS[kind]
    if doc.get("apiVersion", want) != want:
        raise ObjectError(
            f"{kind} must have apiVersion {want!r}, not {doc.get('apiVersion')!r}",
            field="apiVersion",
        )
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt field (`imagee`) is both unknown and, under its right name, missing:
        # name the unknown one, and the missing sibling it was probably meant to be.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        field = _path(err["loc"])
        if err["type"] == "extra_forbidden":
            parent = err["loc"][:-1]
            missing = [str(e["loc"][-1]) for e in errors
                       if e["type"] == "missing" and e["loc"][:-1] == parent]
            close = difflib.get_close_matches(str(err["loc"][-1]), missing, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnsupportedField(
                f"{kind}: field {field!r} is not supported by edgefed{hint}", field=field
            ) from None
        ctx = err.get("ctx", {}).get("error")
        msg = str(ctx) if isinstance(ctx, Exception) else err["msg"]
        raise ObjectError(f"{kind}: {field}: {msg}", field=field) from None


def spec_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able value (pod template revision)."""
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:10]


SERVER_METADATA = ("uid", "generation", "creationTimestamp", "resourceVersion")
"""Metadata the server sets. `get` prints it; `apply` accepts it and ignores it."""
SERVER_FIELDS = ("status",)
"""Top-level fields the server owns (what the node reports); ignored by `apply`."""


def expand_lists(doc: Any) -> list[Any]:
    """A `kind: List` document (what `get -o yaml|json` prints for several objects)
    -> its items; any other document -> itself. Items are not validated here."""
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"),
                                                                         list):
        return list(doc["items"])
    return [doc]


def without_server_fields(doc: Any) -> Any:
    """A shallow copy of `doc` without `status` and the server-managed metadata
    (SERVER_METADATA), so that what `get` prints can be applied unchanged. Anything
    else, unknown fields included, is kept for `parse_object` to judge."""
    if not isinstance(doc, dict):
        return doc
    out = {k: v for k, v in doc.items() if k not in SERVER_FIELDS}
    meta = out.get("metadata")
    if isinstance(meta, dict):
        out["metadata"] = {k: v for k, v in meta.items() if k not in SERVER_METADATA}
    return out
