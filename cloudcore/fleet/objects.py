"""The object tables of the fleet: one home for every object the API shows.

`Objects` owns the in-memory table of each kind (nodes, pods, workloads, configs,
namespaces), their persistence through the small `Persister` interface (write-behind,
batched), and the change notifications every save or delete sends: to watch streams
(`WatchHub`) and to whoever subscribed to the change feed (the API's list cache,
`cloudcore.api.listcache`). Reads (get / list / page / match), identity stamping and
the comparison `apply` uses to tell "unchanged" apart live here too.

It knows nothing about placement, desired sets or controllers: the parts above it
(`placement.py`, `desired.py`, `nodes.py`, `workloads.py`) change objects in place and
call `save`, so the tables stay the single source of truth and each part keeps only
its own indexes.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import time
import typing
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgpack
from pydantic import BaseModel

from cloudcore.errors import Conflict, NotFound
from cloudcore.fleet import naming
from cloudcore.fleet.events import EventLog
from cloudcore.fleet.noderecord import NodeRecord
from cloudcore.fleet.template import DaemonPod, as_model
from cloudcore.fleet.watch import WatchHub
from shared.errors import ObjectError
from shared.kinds import ALL as KINDS_IN_ORDER
from shared.kinds import KIND_DB, NAMESPACED_KINDS, REDACTED
from shared.models import (
    CLUSTER_KINDS,
    SYSTEM_PRIORITY_CLASSES,
    AgentUpgrade,
    ConfigMap,
    DaemonSet,
    Deployment,
    Namespace,
    NamespaceMeta,
    Pod,
    PriorityClass,
    Secret,
)

log = logging.getLogger("cloudcore.fleet")

ALWAYS_NAMESPACES = ("default", "kube-system")
"""Namespaces that always exist (created at load when absent) and cannot be deleted, as
in Kubernetes."""

Key = tuple[str, str]  # (namespace, name)
Action = Literal["created", "configured", "unchanged"]
ChangeSink = Callable[[str, Hashable], None]
"""Told (kind, key) whenever an object is saved or deleted."""
Filter = Callable[[Any, Any], bool]
"""(key, object) -> keep it: an extra filter a caller adds to `list` / `page`."""


class Table(dict):  # type: ignore[type-arg]
    """A dict that counts insertions and removals, so the sorted key list of a kind
    (pagination, lists) is recomputed only when the set of keys changed."""

    __slots__ = ("version",)

    def __init__(self) -> None:
        super().__init__()
        self.version = 0

    def __setitem__(self, key: Any, value: Any) -> None:
        if key not in self:
            self.version += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self.version += 1

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            self.version += 1
        return super().pop(key, *default)


class Persister(Protocol):
    """What the fleet needs from the store (write-behind, batched)."""

    @property
    def epoch(self) -> str: ...
    def put(self, db: str, key: str, value: Any) -> None: ...
    def put_later(self, db: str, key: str, producer: Callable[[], Any]) -> None: ...
    def delete(self, db: str, key: str) -> None: ...


@dataclass(frozen=True)
class ApplyResult:
    kind: str
    namespace: str | None
    name: str
    action: Action

    def dump(self) -> dict[str, Any]:
        return {"kind": self.kind, "namespace": self.namespace, "name": self.name,
                "action": self.action}


def dump_object(obj: Any) -> dict[str, Any]:
    """An object as the API shows it: Kubernetes names, status included (a compact
    `DaemonPod` as its full `Pod`)."""
    out: dict[str, Any] = as_model(obj).model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


_ALL_FIELDS: dict[type, set[str]] = {}
_NESTED: dict[type, tuple[str, ...]] = {}


def _holds_model(t: Any) -> bool:
    if isinstance(t, type):
        return issubclass(t, BaseModel)
    return any(_holds_model(a) for a in typing.get_args(t))


def share_fields_set(model: BaseModel) -> None:
    """Give `model` and the models in it the one "fields set" of their class, holding
    every field name. pydantic keeps, per instance, the set of fields given or
    assigned (only `exclude_unset` and `model_fields_set` read it; cloudcore uses
    neither); for the 100,000 nodes and pods the fleet keeps, those sets were a third
    of a node's memory. Assigning a field adds its name: a no-op on a set that holds
    every name, so the shared set never changes."""
    cls = type(model)
    names = _ALL_FIELDS.get(cls)
    if names is None:
        names = _ALL_FIELDS[cls] = set(cls.model_fields)
        _NESTED[cls] = tuple(n for n, f in cls.model_fields.items()
                             if _holds_model(f.annotation))
    if model.__pydantic_fields_set__ is not names:
        object.__setattr__(model, "__pydantic_fields_set__", names)
    values = model.__dict__
    for name in _NESTED[cls]:
        v = values.get(name)
        if isinstance(v, BaseModel):
            share_fields_set(v)
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, BaseModel):
                    share_fields_set(x)


def record_of(obj: Any) -> dict[str, Any]:
    """An object as the store keeps it: what `load` validates back into an equal
    object. A pod's spec is written by its own `dump()` (defaults left out, one
    msgspec call) instead of field by field: it is most of a pod and pods are most of
    the store's writes. A compact `DaemonPod` or `NodeRecord` writes the same record
    (`record`)."""
    if isinstance(obj, DaemonPod | NodeRecord):
        return obj.record()
    if isinstance(obj, Pod):
        out: dict[str, Any] = obj.model_dump(mode="json", by_alias=True, exclude_none=True,
                                             exclude={"spec"})
        out["spec"] = obj.spec.dump()
        return out
    return dump_object(obj)


PARTS_DB = "parts"
"""The store's database of shared parts (`Parts`)."""


def part_id(value: Any) -> str:
    """The content address of a part: 16 hex digits of a hash of its msgpack bytes."""
    return hashlib.blake2b(msgpack.packb(value, use_bin_type=True), digest_size=8).hexdigest()


class Shared(Protocol):
    """Something whose part many records share (`Parts.of`): `pid` None until known."""

    pid: str | None

    def part(self) -> Any: ...


class Parts:
    """Values that many stored records share, stored once (proposal 0004: the store's
    form compact too): a DaemonSet pod's template part (`PodBase.part`) and the
    template part of its desired entry (`desired.EntryPart`). Each is kept in the
    store's `parts` database under a hash of its content (`part_id`); records hold
    that id instead of the value.

    A part is enqueued for writing the first time this process refers to it
    (`written`), which is before any record that refers to it is enqueued, so no
    store batch commits a reference to a part that is not written in it or earlier.
    Parts no record refers to any more are dropped at the next load (`collect`)."""

    def __init__(self, store: Persister) -> None:
        self.store = store
        self._have: dict[str, Any] = {}
        """id -> value of every part loaded or written by this process."""
        self._used: set[str] = set()

    def of(self, holder: Shared) -> str:
        """The id of `holder`'s part, written to the store the first time."""
        pid = holder.pid
        if pid is None:
            value = holder.part()
            pid = holder.pid = part_id(value)
            self.written(pid, value)
        return pid

    def written(self, pid: str, value: Any) -> str:
        """Make sure part `pid` (`part_id(value)`) is in the store; returns `pid`."""
        if pid not in self._have:
            self._have[pid] = value
            self.store.put(PARTS_DB, pid, value)
        return pid

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        """The parts of the store (`Objects.load` calls it first)."""
        self._have = dict(records.get(PARTS_DB, {}))
        self._used = set()

    def get(self, pid: Any) -> Any | None:
        """A loaded part (None: there is none by that id); marks it used."""
        value = self._have.get(pid) if isinstance(pid, str) else None
        if value is not None:
            self._used.add(pid)
        return value

    def collect(self) -> int:
        """After every loader has read its records: delete the parts none of them
        asked for (`get`). Returns how many went."""
        gone = [pid for pid in self._have if pid not in self._used]
        for pid in gone:
            del self._have[pid]
            self.store.delete(PARTS_DB, pid)
        self._used = set()
        return len(gone)


