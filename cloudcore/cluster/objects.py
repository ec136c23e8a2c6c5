"""Global objects of the shards in NATS JetStream KV, a replica in every shard (issue 14
part 2, proposal 0008 wiring step 2).

What it owns: the bucket `<prefix>_objects` (default `edgefed_objects`), one key per
object, `<Kind>.<namespace>.<name>` (cluster-scoped kinds: `<Kind>._.<name>`), each part
escaped by `escape` (KV keys take `[-_=A-Za-z0-9]` tokens between dots; anything else,
the dot included, becomes `=XX` per UTF-8 byte). The value is JSON: `{"object": the
document as applied (no status, no server metadata), "uid", "creationTimestamp", "by":
the writing shard}`; a Secret's value is encrypted with the store's key ring (AES-GCM,
the key's name in the record, the KV key as associated data), so every shard of a fleet
needs the same `encryption.keys` file.

The kinds that are global (`GLOBAL_KINDS`): DaemonSet, Deployment, Pod (bare pods),
ConfigMap, Secret, Namespace, PriorityClass, AgentUpgrade; and node registrations (key
`Registration._.<node>`, encrypted: the Node as it joined and its credentials record),
written by the shard a node joins through and adopted by every shard, deleted (with the
node and its credentials on every shard) by a node delete through any shard; and a
node's API-owned labels and spec (`NodeSpec._.<node>`, last writer wins); API and join
tokens (`Token._.<api|join>=2F<id>`, encrypted; a join token's uses counted by CAS). Not
global yet: the broker map, certificate renewals' records.

The replica (`ClusterObjects.run`): a watch of the whole bucket (each key's last value,
then every change, in revision order) applied to the shard's fleet with the same
operations a local apply runs (`Fleet.apply` / `Fleet.delete`): a DaemonSet expands for
this shard's nodes, ConfigMap changes reach the nodes whose pods use them, and watches
of this shard's API see the change. The objects' identity (uid, creationTimestamp) comes
from the record, so every shard shows the same.

Writes (`apply`, `delete`): the API validates first (`Fleet.plan`, the same admission a
local apply runs), then writes each changed object by compare-and-set on its key's
revision, and returns only once this shard's replica applied that revision
(read-your-writes). The revision is the object's `resourceVersion`: a document that
carries `metadata.resourceVersion` is written only if the key is still at that revision,
else 409 as in Kubernetes; one without it is written over the current revision (kubectl
apply's last-writer-wins), retried if another writer slipped in between.

Known limits (proposal 0008): Deployment and bare Pod placement still runs on every
shard that holds the object (each schedules it over the nodes it knows; only the owner
of a node delivers to it), not once behind the global lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from cloudcore.cluster.errors import CASConflict
from cloudcore.cluster.kv import KV, Bucket, Entry
from cloudcore.errors import CloudcoreError, Conflict, NotFound, TemporaryError
from cloudcore.fleet.objects import ApplyResult, dump_object, ident, key_of
from shared.errors import ObjectError
from shared.models import (
    CLUSTER_KINDS,
    SYSTEM_PRIORITY_CLASSES,
    Namespace,
    NamespaceMeta,
    Node,
    Secret,
    parse_object,
    without_server_fields,
)

log = logging.getLogger("cloudcore.cluster.objects")

GLOBAL_KINDS = frozenset({"DaemonSet", "Deployment", "Pod", "ConfigMap", "Secret",
                          "Namespace", "PriorityClass", "AgentUpgrade"})
REGISTRATION = "Registration"
"""The key kind of a node's registration (`Registration._.<node>`): the Node as it
joined and its credentials record (broker password hash, node key), encrypted."""
NODE_SPEC = "NodeSpec"
"""The key kind of a node's API-owned part (`NodeSpec._.<node>`): the labels set through
the API and the spec (taints, unschedulable), last writer wins."""
TOKEN = "Token"
"""The key kind of an API or join token's record (`Token._.<api|join>=2F<id>`: the
token's hash and role or labels, uses; encrypted). Join token uses are counted here
by compare-and-set, so a token's `uses` hold across shards."""
CLUSTER_NS = "_"
"""The namespace part of a cluster-scoped object's key."""
APPLIED_WAIT = 15.0
"""Seconds a write waits for this shard's replica to apply its revision."""
WRITE_TRIES = 5
TOMBSTONES_KEPT = 10_000
"""Deleted global objects a replica remembers for watches resumed from a revision."""
"""Writes of a document without resourceVersion retried when another writer won."""
SECRET_DB = "kv_objects"
"""The associated-data name a Secret's KV value is encrypted under."""
_SAFE = frozenset("-_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


class NotReplicated(TemporaryError):
    """Written to KV, but this shard's replica did not apply the revision in time (or
    the replica is not running): the write is durable, the read of it here may lag."""


class NotConnected(TemporaryError):
    """The shard has not reached the shared store (NATS) yet: nothing was written."""


class StaleVersion(Conflict):
    """A write carried a resourceVersion the object is no longer at (409)."""


def escape(part: str) -> str:
    """One token of a KV key: `[-_A-Za-z0-9]` kept, every other byte `=XX`."""
    if part and all(c in _SAFE for c in part):
        return part
    return "".join(c if c in _SAFE else "".join(f"={b:02X}" for b in c.encode())
                   for c in part) or "="


def unescape(token: str) -> str:
    if "=" not in token:
        return token
    if token == "=":
        return ""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1:i + 3], 16))
            i += 3
        else:
            out += token[i].encode()
            i += 1
    return out.decode()


