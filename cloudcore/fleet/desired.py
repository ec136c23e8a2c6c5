"""Per-node desired sets: what each node should run, by generation, and its acks.

`DesiredSets` owns one `NodeDesired` per node (`shared.delta`), level-triggered like a
Kubernetes controller: a change marks the nodes whose set may differ (the nodes whose
bound pods changed come from `Placement.take_changed`; pods changed in place,
configs and deleted nodes are marked here) and `commit()` recomputes exactly those
sets with `NodeDesired.replace`, so one API call that touches 1,000 nodes bumps each
node's gen once. Listeners (the sync hub, through `DesiredSource`) are told which
nodes changed.

Entries that come from no pod or config (the agent release, `agent/-/release`, set by
the AgentUpgrade controller, `upgrades.py`; the node's brokers, `broker/-/map`, set by
the broker tier, `cloudcore.synchub.brokers`) are held per node with `put_entry`; they
are persisted inside the desired sets themselves and read back from them at load.

It also owns the cached desired-set value of every pod and config object, the pod
-> ConfigMap/Secret references (`shared.entries.referenced_keys`: a config goes to
exactly the nodes whose pods mount it), acks, epochs (drift) and the per-node report
seqs the hub keeps idempotent by.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Set
from typing import Any

from cloudcore.fleet import naming
from cloudcore.fleet.events import EventLog
from cloudcore.fleet.objects import Key, Objects, Parts
from cloudcore.fleet.placement import Placement
from cloudcore.fleet.template import DaemonPod, uid_text
from shared.codec import Desired
from shared.delta import NodeDesired
from shared.entries import (
    AGENT,
    BROKER,
    CONFIGMAP,
    POD,
    SECRET,
    configmap_entry,
    may_reference,
    pod_entry,
    pod_key,
    referenced_keys,
    secret_entry,
    split_key,
)
from shared.models import Pod

log = logging.getLogger("cloudcore.fleet")


class EntryPart:
    """The desired entry of one pod of a DaemonSet's template revision (`value`), which
    the entries of all its other pods share but for their name, uid and nodeName
    (`PodRef`). The store keeps it once, as a part (`objects.Parts`) named by `pid`."""

    __slots__ = ("pid", "value")

    def __init__(self, value: dict[str, Any], pid: str | None = None) -> None:
        self.value = value
        self.pid = pid

    def part(self) -> dict[str, Any]:
        return self.value


class PodRef(Mapping[str, Any]):
    """A DaemonSet pod's desired entry kept compact (proposal 0004): its `EntryPart`
    and the three fields that are the pod's own (name, uid, node: about 64 bytes where
    the entry's dicts took about 520). It reads as the entry (a Mapping), compares
    equal to it, and `CloudDesired` sends and stores it as the entry (`wire`): what
    goes on the wire is byte for byte what `pod_entry` of the pod gives."""

    __slots__ = ("name", "node", "part", "uid")

    def __init__(self, part: EntryPart, name: str, uid: str | bytes | None,
                 node: str | None) -> None:
        """`name` is the pod's (its key's last part), `uid` its uid as a compact pod
        keeps it (`template.pack_uid`), `node` the node it runs on."""
        self.part = part
        self.name = name
        self.uid = uid
        self.node = node

    def wire(self) -> dict[str, Any]:
        """The entry as a plain dict (a new one unless the part is this pod's own)."""
        base = self.part.value
        spec = base["spec"]
        name, uid, node = self.name, uid_text(self.uid), self.node
        if base["name"] == name and base.get("uid") == uid and spec.get("nodeName") == node:
            return base
        if spec.get("nodeName") != node:
            spec = {**spec, "nodeName": node} if node is not None else {
                k: v for k, v in spec.items() if k != "nodeName"}
        out = {**base, "name": name, "spec": spec, "uid": uid}
        if uid is None:  # a pod stored before every pod had a uid
            del out["uid"]
        return out

    def __getitem__(self, key: str) -> Any:
        return self.wire()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.wire())

    def __len__(self) -> int:
        return len(self.wire())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PodRef):
            return (self.name == other.name and self.node == other.node
                    and (self.uid == other.uid or uid_text(self.uid) == uid_text(other.uid))
                    and (self.part is other.part or self.part.value == other.part.value))
        if isinstance(other, Mapping):
            return self.wire() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as the dict it stands for

    def __repr__(self) -> str:
        return f"PodRef({self.name} on {self.node})"


