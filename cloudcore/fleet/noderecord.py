"""A node as cloudcore keeps it in memory: a compact record (issue 13 part 3).

`NodeRecord` stands for a `shared.models.Node`. It has the attributes the fleet and
the cluster read and write (`metadata.name/labels/annotations/uid/...`, `spec`,
`status.<field>`), so code written for a `Node` runs on it unchanged, but it is two
slotted objects instead of three pydantic models with a `__dict__` each:

- the record: name, labels (the node's own dict, strings interned), annotations and
  spec (shared with every node that has equal ones: `Nodes._annotations`,
  `nodes._PLAIN_SPEC`), uid kept as the 16 bytes of its UUID (`uids.pack_uid`),
  creation time (interned), generation, namespace; `metadata` is the record itself;
- `NodeState`, its status: `NodeStatus`'s fields in slots; capacity / allocatable
  dicts are shared by nodes of one hardware shape, usage by nodes without telemetry.

Shared dicts are replaced, never changed in place. What the API, watches and the
store see is the full `Node` (`materialise`, `record`): the same JSON as before.
"""

from __future__ import annotations

from typing import Any

from cloudcore.fleet.uids import pack_uid, uid_text
from shared.models import Node, NodeSpec, NodeStatus, ObjectMeta

_set = object.__setattr__

STATUS_FIELDS = ("capacity", "allocatable", "arch", "os", "agent_version", "ready", "reason",
                 "last_seen", "desired_gen", "acked_gen", "usage", "agent_upgrade")
"""`NodeStatus`'s fields, in its order (a test keeps the two equal)."""

_JSON = {"agent_version": "agentVersion", "last_seen": "lastSeen",
         "desired_gen": "desiredGen", "acked_gen": "ackedGen",
         "agent_upgrade": "agentUpgrade"}
_STATUS_KEYS = tuple((f, _JSON.get(f, f)) for f in STATUS_FIELDS)

NO_VALUES: dict[str, Any] = {}
"""The capacity, allocatable and usage of a node that has not reported them: one
dict for all (they are replaced, never changed in place)."""


class NodeState:
    """A compact node's status: `NodeStatus`'s fields and defaults, in slots."""

    __slots__ = STATUS_FIELDS

    def __init__(self) -> None:
        self.capacity: dict[str, int] = NO_VALUES
        self.allocatable: dict[str, int] = NO_VALUES
        self.arch = "amd64"
        self.os = "linux"
        self.agent_version: str | None = None
        self.ready = "Unknown"
        self.reason: str | None = None
        self.last_seen: float | None = None
        self.desired_gen = 0
        self.acked_gen = 0
        self.usage: dict[str, float] = NO_VALUES
        self.agent_upgrade: dict[str, Any] | None = None

    @classmethod
    def of(cls, status: NodeStatus) -> NodeState:
        st = cls()
        for f in STATUS_FIELDS:
            setattr(st, f, getattr(status, f))
        return st

    def materialise(self) -> NodeStatus:
        """The `NodeStatus` this stands for, sharing its dicts (do not change them)."""
        return _built(NodeStatus, {f: getattr(self, f) for f in STATUS_FIELDS})

    def dump(self) -> dict[str, Any]:
        """`NodeStatus.model_dump(mode="json", by_alias=True, exclude_none=True)`."""
        out: dict[str, Any] = {}
        for f, key in _STATUS_KEYS:
            v = getattr(self, f)
            if v is not None:
                out[key] = dict(v) if isinstance(v, dict) else v
        return out

    def __repr__(self) -> str:
        return " ".join(f"{f}={getattr(self, f)!r}" for f in STATUS_FIELDS)


