"""Kubernetes-shaped objects: Node, Pod, DaemonSet, Deployment, ConfigMap, Secret,
Namespace, and edgefed's AgentUpgrade.

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
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    SerializationInfo,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from shared import validate
from shared.errors import ObjectError, UnsupportedField
from shared.kinds import API_VERSIONS, CLUSTER_KINDS  # noqa: F401 (re-exported)
from shared.pods import (  # noqa: F401 (the pod spec's pieces, re-exported)
    Affinity,
    AffinitySelector,
    Capabilities,
    ConfigMapEnvSource,
    ConfigMapKeySelector,
    ConfigMapVolumeSource,
    Container,
    ContainerPort,
    EmptyDirVolumeSource,
    EnvFromSource,
    EnvVar,
    EnvVarSource,
    ExecAction,
    HostPathVolumeSource,
    HTTPGetAction,
    KeyToPath,
    LabelSelectorRequirement,
    LocalObjectReference,
    NodeAffinity,
    NodeSelector,
    NodeSelectorRequirement,
    NodeSelectorTerm,
    ObjectFieldSelector,
    PodAffinity,
    PodAffinityTerm,
    PodDNSConfig,
    PodDNSConfigOption,
    PodSecurityContext,
    PodSpec,
    PreferredSchedulingTerm,
    Probe,
    ResourceFieldSelector,
    ResourceRequirements,
    SeccompProfile,
    SecretEnvSource,
    SecretKeySelector,
    SecretVolumeSource,
    SecurityContext,
    Sysctl,
    TCPSocketAction,
    Toleration,
    Volume,
    VolumeMount,
    WeightedPodAffinityTerm,
)

MAX_NAME = validate.MAX_NAME


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


_check_name = validate.dns_name


class ObjectMeta(_Model):
    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None

    _name = field_validator("name", "namespace")(_check_name)


# -- the pod spec: defined once, in shared.pods (msgspec Structs the agent reads too) -----
# The pieces are re-exported under their old names; `Pod.spec` and `PodTemplate.spec`
# validate and dump through `_PodSpecField`, so a field exists on both sides or neither.

CAPABILITY = validate.CAPABILITY.pattern
MAX_ID = validate.MAX_ID


class _PodSpecField:
    """pydantic's view of `shared.pods.PodSpec`: validated by its own rules (an
    already-built spec is taken as is), dumped as pydantic dumped the old models
    (honouring by_alias, exclude_none and exclude_defaults)."""

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_plain_validator_function(
            _validate_spec,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _serialize_spec, info_arg=True))

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "object", "title": "PodSpec",
                "description": "A Kubernetes pod spec (the fields of shared.pods.PodSpec)"}


def _validate_spec(v: Any) -> PodSpec:
    try:
        return PodSpec.parse(v)
    except ObjectError as exc:
        sub = exc.field or ""
        reason = exc.message.removeprefix(f"{sub}: ") if sub else exc.message
        kind = "edgefed_unsupported" if isinstance(exc, UnsupportedField) else "edgefed_invalid"
        hint = exc.hint if isinstance(exc, UnsupportedField) else ""
        raise PydanticCustomError(kind, "{reason}",
                                  {"reason": reason, "field": sub, "hint": hint}) from None


def _serialize_spec(v: PodSpec, info: SerializationInfo) -> dict[str, Any]:
    return v.model_dump(by_alias=bool(info.by_alias), exclude_none=info.exclude_none,
                        exclude_defaults=info.exclude_defaults)


PodSpecField = Annotated[PodSpec, _PodSpecField()]
"""The type of a pydantic field holding a pod spec."""


class Taint(_Model):
    key: str
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class PodTemplateMeta(_Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class PodTemplate(_Model):
    metadata: PodTemplateMeta = Field(default_factory=PodTemplateMeta)
    spec: PodSpecField


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
    init_container_statuses: list[ContainerStatus] | None = None
    revision: str | None = None
    updated_at: float | None = None
    ready: bool | None = None  # Running and every container ready (None: not reported)
    pod_ip: str | None = Field(default=None, alias="podIP")
    """The pod's own address (None: hostNetwork, or not reported yet)."""


class Pod(_Model):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Pod"] = "Pod"
    metadata: ObjectMeta
    spec: PodSpecField
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


def _is_zero(v: int | str) -> bool:
    return v in (0, "0%")


class RollingUpdate(_Model):
    """Kubernetes' `rollingUpdate`: `maxUnavailable` pods are replaced at a time (in
    place, on their node); a Deployment's `maxSurge` (rounded up) starts that many extra
    pods of the update above `replicas` and removes old ones as new ones become
    available. Not both 0. A DaemonSet refuses `maxSurge` (`DaemonSetSpec`)."""

    max_surge: int | str = 0  # before max_unavailable: its check reads this one
    max_unavailable: int | str = 1

    @field_validator("max_surge")
    @classmethod
    def _max_surge(cls, v: int | str) -> int | str:
        return _count_or_percent(v, low=0)

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable(cls, v: int | str, info: ValidationInfo) -> int | str:
        v = _count_or_percent(v, low=0)
        if _is_zero(v) and _is_zero(info.data.get("max_surge", 0)):
            raise ValueError("must be at least 1 when maxSurge is 0 (with both 0 no pod "
                             "could be replaced)")
        return v


DAEMONSET_SURGE = (
    " for a DaemonSet: it runs one pod per node, named after the node, so a second pod "
    "cannot start there before the first one stops (nor share its host ports)")
"""Why a DaemonSet refuses `maxSurge` (a Deployment takes it); the alternative,
`maxUnavailable`, is `shared.problems`' hint."""


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

    @field_validator("update_strategy")
    @classmethod
    def _no_surge(cls, v: UpdateStrategy | None) -> UpdateStrategy | None:
        if v is not None and not _is_zero(v.rolling_update.max_surge):
            raise PydanticCustomError("edgefed_unsupported", "{reason}", {
                "reason": "maxSurge", "field": "rollingUpdate.maxSurge",
                "hint": DAEMONSET_SURGE})
        return v


class DaemonSet(_Model):
    api_version: Literal["apps/v1"] = "apps/v1"
    kind: Literal["DaemonSet"] = "DaemonSet"
    metadata: ObjectMeta
    spec: DaemonSetSpec
    status: WorkloadStatus | None = None


class DeploymentCondition(_Model):
    """One of a Deployment's conditions, with Kubernetes' types and reasons (what
    `kubectl describe deploy` shows): `Available` (MinimumReplicasAvailable /
    MinimumReplicasUnavailable) and `Progressing` (ScalingReplicaSet while pods are made
    or removed, ReplicaSetUpdated while they become available, NewReplicaSetAvailable
    once the rollout is complete)."""

    type: Literal["Available", "Progressing"]
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None


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
    conditions: list[DeploymentCondition] = Field(default_factory=list)


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
    agent_upgrade: dict[str, Any] | None = None
    """The node's last `agentUpgrade` report: {version, phase, message, previous}
    (read with shared.entries.parse_agent_upgrade; None: never asked to upgrade)."""


class Node(_Model):
    api_version: Literal["v1"] = "v1"
    kind: Literal["Node"] = "Node"
    metadata: ObjectMeta
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)


# -- AgentUpgrade (edgefed's; proposal 0006) ---------------------------------------------

class AgentUpgradeSpec(_Model):
    """Which nodes run which agent release, and how fast they get there."""

    version: str
    """The release's version (what the nodes report as agentVersion once upgraded)."""
    image: str
    """The release image (`python -m cloudcore release publish` pushed it)."""
    selector: LabelSelector = Field(default_factory=LabelSelector)
    """The nodes it upgrades (matchLabels; empty: every node)."""
    max_unavailable: int | str = 1
    """Nodes upgrading at once: a number or a percentage of the selected nodes."""
    failure_threshold: int | str = 0
    """Failed nodes tolerated (number or percentage); one more aborts and rolls back."""
    health_deadline_seconds: int = Field(default=120, ge=1, le=86_400)
    """Seconds a node's new agent has to prove healthy (Ready time, plus a margin)."""
    paused: bool = False

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        from shared.release import VERSION_RE  # what an agent accepts as a release version

        if not VERSION_RE.match(v):
            raise ValueError(f"must be a release version (letters, digits and '.+_-', at "
                             f"most 64 characters, starting with a letter or digit), not {v!r}")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not v or len(v) > 1024 or any(c.isspace() for c in v):
            raise ValueError(f"must be an image reference without spaces, not {v!r}")
        return v

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable(cls, v: int | str) -> int | str:
        return _count_or_percent(v, low=1)

    @field_validator("failure_threshold")
    @classmethod
    def _failure_threshold(cls, v: int | str) -> int | str:
        return _count_or_percent(v, low=0)


class AgentUpgradeFailure(_Model):
    """A node where the upgrade failed, and why (its own report, or the deadline)."""

    node: str
    reason: str
    """Failed, RolledBack (the node's report) or Timeout (not healthy in time)."""
    message: str = ""


