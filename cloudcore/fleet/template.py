"""A workload's pod template, prepared once for the many pods made from it, and the
compact record of a DaemonSet's pod (`DaemonPod`, proposal 0004): a DaemonSet's pod is
its template on one node plus a status, so 100,000 of them need not be 100,000 full
`Pod` objects."""

from __future__ import annotations

import functools
import sys
from typing import Any

import msgspec

from cloudcore.fleet import naming
from cloudcore.fleet.noderecord import NodeRecord
from cloudcore.fleet.uids import pack_uid, uid_text
from shared.entries import may_reference, pod_revision
from shared.models import Pod, PodStatus, PodTemplate, spec_hash

SPECS_KEPT = 1024
"""Specs on a node (`Template.spec_on`) kept per template, the most recent."""


class Template:
    """A workload's pod template, prepared once for the many pods made from it (a
    DaemonSet over 100k nodes makes 100k pods of one template)."""

    def __init__(self, tpl: PodTemplate) -> None:
        self.tpl = tpl
        self.thash = spec_hash(tpl.dump())

    @functools.cached_property
    def spec(self) -> dict[str, Any]:
        return self.tpl.spec.model_dump()

    def spec_on(self, node: str | None) -> Any:
        """The template's spec (a frozen `shared.pods.PodSpec`) with `nodeName`: a
        shallow copy that shares every part with the template's, so 100k pods of one
        template hold one set of containers, volumes and tolerations."""
        spec = self.tpl.spec
        if node is None:
            return spec
        made = self._on_nodes
        on = made.get(node)
        if on is None:
            # A copy with its nodeName set: the template's spec is valid and no rule of
            # `PodSpec.__post_init__` reads nodeName, so it is not run again (`replace`
            # ran it: 8 us, where a compact DaemonSet pod's spec is made on every read).
            # The last SPECS_KEPT are kept: placing a pod reads its spec several times.
            if len(made) >= SPECS_KEPT:
                made.clear()
            on = made[node] = spec.__copy__()
            msgspec.structs.force_setattr(on, "node_name", node)
        return on

    @functools.cached_property
    def _on_nodes(self) -> dict[str, Any]:
        return {}

    @functools.cached_property
    def may_reference(self) -> bool:
        """Whether pods of it may mount or read ConfigMaps/Secrets (most do not)."""
        return may_reference(self.tpl.spec)

    @functools.cached_property
    def revision(self) -> str:
        """What every pod of it runs: the same spec but nodeName."""
        return pod_revision(self.tpl.spec.dump())

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        """The labels every pod of the template carries: one dict for all of them (pod
        labels are never changed in place; a pod made anew gets this dict again)."""
        return {sys.intern(k): sys.intern(v) for k, v in self.tpl.metadata.labels.items()}

    def annotations(self, owner: str) -> dict[str, str]:
        """The annotations every pod of the template and `owner` starts with (the
        template's, OWNER, TEMPLATE_HASH and REVISION): one dict shared by the siblings
        until one of them gets its own. Pod annotations are copied on write
        (`with_annotation`), never changed in place."""
        shared = self._annotations.get(owner)
        if shared is None:
            shared = self._annotations[owner] = {
                **self.tpl.metadata.annotations, naming.OWNER: sys.intern(owner),
                naming.TEMPLATE_HASH: sys.intern(self.thash),
                naming.REVISION: sys.intern(self.revision)}
        return shared

    @functools.cached_property
    def _annotations(self) -> dict[str, dict[str, str]]:
        return {}

    @functools.cached_property
    def _bases(self) -> dict[str, PodBase]:
        return {}

    def daemon_pod(self, *, ns: str, name: str, owner: str, node: str | None) -> DaemonPod:
        """The compact record of a DaemonSet's pod on `node` (or of a Deployment's pod,
        `node` None): what `pod` would make, in 88 bytes (`DaemonPod`)."""
        base = self._bases.get(owner)
        if base is None:
            base = self._bases[owner] = PodBase(self, ns, owner)
        return DaemonPod(base, name, node)

    def pod(self, *, ns: str, name: str, owner: str, node: str | None) -> Pod | DaemonPod:
        """A pod of the template: a DaemonSet's pod on its node, or a Deployment's pod
        (no nodeName: the scheduler binds it; issue 16, 100,000 replicas), is a compact
        `DaemonPod`, any other a `Pod`."""
        if (node is not None and owner.startswith("DaemonSet/")) or (
                node is None and owner.startswith("Deployment/")):
            return self.daemon_pod(ns=ns, name=name, owner=owner, node=node)
        # One validation builds the pod's metadata; the spec is frozen, so the pod takes
        # the template's own parts (validation passes a PodSpec instance through). Its
        # labels and annotations are then the dicts shared by every pod of the template.
        annotations = self.annotations(owner)
        pod = Pod.model_validate({
            "metadata": {"name": name, "namespace": sys.intern(ns), "labels": {},
                         "annotations": {}},
            "spec": self.spec_on(node),
        })
        meta = pod.metadata.__dict__
        meta["labels"], meta["annotations"] = self.labels, annotations
        return pod


