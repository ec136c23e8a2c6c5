"""The fleet controller: objects -> pods -> per-node desired sets.

Level-triggered like Kubernetes controllers: every change marks the nodes whose
desired set may differ ("dirty"), and `_commit()` recomputes exactly those sets
with `NodeDesired.replace`, so one API call that touches 1,000 nodes bumps each
node's gen once. The sync hub is told which nodes changed through `listener`.

Placement rules:
- a DaemonSet owns one pod per node that its template's selector, arch and
  tolerations admit (named `{ds}-{node}`); the pod is bound to that node if it fits
  there, else Pending with the reason;
- a Deployment owns `replicas` pods named `{dep}-{i}`, placed by the scheduler;
- a bare Pod is placed by the scheduler, or bound to `spec.nodeName` if given.
Pending pods are retried whenever a node joins, changes, or frees capacity.
ConfigMaps and Secrets go into the desired set of exactly the nodes whose placed pods
mount them (`shared.entries.referenced_keys`): a change of one is a delta to those
nodes only, and its entry leaves a node when the last pod there using it does.
NotReady nodes keep their pods (edges run autonomously while offline) until the
pods' toleration runs out; then Deployment replicas move (`eviction.py`).
A DaemonSet with an updateStrategy (a Deployment with a strategy) gets a template
change in health-gated batches, with automatic rollback (`rollout.py`); without one,
every pod gets it at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from cloudcore.errors import NotFound
from cloudcore.fleet import naming
from cloudcore.fleet.admission import Admission
from cloudcore.fleet.events import EventLog
from cloudcore.fleet.eviction import Eviction
from cloudcore.fleet.forecast import FORECAST_KEYS, WARN_INTERVAL, forecast_of, normalise
from cloudcore.fleet.lifecycle import Liveness
from cloudcore.fleet.projection import PINNED
from cloudcore.fleet.rollout import Rollouts
from cloudcore.fleet.watch import WatchHub
from cloudcore.scheduler import NodeView, Scheduler
from cloudcore.scheduler.core import ARCH_LABEL, requests_of, unschedulable_message
from shared.delta import NodeDesired
from shared.entries import (
    CONFIGMAP,
    POD,
    SECRET,
    configmap_entry,
    pod_entry,
    pod_key,
    pod_revision,
    referenced_keys,
    secret_entry,
    split_key,
)
from shared.errors import ObjectError
from shared.models import (
    CLUSTER_KINDS,
    ConfigMap,
    DaemonSet,
    Deployment,
    Namespace,
    Node,
    Pod,
    PodStatus,
    Secret,
)

log = logging.getLogger("cloudcore.fleet")

KEEP_WARM = 600.0
"""Seconds after its last list that a projection (say the `get nodes` table) is still
kept encoded in the background; after that its cache is dropped."""

Key = tuple[str, str]  # (namespace, name)
Action = Literal["created", "configured", "unchanged"]
KIND_DB = {"Node": "nodes", "Pod": "pods", "DaemonSet": "daemonsets",
           "Deployment": "deployments", "ConfigMap": "configmaps", "Secret": "secrets",
           "Namespace": "namespaces"}
_NS_KINDS = ("Pod", "DaemonSet", "Deployment", "ConfigMap", "Secret")


class _Table(dict):  # type: ignore[type-arg]
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
    """An object as the API shows it: Kubernetes names, status included."""
    out: dict[str, Any] = obj.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


class Fleet:
    """All objects of the fleet, in memory, and the controller logic over them."""

    def __init__(self, *, store: Persister, scheduler: Scheduler, liveness: Liveness,
                 clock: Callable[[], float] = time.time,
                 admission: Admission | None = None,
                 protected_labels: tuple[str, ...] = ()) -> None:
        self.store = store
        self.admission = admission or Admission()
        """Pod security admission: every apply and dry run passes through it."""
        self.protected_labels = protected_labels
        """Label prefixes an admin protects besides `naming.PROTECTED_LABEL_PREFIXES`:
        a node's report cannot set them on itself."""
        self.scheduler = scheduler
        self.liveness = liveness
        self.clock = clock
        self.nodes: dict[str, Node] = _Table()
        self.pods: dict[Key, Pod] = _Table()
        self.daemonsets: dict[Key, DaemonSet] = _Table()
        self.deployments: dict[Key, Deployment] = _Table()
        self.configmaps: dict[Key, ConfigMap] = _Table()
        self.secrets: dict[Key, Secret] = _Table()
        self.namespaces: dict[str, Namespace] = _Table()
        self.events = EventLog(clock=clock)
        self.watches = WatchHub()
        self._encoded: dict[tuple[str, tuple[str, ...] | None], dict[Any, bytes]] = {}
        self._listed: dict[tuple[str, tuple[str, ...] | None], float] = {}
        """When each cached projection was last listed (monotonic): the ones listed
        within KEEP_WARM are re-encoded in the background as objects change."""
        self._stale: dict[str, set[Any]] = {}
        self._sorted: dict[str, tuple[int, list[Any]]] = {}
        self.desired: dict[str, NodeDesired] = {}
        self.report_seq: dict[str, int] = {}
        self.deleted_nodes: dict[str, float] = {}
        """Nodes deleted through the API (name -> when): their agents' messages do not
        register them again (a deleted node's session may outlive its credentials);
        joining again with a token clears the mark."""
        self.telemetry: dict[str, list[dict[str, Any]]] = {}
        self.telemetry_points = 120
        self.observer: Callable[[str, int, float, float], None] | None = None
        """Gets every valid telemetry point as (node, minute, cpu 0..1, mem 0..1): the
        forecaster, when it is enabled."""
        self.telemetry_malformed = 0
        self._warned: dict[str, float] = {}  # node -> clock of its last over-capacity warning
        self.listener: Callable[[set[str]], None] | None = None
        self._bound: dict[Key, str] = {}  # pod -> node whose desired set holds it
        self._on_node: dict[str, set[Key]] = {}
        self._lost: dict[Key, PodStatus] = {}  # last reported status of pods marked not ready
        self._node_lost: set[str] = set()  # nodes whose pods were marked NodeLost
        self._pending: set[Key] = set()
        self._entries: dict[Key, dict[str, Any]] = {}  # cached desired-set values
        self._refs: dict[Key, set[str]] = {}  # pod -> configmap/secret keys it mounts
        self._config_entries: dict[str, dict[str, Any] | None] = {}  # None: no such object
        self._dirty: set[str] = set()
        self._owners: dict[str, set[Key]] = {}  # workload ("Kind/ns/name") -> its pods
        self.eviction = Eviction(self)
        """Moves Deployment replicas off long-NotReady nodes; `timeout` is the
        cloud-wide default toleration (settings.sync.pod_eviction_timeout)."""
        self.rollouts = Rollouts(self)
        """Health-gated DaemonSet rollouts and workload statuses (`rollout.py`)."""

    # -- loading ------------------------------------------------------------------------

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        """Rebuild memory from the store. Nodes become Unknown until they report."""
        for name, raw in records.get("nodes", {}).items():
            node = Node.model_validate(raw)
            node.status.ready = "Unknown"
            node.status.reason = "CloudcoreRestarted"
            self.nodes[name] = node
            hb = node.metadata.annotations.get(naming.HEARTBEAT)
            self.liveness.set_heartbeat(name, float(hb) if hb else None)
            self.liveness.start(name)
        for db, target, model in (("pods", self.pods, Pod),
                                  ("daemonsets", self.daemonsets, DaemonSet),
                                  ("deployments", self.deployments, Deployment),
                                  ("configmaps", self.configmaps, ConfigMap),
                                  ("secrets", self.secrets, Secret)):
            for raw in records.get(db, {}).values():
                obj = model.model_validate(raw)
                target[(obj.metadata.namespace, obj.metadata.name)] = obj  # type: ignore[index,attr-defined]
        for name, raw in records.get("namespaces", {}).items():
            self.namespaces[name] = Namespace.model_validate(raw)
        for key, pod in self.pods.items():
            self._index_owner(key, pod)
        self.rollouts.load(records.get("rollouts", {}))
        for name, rec in records.get("desired", {}).items():
            nd = NodeDesired.from_record(rec)
            self.desired[name] = nd
            for k in nd.items:
                kind, ns, pname = split_key(k)
                if kind == POD and (ns, pname) in self.pods:
                    self._bind_index((ns, pname), name)
                    self._entries[(ns, pname)] = nd.items[k][0]
        self.report_seq = {k: int(v) for k, v in records.get("reportseq", {}).items()}
        self.deleted_nodes = {k: float(v.get("at", 0)) if isinstance(v, dict) else 0.0
                              for k, v in records.get("deletednodes", {}).items()}
        self._pending = {k for k in self.pods if k not in self._bound}
        for name, node in self.nodes.items():
            nd = self.desired.get(name)
            if nd is not None:
                node.status.desired_gen, node.status.acked_gen = nd.gen, nd.acked
        self._retry_pending()
        self._commit()

    # -- API: apply / delete / read -----------------------------------------------------

    def plan(self, objs: list[Any]) -> list[ApplyResult]:
        """What `apply` would do, without doing it (dry run); validates references and
        the pod security policy (which stamps what passes with its level)."""
        self.admission.admit(objs, self.namespaces)
        out = []
        for obj in objs:
            kind, ns, name = _ident(obj)
            if kind == "Node":
                if name not in self.nodes:
                    raise ObjectError(f"node {name!r} is not registered; nodes join by "
                                      "connecting their agent", field="metadata.name")
                cur = self.nodes[name]
                same = (cur.spec == obj.spec and all(
                    cur.metadata.labels.get(k) == v for k, v in obj.metadata.labels.items())
                    and self._applied_labels(cur) == obj.metadata.labels)
                out.append(ApplyResult(kind, None, name, "unchanged" if same else "configured"))
                continue
            if isinstance(obj, DaemonSet | Deployment):
                _check_selector(obj)
            cur = self._table(kind).get(_key(kind, ns, name))
            if cur is None:
                action: Action = "created"
            elif _comparable(cur) == _comparable(
                    obj.normalised() if isinstance(obj, Secret) else obj):
                action = "unchanged"
            else:
                action = "configured"
            out.append(ApplyResult(kind, ns, name, action))
        return out

    def apply(self, objs: list[Any]) -> list[ApplyResult]:
        """Create or update objects; validate everything first (all or nothing)."""
        results = self.plan(objs)
        for obj, res in zip(objs, results, strict=True):
            if res.action == "unchanged":
                continue
            if isinstance(obj, Node):
                self._apply_node(obj)
            elif isinstance(obj, DaemonSet):
                old = self.daemonsets.get((obj.metadata.namespace, obj.metadata.name))
                self.rollouts.applied(obj, old)
                self._apply_workload(self.daemonsets, "daemonsets", obj)
                self._sync_daemonset(obj, self.nodes)
            elif isinstance(obj, Deployment):
                old_dep = self.deployments.get((obj.metadata.namespace, obj.metadata.name))
                self.rollouts.applied(obj, old_dep)
                self._apply_workload(self.deployments, "deployments", obj)
                self._sync_deployment(obj)
            elif isinstance(obj, Pod):
                self._apply_bare_pod(obj)
            elif isinstance(obj, ConfigMap):
                self._apply_workload(self.configmaps, "configmaps", obj)
                self._config_changed(CONFIGMAP, obj.metadata.namespace, obj.metadata.name)
            elif isinstance(obj, Secret):
                self._apply_workload(self.secrets, "secrets", obj.normalised())
                self._config_changed(SECRET, obj.metadata.namespace, obj.metadata.name)
            elif isinstance(obj, Namespace):
                self._apply_workload(self.namespaces, "namespaces", obj)
        self.rollouts.tick()  # statuses now, and a rollout's first batch
        self._retry_pending()
        self._commit()
        return results

    def delete(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete an object and what it owns; returns the deleted object."""
        if kind == "Node":
            node = self.nodes.get(name)
            if node is None:
                raise NotFound("Node", name)
            self._delete_node(name)
            self._retry_pending()
            self._commit()
            return dump_object(node)
        key = _key(kind, namespace or "default", name)
        table = self._table(kind)
        obj = table.get(key)
        if obj is None:
            raise NotFound(kind, name if kind in CLUSTER_KINDS else f"{key[0]}/{name}")
        if kind == "Pod":
            # _delete_pod removes it from the table, the store and its node's desired set
            # (removing it from the table first used to leave it in the desired set).
            self._delete_pod(key)
        else:
            del table[key]
            self.store.delete(KIND_DB[kind], _skey(key))
            self._changed(kind, key, deleted=lambda: dump_object(obj))
        if kind in ("ConfigMap", "Secret"):
            self._config_changed(CONFIGMAP if kind == "ConfigMap" else SECRET, *key)
        if kind in ("DaemonSet", "Deployment"):
            for pk in self.owned_keys(f"{kind}/{key[0]}/{name}"):
                self._delete_pod(pk)
            self.rollouts.forget(f"{kind}/{key[0]}/{name}")
        self._retry_pending()
        self._commit()
        return dump_object(obj)

    ROLLOUT_ACTIONS = ("pause", "resume", "undo", "retry")

    def rollout(self, kind: str, namespace: str, name: str, action: str) -> dict[str, Any]:
        """pause / resume (spec.paused), undo (spec.template back to the last template
        that rolled out everywhere: every pod gets it at once) or retry (an aborted
        rollout of the current template starts again) a DaemonSet's or Deployment's
        rollout."""
        key = (namespace, name)
        table = self.daemonsets if kind == "DaemonSet" else self.deployments
        ds = table.get(key)
        if ds is None:
            raise NotFound(kind, f"{namespace}/{name}")
        if action not in self.ROLLOUT_ACTIONS:
            raise ObjectError(f"action: {action!r} is not one of "
                              f"{', '.join(self.ROLLOUT_ACTIONS)}", field="action")
        owner = f"{kind}/{namespace}/{name}"
        if action == "retry":
            if not self.rollouts.retry(ds):
                raise ObjectError(f"{kind} {namespace}/{name}: no aborted rollout of its "
                                  "template to retry", field="action")
            self.rollouts.tick()
            self._retry_pending()
            self._commit()
            return dump_object(ds)
        new = ds.model_copy(deep=True)
        if action in ("pause", "resume"):
            new.spec.paused = action == "pause"
        else:
            stable = self.rollouts.stable(owner)
            if stable is None or stable.thash == self.rollouts.plan(ds).update.thash:
                raise ObjectError(f"{kind} {namespace}/{name}: nothing to undo, its "
                                  "template is the one that last rolled out", field="action")
            # the stable template again: no rollout under way, every pod gets it at once
            new.spec.template = stable.tpl.model_copy(deep=True)
        self.apply([new])
        return dump_object(table[key])

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        if kind == "Node":
            node = self.nodes.get(name)
            if node is None:
                raise NotFound("Node", name)
            return dump_object(node)
        obj = self._table(kind).get(_key(kind, namespace or "default", name))
        if obj is None:
            raise NotFound(kind, name if kind in CLUSTER_KINDS else f"{namespace}/{name}")
        return dump_object(obj)

    def list(self, kind: str, *, namespace: str | None = None,
             selector: Callable[[dict[str, str]], bool] | None = None,
             node: str | None = None) -> list[dict[str, Any]]:
        items: Iterable[Any]
        if kind == "Node":
            items = (self.nodes[n] for n in sorted(self.nodes))
        else:
            table = self._table(kind)
            items = (table[k] for k in sorted(table))
        out = []
        for obj in items:
            if namespace and kind not in CLUSTER_KINDS and obj.metadata.namespace != namespace:
                continue
            if selector is not None and not selector(obj.metadata.labels):
                continue
            if node is not None:
                if kind == "Pod":
                    if self._bound.get((obj.metadata.namespace, obj.metadata.name)) != node:
                        continue
                elif kind == "Node" and obj.metadata.name != node:
                    continue
            out.append(dump_object(obj))
        return out

    # -- API: pages, encoded objects, node operations -----------------------------------

    def table_of(self, kind: str) -> dict[Any, Any]:
        return self.nodes if kind == "Node" else self._table(kind)

    def sorted_keys(self, kind: str) -> list[Any]:
        """Every key of a kind in list order; cached until a key is added or removed."""
        table = self.table_of(kind)
        version = getattr(table, "version", None)
        cached = self._sorted.get(kind)
        if cached is None or version is None or cached[0] != version:
            cached = (version if version is not None else -1, sorted(table))
            self._sorted[kind] = cached
        return cached[1]

    def lookup(self, kind: str, key: Any) -> Any | None:
        return self.table_of(kind).get(key)

    def matches(self, kind: str, key: Any, obj: Any, *, namespace: str | None = None,
                selector: Callable[[dict[str, str]], bool] | None = None,
                node: str | None = None) -> bool:
        """The filters of `list` for one object."""
        if namespace and kind not in CLUSTER_KINDS and obj.metadata.namespace != namespace:
            return False
        if selector is not None and not selector(obj.metadata.labels):
            return False
        if node is not None:
            if kind == "Pod":
                return self._bound.get(key) == node
            if kind == "Node":
                return bool(key == node)
        return True

    def page(self, kind: str, *, namespace: str | None = None,
             selector: Callable[[dict[str, str]], bool] | None = None,
             node: str | None = None, limit: int | None = None,
             after: Any = None) -> tuple[list[Any], Any]:
        """Keys of matching objects after `after`, at most `limit`; and the key to
        continue after (None when the list is complete)."""
        import bisect

        keys = self.sorted_keys(kind)
        start = 0 if after is None else bisect.bisect_right(keys, after)
        if kind not in CLUSTER_KINDS and namespace and after is None:
            start = bisect.bisect_left(keys, (namespace, ""))
        table = self.table_of(kind)
        plain = selector is None and node is None and (kind in CLUSTER_KINDS or not namespace)
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
            if not self.matches(kind, key, table[key], namespace=namespace, selector=selector,
                                node=node):
                continue
            out.append(key)
            if limit is not None and len(out) >= limit:
                more = i + 1 < len(keys)
                return out, (key if more else None)
        return out, None

    def encoded(self, kind: str, key: Any, fields: tuple[str, ...] | None = None) -> bytes:
        """The object as compact JSON (optionally only `fields`, dotted API paths);
        cached until the object changes. Secret values are redacted (lists, watches):
        only `get` of one Secret, or a list with `reveal`, shows them."""
        return self.encoded_many(kind, (key,), fields)[0]

    def encoded_many(self, kind: str, keys: Iterable[Any],
                     fields: tuple[str, ...] | None = None) -> list[bytes]:
        """`encoded` for a page of keys, with the lookups done once per page: every
        report changes a node's lastSeen, so in a live fleet most of a 100k-node list
        is encoded afresh, and the per-object overhead is most of the cost."""
        self._listed[(kind, fields)] = time.monotonic()
        return self._encode_into(self._cache_of(kind, fields), kind, keys, fields)

    def _cache_of(self, kind: str, fields: tuple[str, ...] | None) -> dict[Any, bytes]:
        cache = self._encoded.get((kind, fields))
        if cache is None:
            if len(self._encoded) >= 8:  # a few projections at most; drop the oldest
                oldest = next((p for p in self._encoded if p not in PINNED), None)
                if oldest is not None:
                    del self._encoded[oldest]
                    self._listed.pop(oldest, None)
            cache = self._encoded[(kind, fields)] = {}
        return cache

    def _encode_into(self, cache: dict[Any, bytes], kind: str, keys: Iterable[Any],
                     fields: tuple[str, ...] | None) -> list[bytes]:
        table = self.table_of(kind)
        secret = kind == "Secret"
        get = cache.get
        out: list[bytes] = []
        for key in keys:
            raw = get(key)
            if raw is None:
                obj = table[key]
                cls = type(obj)  # its serializer gives bytes: no str round-trip
                raw = cls.__pydantic_serializer__.to_json(
                    obj, include=None if fields is None else _include(cls, fields),
                    by_alias=True, exclude_none=True)
                if secret:
                    raw = _redact(raw)
                cache[key] = raw
            out.append(raw)
        return out

    def join_node(self, name: str, *, labels: dict[str, str], arch: str | None) -> Node:
        """Register a node that joined with a token (or adopt one its agent registered)."""
        self.register_node(name, rejoin=True)
        node = self.nodes[name]
        status: dict[str, Any] = {"labels": labels}
        if arch:
            status["arch"] = arch
        self.node_status(name, status, trusted=True)
        self.events.add(type="Normal", reason="Joined", obj=f"Node/{name}",
                        message=f"node {name} joined with labels "
                                f"{','.join(f'{k}={v}' for k, v in sorted(labels.items())) or '-'}")
        return node

    def patch_node(self, name: str, *, labels: dict[str, str | None] | None = None,
                   unschedulable: bool | None = None) -> dict[str, Any]:
        """Set or remove (value None) node labels and/or (un)cordon. Labels set here are
        API-owned (kept over what the agent reports), as with `apply` of a Node."""
        node = self.nodes.get(name)
        if node is None:
            raise NotFound("Node", name)
        if labels:
            applied = self._applied_labels(node)
            for k, v in labels.items():
                if v is None:
                    node.metadata.labels.pop(k, None)
                    applied.pop(k, None)
                else:
                    node.metadata.labels[k] = v
                    applied[k] = v
            node.metadata.annotations[naming.APPLIED_LABELS] = json.dumps(applied,
                                                                          sort_keys=True)
        if unschedulable is not None and unschedulable != node.spec.unschedulable:
            node.spec.unschedulable = unschedulable
            self.events.add(type="Normal",
                            reason="Cordoned" if unschedulable else "Uncordoned",
                            obj=f"Node/{name}",
                            message=f"node {name} marked "
                                    f"{'unschedulable' if unschedulable else 'schedulable'}")
        self._save_node(name)
        self._node_changed(name)
        self._commit()
        return dump_object(node)

    def drain(self, name: str) -> dict[str, Any]:
        """Cordon the node and move its Deployment and bare pods elsewhere: they are
        unbound and rescheduled (Pending with the reason if nothing fits). DaemonSet
        pods stay, and so do pods pinned to the node by `spec.nodeName`."""
        if name not in self.nodes:
            raise NotFound("Node", name)
        self.patch_node(name, unschedulable=True)
        moved, kept = [], []
        for key in sorted(self._on_node.get(name, ())):
            pod = self.pods[key]
            ref = f"{key[0]}/{key[1]}"
            if _daemon(pod):
                kept.append({"pod": ref, "reason": "DaemonSet pod"})
            elif pod.spec.node_name == name:
                kept.append({"pod": ref, "reason": "bound to the node by spec.nodeName"})
            else:
                self._unbind(key)
                self._pending.add(key)
                moved.append(key)
                self.events.add(type="Normal", reason="Evicted", obj=f"Pod/{ref}",
                                message=f"evicted from {name} by drain")
        self._retry_pending()
        self._commit()
        placed = {f"{k[0]}/{k[1]}": self._bound.get(k) for k in moved}
        self.events.add(type="Normal", reason="Drained", obj=f"Node/{name}",
                        message=f"{len(moved)} pods moved, {len(kept)} kept")
        return {"node": name, "evicted": [{"pod": p, "node": n} for p, n in placed.items()],
                "kept": kept}

    def _pod_events(self, key: Key, old: PodStatus, new: PodStatus) -> None:
        ref = f"Pod/{key[0]}/{key[1]}"
        if new.phase == "Failed" and old.phase != "Failed":
            self.events.add(type="Warning", reason="Failed", obj=ref,
                            message=new.message or new.reason or "pod failed")
        before = {c.name: c.restart_count for c in old.container_statuses}
        for c in new.container_statuses:
            if c.restart_count > before.get(c.name, c.restart_count):
                why = c.reason or (f"exit code {c.exit_code}" if c.exit_code is not None
                                   else "restarted")
                self.events.add(type="Warning", reason="BackOff", obj=ref,
                                message=f"container {c.name} restarted ({why}); "
                                        f"{c.restart_count} restarts")

    # -- hub-facing: node lifecycle and reports -----------------------------------------

    def register_node(self, name: str, *, rejoin: bool = False) -> bool:
        """Create an unknown node on first contact; True if it was new. A node deleted
        through the API is not created again by its agent's messages, only by a join
        (`rejoin`)."""
        if name in self.nodes:
            return False
        if name in self.deleted_nodes:
            if not rejoin:
                return False
            del self.deleted_nodes[name]
            self.store.delete("deletednodes", name)
        node = Node.model_validate({"metadata": {"name": name, "namespace": "default"}})
        node.metadata.uid = str(uuid.uuid4())
        node.metadata.creation_timestamp = _now_iso()
        node.metadata.labels = {"kubernetes.io/hostname": name}
        self.nodes[name] = node
        self._save_node(name)
        log.info("node %s registered", name)
        self.events.add(type="Normal", reason="Registered", obj=f"Node/{name}",
                        message=f"node {name} registered")
        self._node_changed(name)
        self._commit()
        return True

    def node_status(self, name: str, status: dict[str, Any], *, trusted: bool = False) -> int:
        """Apply the node_status of a report (capacity, labels, heartbeat...); returns
        how many labels were refused. A node cannot set protected labels on itself
        (`naming.protected_label`); `trusted` (a join, whose labels the API vetted)
        can."""
        node = self.nodes[name]
        refused = 0
        st = node.status
        before = (dict(st.allocatable), dict(node.metadata.labels), st.arch)
        for src, attr in (("capacity", "capacity"), ("allocatable", "allocatable")):
            val = status.get(src)
            if isinstance(val, dict):
                setattr(st, attr, {str(k): int(v) for k, v in val.items()
                                   if isinstance(v, int | float) and not isinstance(v, bool)})
        if isinstance(status.get("arch"), str):
            st.arch = status["arch"]
        if isinstance(status.get("os"), str):
            st.os = status["os"]
        agent = status.get("agentVersion", status.get("agent_version"))
        if isinstance(agent, str):
            st.agent_version = agent
        labels = status.get("labels")
        applied = self._applied_labels(node)
        if isinstance(labels, dict):
            for k, v in labels.items():
                if not (isinstance(k, str) and isinstance(v, str)) or k in applied:
                    continue
                if not trusted and (k in _CLOUD_LABELS
                                    or naming.protected_label(k, self.protected_labels)):
                    refused += 1
                    continue
                node.metadata.labels[k] = v
        node.metadata.labels.setdefault("kubernetes.io/hostname", name)
        node.metadata.labels[ARCH_LABEL] = st.arch
        node.metadata.labels["kubernetes.io/os"] = st.os
        hb = status.get("heartbeat")
        if isinstance(hb, int | float) and not isinstance(hb, bool) and hb > 0:
            node.metadata.annotations[naming.HEARTBEAT] = f"{float(hb):g}"
            self.liveness.set_heartbeat(name, float(hb))
        self._save_node(name)
        if before != (st.allocatable, node.metadata.labels, st.arch):
            self._node_changed(name)
            self._commit()
        return refused

    def restart_epoch(self, name: str, epoch: str, *, why: str) -> NodeDesired:
        """Move a node's desired set to a new `epoch` (drift: the edge claims a gen the
        cloud never made); the next message to it is a snapshot. A Warning event
        `DesiredDrift` names the node."""
        nd = self.desired_for(name)
        old = nd.epoch
        nd.restart_epoch(epoch)
        self.store.put_later("desired", name, nd.to_record)
        node = self.nodes.get(name)
        if node is not None:
            node.status.acked_gen = 0
            self._save_node(name)
        log.warning("node %s: desired drift (%s); epoch %s -> %s, sending a snapshot",
                    name, why, old, epoch)
        self.events.add(type="Warning", reason="DesiredDrift", obj=f"Node/{name}",
                        message=f"node {name}: {why}; its desired set is sent again as a "
                                f"snapshot under a new epoch")
        return nd

    def undeliverable(self, name: str, key: str, reason: str) -> None:
        """A desired entry of node `name` cannot be sent (over the wire limits): the
        pods there that need it get a Warning event, and a pod still Pending says why
        in its status. The node's other entries are sent without it."""
        kind, ns, ename = split_key(key)
        pods = [(ns, ename)] if kind == POD else [
            pk for pk in self._on_node.get(name, ()) if pk in self.pods
            and key in self._pod_refs(pk)]
        for pk in pods:
            pod = self.pods.get(pk)
            if pod is None:
                continue
            message = f"cannot be delivered to node {name}: {reason}"
            self.events.add(type="Warning", reason="Undeliverable",
                            obj=f"Pod/{pk[0]}/{pk[1]}", message=message)
            if pod.status.phase == "Pending" and pod.status.message != message:
                pod.status = PodStatus(phase="Pending", reason="Undeliverable",
                                       message=message, node_name=name)
                self._save_pod(pk)

    def heard(self, name: str, now: float) -> None:
        """Any valid message from the node restarts its liveness clock (monotonic `now`)."""
        self.liveness.heard(name, now)

    def mark_ready(self, name: str) -> None:
        """A report arrived: the node is Ready and last_seen is now (wall clock)."""
        node = self.nodes[name]
        node.status.last_seen = self.clock()
        if node.status.ready != "Ready":
            self._set_ready(node, "Ready", "NodeReported", "the agent reported")
            self._pods_back(name)
        self._save_node(name)

    # -- pods of nodes that are not Ready (Kubernetes: MarkPodsNotReady, NodeLost) --------
    # The node's last reported statuses are kept aside in memory and put back when it
    # reports again (the agent sends only changes, so it will not repeat them); a pod the
    # node reports meanwhile simply takes the new status. Lost on a cloud restart: such a
    # pod then shows NodeLost until its status next changes on the node.

    def _pods_not_ready(self, name: str, *, lost_for: float | None = None) -> None:
        """The pods on `name` are not ready (its node is NotReady); with `lost_for`
        (seconds NotReady), also phase Unknown, reason NodeLost."""
        for pk in sorted(self._on_node.get(name, ())):
            pod = self.pods.get(pk)
            if pod is None or pod.status.node_name != name:
                continue  # never reported: nothing to take back
            was = self._lost.setdefault(pk, pod.status)
            update: dict[str, Any] = {"ready": False, "container_statuses": [
                c.model_copy(update={"ready": False}) for c in pod.status.container_statuses]}
            if lost_for is not None:
                update.update(phase="Unknown", reason="NodeLost", message=(
                    f"node {name} has been NotReady for {lost_for:.0f}s; last reported "
                    f"{was.phase}" + (f" ({was.reason})" if was.reason else "")))
            status = pod.status.model_copy(update=update)
            if status != pod.status:
                pod.status = status
                self._save_pod(pk)
                self.rollouts.touch(pod.metadata.annotations.get(naming.OWNER))

    def _pods_back(self, name: str) -> None:
        """`name` reports again: its pods get back what it last reported."""
        # Every entry of this node, also of pods deleted or moved meanwhile (dropped).
        for pk in [k for k, st in self._lost.items() if st.node_name == name]:
            was = self._lost.pop(pk)
            pod = self.pods.get(pk)
            if pod is not None and pod.status.node_name == name and pk in self._on_node.get(
                    name, ()):
                pod.status = was
                self._save_pod(pk)
                self.rollouts.touch(pod.metadata.annotations.get(naming.OWNER))
        self._node_lost.discard(name)

    def _mark_lost(self) -> None:
        """Pods of nodes NotReady for longer than the eviction timeout: NodeLost."""
        now = self.eviction.clock()
        for name, node in self.nodes.items():
            since = self.eviction.not_ready_since(name)
            if (node.status.ready != "NotReady" or since is None or name in self._node_lost
                    or now - since < self.eviction.timeout):
                continue
            self._node_lost.add(name)
            self._pods_not_ready(name, lost_for=now - since)

    def mark_not_ready(self, name: str, *, reason: str, message: str) -> bool:
        node = self.nodes.get(name)
        if node is None or node.status.ready == "NotReady":
            return False
        self._set_ready(node, "NotReady", reason, message)
        self._save_node(name)
        return True

    def pod_statuses(self, name: str, pods: dict[str, dict[str, Any] | None]) -> int:
        """Apply pod statuses a node reported; returns how many were ignored."""
        ignored = 0
        for k, value in pods.items():
            try:
                kind, ns, pname = split_key(k)
            except ValueError:
                ignored += 1
                continue
            pk = (ns, pname)
            pod = self.pods.get(pk)
            if kind != POD or pod is None or self._bound.get(pk) != name or value is None:
                ignored += 1
                continue
            try:
                status = PodStatus.model_validate(value)
            except ValueError:
                ignored += 1
                continue
            status.node_name = name
            self._lost.pop(pk, None)  # reported afresh: nothing to put back
            self._pod_events(pk, pod.status, status)
            pod.status = status
            self._save_pod(pk)
            self.rollouts.pod_reported(pk, pod)
        return ignored

    def add_telemetry(self, name: str, samples: list[dict[str, Any]]) -> None:
        """Keep recent samples per node, feed valid points to the forecaster (`observer`)
        and put the newest utilisation into status.usage (`cpu`, `mem`, 0..1).
        Malformed points are ignored and counted in `telemetry_malformed`."""
        if not isinstance(samples, list) or not samples:
            return
        node = self.nodes[name]
        ring = self.telemetry.setdefault(name, [])
        ring.extend(samples)
        del ring[: max(0, len(ring) - self.telemetry_points)]
        newest: tuple[int, float, float] | None = None
        for entry in samples:
            point = normalise(entry, node.status.allocatable)
            if point is None:
                self.telemetry_malformed += 1
                continue
            if newest is None or point[0] >= newest[0]:
                newest = point
            if self.observer is not None:
                self.observer(name, *point)
        if newest is not None:
            node.status.usage = {**node.status.usage, "cpu": newest[1], "mem": newest[2]}
            self._save_node(name)

    def apply_forecasts(self, forecasts: dict[str, dict[str, float]]) -> None:
        """Store per-node forecasts (`FORECAST_KEYS`, peaks over the horizon) in
        status.usage, warn about nodes predicted at or over capacity (at most once per
        node per `WARN_INTERVAL`), and retry pending pods against the new forecasts."""
        now = self.clock()
        for name, fc in forecasts.items():
            node = self.nodes.get(name)
            if node is None:
                continue
            usage = {k: v for k, v in node.status.usage.items() if k not in FORECAST_KEYS}
            usage.update({k: float(fc[k]) for k in FORECAST_KEYS})
            node.status.usage = usage
            self._save_node(name)
            peak = max(fc["cpu_p90"], fc["mem_p90"])
            if peak >= 1.0 and now - self._warned.get(name, -WARN_INTERVAL) >= WARN_INTERVAL:
                self._warned[name] = now
                res = "cpu" if fc["cpu_p90"] >= fc["mem_p90"] else "memory"
                self.events.add(type="Warning", reason="PredictedOverCapacity",
                                obj=f"Node/{name}",
                                message=f"{res} predicted to reach {100 * peak:.0f}% (p90) "
                                        f"within 15 minutes")
        for name in [n for n in self._warned if n not in self.nodes]:
            del self._warned[name]
        self._retry_pending()
        self._commit()

    def clear_forecasts(self) -> None:
        """Drop forecasts from every node (forecasting is off: schedule by requests)."""
        for name, node in self.nodes.items():
            if any(k in node.status.usage for k in FORECAST_KEYS):
                node.status.usage = {k: v for k, v in node.status.usage.items()
                                     if k not in FORECAST_KEYS}
                self._save_node(name)

    def record_ack(self, name: str, epoch: str, gen: int) -> bool:
        """An edge confirmed (epoch, gen); collects tombstones. True if `acked` moved."""
        nd = self.desired.get(name)
        if nd is None or not nd.ack(epoch, gen):
            return False
        nd.collect()
        self.store.put_later("desired", name, nd.to_record)
        node = self.nodes.get(name)
        if node is not None:
            node.status.acked_gen = nd.acked
            self._save_node(name)
        return True

    def desired_for(self, name: str) -> NodeDesired:
        """The node's desired set, created empty in the store epoch if it has none."""
        nd = self.desired.get(name)
        if nd is None:
            nd = self.desired[name] = NodeDesired(node=name, epoch=self.store.epoch)
        return nd

    def set_report_seq(self, name: str, seq: int) -> None:
        self.report_seq[name] = seq
        self.store.put("reportseq", name, seq)

    def expire(self, now: float) -> list[str]:
        """Mark nodes NotReady whose liveness deadline passed; returns them."""
        out = []
        for name in self.liveness.expired(now):
            node = self.nodes.get(name)
            if node is None:
                continue
            window = self.liveness.window(name)
            if self.mark_not_ready(name, reason="NodeStatusUnknown",
                                   message=f"no report for {window:g}s"):
                out.append(name)
        self._mark_lost()
        self.eviction.run()  # same tick: replicas whose toleration ran out move
        if self.rollouts.tick():  # and rollouts take their next step
            self._retry_pending()
            self._commit()
        return out

    def readiness_counts(self) -> dict[str, int]:
        counts = {"Ready": 0, "NotReady": 0, "Unknown": 0}
        for node in self.nodes.values():
            counts[node.status.ready] += 1
        return counts

    # -- internals: objects -------------------------------------------------------------

    def _table(self, kind: str) -> dict[Key, Any]:
        tables: dict[str, dict[Key, Any]] = {
            "Pod": self.pods, "DaemonSet": self.daemonsets, "Deployment": self.deployments,
            "ConfigMap": self.configmaps, "Secret": self.secrets, "Namespace": self.namespaces}
        if kind not in tables:
            raise NotFound("kind", kind)
        return tables[kind]

    def _apply_workload(self, table: dict[Any, Any], db: str, obj: Any) -> None:
        key = _key(obj.kind, getattr(obj.metadata, "namespace", None), obj.metadata.name)
        _stamp(obj, table.get(key))
        table[key] = obj
        self.store.put_later(db, _skey(key), lambda: dump_object(obj))
        self._changed(obj.kind, key)

    def _apply_node(self, obj: Node) -> None:
        name = obj.metadata.name
        node = self.nodes[name]
        prev = self._applied_labels(node)
        labels = {k: v for k, v in node.metadata.labels.items() if k not in prev}
        labels.update(obj.metadata.labels)
        node.metadata.labels = labels
        node.metadata.annotations[naming.APPLIED_LABELS] = json.dumps(
            obj.metadata.labels, sort_keys=True)
        node.spec = obj.spec
        self._save_node(name)
        self._node_changed(name)

    @staticmethod
    def _applied_labels(node: Node) -> dict[str, str]:
        raw = node.metadata.annotations.get(naming.APPLIED_LABELS)
        return dict(json.loads(raw)) if raw else {}

    def _apply_bare_pod(self, obj: Pod) -> None:
        key = (obj.metadata.namespace, obj.metadata.name)
        old = self.pods.get(key)
        _stamp(obj, old)
        if old is not None:
            obj.metadata.annotations = {**old.metadata.annotations, **obj.metadata.annotations}
        self._put_pod(key, obj, old)

    def _put_pod(self, key: Key, pod: Pod, old: Pod | None, *,
                 revision: str | None = None) -> None:
        """Store a new or updated pod and (re)place it. Its status stays the old one
        until the agent reports; the REVISION annotation (`revision`, else hashed from
        the spec, never the user's value) tells the two apart."""
        pod.metadata.annotations[naming.REVISION] = (
            revision if revision is not None else pod_revision(pod.spec.dump()))
        if old is not None:
            pod.status = old.status
            if naming.SCHEDULED in old.metadata.annotations:
                pod.metadata.annotations.setdefault(
                    naming.SCHEDULED, old.metadata.annotations[naming.SCHEDULED])
        self.pods[key] = pod
        self._index_owner(key, pod, old)
        self._entries.pop(key, None)
        self._refs.pop(key, None)
        node = self._bound.get(key)
        if node is not None:
            target = pod.spec.node_name
            if (target is None or target == node) and self._fits(key, node, daemon=_daemon(pod)):
                self._dirty.add(node)
                self._save_pod(key)
                return
            self._unbind(key)
        self._pending.add(key)
        self._save_pod(key)

    def _delete_pod(self, key: Key) -> None:
        pod = self.pods.pop(key, None)
        if pod is None:
            return
        owner = pod.metadata.annotations.get(naming.OWNER)
        if owner is not None:
            self._owners.get(owner, set()).discard(key)
            self.rollouts.touch(owner)
        self._changed("Pod", key, deleted=lambda: dump_object(pod))
        self._unbind(key)
        self._pending.discard(key)
        self._entries.pop(key, None)
        self._refs.pop(key, None)
        self.store.delete("pods", _skey(key))

    def _delete_node(self, name: str) -> None:
        for pk in list(self._on_node.get(name, ())):
            if _daemon(self.pods[pk]):
                self._delete_pod(pk)
            else:
                self._unbind(pk)
                self._pending.add(pk)
        for pk in [k for k, p in self.pods.items() if p.spec.node_name == name]:
            if _daemon(self.pods[pk]):
                self._delete_pod(pk)
        # The desired set is kept (emptied, not removed) so its gen keeps growing: an
        # agent that comes back under the same name gets a clean delta, never a stale gen.
        self._dirty.add(name)
        node = self.nodes.pop(name)
        self.store.delete("nodes", name)
        self._changed("Node", name, deleted=lambda: dump_object(node))
        self.events.add(type="Normal", reason="Deleted", obj=f"Node/{name}",
                        message=f"node {name} deleted; its pods were unbound")
        self.report_seq.pop(name, None)
        self.store.delete("reportseq", name)
        self.liveness.forget(name)
        self.deleted_nodes[name] = self.clock()
        self.store.put("deletednodes", name, {"at": self.deleted_nodes[name]})

    def owned_keys(self, owner: str) -> list[Key]:
        """The pods of a workload (`Kind/namespace/name`), sorted."""
        return sorted(self._owners.get(owner, ()))

    def owned_set(self, owner: str) -> set[Key]:
        """The pods of a workload, unsorted (do not change it)."""
        return self._owners.get(owner, set())

    @property
    def bound(self) -> dict[Key, str]:
        """Pod -> the node whose desired set holds it (read only)."""
        return self._bound

    def _index_owner(self, key: Key, pod: Pod, old: Pod | None = None) -> None:
        before = old.metadata.annotations.get(naming.OWNER) if old is not None else None
        owner = pod.metadata.annotations.get(naming.OWNER)
        if before is not None and before != owner:
            self._owners.get(before, set()).discard(key)
        if owner is not None:
            self._owners.setdefault(owner, set()).add(key)
        self.rollouts.touch(owner)

    def put_pod(self, key: Key, pod: Pod, old: Pod | None, *, revision: str) -> None:
        """`_put_pod` for the rollout controller."""
        self._put_pod(key, pod, old, revision=revision)

    def sync_workload(self, obj: DaemonSet | Deployment) -> None:
        if isinstance(obj, DaemonSet):
            self._sync_daemonset(obj, self.nodes)
        else:
            self._sync_deployment(obj)

    def save_workload(self, kind: str, key: Key) -> None:
        """Persist a workload whose status changed, and tell its watchers."""
        obj = self._table(kind)[key]
        self.store.put_later(KIND_DB[kind], _skey(key), lambda: dump_object(obj))
        self._changed(kind, key)

    # -- internals: controllers ---------------------------------------------------------

    def _sync_daemonset(self, ds: DaemonSet, nodes: Iterable[str]) -> None:
        """One pod per admitting node. During a rollout (`rollout.py`) a pod gets the
        update only once its batch comes: until then (and after a rollback) it keeps
        or gets the stable template, `hold`."""
        ns, dsname = ds.metadata.namespace, ds.metadata.name
        owner = f"DaemonSet/{ns}/{dsname}"
        plan = self.rollouts.plan(ds)
        for name in list(nodes):
            node = self.nodes.get(name)
            if node is None:
                continue
            key = (ns, naming.child_name(dsname, name))
            pod = self.pods.get(key)
            want = self.scheduler.placeable(ds.spec.template.spec, self._view(name))
            if not want:
                if pod is not None and pod.metadata.annotations.get(naming.OWNER) == owner:
                    self._delete_pod(key)
                continue
            target = plan.target_for(pod)
            if target is not None:
                self._put_pod(key, target.pod(ns=ns, name=key[1], owner=owner, node=name),
                              pod, revision=target.revision)

    def _sync_deployment(self, dep: Deployment) -> None:
        """`replicas` pods; during a rollout, as for a DaemonSet, a replica gets the
        update only in its batch (new replicas get the stable template, `hold`)."""
        ns, depname = dep.metadata.namespace, dep.metadata.name
        owner = f"Deployment/{ns}/{depname}"
        plan = self.rollouts.plan(dep)
        wanted = {(ns, naming.child_name(depname, str(i))) for i in range(dep.spec.replicas)}
        for key in self.owned_keys(owner):
            if key not in wanted:
                self._delete_pod(key)
        for key in sorted(wanted, key=lambda k: k[1]):
            pod = self.pods.get(key)
            target = plan.target_for(pod)
            if target is not None:
                self._put_pod(key, target.pod(ns=ns, name=key[1], owner=owner, node=None),
                              pod, revision=target.revision)

    def _node_changed(self, name: str) -> None:
        """A node joined or changed labels/taints/capacity: DaemonSets and pending pods."""
        for ds in self.daemonsets.values():
            self._sync_daemonset(ds, [name])
        self._retry_pending()

    def _retry_pending(self) -> None:
        if not self.nodes:
            for key in self._pending:
                self._explain_pending(key, unschedulable_message(0, Counter()))
            return
        for key in sorted(self._pending):
            pod = self.pods.get(key)
            if pod is None:
                self._pending.discard(key)
                continue
            target = pod.spec.node_name
            if target is not None:
                daemon = _daemon(pod)
                if target not in self.nodes:
                    self._explain_pending(key, f"0/1 nodes available: node {target} not found")
                    continue
                reason = self.scheduler.check(pod.spec, self._view(target), daemon=daemon)
                if reason is None:
                    self._bind(key, target, f"scheduled on {target}: bound by spec.nodeName")
                else:
                    self._explain_pending(
                        key, f"0/1 nodes available: 1 {reason} (pod is bound to {target})")
                continue
            decision = self.scheduler.schedule(pod.spec, (self._view(n) for n in self.nodes))
            if decision.node is None:
                self._explain_pending(key, decision.message)
            else:
                self._bind(key, decision.node, decision.message)

    def _fits(self, key: Key, node: str, *, daemon: bool) -> bool:
        """Whether the (updated) pod still fits on its node, not counting itself."""
        pod = self.pods[key]
        view = self._view(node, exclude=key)
        return self.scheduler.check(pod.spec, view, daemon=daemon) is None

    def _bind(self, key: Key, node: str, message: str) -> None:
        pod = self.pods[key]
        self._pending.discard(key)
        self._bind_index(key, node)
        pod.metadata.annotations[naming.SCHEDULED] = message
        pod.status = PodStatus(phase="Pending", reason="Scheduled", message=message,
                               node_name=node)
        self._dirty.add(node)
        self._save_pod(key)
        self.events.add(type="Normal", reason="Scheduled", obj=f"Pod/{key[0]}/{key[1]}",
                        message=message)

    def _bind_index(self, key: Key, node: str) -> None:
        self._bound[key] = node
        self._on_node.setdefault(node, set()).add(key)

    def _unbind(self, key: Key) -> None:
        node = self._bound.pop(key, None)
        if node is not None:
            self._on_node.get(node, set()).discard(key)
            self._dirty.add(node)

    def _explain_pending(self, key: Key, message: str) -> None:
        pod = self.pods.get(key)
        if pod is None:
            return
        st = pod.status
        if st.phase == "Pending" and st.reason == "Unschedulable" and st.message == message:
            return
        pod.status = PodStatus(phase="Pending", reason="Unschedulable", message=message)
        pod.metadata.annotations[naming.SCHEDULED] = f"not scheduled: {message}"
        self._save_pod(key)
        self.events.add(type="Warning", reason="FailedScheduling",
                        obj=f"Pod/{key[0]}/{key[1]}", message=message)

    def _view(self, name: str, *, exclude: Key | None = None) -> NodeView:
        node = self.nodes[name]
        requested: dict[str, int] = {}
        for pk in self._on_node.get(name, ()):
            if pk == exclude or pk not in self.pods:
                continue
            for res, amount in requests_of(self.pods[pk].spec).items():
                requested[res] = requested.get(res, 0) + amount
        return NodeView(name=name, labels=node.metadata.labels, taints=node.spec.taints,
                        unschedulable=node.spec.unschedulable, ready=node.status.ready,
                        allocatable=node.status.allocatable, requested=requested,
                        forecast=forecast_of(node.status.usage))

    def _config_changed(self, kind: str, namespace: str, name: str) -> None:
        """A ConfigMap/Secret was created, changed or deleted: the nodes whose pods
        mount it are dirty (their entry for it changes); no other node is."""
        ck = f"{kind}/{namespace}/{name}"
        self._config_entries.pop(ck, None)
        for node, keys in self._on_node.items():
            if any(ck in self._pod_refs(pk) for pk in keys if pk in self.pods):
                self._dirty.add(node)

    def _pod_refs(self, key: Key) -> set[str]:
        refs = self._refs.get(key)
        if refs is None:
            refs = self._refs[key] = referenced_keys(key[0], self.pods[key].spec)
        return refs

    def _config_entry(self, ck: str) -> dict[str, Any] | None:
        """The desired-set value of `configmap/...` or `secret/...`; None if the object
        does not exist (the pod then waits on its node, as in Kubernetes)."""
        if ck not in self._config_entries:
            kind, ns, name = split_key(ck)
            entry: dict[str, Any] | None = None
            if kind == CONFIGMAP and (ns, name) in self.configmaps:
                entry = configmap_entry(self.configmaps[(ns, name)])
            elif kind == SECRET and (ns, name) in self.secrets:
                entry = secret_entry(self.secrets[(ns, name)])
            self._config_entries[ck] = entry
        return self._config_entries[ck]

    def _commit(self) -> None:
        """Recompute the desired sets of dirty nodes; one gen bump per changed node."""
        changed: set[str] = set()
        for name in sorted(self._dirty):
            wanted = {}
            for pk in self._on_node.get(name, ()):
                entry = self._entries.get(pk)
                if entry is None:
                    entry = self._entries[pk] = self._pod_entry(self.pods[pk])
                wanted[pod_key(*pk)] = entry
                for ck in self._pod_refs(pk):
                    value = self._config_entry(ck)
                    if value is not None:
                        wanted[ck] = value
            fresh = name not in self.desired
            nd = self.desired_for(name)
            if nd.replace(wanted):
                changed.add(name)
            if fresh or name in changed:
                self.store.put_later("desired", name, nd.to_record)
            node = self.nodes.get(name)
            if node is not None and node.status.desired_gen != nd.gen:
                node.status.desired_gen = nd.gen
                self._save_node(name)
        self._dirty.clear()
        if changed and self.listener is not None:
            self.listener(changed)

    # -- internals: persistence ---------------------------------------------------------

    def _pod_entry(self, pod: Pod) -> dict[str, Any]:
        """pod_entry with the revision recorded on the pod (pods stored before the
        REVISION annotation existed have theirs hashed)."""
        return pod_entry(pod, revision=pod.metadata.annotations.get(naming.REVISION))

    def _save_node(self, name: str) -> None:
        node = self.nodes[name]
        self.store.put_later("nodes", name, lambda: dump_object(node))
        self._changed("Node", name)

    def _save_pod(self, key: Key) -> None:
        pod = self.pods[key]
        self.store.put_later("pods", _skey(key), lambda: dump_object(pod))
        self._changed("Pod", key)

    def _changed(self, kind: str, key: Any, *,
                 deleted: Callable[[], dict[str, Any]] | None = None) -> None:
        """An object was saved or deleted: drop its cached JSON, wake its watchers."""
        for (k, _), cache in self._encoded.items():
            if k == kind:
                cache.pop(key, None)
                self._stale.setdefault(kind, set()).add(key)
        self.watches.touch(kind, key, deleted=deleted)

    def refresh_encoded(self, limit: int) -> int:
        """Re-encode up to `limit` changed objects for every projection listed within
        KEEP_WARM (and the PINNED ones), so the next list finds them cached: in a live
        fleet every report changes a node's lastSeen, and without this each `get nodes`
        would encode all 100k nodes again while the user waits. Other projections not
        listed for KEEP_WARM are dropped (their memory too). Returns how many objects
        it looked at."""
        now = time.monotonic()
        for proj, at in list(self._listed.items()):
            if now - at > KEEP_WARM and proj not in PINNED:
                del self._listed[proj]
                self._encoded.pop(proj, None)
        done = 0
        for kind, stale in list(self._stale.items()):
            take = [stale.pop() for _ in range(min(limit - done, len(stale)))]
            if not stale:
                del self._stale[kind]
            table = self.table_of(kind)
            take = [k for k in take if k in table]
            for (k, fields), cache in list(self._encoded.items()):
                if k == kind:
                    self._encode_into(cache, kind, take, fields)
            done += len(take)
            if done >= limit:
                break
        return done

    async def keep_encoded(self, interval: float = 0.5, chunk: int = 2000) -> None:
        """Encode the PINNED views (`fedctl get nodes`) once, then run refresh_encoded,
        a chunk per loop turn, until cancelled."""
        for kind, fields in sorted(PINNED, key=str):
            cache = self._cache_of(kind, fields)
            self._listed[(kind, fields)] = time.monotonic()
            keys, table = self.sorted_keys(kind), self.table_of(kind)
            for i in range(0, len(keys), chunk):  # keys may go while this yields
                self._encode_into(cache, kind, [k for k in keys[i:i + chunk] if k in table],
                                  fields)
                await asyncio.sleep(0)
        while True:
            await asyncio.sleep(interval)
            while self.refresh_encoded(chunk):
                await asyncio.sleep(0)

    def _set_ready(self, node: Node, ready: Literal["Ready", "NotReady", "Unknown"],
                   reason: str, message: str) -> None:
        node.status.ready = ready
        node.status.reason = reason
        for pk in self._on_node.get(node.metadata.name, ()):
            pod = self.pods.get(pk)
            if pod is not None:
                self.rollouts.touch(pod.metadata.annotations.get(naming.OWNER))
        self.events.add(type="Normal" if ready == "Ready" else "Warning",
                        reason=f"Node{ready}", obj=f"Node/{node.metadata.name}",
                        message=message)
        # NodeStatus has no conditions list (yet); the transition is logged instead.
        log.info("node %s is %s: %s (%s)", node.metadata.name, ready, message, reason)
        self.eviction.observe(node.metadata.name, ready)
        if ready == "NotReady":
            self._pods_not_ready(node.metadata.name)