class NodeRecord:
    """A `Node` kept compact (the module docstring). `kind` and `api_version` are
    the class's; `metadata` is the record itself."""

    __slots__ = ("annotations", "creation_timestamp", "generation", "labels", "name",
                 "namespace", "puid", "spec", "status")

    kind = "Node"
    api_version = "v1"

    def __init__(self, name: str, *, labels: dict[str, str], annotations: dict[str, str],
                 spec: NodeSpec, status: NodeState | None = None,
                 namespace: str = "default") -> None:
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.annotations = annotations
        self.spec = spec
        self.status = status if status is not None else NodeState()
        self.puid: str | bytes | None = None
        """The uid as kept (`uids.pack_uid`: 16 bytes for a canonical UUID)."""
        self.creation_timestamp: str | None = None
        self.generation: int | None = None

    @classmethod
    def of(cls, node: Node) -> NodeRecord:
        """The record of a `Node` (its dicts taken as they are)."""
        meta = node.metadata
        rec = cls(meta.name, labels=meta.labels, annotations=meta.annotations,
                  spec=node.spec, status=NodeState.of(node.status),
                  namespace=meta.namespace)
        rec.puid = pack_uid(meta.uid)
        rec.creation_timestamp = meta.creation_timestamp
        rec.generation = meta.generation
        return rec

    @property
    def metadata(self) -> NodeRecord:
        """The record itself: it has `ObjectMeta`'s attributes (name, namespace,
        labels, annotations, uid, generation, creation_timestamp), assignable as there;
        labels and annotations are the record's dicts, not copies."""
        return self

    @property
    def uid(self) -> str | None:
        return uid_text(self.puid)

    @uid.setter
    def uid(self, value: str | None) -> None:
        self.puid = pack_uid(value)

    # -- the full object -----------------------------------------------------------------

    def materialise(self) -> Node:
        """The `Node` this record stands for: a new object sharing the record's dicts
        and spec (for serialising; changing it changes nothing here, but do not change
        its dicts)."""
        meta = _built(ObjectMeta, {
            "name": self.name, "namespace": self.namespace, "labels": self.labels,
            "annotations": self.annotations, "uid": self.uid,
            "generation": self.generation,
            "creation_timestamp": self.creation_timestamp})
        return _built(Node, {"api_version": "v1", "kind": "Node", "metadata": meta,
                             "spec": self.spec, "status": self.status.materialise()})

    def record(self) -> dict[str, Any]:
        """`objects.dump_object` of the materialised `Node` (what the store keeps),
        without making it."""
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                                "labels": dict(self.labels),
                                "annotations": dict(self.annotations)}
        uid = self.uid
        if uid is not None:
            meta["uid"] = uid
        if self.generation is not None:
            meta["generation"] = self.generation
        if self.creation_timestamp is not None:
            meta["creationTimestamp"] = self.creation_timestamp
        return {"apiVersion": "v1", "kind": "Node", "metadata": meta,
                "spec": _spec_json(self.spec), "status": self.status.dump()}

    def __repr__(self) -> str:
        return f"NodeRecord({self.name})"


_SPEC_JSON: dict[int, tuple[NodeSpec, dict[str, Any]]] = {}


def _spec_json(spec: NodeSpec) -> dict[str, Any]:
    """A spec's JSON; cached for the few shared spec objects (a node's own spec, with
    taints or cordoned, is dumped each time)."""
    hit = _SPEC_JSON.get(id(spec))
    if hit is not None and hit[0] is spec:
        return {**hit[1], "taints": [dict(t) for t in hit[1]["taints"]]}
    out: dict[str, Any] = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    if not spec.taints and not spec.unschedulable and len(_SPEC_JSON) < 64:
        _SPEC_JSON[id(spec)] = (spec, out)
        return {**out, "taints": []}
    return out


def _built(cls: Any, values: dict[str, Any]) -> Any:
    """An instance of pydantic model `cls` holding `values` (every field, already valid:
    they come from a record that was validated when it was made), without validating
    again; as `model_construct` does, but for all fields at once."""
    obj = cls.__new__(cls)
    _set(obj, "__dict__", values)
    _set(obj, "__pydantic_fields_set__", set(values))
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj
