"""Keys and values of a node's desired set, and what a report carries.

The desired set maps keys such as `pod/{namespace}/{name}` to plain JSON-able
values; both sides build and read them only through this module.

Entry shapes:
- `pod/{ns}/{name}`: `pod_entry(pod)`, {name, namespace, labels, spec (without the
  `CLOUD_ONLY_FIELDS`), revision} and
  `policy` ({level, hostPathAllow}: what cloudcore admitted the pod under, which the
  agent checks again; `shared.policy.Admitted`), absent for pods admitted before levels;
  `uid`: the pod object's uid (absent only for pods stored before every pod had one):
  a pod deleted and created again under the same name and spec is a new pod, which the
  agent runs in new containers (Kubernetes' kubelet keys pods by uid; issue: a
  re-created pod stayed Pending); `annotations` (only the keys) when the pod's env reads
  them (`fieldRef`).
- `configmap/{ns}/{name}`: {"data": {key: text}}, present on a node only while a
  pod there mounts it or reads it into its env (`referenced_keys`).
- `secret/{ns}/{name}`: {"data": {key: base64 text}}, same rule.
- `agent/-/release` (`AGENT_RELEASE_KEY`): the agent release this node should run
  (proposal 0006): `agent_release_entry(...)`, {"version": str, "image": str | None,
  "upgrade": the AgentUpgrade's name, "deadline": seconds the new agent has to prove
  healthy}; `parse_agent_release` reads it into `AgentRelease`. Absent: run what you
  run. `image` None: switch to a version the node already holds (its previous slot).
- `broker/-/map` (`BROKER_MAP_KEY`): the brokers this node tries, in order (proposal
  0007): `broker_map_entry(version, urls)`, {"version": the map's version, "urls":
  [url, ...] home first}; `parse_broker_map_entry` reads it into `BrokerMapEntry`.
  Absent: the list the node got at join.

A node's status (a report's `node_status`) carries, beside `agentVersion`,
`agentUpgrade`: {"version", "phase", "message", "previous"} with phase one of
`UPGRADE_PHASES` (`agent_upgrade_value` builds it on the edge,
`parse_agent_upgrade` reads it on the cloud and returns None for anything malformed).

The edge reads entries with `parse_pod_entry` into `shared.pods` types and builds
statuses from them, so this module and everything the agent imports from it stay
free of pydantic; the functions that take `shared.models` objects (the cloud's
side: `pod_entry`, `parse_status`) import them when called.

Report telemetry (`Report.telemetry`) is a list of one-minute points:
{"ts": minute start (Unix s), "node": {"cpu": millicores, "mem": bytes},
 "pods": {pod key: {"cpu": millicores, "mem": bytes}}} (`telemetry_point`),
and, in reports of their own, batches of Prometheus samples scraped on the device
(`metrics_batch`, read back by `parse_metrics_batch`):
{"ts": scrape time (Unix s), "metrics": {"iv": scrape interval (s),
 "agent": SERIES, "pods": {pod key: SERIES}}} with SERIES = {"t": {family: type},
 "s": [[sample name, {label: value}, value], ...]}. A pod entry carries the pod's
`prometheus.io/*` annotations (`SCRAPE_ANNOTATION_PREFIX`): they say what to scrape.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared import brokermap, pods, validate
from shared.errors import ObjectError
from shared.policy import Admitted

if TYPE_CHECKING:
    from shared import models

POD = "pod"
CONFIGMAP = "configmap"
SECRET = "secret"
AGENT = "agent"
BROKER = "broker"

AGENT_RELEASE_KEY = "agent/-/release"
"""The desired key naming the agent release a node should run (one per node)."""
DEFAULT_UPGRADE_DEADLINE = 120
"""Seconds a new agent has to commit itself (connected, pods adopted, a report acked)."""
MAX_UPGRADE_DEADLINE = 86_400
UPGRADE_PHASES = ("Downloading", "Verifying", "Restarting", "Healthy", "Failed",
                  "RolledBack")
"""`agentUpgrade.phase` values. Failed: never restarted (pull, digest or signature
refused); RolledBack: the new agent did not commit in time or crashed."""
UPGRADE_TERMINAL_FAILURES = frozenset({"Failed", "RolledBack"})

# Kubernetes' rule for ConfigMap/Secret keys; they become file names.
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


def key(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace}/{name}"


def split_key(k: str) -> tuple[str, str, str]:
    kind, namespace, name = k.split("/", 2)
    return kind, namespace, name


def pod_key(namespace: str, name: str) -> str:
    return key(POD, namespace, name)


def configmap_key(namespace: str, name: str) -> str:
    return key(CONFIGMAP, namespace, name)


def secret_key(namespace: str, name: str) -> str:
    return key(SECRET, namespace, name)


def configmap_entry(cm: models.ConfigMap | Mapping[str, str]) -> dict[str, Any]:
    """The desired-set value of a ConfigMap (or of its plain `data`)."""
    data = cm if isinstance(cm, Mapping) else cm.data
    return {"data": dict(data)}


def secret_entry(secret: models.Secret | Mapping[str, bytes | str]) -> dict[str, Any]:
    """The desired-set value of a Secret (or of key -> bytes/text): data in base64."""
    raw = secret if isinstance(secret, Mapping) else secret.decoded()
    return {"data": {k: base64.b64encode(v.encode() if isinstance(v, str) else v).decode()
                     for k, v in raw.items()}}


def config_files(k: str, value: Any) -> dict[str, bytes]:
    """The files (key -> content) of a `configmap/...` or `secret/...` entry.

    Raises ObjectError naming the entry if the value is malformed or a key is not
    a valid file name.
    """
    kind = k.split("/", 1)[0]
    data = value.get("data") if isinstance(value, dict) else None
    if not isinstance(data, dict):
        raise ObjectError(f"{k}: value must be a mapping with 'data'", field="data")
    out: dict[str, bytes] = {}
    for name, v in data.items():
        if not isinstance(name, str) or not _DATA_KEY.match(name) or name in (".", ".."):
            raise ObjectError(f"{k}: key {name!r} is not a valid file name", field="data")
        if not isinstance(v, str):
            raise ObjectError(f"{k}: data[{name!r}] must be a string", field="data")
        if kind == SECRET:
            try:
                out[name] = base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise ObjectError(f"{k}: data[{name!r}] is not base64", field="data") from None
        else:
            out[name] = v.encode()
    return out


def referenced_keys(namespace: str, spec: pods.PodSpec) -> set[str]:
    """The configmap/secret desired keys a pod needs on its node: those its volumes
    mount, those its containers' `env[].valueFrom` and `envFrom` read (optional ones
    included: present, they are used) and its `imagePullSecrets`."""
    out: set[str] = set()
    for v in spec.volumes:
        if v.config_map is not None:
            out.add(configmap_key(namespace, v.config_map.name))
        if v.secret is not None:
            out.add(secret_key(namespace, v.secret.secret_name))
    for ref in spec.image_pull_secrets:
        out.add(secret_key(namespace, ref.name))
    for c in spec.all_containers():
        for e in c.env:
            src = e.value_from
            if src is None:
                continue
            if src.config_map_key_ref is not None:
                out.add(configmap_key(namespace, src.config_map_key_ref.name))
            if src.secret_key_ref is not None:
                out.add(secret_key(namespace, src.secret_key_ref.name))
        for f in c.env_from:
            if f.config_map_ref is not None:
                out.add(configmap_key(namespace, f.config_map_ref.name))
            if f.secret_ref is not None:
                out.add(secret_key(namespace, f.secret_ref.name))
    return out


def may_reference(spec: pods.PodSpec) -> bool:
    """Whether `referenced_keys` can find anything in `spec` (cheap: no set is built),
    for a caller that keeps no cache entry for the pods that reference nothing."""
    if spec.volumes or spec.image_pull_secrets:
        return True
    return any(c.env_from or any(e.value_from is not None for e in c.env)
               for c in spec.all_containers())


def referenced_meta(spec: pods.PodSpec) -> tuple[bool, set[str]]:
    """What of a pod's metadata beyond name, namespace and labels its env reads:
    (its uid, the annotation keys), so a desired entry carries only those."""
    uid, annotations = False, set()
    for c in spec.all_containers():
        for e in c.env:
            ref = e.value_from.field_ref if e.value_from is not None else None
            if ref is None:
                continue
            if ref.field_path == "metadata.uid":
                uid = True
            sub = validate.subscript(ref.field_path)
            if sub is not None and sub[0] == "annotations":
                annotations.add(sub[1])
    return uid, annotations


SCRAPE_ANNOTATION_PREFIX = "prometheus.io/"
"""Pod annotations with this prefix (`prometheus.io/scrape`, `port`, `path`) travel in
the pod's desired entry: the agent scrapes the pods that ask for it."""

METRIC_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
MAX_METRIC_NAME = 200
MAX_LABEL_VALUE = 1024
MAX_LABELS = 32


def valid_metric_name(name: str) -> bool:
    return len(name) <= MAX_METRIC_NAME and _METRIC_NAME.match(name) is not None


def valid_label_name(name: str) -> bool:
    return len(name) <= MAX_METRIC_NAME and _LABEL_NAME.match(name) is not None


Series = tuple[str, dict[str, str], float]
"""One sample: (name, labels, value)."""


@dataclass(frozen=True)
class SeriesSet:
    """The samples of one source (the agent, or one pod) and their families' types."""

    types: dict[str, str]
    samples: list[Series]


@dataclass(frozen=True)
class MetricsBatch:
    """One scrape round of a device (`metrics_batch`), validated."""

    ts: float
    interval: float
    agent: SeriesSet
    pods: dict[str, SeriesSet]  # pod key -> its samples


def _series_value(s: SeriesSet) -> dict[str, Any]:
    return {"t": dict(s.types), "s": [[n, dict(lb), v] for n, lb, v in s.samples]}


def metrics_batch(ts: float, *, interval: float, agent: SeriesSet,
                  pods: Mapping[str, SeriesSet]) -> dict[str, Any]:
    """One batch of scraped samples as carried in `Report.telemetry`."""
    return {"ts": ts, "metrics": {"iv": interval, "agent": _series_value(agent),
                                  "pods": {k: _series_value(v) for k, v in pods.items()}}}