def loaded_pod(key: str, raw: dict[str, Any], parts: Parts) -> dict[str, Any] | None:
    """A pod's record as `record_of` makes it, from what the store holds under `key`
    (`ns/name`): a compact record (`DaemonPod.stored`) is joined to its part. None if
    its part is missing."""
    pid = raw.get("part")
    if pid is None:
        return raw
    part = parts.get(pid)
    if part is None:
        return None
    return DaemonPod.joined(raw, part, key.partition("/")[2])


class Objects:
    """Every object of the fleet by kind, persisted and watched."""

    def __init__(self, *, store: Persister, events: EventLog,
                 watches: WatchHub | None = None) -> None:
        self.store = store
        self.events = events
        self.watches = watches or WatchHub()
        self.nodes: dict[str, NodeRecord] = Table()  # compact: `noderecord`
        self.pods: dict[Key, Pod] = Table()
        self.daemonsets: dict[Key, DaemonSet] = Table()
        self.deployments: dict[Key, Deployment] = Table()
        self.configmaps: dict[Key, ConfigMap] = Table()
        self.secrets: dict[Key, Secret] = Table()
        self.namespaces: dict[str, Namespace] = Table()
        self.agentupgrades: dict[str, AgentUpgrade] = Table()
        self.priorityclasses: dict[str, PriorityClass] = Table()
        self._tables: dict[str, dict[Any, Any]] = {
            "Node": self.nodes, "Pod": self.pods, "DaemonSet": self.daemonsets,
            "Deployment": self.deployments, "ConfigMap": self.configmaps,
            "Secret": self.secrets, "Namespace": self.namespaces,
            "AgentUpgrade": self.agentupgrades, "PriorityClass": self.priorityclasses}
        self._sinks: list[ChangeSink] = []
        self._sorted: dict[str, tuple[int, list[Any]]] = {}
        self.parts = Parts(store)

    # -- loading ------------------------------------------------------------------------

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        """Rebuild the tables of every kind but nodes (`Nodes.load`) from the store."""
        self.parts.load(records)
        for skey_, raw in records.get("pods", {}).items():
            full = loaded_pod(skey_, raw, self.parts)
            if full is None:  # its part is gone: the controller makes the pod again
                log.error("store: pod %s refers to part %s, which is missing; dropped "
                          "(its DaemonSet makes it again)", skey_, raw.get("part"))
                continue
            pod = Pod.model_validate(full)
            share_fields_set(pod)
            self.pods[(pod.metadata.namespace, pod.metadata.name)] = pod
        for db, target, model in (("daemonsets", self.daemonsets, DaemonSet),
                                  ("deployments", self.deployments, Deployment),
                                  ("configmaps", self.configmaps, ConfigMap),
                                  ("secrets", self.secrets, Secret)):
            for raw in records.get(db, {}).values():
                obj = model.model_validate(raw)
                share_fields_set(obj)
                target[(obj.metadata.namespace, obj.metadata.name)] = obj  # type: ignore[attr-defined]
        for name, raw in records.get("namespaces", {}).items():
            self.namespaces[name] = Namespace.model_validate(raw)
        for name, raw in records.get("agentupgrades", {}).items():
            self.agentupgrades[name] = AgentUpgrade.model_validate(raw)
        for name, raw in records.get("priorityclasses", {}).items():
            self.priorityclasses[name] = PriorityClass.model_validate(raw)
        self.adopt_namespaces()
        self.adopt_priority_classes()

    def adopt_priority_classes(self) -> list[str]:
        """Create Kubernetes' built-in PriorityClasses (system-node-critical,
        system-cluster-critical) when absent, as Kubernetes does at start; returns the
        names created."""
        created = [n for n in SYSTEM_PRIORITY_CLASSES if n not in self.priorityclasses]
        for name in created:
            self.put(PriorityClass(metadata=NamespaceMeta(name=name),
                                   value=SYSTEM_PRIORITY_CLASSES[name],
                                   description="Kubernetes' built-in class (edgefed "
                                               "creates it)"))
            log.info("created PriorityClass %s (built in)", name)
        return created

    def adopt_namespaces(self) -> list[str]:
        """Create the Namespace objects that must exist and do not: `default` and
        `kube-system`, and every namespace an object already lives in (stores written
        before namespaces had to exist). Created ones are persisted, so this happens
        once per store; each is logged. Returns the names created."""
        used = set(ALWAYS_NAMESPACES)
        for kind in NAMESPACED_KINDS:
            used.update(ns for ns, _ in self._tables[kind])
        created = sorted(used - set(self.namespaces))
        for name in created:
            self.create_namespace(name, why=(
                "it always exists" if name in ALWAYS_NAMESPACES
                else "objects stored before namespaces had to exist live in it"))
        return created

    def create_namespace(self, name: str, *, why: str) -> None:
        """Store a Namespace without labels (its pod security level is the default);
        logged and recorded as an event with `why`."""
        self.put(Namespace(metadata=NamespaceMeta(name=name)))
        log.info("created Namespace %s: %s", name, why)
        self.events.add(type="Normal", reason="NamespaceCreated", obj=f"Namespace/{name}",
                        message=why)

    def namespace_exists(self, name: str) -> bool:
        return name in self.namespaces or name in ALWAYS_NAMESPACES

    def check_namespace_deletable(self, name: str) -> None:
        """Raise Conflict unless the namespace may be deleted: `default` and
        `kube-system` never, any other only when nothing lives in it (edgefed does not
        delete a namespace's objects with it: docs/cloudcore.md)."""
        if name in ALWAYS_NAMESPACES:
            raise Conflict(f'namespaces "{name}" cannot be deleted: it always exists')
        held = []
        for info in KINDS_IN_ORDER:
            if not info.namespaced:
                continue
            keys = self.sorted_keys(info.kind)
            lo = bisect.bisect_left(keys, (name, ""))
            hi = bisect.bisect_left(keys, (name + "\x00", ""))
            if hi > lo:
                held.append(f"{hi - lo} {info.singular if hi - lo == 1 else info.plural}")
        if held:
            raise Conflict(f'namespaces "{name}" is not empty ({", ".join(held)}): delete '
                           "what is in it first; edgefed does not delete a namespace's "
                           "objects with it")

    # -- change feed --------------------------------------------------------------------

    def subscribe(self, sink: ChangeSink) -> None:
        """Call `sink(kind, key)` after every save or delete from now on."""
        self._sinks.append(sink)

    def unsubscribe(self, sink: ChangeSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def changed(self, kind: str, key: Any, *,
                deleted: Callable[[], dict[str, Any]] | None = None) -> None:
        """An object was saved or deleted: tell the change feed and its watchers."""
        for sink in self._sinks:
            sink(kind, key)
        self.watches.touch(kind, key, deleted=deleted)

    # -- writes -------------------------------------------------------------------------

    def save(self, kind: str, key: Any) -> None:
        """Persist an object changed in place (written behind) and announce it."""
        obj = self._tables[kind][key]
        if kind == "Pod":  # pods get new status objects on reports
            status = obj.status
            if status.__pydantic_fields_set__ is not _ALL_FIELDS.get(type(status)):
                share_fields_set(status)
            if (not isinstance(obj, DaemonPod)
                    and obj.__pydantic_fields_set__ is not _ALL_FIELDS.get(type(obj))):
                share_fields_set(obj)
        self.store.put_later(KIND_DB[kind], skey(key), self._record(obj))
        self.changed(kind, key)

    def _record(self, obj: Any) -> Callable[[], dict[str, Any]]:
        """What makes the store's record of `obj` at commit time: `record_of`, but a
        compact `DaemonPod` as its own fields and the id of its template part
        (`DaemonPod.stored`; `loaded_pod` joins them again). The part is enqueued
        now, before the record."""
        if isinstance(obj, DaemonPod):
            pid = self.parts.of(obj.base)
            return lambda: obj.stored(pid)
        return lambda: record_of(obj)

    def put(self, obj: Any) -> Any:
        """Store a new or replaced object (identity carried over from the one it
        replaces, generation bumped), persist and announce it; returns its key."""
        kind = obj.kind
        key = key_of(kind, getattr(obj.metadata, "namespace", None), obj.metadata.name)
        table = self._tables[kind]
        stamp(obj, table.get(key))
        table[key] = obj
        self.store.put_later(KIND_DB[kind], skey(key), self._record(obj))
        self.changed(kind, key)
        return key

    def remove(self, kind: str, key: Any) -> Any | None:
        """Delete an object from its table and the store; returns it (None: absent)."""
        obj = self._tables[kind].pop(key, None)
        if obj is None:
            return None
        self.store.delete(KIND_DB[kind], skey(key))
        self.changed(kind, key, deleted=lambda: dump_object(obj))
        return obj

    # -- reads --------------------------------------------------------------------------

    def table(self, kind: str) -> dict[Any, Any]:
        """The live table of a kind (do not change it); NotFound for an unknown kind."""
        table = self._tables.get(kind)
        if table is None:
            raise NotFound("kind", kind)
        return table

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.table(kind).get(key_of(kind, namespace, name))
        if obj is None:
            raise NotFound(kind, name if kind in CLUSTER_KINDS else f"{namespace}/{name}")
        return dump_object(obj)

    def sorted_keys(self, kind: str) -> list[Any]:
        """Every key of a kind in list order; cached until a key is added or removed."""
        table = self.table(kind)
        version = getattr(table, "version", None)
        cached = self._sorted.get(kind)
        if cached is None or version is None or cached[0] != version:
            cached = (version if version is not None else -1, sorted(table))
            self._sorted[kind] = cached
        return cached[1]

    def lookup(self, kind: str, key: Any) -> Any | None:
        return self.table(kind).get(key)

    @staticmethod
    def matches(kind: str, key: Any, obj: Any, *, namespace: str | None = None,
                selector: Callable[[dict[str, str]], bool] | None = None,
                where: Filter | None = None) -> bool:
        """The filters of `list` for one object."""
        if namespace and kind not in CLUSTER_KINDS and obj.metadata.namespace != namespace:
            return False
        if selector is not None and not selector(obj.metadata.labels):
            return False
        return where is None or where(key, obj)

    def list(self, kind: str, *, namespace: str | None = None,
             selector: Callable[[dict[str, str]], bool] | None = None,
             where: Filter | None = None) -> list[dict[str, Any]]:
        table = self.table(kind)
        return [dump_object(table[k]) for k in self.sorted_keys(kind)
                if self.matches(kind, k, table[k], namespace=namespace, selector=selector,
                                where=where)]

    def page(self, kind: str, *, namespace: str | None = None,
             selector: Callable[[dict[str, str]], bool] | None = None,
             where: Filter | None = None, limit: int | None = None,
             after: Any = None) -> tuple[list[Any], Any]:
        """Keys of matching objects after `after`, at most `limit`; and the key to
        continue after (None when the list is complete)."""
        keys = self.sorted_keys(kind)
        start = 0 if after is None else bisect.bisect_right(keys, after)
        if kind not in CLUSTER_KINDS and namespace and after is None:
            start = bisect.bisect_left(keys, (namespace, ""))
        table = self.table(kind)
        plain = selector is None and where is None and (kind in CLUSTER_KINDS or not namespace)
        if plain:
            end = len(keys) if limit is None else min(len(keys), start + limit)
            out = keys[start:end]
            return out, (out[-1] if end < len(keys) and out else None)
        out = []
        for i in range(start, len(keys)):
            key = keys[i]
            if kind not in CLUSTER_KINDS and namespace and key[0] != namespace:
                if key[0] > namespace:
                    break
                continue
            if not self.matches(kind, key, table[key], namespace=namespace,
                                selector=selector, where=where):
                continue
            out.append(key)
            if limit is not None and len(out) >= limit:
                more = i + 1 < len(keys)
                return out, (key if more else None)
        return out, None

    def unchanged(self, obj: Any) -> bool | None:
        """Whether `obj` (not a Node) equals the stored one in what users own; None if
        there is no stored one."""
        kind, ns, name = ident(obj)
        cur = self.table(kind).get(key_of(kind, ns, name))
        if cur is None:
            return None
        return comparable(cur) == comparable(obj.normalised() if isinstance(obj, Secret)
                                             else obj)


# -- helpers ----------------------------------------------------------------------------


def ident(obj: Any) -> tuple[str, str | None, str]:
    """(kind, namespace or None for cluster-scoped kinds, name)."""
    kind = obj.kind
    ns = None if kind in CLUSTER_KINDS else obj.metadata.namespace
    return kind, ns, obj.metadata.name


def key_of(kind: str, namespace: str | None, name: str) -> Any:
    """The table key of an object: its name for cluster-scoped kinds, else (ns, name)."""
    return name if kind in CLUSTER_KINDS else (namespace or "default", name)


def skey(key: Key | str) -> str:
    """The store key of a table key."""
    return key if isinstance(key, str) else f"{key[0]}/{key[1]}"


@functools.lru_cache(maxsize=64)
def include_fields(model: type, fields: tuple[str, ...]) -> dict[str, Any]:
    """pydantic's `include` for dotted API paths (camelCase model fields, then dict
    keys as they are): `status.lastSeen` -> {"status": {"last_seen": True}}."""
    from pydantic import BaseModel
    from pydantic.alias_generators import to_snake

    inc: dict[str, Any] = {}
    for path in fields:
        cls: Any = model
        dst = inc
        parts = path.split(".")
        for i, part in enumerate(parts):
            key = part
            if isinstance(cls, type) and issubclass(cls, BaseModel):
                snake = to_snake(part)
                if snake not in cls.model_fields:
                    break
                key = snake
                ann = cls.model_fields[snake].annotation
                cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if i == len(parts) - 1:
                dst[key] = True
            else:
                nxt = dst.get(key)
                if nxt is True:
                    break
                dst = dst.setdefault(key, {})
    return inc


def redact(raw: bytes) -> bytes:
    """A Secret's JSON with every data value replaced by REDACTED (keys stay visible)."""
    obj = json.loads(raw)
    for f in ("data", "stringData"):
        if isinstance(obj.get(f), dict):
            obj[f] = dict.fromkeys(obj[f], REDACTED)
    return json.dumps(obj, separators=(",", ":")).encode()


_SYSTEM_ANNOTATIONS = (naming.SCHEDULED, naming.HEARTBEAT, naming.APPLIED_LABELS,
                       naming.REVISION)


def comparable(obj: Any) -> dict[str, Any]:
    """The user-owned part of an object: no status, identity or controller annotations."""
    d: dict[str, Any] = obj.dump()
    d.pop("status", None)
    meta = d.get("metadata", {})
    for k in ("uid", "generation", "creationTimestamp"):
        meta.pop(k, None)
    ann = {k: v for k, v in meta.get("annotations", {}).items() if k not in _SYSTEM_ANNOTATIONS}
    meta.pop("annotations", None)
    if ann:
        meta["annotations"] = ann
    return d


def stamp(obj: Any, old: Any) -> None:
    """Carry identity over from the stored object; bump generation on change."""
    meta = obj.metadata
    if old is None:
        meta.uid = str(uuid.uuid4())
        meta.creation_timestamp = now_iso()
        meta.generation = 1
    else:
        meta.uid = old.metadata.uid
        meta.creation_timestamp = old.metadata.creation_timestamp
        meta.generation = (old.metadata.generation or 1) + 1


def check_selector(obj: DaemonSet | Deployment) -> None:
    if not obj.spec.selector.matches(obj.spec.template.metadata.labels):
        raise ObjectError(f"{obj.kind}: spec.selector does not match the template's labels",
                          field="spec.selector.matchLabels")


def is_daemon(pod: Pod | DaemonPod) -> bool:
    """Whether a DaemonSet owns the pod."""
    if isinstance(pod, DaemonPod):
        return pod.node is not None  # a compact Deployment pod has none
    return pod.metadata.annotations.get(naming.OWNER, "").startswith("DaemonSet/")


def owner_of_pod(pod: Pod) -> str | None:
    return pod.metadata.annotations.get(naming.OWNER)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