def wire_value(value: Any) -> Any:
    """A desired value as it goes on the wire (a `PodRef` as its entry)."""
    return value.wire() if isinstance(value, PodRef) else value


class CloudDesired(NodeDesired):
    """The cloud's `NodeDesired`: its items may hold `PodRef`s, which leave as the plain
    entries they stand for (`values`, `delta`, `snapshot`: the wire is unchanged), and
    are stored as references to their part (`to_record`; `loaded` resolves them
    through `Parts`)."""

    def values(self) -> dict[str, Any]:
        return {k: wire_value(v) for k, (v, _) in self.items.items()}

    def delta(self, base: int, epoch: str | None) -> Desired:
        if self.needs_snapshot(base, epoch):
            return self.snapshot()
        return Desired(
            node=self.node, epoch=self.epoch, base=base, gen=self.gen,
            put={k: wire_value(v) for k, (v, kg) in self.items.items() if kg > base},
            delete=[k for k, g in self.tombs.items() if g > base])

    def snapshot(self) -> Desired:
        return Desired(node=self.node, epoch=self.epoch, base=0, gen=self.gen,
                       snapshot=True, put=self.values())

    def to_record(self) -> dict[str, Any]:
        """`NodeDesired.to_record`, but a `PodRef` item as [part id, uid, kgen] (its
        name is its key's, its node the set's; [part id, uid, kgen, node] should it be
        another's). Plain items are [value, kgen]."""
        node = self.node
        items: dict[str, Any] = {}
        for k, (v, g) in self.items.items():
            if isinstance(v, PodRef):
                items[k] = ([v.part.pid, v.uid, g] if v.node == node
                            else [v.part.pid, v.uid, g, v.node])
            else:
                items[k] = [v, g]
        return {"node": node, "epoch": self.epoch, "gen": self.gen, "items": items,
                "tombs": self.tombs, "floor": self.floor, "acked": self.acked}

    @classmethod
    def loaded(cls, r: dict[str, Any], parts: Parts,
               shared: dict[str, EntryPart]) -> tuple[CloudDesired, list[str]]:
        """A set from its record (`to_record`, or `NodeDesired.to_record` of older
        stores); `shared` (part id -> EntryPart) is filled and reused. A reference whose
        part is missing is left out: the keys left out are returned (the node's next
        commit puts them back)."""
        items: dict[str, tuple[Any, int]] = {}
        lost = []
        for k, item in r["items"].items():
            if len(item) == 2:
                items[k] = (item[0], item[1])
                continue
            pid, uid, g = item[0], item[1], item[2]
            part = shared.get(pid)
            if part is None:
                value = parts.get(pid)
                if value is None:
                    lost.append(k)
                    continue
                part = shared[pid] = EntryPart(value, pid)
            else:
                parts.get(pid)  # marks it used
            node = item[3] if len(item) > 3 else r["node"]
            items[k] = (PodRef(part, split_key(k)[2], uid, node), g)
        nd = cls(node=r["node"], epoch=r["epoch"], gen=r["gen"], items=items,
                 tombs=dict(r["tombs"]), floor=r["floor"], acked=r["acked"])
        return nd, lost

Listener = Callable[[set[str]], None]
_NO_REFS: frozenset[str] = frozenset()  # what most pods mount: one shared empty set
SHARED_ENTRIES = 4096
"""Entries of DaemonSet templates kept for sharing at most (then the memo starts over)."""