def is_metrics_batch(value: Any) -> bool:
    """Whether a `Report.telemetry` item is a metrics batch (not a telemetry point)."""
    return isinstance(value, dict) and "metrics" in value


def _parse_series(where: str, value: Any) -> SeriesSet:
    if not isinstance(value, dict):
        raise ObjectError(f"{where}: must be a mapping", field="metrics")
    types = value.get("t") or {}
    if not isinstance(types, dict) or not all(
            isinstance(n, str) and valid_metric_name(n) and t in METRIC_TYPES
            for n, t in types.items()):
        raise ObjectError(f"{where}.t: must map metric names to one of "
                          f"{sorted(METRIC_TYPES)}", field="metrics")
    raw = value.get("s") or []
    if not isinstance(raw, list):
        raise ObjectError(f"{where}.s: must be a list", field="metrics")
    samples: list[Series] = []
    for i, item in enumerate(raw):
        if not (isinstance(item, list) and len(item) == 3):
            raise ObjectError(f"{where}.s[{i}]: must be [name, labels, value]", field="metrics")
        name, labels, v = item
        if not isinstance(name, str) or not valid_metric_name(name):
            raise ObjectError(f"{where}.s[{i}]: invalid metric name {name!r}", field="metrics")
        if not isinstance(labels, dict) or len(labels) > MAX_LABELS or not all(
                isinstance(a, str) and valid_label_name(a) and isinstance(b, str)
                and len(b) <= MAX_LABEL_VALUE for a, b in labels.items()):
            raise ObjectError(f"{where}.s[{i}]: labels must map at most {MAX_LABELS} label "
                              f"names to strings of at most {MAX_LABEL_VALUE} characters",
                              field="metrics")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ObjectError(f"{where}.s[{i}]: value must be a number", field="metrics")
        samples.append((name, labels, float(v)))
    return SeriesSet(types=dict(types), samples=samples)