class AgentUpgradeStatus(_Model):
    """Where an AgentUpgrade stands (computed by cloudcore)."""

    observed_generation: int | None = None
    phase: Literal["Progressing", "Complete", "Paused", "Aborted"] = "Progressing"
    total: int = 0
    """Selected nodes."""
    upgraded: int = 0
    """Nodes that run spec.version and reported healthy (or already ran it)."""
    in_progress: int = 0
    """Nodes told to upgrade, Ready, not yet done."""
    failed: int = 0
    waiting: int = 0
    """Selected nodes that are not Ready: they upgrade when they are back."""
    rolled_back: int = 0
    """After an abort: nodes told to go back that run their previous version again."""
    message: str | None = None
    failures: list[AgentUpgradeFailure] = Field(default_factory=list)
    """The failed nodes (the first 50 by name)."""


class AgentUpgrade(_Model):
    """Upgrade the agents of the selected nodes to a release, in health-gated batches
    (edgefed's kind, cluster-scoped; cloudcore/fleet/upgrades.py)."""

    api_version: Literal["edgefed.io/v1"] = "edgefed.io/v1"
    kind: Literal["AgentUpgrade"] = "AgentUpgrade"
    metadata: NamespaceMeta
    spec: AgentUpgradeSpec
    status: AgentUpgradeStatus | None = None


# -- PriorityClass (scheduling.k8s.io/v1) ------------------------------------------------

SYSTEM_PRIORITY_CLASSES: dict[str, int] = {"system-node-critical": 2_000_001_000,
                                           "system-cluster-critical": 2_000_000_000}
"""Kubernetes' built-in classes; they always exist (cloudcore creates them at load)."""
HIGHEST_USER_PRIORITY = 1_000_000_000
"""The highest value a user's PriorityClass may have (Kubernetes' limit)."""


class PriorityClass(_Model):
    """A scheduling.k8s.io/v1 PriorityClass (cluster-scoped): pods naming it in
    `priorityClassName` get its `value` as `spec.priority`; the one `globalDefault` class
    gives pods that name none theirs. Names starting `system-` are Kubernetes' built-in
    classes only, and a user's value is at most 1,000,000,000, as in Kubernetes."""

    api_version: Literal["scheduling.k8s.io/v1"] = "scheduling.k8s.io/v1"
    kind: Literal["PriorityClass"] = "PriorityClass"
    metadata: NamespaceMeta
    value: int = Field(ge=-2_147_483_648, le=max(SYSTEM_PRIORITY_CLASSES.values()))
    global_default: bool = False
    description: str = Field(default="", max_length=1024)
    preemption_policy: Literal["PreemptLowerPriority", "Never"] | None = None
    """Accepted; edgefed never preempts (docs/pods.md, "Priority")."""

    @field_validator("metadata")
    @classmethod
    def _reserved_name(cls, meta: NamespaceMeta) -> NamespaceMeta:
        if meta.name.startswith("system-") and meta.name not in SYSTEM_PRIORITY_CLASSES:
            raise ValueError(f"name {meta.name!r}: the prefix 'system-' is reserved for the "
                             f"built-in classes ({', '.join(SYSTEM_PRIORITY_CLASSES)})")
        return meta

    @field_validator("value")
    @classmethod
    def _value(cls, value: int, info: ValidationInfo) -> int:
        meta = info.data.get("metadata")
        name = meta.name if isinstance(meta, NamespaceMeta) else ""
        builtin = SYSTEM_PRIORITY_CLASSES.get(name)
        if builtin is not None and value != builtin:
            raise ValueError(f"{name} is a built-in class with value {builtin}")
        if builtin is None and value > HIGHEST_USER_PRIORITY:
            raise ValueError(f"at most {HIGHEST_USER_PRIORITY} (higher values are for the "
                             "built-in system classes)")
        return value


Workload = DaemonSet | Deployment | Pod
KINDS: dict[str, type[_Model]] = {
    "Pod": Pod,
    "DaemonSet": DaemonSet,
    "Deployment": Deployment,
    "ConfigMap": ConfigMap,
    "Secret": Secret,
    "Namespace": Namespace,
    "Node": Node,
    "AgentUpgrade": AgentUpgrade,
    "PriorityClass": PriorityClass,
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
        spec_err = next((e for e in errors if e["type"] in ("edgefed_unsupported",
                                                             "edgefed_invalid")), None)
        if spec_err is not None:  # the pod spec's own rules (shared.pods) said why
            raise _spec_error(kind, spec_err) from None
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


def _spec_error(kind: str, err: Any) -> ObjectError:
    ctx = err.get("ctx", {})
    field = _path(err["loc"])
    sub = str(ctx.get("field", ""))
    if sub:
        field = f"{field}{sub}" if sub.startswith("[") or not field else f"{field}.{sub}"
    if err["type"] == "edgefed_unsupported":
        return UnsupportedField(
            f"{kind}: field {field!r} is not supported by edgefed{ctx.get('hint', '')}",
            field=field, hint=str(ctx.get("hint", "")))
    return ObjectError(f"{kind}: {field}: {ctx.get('reason', err['msg'])}", field=field)


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