def object_key(kind: str, namespace: str | None, name: str) -> str:
    ns = CLUSTER_NS if kind in CLUSTER_KINDS or kind in (REGISTRATION, NODE_SPEC, TOKEN) \
        else escape(namespace or "default")
    return f"{kind}.{ns}.{escape(name)}"


def parse_key(key: str) -> tuple[str, str | None, str]:
    """(kind, namespace or None, name) of an object key; ValueError if not one."""
    kind, ns, name = key.split(".")
    if kind in (REGISTRATION, NODE_SPEC, TOKEN):
        return kind, None, unescape(name)
    if kind not in GLOBAL_KINDS:
        raise ValueError(f"not a global kind: {kind!r}")
    return kind, (None if kind in CLUSTER_KINDS else unescape(ns)), unescape(name)


def objects_bucket(prefix: str) -> str:
    return f"{prefix}_objects"


class ClusterObjects:
    """The global objects of one shard: writes to KV and the replica fed by its watch
    (module docstring). `keys` is the store's key ring (Secrets); None refuses Secrets."""

    def __init__(self, fleet: Any, *, shard: str, prefix: str = "edgefed",
                 replicas: int = 1, keys: Any = None, auth: Any = None,
                 applied_wait: float = APPLIED_WAIT) -> None:
        self.fleet = fleet
        self.auth = auth
        """The node credentials registry (`cloudcore.auth.Auth`); None: registrations
        are neither written nor adopted."""
        self.shard = shard
        self.prefix = prefix
        self.replicas = replicas
        self.keys = keys
        self.applied_wait = applied_wait
        self.bucket: Bucket | None = None
        self.revision = 0
        """The highest revision this replica applied (every earlier one is applied)."""
        self.revisions: dict[str, int] = {}
        """Object key -> the revision of its last value this replica applied."""
        self._by_table: dict[tuple[str, Any], int] = {}
        """(kind, table key) -> the same revision (`version_by_key`)."""
        self.ready = asyncio.Event()
        """Set once the watch says the existing values were sent (nats' consumer info;
        writes do not rely on it: they wait for their own revision)."""
        self._advanced = asyncio.Event()
        self.applied = 0
        self.failed = 0
        self.tombstones: OrderedDict[tuple[str, Any], tuple[int, dict[str, Any]]] = \
            OrderedDict()
        """(kind, table key) -> (revision, the object as it was) of the last
        TOMBSTONES_KEPT global objects deleted, oldest first: what a watch resumed
        from a revision sends as DELETED (`changes_since`)."""
        self.forgotten = 0
        """The revision of the newest tombstone dropped from `tombstones`: a watch from
        an older revision cannot be resumed (410, as Kubernetes answers)."""

    # -- the replica --------------------------------------------------------------------

    async def run(self, kv: KV) -> None:
        """Open the bucket, watch it and apply every change until cancelled."""
        self.bucket = await kv.bucket(objects_bucket(self.prefix), create=True,
                                      replicas=self.replicas)
        watch = await self.bucket.watch(">")
        if watch.caught_up.is_set():
            self._caught_up()
        try:
            async for entry in watch:
                self.apply_entry(entry)
                if not self.ready.is_set() and watch.caught_up.is_set():
                    self._caught_up()
        finally:
            await watch.stop()

    def _caught_up(self) -> None:
        self.ready.set()
        log.info("shard %s: global objects replica watching bucket %s (the watch reports "
                 "its existing values sent; %d applied so far, at revision %d)",
                 self.shard, objects_bucket(self.prefix), self.applied, self.revision)

    def apply_entry(self, e: Entry) -> None:
        """Apply one change of the bucket to this shard's fleet (never raises: what
        cannot be applied is logged with its key and revision)."""
        try:
            kind, ns, name = parse_key(e.key)
        except ValueError:
            log.warning("shard %s: KV key %r is not an object key; ignored", self.shard, e.key)
            self._advance(e)
            return
        try:
            if kind == TOKEN:
                self._token(e.key, name, None if e.deleted else e.value)
            elif kind == NODE_SPEC:
                if not e.deleted:
                    self._node_spec(name, e.value)
            elif kind == REGISTRATION:
                if e.deleted:
                    self._unregister(name)
                else:
                    self._adopt(e.key, name, e.value)
            elif e.deleted:
                self._tombstone(kind, ns, name, e.revision)
                self._delete_local(kind, ns, name)
            else:
                self._apply_local(e.key, kind, e.value)
            self.applied += 1
        except (CloudcoreError, ObjectError, ValueError, KeyError, TypeError) as exc:
            self.failed += 1
            log.error("shard %s: global object %s at revision %d not applied here: %s",
                      self.shard, e.key, e.revision, exc)
        self._advance(e)

    def _advance(self, e: Entry) -> None:
        try:
            kind, ns, name = parse_key(e.key)
            tkey: Any = (kind, key_of(kind, ns, name)) if kind in GLOBAL_KINDS else None
        except ValueError:
            tkey = None
        if e.deleted:
            self.revisions.pop(e.key, None)
            self._by_table.pop(tkey, None)
        else:
            self.revisions[e.key] = e.revision
            if tkey is not None and self._by_table.get(tkey) != e.revision:
                self._by_table[tkey] = e.revision
                if self.fleet.objects.lookup(*tkey) is not None:
                    # a new resourceVersion even when nothing else changed: lists and
                    # watches show it (Kubernetes sends MODIFIED for it too)
                    self.fleet.objects.changed(*tkey)
        self.revision = max(self.revision, e.revision)
        self._advanced.set()

    def _tombstone(self, kind: str, ns: str | None, name: str, revision: int) -> None:
        tkey = (kind, key_of(kind, ns, name))
        live = self.fleet.objects.lookup(*tkey)
        body: dict[str, Any] = dump_object(live) if live is not None else {
            "kind": kind, "metadata": {"name": name, **({"namespace": ns} if ns else {})}}
        meta: dict[str, Any] = body.setdefault("metadata", {})
        meta["resourceVersion"] = str(revision)
        self.tombstones.pop(tkey, None)
        self.tombstones[tkey] = (revision, body)
        while len(self.tombstones) > TOMBSTONES_KEPT:
            _, (rev, _) = self.tombstones.popitem(last=False)
            self.forgotten = max(self.forgotten, rev)

    def changes_since(self, kind: str, revision: int
                      ) -> tuple[list[Any], list[tuple[Any, dict[str, Any]]]] | None:
        """What changed in `kind` after `revision` as this replica holds it: (table keys
        of the objects at a later revision, (table key, the object as it was) of those
        deleted after it, in revision order); None if deletions after `revision` were
        already forgotten (the watch must start over with a list)."""
        if revision < self.forgotten:
            return None
        changed = sorted((rev, tkey) for (k, tkey), rev in self._by_table.items()
                         if k == kind and rev > revision)
        deleted = [(tkey, body) for (k, tkey), (rev, body) in self.tombstones.items()
                   if k == kind and rev > revision and (k, tkey) not in self._by_table]
        return [tkey for _, tkey in changed], deleted

    def _apply_local(self, key: str, kind: str, value: bytes) -> None:
        record = self._decode(key, kind, value)
        obj = parse_object(record["object"])
        fleet = self.fleet
        results = fleet.apply([obj])
        k, ns, name = ident(obj)
        tkey = key_of(k, ns, name)
        live = fleet.objects.lookup(k, tkey)
        uid, created = record.get("uid"), record.get("creationTimestamp")
        if live is not None and uid and (live.metadata.uid != uid or (
                created and live.metadata.creation_timestamp != created)):
            live.metadata.uid = uid  # one identity on every shard
            if created:
                live.metadata.creation_timestamp = created
            if results and results[0].action == "unchanged":
                fleet.objects.save(k, tkey)

    def _adopt(self, key: str, name: str, value: bytes) -> None:
        """A node registered through another shard: the Node (as it joined) and its
        credentials, so this shard serves it when it holds the node's partition."""
        if self.keys is None:
            raise ValueError("a registration, and this shard has no encryption key ring")
        record = json.loads(self.keys.decrypt(SECRET_DB, key.encode(), value))
        node, creds = record["node"], record["credentials"]
        fleet = self.fleet
        if name not in fleet.objects.nodes:
            fleet.join_node(name, labels=dict(node.get("labels") or {}),
                            arch=node.get("arch"))
            live = fleet.objects.nodes[name]
            if node.get("uid"):
                live.metadata.uid = node["uid"]
                live.metadata.creation_timestamp = node.get("creationTimestamp")
                fleet.objects.save("Node", name)
        if self.auth is not None and self.auth.adopt_credentials(name, creds):
            log.info("shard %s: node %s registered through shard %s", self.shard, name,
                     record.get("by"))

    def _token(self, key: str, name: str, value: bytes | None) -> None:
        if self.auth is None:
            return
        tkind, _, tid = name.partition("/")
        rec = None if value is None else self._sealed_json(key, value)
        self.auth.adopt_token(tkind, tid, rec)

    def _sealed(self, key: str, doc: dict[str, Any]) -> bytes:
        if self.keys is None:
            raise ObjectError("this shard has no encryption key ring to share secrets with",
                              field="kind")
        raw = json.dumps(doc, separators=(",", ":")).encode()
        return bytes(self.keys.encrypt(SECRET_DB, key.encode(), raw))

    def _sealed_json(self, key: str, value: bytes) -> Any:
        if self.keys is None:
            raise ValueError("a sealed record, and this shard has no encryption key ring")
        return json.loads(self.keys.decrypt(SECRET_DB, key.encode(), value))

    async def share_token(self, kind: str, tid: str) -> None:
        """Share a token made through this shard (`kind` "api" or "join")."""
        if self.auth is None:
            return
        rec = self.auth.token_record(kind, tid)
        if rec is None:
            return
        key = object_key(TOKEN, None, f"{kind}/{tid}")
        await self.wait_applied(await self._bucket().put(key, self._sealed(key, rec)))

    async def drop_token(self, kind: str, tid: str) -> None:
        """A token revoked through this shard: revoked on every shard."""
        bucket = self._bucket()
        key = object_key(TOKEN, None, f"{kind}/{tid}")
        await bucket.delete(key)
        await self.wait_applied(await bucket.revision_of(key))

    async def use_join_token(self, tid: str) -> str:
        """Count one use of a shared join token by compare-and-set: "counted", "used_up"
        (other shards used its last use: refuse the join), or "not_shared" (made before
        the shards shared tokens: counted on this shard only)."""
        bucket = self._bucket()
        key = object_key(TOKEN, None, f"join/{tid}")
        for _ in range(WRITE_TRIES * 2):
            e = await bucket.get(key)
            if e is None:
                return "not_shared"
            rec = self._sealed_json(key, e.value)
            if int(rec.get("uses", 0)) >= int(rec.get("maxUses") or 1):
                return "used_up"
            rec["uses"] = int(rec.get("uses", 0)) + 1
            rec["lastUsed"] = time.time()
            try:
                rev = await bucket.update(key, self._sealed(key, rec), revision=e.revision)
            except CASConflict:
                continue
            await self.wait_applied(rev)
            return "counted"
        raise Conflict("join token: other joins kept using it at the same time; try again")

    def _node_spec(self, name: str, value: bytes) -> None:
        """A node's labels or spec changed through another shard: apply them here as a
        Node apply does (DaemonSets follow its labels on the shard that owns it)."""
        if name not in self.fleet.objects.nodes:
            return  # not registered here (yet): its registration brings it
        doc = json.loads(value)
        obj = Node.model_validate({"metadata": {"name": name,
                                                "labels": dict(doc.get("labels") or {})},
                                   "spec": doc.get("spec") or {}})
        if not self.fleet.node_ops.unchanged(obj):
            self.fleet.apply([obj])
        shared = self.fleet.placement.shared
        mark = getattr(shared, "drain_mark", None)
        if mark is not None:  # a drain through any shard: the holder moves the replicas
            mark(name, bool(doc.get("drain")) and bool(obj.spec.unschedulable))

    async def node_changed(self, name: str, *, drain: bool = False) -> None:
        """Share a node's API-owned labels and spec after a change through this
        shard's API (apply of a Node, label, cordon, drain). `drain` marks the key so
        that the shard holding the global lease moves the node's replicas (a drain
        through any shard moves them fleet-wide; the mark stays while the node is
        cordoned, so a later holder honours it too)."""
        node = self.fleet.objects.nodes.get(name)
        if node is None:
            return
        bucket = self._bucket()
        raw = json.dumps({"labels": self.fleet.node_ops.applied_labels(node),
                          "spec": node.spec.model_dump(mode="json", by_alias=True,
                                                       exclude_none=True),
                          "by": self.shard,
                          **({"drain": True} if node.spec.unschedulable and (
                              drain or name in getattr(self.fleet.placement.shared,
                                                       "drains", ())) else {})},
                         separators=(",", ":")).encode()
        await self.wait_applied(await bucket.put(object_key(NODE_SPEC, None, name), raw))

    def _unregister(self, name: str) -> None:
        """A node deleted through another shard: delete it and its credentials here."""
        if name in self.fleet.objects.nodes:
            with contextlib.suppress(NotFound):
                self.fleet.delete("Node", None, name)
        if self.auth is not None:
            self.auth.forget_node(name)

    async def unregister(self, name: str) -> None:
        """Tell every shard a node was deleted (its registration key deleted: a marker
        even if it joined before the shards shared registrations); returns once this
        replica applied it."""
        bucket = self._bucket()
        key = object_key(REGISTRATION, None, name)
        await bucket.delete(key)
        await self.wait_applied(await bucket.revision_of(key))

    async def registered(self, name: str) -> bool:
        """Whether a node of that name registered through any shard."""
        return await self._bucket().get(object_key(REGISTRATION, None, name)) is not None

    async def register(self, name: str) -> None:
        """Share the registration of a node that just joined through this shard (its
        Node and credentials as stored here); Conflict if another shard registered the
        name meanwhile. Returns once this replica applied it."""
        bucket = self._bucket()
        if self.keys is None or self.auth is None:
            raise ObjectError("this shard cannot share node registrations (no encryption "
                              "key ring or credentials registry)", field="name")
        creds = self.auth.credentials_of(name)
        node = self.fleet.objects.nodes.get(name)
        if creds is None or node is None:
            raise NotFound("Node", name)
        key = object_key(REGISTRATION, None, name)
        raw = json.dumps({"node": {"labels": dict(node.metadata.labels),
                                   "arch": node.status.arch, "uid": node.metadata.uid,
                                   "creationTimestamp": node.metadata.creation_timestamp},
                          "credentials": creds, "by": self.shard},
                         separators=(",", ":")).encode()
        try:
            rev = await bucket.create(key, bytes(self.keys.encrypt(SECRET_DB, key.encode(),
                                                                   raw)))
        except CASConflict:
            raise Conflict(f"node {name!r} has already joined through another shard; "
                           f"delete it first (fedctl node delete {name})") from None
        await self.wait_applied(rev)

    def _delete_local(self, kind: str, ns: str | None, name: str) -> None:
        with contextlib.suppress(NotFound):
            self.fleet.delete(kind, ns, name)

    # -- encoding -----------------------------------------------------------------------

    def _encode(self, key: str, obj: Any, *, uid: str | None, created: str | None) -> bytes:
        doc = without_server_fields(obj.dump())
        raw = json.dumps({"object": doc, "uid": uid, "creationTimestamp": created,
                          "by": self.shard}, separators=(",", ":")).encode()
        if isinstance(obj, Secret):
            if self.keys is None:
                raise ObjectError("Secrets cannot be written to the shared store: this "
                                  "shard has no encryption key ring", field="kind")
            raw = self.keys.encrypt(SECRET_DB, key.encode(), raw)
        return bytes(raw)

    def _decode(self, key: str, kind: str, value: bytes) -> dict[str, Any]:
        if kind == "Secret":
            if self.keys is None:
                raise ValueError("a Secret, and this shard has no encryption key ring")
            value = self.keys.decrypt(SECRET_DB, key.encode(), value)
        record = json.loads(value)
        if not isinstance(record, dict) or not isinstance(record.get("object"), dict):
            raise ValueError("not an object record")
        return record

    # -- writes through this shard's API ------------------------------------------------

    def _bucket(self) -> Bucket:
        if self.bucket is None:
            raise NotConnected("the shard is not connected to the shared store (NATS) yet; "
                               "retry", delay=1.0)
        return self.bucket

    def version_by_key(self, kind: str, key: Any) -> int | None:
        """`version_of` by table key (the API's list cache asks it per object)."""
        return self._by_table.get((kind, key))

    def version_of(self, kind: str, namespace: str | None, name: str) -> int | None:
        """The revision of the object this replica holds (its resourceVersion)."""
        return self.revisions.get(object_key(kind, namespace, name))

    async def apply(self, objs: list[Any], results: list[ApplyResult],
                    versions: list[str | None], *, namespaces: Sequence[str] = ()
                    ) -> list[ApplyResult]:
        """Write objects `Fleet.plan` passed (`results`), after creating `namespaces`;
        `versions` the resourceVersion each document carried. Returns the results once
        this replica applied every revision written."""
        bucket = self._bucket()
        for obj, version in zip(objs, versions, strict=True):
            if version is not None:  # a stale one refuses the call before any write
                kind, ns, name = ident(obj)
                if str(await bucket.revision_of(object_key(kind, ns, name))) != version:
                    raise _stale(kind, name, version)
        top = 0
        for ns in namespaces:
            top = max(top, await self._write(bucket, Namespace(metadata=NamespaceMeta(
                name=ns)), None, create_only=True) or 0)
        order = sorted(range(len(objs)), key=lambda i: not isinstance(objs[i], Namespace))
        for i in order:
            if results[i].action == "unchanged" and versions[i] is None:
                continue
            top = max(top, await self._write(bucket, objs[i], versions[i]) or 0)
        await self.wait_applied(top)
        return results

    async def _write(self, bucket: Bucket, obj: Any, version: str | None, *,
                     create_only: bool = False) -> int | None:
        kind, ns, name = ident(obj)
        key = object_key(kind, ns, name)
        live = self.fleet.objects.lookup(kind, key_of(kind, ns, name))
        uid = live.metadata.uid if live is not None else None
        created = live.metadata.creation_timestamp if live is not None else None
        if uid is None:
            uid = str(uuid.uuid4())
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        value = self._encode(key, obj, uid=uid, created=created)
        if version is not None:
            try:
                expected = int(version)
            except ValueError:
                raise ObjectError(f"metadata.resourceVersion: {version!r} is not a version "
                                  "this server gave", field="metadata.resourceVersion"
                                  ) from None
            try:
                if expected < 1:
                    return await bucket.create(key, value)
                return await bucket.update(key, value, revision=expected)
            except CASConflict:
                raise _stale(kind, name, version) from None
        for _ in range(WRITE_TRIES):
            rev = await bucket.revision_of(key)
            try:
                if rev == 0:
                    return await bucket.create(key, value)
                if create_only:
                    entry = await bucket.get(key)
                    if entry is not None:
                        return None  # exists (made by another writer meanwhile)
                return await bucket.update(key, value, revision=rev)
            except CASConflict:
                continue
        raise Conflict(f"{kind} {name!r}: other writers kept changing it; try again")

    async def delete(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete a global object everywhere (CAS on its current revision); returns it
        as this shard held it, once this replica applied the deletion."""
        bucket = self._bucket()
        key = key_of(kind, namespace or "default", name)
        obj = self.fleet.objects.table(kind).get(key)
        if obj is None:
            raise NotFound(kind, name if kind in CLUSTER_KINDS else f"{key[0]}/{name}")
        if kind == "Namespace":
            self.fleet.objects.check_namespace_deletable(name)
        if kind == "PriorityClass" and name in SYSTEM_PRIORITY_CLASSES:
            raise Conflict(f'priorityclasses "{name}" cannot be deleted: it is built in')
        dumped = dump_object(obj)
        kkey = object_key(kind, namespace, name)
        rev = await bucket.revision_of(kkey)
        if rev == 0 or self.revisions.get(kkey) is None:
            # made on this shard before it joined the cluster (or a built-in): local only
            return dict(self.fleet.delete(kind, namespace, name))
        try:
            await bucket.delete(kkey, revision=rev)
        except CASConflict:
            raise Conflict(f"{kind} {name!r} changed while it was being deleted; "
                           "try again") from None
        await self.wait_applied(await bucket.revision_of(kkey))
        return dumped

    async def wait_applied(self, revision: int) -> None:
        """Return once this replica applied `revision` (read-your-writes)."""
        if revision <= self.revision:
            return
        deadline = asyncio.get_running_loop().time() + self.applied_wait
        while self.revision < revision:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise NotReplicated(
                    f"written to the shared store at revision {revision}, but shard "
                    f"{self.shard}'s replica applied only up to {self.revision} within "
                    f"{self.applied_wait:g} s: the change is durable and will show here "
                    "shortly", delay=1.0)
            self._advanced.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._advanced.wait()


def _stale(kind: str, name: str, version: str) -> StaleVersion:
    return StaleVersion(f'Operation cannot be fulfilled on {kind} "{name}": the object has '
                        "been modified; please apply your changes to the latest version and "
                        f"try again (resourceVersion {version} is stale)")


def is_global(kind: str) -> bool:
    return kind in GLOBAL_KINDS


__all__ = ["GLOBAL_KINDS", "ClusterObjects", "NotConnected", "NotReplicated", "StaleVersion",
           "escape", "object_key", "parse_key", "unescape"]