def parse_metrics_batch(value: Any) -> MetricsBatch:
    """A `metrics_batch` item read back and checked (names, labels and values as the
    Prometheus text format allows them); raises ObjectError naming what is wrong."""
    if not is_metrics_batch(value):
        raise ObjectError("not a metrics batch", field="metrics")
    ts, body = value.get("ts"), value["metrics"]
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise ObjectError("metrics batch: ts must be a number", field="ts")
    if not isinstance(body, dict):
        raise ObjectError("metrics batch: metrics must be a mapping", field="metrics")
    iv = body.get("iv", 60)
    if isinstance(iv, bool) or not isinstance(iv, int | float) or iv <= 0:
        raise ObjectError("metrics batch: iv must be a positive number", field="metrics")
    pods_raw = body.get("pods") or {}
    if not isinstance(pods_raw, dict):
        raise ObjectError("metrics batch: pods must be a mapping", field="metrics")
    pods_out: dict[str, SeriesSet] = {}
    for k, v in pods_raw.items():
        if not isinstance(k, str) or k.count("/") != 2 or not k.startswith(POD + "/"):
            raise ObjectError(f"metrics batch: {k!r} is not a pod key", field="metrics")
        pods_out[k] = _parse_series(k, v)
    return MetricsBatch(ts=float(ts), interval=float(iv),
                        agent=_parse_series("agent", body.get("agent") or {}), pods=pods_out)


def telemetry_point(
    ts: int, *, node: Mapping[str, float], pods: Mapping[str, Mapping[str, float]],
) -> dict[str, Any]:
    """One one-minute telemetry point as carried in `Report.telemetry`."""
    return {"ts": ts, "node": dict(node), "pods": {k: dict(v) for k, v in pods.items()}}


CLOUD_ONLY_FIELDS = frozenset({"affinity", "priority"})
"""Pod spec fields only cloudcore reads (scheduling, eviction order): a pod entry leaves
them out, so an agent from before them (which refuses unknown fields) still runs the pod,
and no node learns another pod's selectors. They still count in the revision: changing
them is a new revision, as a template change is in Kubernetes."""


def pod_entry(pod: models.Pod, *, revision: str | None = None) -> dict[str, Any]:
    """The desired-set value for a pod placed on a node. A caller that makes many pods
    of one template may pass the `revision` it computed once (`pod_revision`)."""
    spec = pod.spec.dump()
    if revision is None:
        revision = pod_revision(spec)
    if any(f in spec for f in CLOUD_ONLY_FIELDS):
        spec = {k: v for k, v in spec.items() if k not in CLOUD_ONLY_FIELDS}
    out: dict[str, Any] = {
        "name": pod.metadata.name,
        "namespace": pod.metadata.namespace,
        "labels": pod.metadata.labels,
        "spec": spec,
        "revision": revision,
    }
    if pod.metadata.uid:  # a new pod object is a new pod on the node (module docstring)
        out["uid"] = pod.metadata.uid
    _, annotations = referenced_meta(pod.spec)
    wanted = {k: v for k, v in pod.metadata.annotations.items()
              if k in annotations or k.startswith(SCRAPE_ANNOTATION_PREFIX)}
    if wanted:
        out["annotations"] = wanted
    admitted = Admitted.from_annotations(pod.metadata.annotations)
    if admitted is not None:
        out["policy"] = admitted.entry_value()
    return out


def pod_revision(spec: dict[str, Any]) -> str:
    """The revision names what runs, not where: every pod of one template revision has
    the same revision on every node (placement is not a change to the containers)."""
    from shared.models import spec_hash

    return spec_hash({k: v for k, v in spec.items() if k != "nodeName"})


@dataclass(frozen=True)
class PodEntry:
    key: str
    name: str
    namespace: str
    labels: dict[str, str]
    spec: pods.PodSpec
    revision: str
    policy: Admitted | None = None
    """The level the cloud admitted the pod under (None: an entry from before levels)."""
    uid: str | None = None
    """The pod object's uid (None: an entry from a cloud or pod without one): another uid
    under the same key is another pod, run in new containers."""
    annotations: dict[str, str] | None = None
    """The pod's annotations its env reads (`metadata.annotations['KEY']`), only those."""