# -- helpers ----------------------------------------------------------------------------


_CLOUD_LABELS = frozenset({ARCH_LABEL, "kubernetes.io/os", "kubernetes.io/hostname"})
"""Labels the cloud sets from what it knows (arch and os as reported, the name)."""


def _ident(obj: Any) -> tuple[str, str | None, str]:
    kind = obj.kind
    ns = None if kind in CLUSTER_KINDS else obj.metadata.namespace
    return kind, ns, obj.metadata.name


def _key(kind: str, namespace: str | None, name: str) -> Any:
    """The table key of an object: its name for cluster-scoped kinds, else (ns, name)."""
    return name if kind in CLUSTER_KINDS else (namespace or "default", name)


def _skey(key: Key | str) -> str:
    return key if isinstance(key, str) else f"{key[0]}/{key[1]}"


@functools.lru_cache(maxsize=64)
def _include(model: type, fields: tuple[str, ...]) -> dict[str, Any]:
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


REDACTED = "<redacted>"


def _redact(raw: bytes) -> bytes:
    """A Secret's JSON with every data value replaced by REDACTED (keys stay visible)."""
    obj = json.loads(raw)
    for f in ("data", "stringData"):
        if isinstance(obj.get(f), dict):
            obj[f] = dict.fromkeys(obj[f], REDACTED)
    return json.dumps(obj, separators=(",", ":")).encode()


_SYSTEM_ANNOTATIONS = (naming.SCHEDULED, naming.HEARTBEAT, naming.APPLIED_LABELS,
                       naming.REVISION)


def _comparable(obj: Any) -> dict[str, Any]:
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


def _stamp(obj: Any, old: Any) -> None:
    """Carry identity over from the stored object; bump generation on change."""
    meta = obj.metadata
    if old is None:
        meta.uid = str(uuid.uuid4())
        meta.creation_timestamp = _now_iso()
        meta.generation = 1
    else:
        meta.uid = old.metadata.uid
        meta.creation_timestamp = old.metadata.creation_timestamp
        meta.generation = (old.metadata.generation or 1) + 1


def _check_selector(obj: DaemonSet | Deployment) -> None:
    if not obj.spec.selector.matches(obj.spec.template.metadata.labels):
        raise ObjectError(f"{obj.kind}: spec.selector does not match the template's labels",
                          field="spec.selector.matchLabels")


def _daemon(pod: Pod) -> bool:
    return pod.metadata.annotations.get(naming.OWNER, "").startswith("DaemonSet/")


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