class DesiredSets:
    """The desired set of every node, and what it takes to keep them current."""

    def __init__(self, *, objects: Objects, placement: Placement, events: EventLog) -> None:
        self.objects = objects
        self.store = objects.store
        self.placement = placement
        self.events = events
        self._sets: dict[str, NodeDesired] = {}
        self._report_seq: dict[str, int] = {}
        self._entries: dict[Key, Any] = {}  # cached desired-set values of pods (or PodRefs)
        self._refs: dict[Key, Set[str]] = {}  # pod -> configmap/secret keys it mounts
        self._shared: dict[tuple[str, str, str], EntryPart] = {}
        """(DaemonSet, template hash, revision) -> the entry of one of its pods: every
        other pod's entry (`PodRef`) shares all of it but its name, uid and nodeName."""
        self._parts: dict[str, EntryPart] = {}
        """part id -> the one EntryPart of that content (loaded or made)."""
        self._config_entries: dict[str, dict[str, Any] | None] = {}  # None: no such object
        self._extra: dict[str, dict[str, Any]] = {}
        """node -> {key: value} of entries from no pod or config (`put_entry`)."""
        self._dirty: set[str] = set()
        self._listeners: list[Listener] = []

    # -- reads --------------------------------------------------------------------------

    @property
    def sets(self) -> Mapping[str, NodeDesired]:
        """node -> its desired set (read only)."""
        return self._sets

    def get(self, name: str) -> NodeDesired | None:
        """The node's desired set, or None if it has none (yet)."""
        return self._sets.get(name)

    def desired_for(self, name: str) -> NodeDesired:
        """The node's desired set, created empty in the store epoch if it has none."""
        nd = self._sets.get(name)
        if nd is None:
            nd = self._sets[name] = CloudDesired(node=name, epoch=self.store.epoch)
        return nd

    @property
    def report_seqs(self) -> Mapping[str, int]:
        """node -> the highest report seq processed (read only)."""
        return self._report_seq

    def report_seq(self, name: str) -> int:
        return self._report_seq.get(name, 0)

    def pod_refs(self, key: Key) -> Set[str]:
        """The ConfigMap/Secret entry keys pod `key` mounts or reads (env, envFrom,
        imagePullSecrets; read only)."""
        refs = self._refs.get(key)
        if refs is None:
            pod = self.objects.pods[key]
            if isinstance(pod, DaemonPod) and not pod.base.template.may_reference:
                return _NO_REFS  # (the spec of a DaemonPod is made when read)
            spec = pod.spec
            if not may_reference(spec):  # most pods: nothing to cache (a slot is memory)
                return _NO_REFS
            refs = self._refs[key] = referenced_keys(key[0], spec) or _NO_REFS
        return refs

    def pod_entry(self, pod: Pod | DaemonPod) -> dict[str, Any] | PodRef:
        """The desired-set value of a pod. A DaemonSet's pods of one template revision
        differ only in their name, uid and nodeName: their entries are `PodRef`s to one
        `EntryPart` per revision, made from the first pod's entry (never changed:
        entries are replaced, not edited); its part is enqueued for the store now,
        before any set that refers to it."""
        if isinstance(pod, DaemonPod):
            ann = pod.base.annotations if pod.own is None else pod.own
            name, node, uid = pod.name, pod.node, pod.puid
        else:
            ann = pod.metadata.annotations
            name, node, uid = pod.metadata.name, pod.spec.node_name, pod.metadata.uid
        owner, thash = ann.get(naming.OWNER), ann.get(naming.TEMPLATE_HASH)
        rev = ann.get(naming.REVISION)
        if owner is None or thash is None or rev is None or not owner.startswith("DaemonSet/"):
            return pod_value(pod)
        part = self._shared.get((owner, thash, rev))
        if part is None:
            if len(self._shared) >= SHARED_ENTRIES:
                self._shared.clear()
            made = EntryPart(pod_value(pod))
            pid = self.objects.parts.of(made)
            part = self._parts.setdefault(pid, made)
            if len(self._parts) > 2 * SHARED_ENTRIES:  # parts of gone revisions
                self._parts = {pid: part}
            self._shared[(owner, thash, rev)] = part
        return PodRef(part, name, uid, node)

    def entry(self, node: str, key: str) -> Any | None:
        """The value of an entry set with `put_entry` (None: absent)."""
        return self._extra.get(node, {}).get(key)

    def put_entry(self, node: str, key: str, value: Any | None) -> bool:
        """Set (value None: remove) an entry of `node`'s set that no pod or config makes,
        such as `agent/-/release`; the next commit sends it. True if it changed."""
        have = self._extra.get(node)
        if value is None:
            if have is None or key not in have:
                return False
            del have[key]
            if not have:
                del self._extra[node]
        else:
            if have is not None and have.get(key) == value:
                return False
            self._extra.setdefault(node, {})[key] = value
        self._dirty.add(node)
        return True

    def entries_of(self, key: str) -> dict[str, Any]:
        """node -> the value of entry `key` set with `put_entry`, for every node with one."""
        return {node: have[key] for node, have in self._extra.items() if key in have}

    # -- listeners ----------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(nodes)` with the nodes whose sets changed, after each commit."""
        self._listeners.append(listener)

    # -- loading ------------------------------------------------------------------------

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        """Desired sets and report seqs from the store; the pods they hold are bound
        there again (`Placement.restore`)."""
        pods, parts = self.objects.pods, self.objects.parts
        acked = records.get("acked", {})
        for name, rec in records.get("desired", {}).items():
            nd, lost = CloudDesired.loaded(rec, parts, self._parts)
            if lost:
                log.error("store: node %s's desired set refers to missing parts for %s; "
                          "they are made again from their pods", name, ", ".join(lost))
                self._dirty.add(name)
            later = acked.get(name)  # an ack after the set was last written
            if (isinstance(later, list) and len(later) == 2 and later[0] == nd.epoch
                    and isinstance(later[1], int) and nd.acked < later[1] <= nd.gen):
                nd.acked = later[1]
            self._sets[name] = nd
            for k in nd.items:
                kind, ns, pname = split_key(k)
                if kind == POD and (ns, pname) in pods:
                    self.placement.restore((ns, pname), name)
                    self._entries[(ns, pname)] = nd.items[k][0]
                elif kind in (AGENT, BROKER):  # agent/-/release, broker/-/map
                    self._extra.setdefault(name, {})[k] = nd.items[k][0]
        self._report_seq = {k: int(v) for k, v in records.get("reportseq", {}).items()}
        parts.collect()  # the last loader of parts (after Objects.load)

    def sync_node_gens(self) -> None:
        """After loading: every node's status shows its set's gen and acked gen."""
        for name, node in self.objects.nodes.items():
            nd = self._sets.get(name)
            if nd is not None:
                node.status.desired_gen, node.status.acked_gen = nd.gen, nd.acked

    # -- changes ------------------------------------------------------------------------

    def mark(self, node: str) -> None:
        """`node`'s set may differ: the next commit recomputes it."""
        self._dirty.add(node)

    def invalidate(self, key: Key) -> None:
        """Pod `key` changed or went: its cached value and references are dropped."""
        self._entries.pop(key, None)
        self._refs.pop(key, None)

    def config_changed(self, kind: str, namespace: str, name: str) -> None:
        """A ConfigMap/Secret was created, changed or deleted: the nodes whose pods
        mount it are dirty (their entry for it changes); no other node is."""
        ck = f"{kind}/{namespace}/{name}"
        self._config_entries.pop(ck, None)
        pods = self.objects.pods
        for node, keys in self.placement.nodes_with_pods():
            if any(ck in self.pod_refs(pk) for pk in keys if pk in pods):
                self._dirty.add(node)

    def commit(self) -> None:
        """Recompute the desired sets of dirty nodes; one gen bump per changed node."""
        dirty = self._dirty | self.placement.take_changed()
        self._dirty = set()
        changed: set[str] = set()
        pods, nodes = self.objects.pods, self.objects.nodes
        for name in sorted(dirty):
            wanted = {}
            for pk in self.placement.on_node(name):
                entry = self._entries.get(pk)
                if entry is None:
                    entry = self.pod_entry(pods[pk])
                    if not isinstance(entry, PodRef):  # a PodRef is cheaper to make
                        self._entries[pk] = entry  # again than to keep twice (memory)
                wanted[pod_key(*pk)] = entry
                for ck in self.pod_refs(pk):
                    value = self._config_entry(ck)
                    if value is not None:
                        wanted[ck] = value
            extra = self._extra.get(name)
            if extra:
                wanted.update(extra)
            fresh = name not in self._sets
            nd = self.desired_for(name)
            if nd.replace(wanted):
                changed.add(name)
            if fresh or name in changed:
                self.store.put_later("desired", name, nd.to_record)
            node = nodes.get(name)
            if node is not None and node.status.desired_gen != nd.gen:
                node.status.desired_gen = nd.gen
                self.objects.changed("Node", name)  # derived: see record_ack
        if changed:
            for listener in self._listeners:
                listener(changed)

    def _config_entry(self, ck: str) -> dict[str, Any] | None:
        """The desired-set value of `configmap/...` or `secret/...`; None if the object
        does not exist (the pod then waits on its node, as in Kubernetes)."""
        if ck not in self._config_entries:
            kind, ns, name = split_key(ck)
            entry: dict[str, Any] | None = None
            if kind == CONFIGMAP and (ns, name) in self.objects.configmaps:
                entry = configmap_entry(self.objects.configmaps[(ns, name)])
            elif kind == SECRET and (ns, name) in self.objects.secrets:
                entry = secret_entry(self.objects.secrets[(ns, name)])
            self._config_entries[ck] = entry
        return self._config_entries[ck]

    # -- acks, epochs, report seqs ------------------------------------------------------

    def record_ack(self, name: str, epoch: str, gen: int) -> bool:
        """An edge confirmed (epoch, gen); collects tombstones. True if `acked` moved.

        Cost per node-update (issue 13): unless it collected tombstones, an ack
        writes only [epoch, acked] to the `acked` database, not the whole set again;
        `load` takes the higher of the two. The node's `desired_gen` / `acked_gen`
        are derived from the sets (`sync_node_gens` at load), so they are announced
        to lists and watches but never written as a Node record."""
        nd = self._sets.get(name)
        if nd is None or not nd.ack(epoch, gen):
            return False
        if nd.collect():
            self.store.put_later("desired", name, nd.to_record)
        else:  # a small record, not the whole set again (issue 13); `load` takes it
            self.store.put("acked", name, [nd.epoch, nd.acked])
        node = self.objects.nodes.get(name)
        if node is not None:
            node.status.acked_gen = nd.acked
            self.objects.changed("Node", name)
        return True

    def restart_epoch(self, name: str, epoch: str, *, why: str) -> NodeDesired:
        """Move a node's desired set to a new `epoch` (drift: the edge claims a gen the
        cloud never made); the next message to it is a snapshot. A Warning event
        `DesiredDrift` names the node."""
        nd = self.desired_for(name)
        old = nd.epoch
        nd.restart_epoch(epoch)
        self.store.put_later("desired", name, nd.to_record)
        node = self.objects.nodes.get(name)
        if node is not None:
            node.status.acked_gen = 0
            self.objects.save("Node", name)
        log.warning("node %s: desired drift (%s); epoch %s -> %s, sending a snapshot",
                    name, why, old, epoch)
        self.events.add(type="Warning", reason="DesiredDrift", obj=f"Node/{name}",
                        message=f"node {name}: {why}; its desired set is sent again as a "
                                f"snapshot under a new epoch")
        return nd

    def set_report_seq(self, name: str, seq: int) -> None:
        self._report_seq[name] = seq
        self.store.put("reportseq", name, seq)

    def forget_report_seq(self, name: str) -> None:
        """The node was deleted: its report stream starts again from nothing."""
        self._report_seq.pop(name, None)
        self.store.delete("reportseq", name)


def pod_value(pod: Pod) -> dict[str, Any]:
    """pod_entry with the revision recorded on the pod (pods stored before the
    REVISION annotation existed have theirs hashed)."""
    return pod_entry(pod, revision=pod.metadata.annotations.get(naming.REVISION))