def _entry_str(k: str, value: dict[str, Any], name: str) -> str:
    v = value.get(name)
    if not isinstance(v, str) or not v:
        raise ObjectError(f"{k}: {name} must be a non-empty string, not {v!r}", field=name)
    return v


def parse_pod_entry(k: str, value: Any) -> PodEntry:
    """A `pod/...` desired value -> PodEntry; raises shared.errors.ObjectError naming the
    field if the value is not a pod (shared.pods checks the spec)."""
    if not isinstance(value, dict):
        raise ObjectError(f"{k}: value must be a mapping, not {type(value).__name__}")
    labels = value.get("labels") or {}
    if not isinstance(labels, dict) or not all(
            isinstance(a, str) and isinstance(b, str) for a, b in labels.items()):
        raise ObjectError(f"{k}: labels must map strings to strings", field="labels")
    annotations = value.get("annotations")
    if annotations is not None and (not isinstance(annotations, dict) or not all(
            isinstance(a, str) and isinstance(b, str) for a, b in annotations.items())):
        raise ObjectError(f"{k}: annotations must map strings to strings", field="annotations")
    uid = value.get("uid")
    if uid is not None and not isinstance(uid, str):
        raise ObjectError(f"{k}: uid must be a string, not {type(uid).__name__}", field="uid")
    if "spec" not in value:
        raise ObjectError(f"{k}: spec: field required", field="spec")
    return PodEntry(
        key=k,
        name=_entry_str(k, value, "name"),
        namespace=_entry_str(k, value, "namespace"),
        labels=dict(labels),
        spec=pods.PodSpec.parse(value["spec"], "spec"),
        revision=_entry_str(k, value, "revision"),
        policy=_entry_policy(k, value.get("policy")),
        uid=uid,
        annotations=dict(annotations) if annotations is not None else None,
    )


def _entry_policy(k: str, value: Any) -> Admitted | None:
    if value is None:
        return None
    try:
        return Admitted.from_entry(value, "policy")
    except ObjectError as exc:
        raise ObjectError(f"{k}: {exc.message}", field=exc.field) from None


def status_value(status: pods.PodStatus | models.PodStatus) -> dict[str, Any]:
    """A pod status as a report carries it (either kind renders the same)."""
    if isinstance(status, pods.PodStatus):
        return status.to_wire()
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def parse_status(value: dict[str, Any]) -> models.PodStatus:
    """A reported status, validated (the cloud's side)."""
    from shared.models import PodStatus

    return PodStatus.model_validate(value)


# -- the agent release (proposal 0006) ---------------------------------------------------

@dataclass(frozen=True)
class AgentRelease:
    """What `agent/-/release` asks of a node."""

    version: str
    image: str | None
    """The release image (an OCI reference); None: a version the node already holds."""
    upgrade: str
    """The name of the AgentUpgrade that asked (a changed name is a new request)."""
    deadline: int = DEFAULT_UPGRADE_DEADLINE
    """Seconds the new agent has to commit itself before the node goes back."""


def agent_release_entry(*, version: str, image: str | None, upgrade: str,
                        deadline: int = DEFAULT_UPGRADE_DEADLINE) -> dict[str, Any]:
    """The desired-set value of `agent/-/release` (the cloud's side)."""
    return {"version": version, "image": image, "upgrade": upgrade, "deadline": deadline}