def with_annotation(pod: Any, key: str, value: str) -> None:
    """Set one annotation of a pod, copy on write: a pod's annotations dict may be
    shared with its siblings (`Template.annotations`), so it is replaced, never
    changed in place. No-op if it already has that value."""
    ann = pod.metadata.annotations
    if ann.get(key) != value:
        pod.metadata.annotations = {**ann, key: value}


class PodBase:
    """What every pod of one template and one DaemonSet shares: the template, the
    namespace, the labels and the starting annotations (`Template.annotations`).
    The store keeps it once, as a part (`part`, `objects.Parts`), which each pod's
    stored record names by `pid`."""

    __slots__ = ("annotations", "labels", "namespace", "pid", "template")

    def __init__(self, template: Template, namespace: str, owner: str) -> None:
        self.template = template
        self.namespace = sys.intern(namespace)
        self.labels = template.labels
        self.annotations = template.annotations(owner)
        self.pid: str | None = None
        """The id of `part` in the store (`objects.Parts.of` sets it)."""

    def part(self) -> dict[str, Any]:
        """What the stored record of each pod of it leaves out (`DaemonPod.stored`)."""
        return {"metadata": {"namespace": self.namespace, "labels": self.labels,
                             "annotations": self.annotations},
                "spec": self.template.tpl.spec.dump()}


class DaemonPod:
    """A DaemonSet's pod kept compact (proposal 0004): its name, its node, the
    `PodBase` of its template, its status and uid, and the one annotation of its own
    that the cloud writes (`SCHEDULED`): 88 bytes where a `Pod` took about a kilobyte.
    Everything else is derived on demand and is what the `Pod` made by `Template.pod`
    would hold: `metadata` (a view), `spec` (the template's spec on the
    node: `Template.spec_on`). API reads, lists, watches and the store see the full
    `Pod` (`materialise`, `record`).

    Writes the fleet makes to a pod work as on a `Pod`: `status` is replaced (never
    edited in place), annotations are replaced as a whole (`with_annotation`); an
    annotations dict that is not the template's plus SCHEDULED is kept as the pod's
    own."""

    __slots__ = ("base", "name", "node", "own", "puid", "scheduled", "status")

    kind = "Pod"
    api_version = "v1"

    def __init__(self, base: PodBase, name: str, node: str | None,
                 status: PodStatus | None = None) -> None:
        self.base = base
        self.name = name
        self.node = sys.intern(node) if node is not None else None  # None: a replica
        self.status = status if status is not None else _NEW_STATUS
        self.scheduled: str | None = None
        self.own: dict[str, str] | None = None
        self.puid: str | bytes | None = None
        """The uid as kept (`pack_uid`: 16 bytes for a canonical UUID); `uid` reads it."""

    @property
    def uid(self) -> str | None:
        return uid_text(self.puid)

    @uid.setter
    def uid(self, value: str | None) -> None:
        self.puid = pack_uid(value)

    # -- what a Pod shows ----------------------------------------------------------------

    @property
    def metadata(self) -> DaemonPodMeta:
        return DaemonPodMeta(self)

    @property
    def spec(self) -> Any:
        return self.base.template.spec_on(self.node)

    @property
    def annotations(self) -> dict[str, str]:
        """The pod's annotations (a new dict when SCHEDULED is set: do not change it)."""
        if self.own is not None:
            return self.own
        shared, scheduled = self.base.annotations, self.scheduled
        return shared if scheduled is None else {**shared, naming.SCHEDULED: scheduled}

    @annotations.setter
    def annotations(self, value: dict[str, str]) -> None:
        shared = self.base.annotations
        scheduled = value.get(naming.SCHEDULED)
        if (naming.SCHEDULED not in shared
                and len(value) - (naming.SCHEDULED in value) == len(shared)
                and all(value.get(k) == v for k, v in shared.items())):
            self.own, self.scheduled = None, scheduled
        else:
            self.own, self.scheduled = dict(value), None

    # -- the full object -----------------------------------------------------------------

    def materialise(self) -> Pod:
        """The `Pod` this record stands for (a new object: changing it changes nothing
        here)."""
        base = self.base
        pod = Pod.model_validate({
            "metadata": {"name": self.name, "namespace": base.namespace, "labels": {},
                         "annotations": {}},
            "spec": self.spec,
        })
        meta = pod.metadata.__dict__
        meta["labels"], meta["annotations"] = dict(base.labels), dict(self.annotations)
        meta["uid"] = self.uid
        pod.__dict__["status"] = self.status
        return pod

    def record(self) -> dict[str, Any]:
        """What the store keeps of the pod: equal to `objects.record_of` of the
        materialised `Pod`, without making it."""
        base = self.base
        meta = {"name": self.name, "namespace": base.namespace, "labels": base.labels,
                "annotations": self.annotations}
        if self.uid is not None:
            meta["uid"] = self.uid
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                "spec": self.spec.dump(),
                "status": self.status.model_dump(mode="json", by_alias=True,
                                                 exclude_none=True)}

    def stored(self, pid: str) -> dict[str, Any]:
        """The compact form the store keeps (proposal 0004): the pod's own fields and
        `pid`, the id of its `PodBase.part`; `joined` makes `record()` of the two and
        the pod's name (the store's key has it). A SCHEDULED annotation equal to the
        status's message (as placement sets them) is kept once."""
        out: dict[str, Any] = {"part": pid, "node": self.node}
        if self.puid is not None:
            out["uid"] = self.puid  # 16 bytes (msgpack bin) for a canonical UUID
        status = self.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if self.own is not None:
            out["annotations"] = self.own
        elif self.scheduled is not None:
            out["scheduled"] = (True if self.scheduled == status.get("message")
                                else self.scheduled)
        out["status"] = status
        return out

    @staticmethod
    def joined(raw: dict[str, Any], part: dict[str, Any], name: str) -> dict[str, Any]:
        """`record()` again, from a `stored` record, its part and the pod's name."""
        base = part["metadata"]
        status = raw.get("status", {})
        annotations = raw.get("annotations")
        if annotations is None:
            annotations = base["annotations"]
            scheduled = raw.get("scheduled")
            if scheduled is True:
                scheduled = status.get("message")
            if isinstance(scheduled, str):
                annotations = {**annotations, naming.SCHEDULED: scheduled}
        meta = {"name": name, "namespace": base["namespace"],
                "labels": base["labels"], "annotations": annotations}
        if raw.get("uid") is not None:
            meta["uid"] = uid_text(raw["uid"])
        spec = part["spec"]
        if raw.get("node") is not None:  # a Deployment's pod has none (it is bound)
            spec = {**spec, "nodeName": raw["node"]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
                "status": status}

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        return self.materialise().model_dump(**kwargs)

    def dump(self) -> dict[str, Any]:
        return self.materialise().dump()

    def model_copy(self, **kwargs: Any) -> Pod:
        return self.materialise().model_copy(**kwargs)

    def __eq__(self, other: object) -> bool:
        """Equal to the `Pod` it stands for, and to a record of equal content."""
        if isinstance(other, DaemonPod | Pod):
            return self.materialise() == as_model(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a Pod: mutable, not hashable

    def __repr__(self) -> str:
        return f"DaemonPod({self.base.namespace}/{self.name} on {self.node})"


class DaemonPodMeta:
    """`DaemonPod.metadata`: a view of the pod's fields (generation and creation time
    are None, as on the `Pod` that `Template.pod` makes); annotations and uid may be
    replaced."""

    __slots__ = ("_pod",)

    generation = None
    creation_timestamp = None

    def __init__(self, pod: DaemonPod) -> None:
        self._pod = pod

    @property
    def name(self) -> str:
        return self._pod.name

    @property
    def namespace(self) -> str:
        return self._pod.base.namespace

    @property
    def labels(self) -> dict[str, str]:
        return self._pod.base.labels

    @property
    def uid(self) -> str | None:
        return self._pod.uid

    @uid.setter
    def uid(self, value: str | None) -> None:
        self._pod.uid = value

    @property
    def annotations(self) -> dict[str, str]:
        return self._pod.annotations

    @annotations.setter
    def annotations(self, value: dict[str, str]) -> None:
        self._pod.annotations = value


def _new_status() -> PodStatus:
    status = PodStatus()
    status.__dict__["container_statuses"] = _NO_CONTAINERS
    return status


_NO_CONTAINERS: list[Any] = []
_NEW_STATUS = _new_status()
"""The status of every DaemonSet pod not yet scheduled: one object (statuses are
replaced, never edited in place)."""


def as_model(obj: Any) -> Any:
    """`obj`, or the full object of a compact record (a `DaemonPod`'s `Pod`, a
    `noderecord.NodeRecord`'s `Node`): what pydantic serialises."""
    return obj.materialise() if isinstance(obj, DaemonPod | NodeRecord) else obj