def parse_agent_release(k: str, value: Any) -> AgentRelease:
    """An `agent/-/release` desired value -> AgentRelease; raises ObjectError naming the
    field if it is malformed (the agent then refuses it and says why in its status)."""
    if not isinstance(value, dict):
        raise ObjectError(f"{k}: value must be a mapping, not {type(value).__name__}")
    version = _entry_str(k, value, "version")
    if len(version) > validate.MAX_NAME or "/" in version or version in (".", ".."):
        raise ObjectError(f"{k}: version {version!r} is not a valid version name "
                          f"(no '/', at most {validate.MAX_NAME} characters)",
                          field="version")
    image = value.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise ObjectError(f"{k}: image must be a non-empty string or null, not {image!r}",
                          field="image")
    deadline = value.get("deadline", DEFAULT_UPGRADE_DEADLINE)
    if (not isinstance(deadline, int) or isinstance(deadline, bool)
            or not 1 <= deadline <= MAX_UPGRADE_DEADLINE):
        raise ObjectError(f"{k}: deadline must be whole seconds from 1 to "
                          f"{MAX_UPGRADE_DEADLINE}, not {deadline!r}", field="deadline")
    return AgentRelease(version=version, image=image,
                        upgrade=_entry_str(k, value, "upgrade"), deadline=deadline)


@dataclass(frozen=True)
class AgentUpgradeReport:
    """A node's `agentUpgrade` status: how its latest upgrade request went."""

    version: str
    phase: str
    """One of UPGRADE_PHASES."""
    message: str = ""
    previous: str | None = None
    """The version the node ran before (where a rollback goes)."""


def agent_upgrade_value(report: AgentUpgradeReport) -> dict[str, Any]:
    """`agentUpgrade` as a node's status carries it (the edge's side)."""
    return {"version": report.version, "phase": report.phase, "message": report.message,
            "previous": report.previous}


_MAX_UPGRADE_MESSAGE = 2000


def parse_agent_upgrade(value: Any) -> AgentUpgradeReport | None:
    """A reported `agentUpgrade` -> AgentUpgradeReport, or None if absent or malformed
    (a node's report is input from the network: a bad field is ignored, never raised).
    A message longer than 2000 characters keeps its start, where the cause is."""
    if not isinstance(value, dict):
        return None
    version, phase = value.get("version"), value.get("phase")
    if not isinstance(version, str) or not version or phase not in UPGRADE_PHASES:
        return None
    message = value.get("message")
    previous = value.get("previous")
    return AgentUpgradeReport(
        version=version[:validate.MAX_NAME], phase=phase,
        message=message[:_MAX_UPGRADE_MESSAGE] if isinstance(message, str) else "",
        previous=previous[:validate.MAX_NAME] if isinstance(previous, str) and previous
        else None)


# -- the node's brokers (proposal 0007) ---------------------------------------------------

BROKER_MAP_KEY = "broker/-/map"
"""The desired key listing the brokers a node tries, home first (one per node)."""


@dataclass(frozen=True)
class BrokerMapEntry:
    """What `broker/-/map` tells a node."""

    version: int
    """The map's version (a newer one replaces the list the node had)."""
    urls: tuple[str, ...]
    """`mqtts://host:port` (or `mqtt://` in insecure mode), home first."""


def broker_map_entry(version: int, urls: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The desired-set value of `broker/-/map` (the cloud's side)."""
    return {"version": version, "urls": list(urls)}


def parse_broker_map_entry(k: str, value: Any) -> BrokerMapEntry:
    """A `broker/-/map` desired value -> BrokerMapEntry; raises ObjectError naming the
    field if it is malformed (version not a whole number >= 1, urls empty, too many or
    not broker URLs). URLs come back in their stored form (port written out)."""
    if not isinstance(value, dict):
        raise ObjectError(f"{k}: value must be a mapping, not {type(value).__name__}")
    version = value.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ObjectError(f"{k}: version must be a whole number >= 1, not {version!r}",
                          field="version")
    urls = value.get("urls")
    limit = brokermap.MAX_BROKERS * brokermap.MAX_URLS
    if not isinstance(urls, list) or not urls or len(urls) > limit:
        raise ObjectError(f"{k}: urls must list 1 to {limit} broker URLs", field="urls")
    try:
        out = tuple(brokermap.normal_url(u, f"urls[{i}]") for i, u in enumerate(urls))
    except ObjectError as exc:
        raise ObjectError(f"{k}: {exc.message}", field="urls") from None
    return BrokerMapEntry(version=version, urls=out)
