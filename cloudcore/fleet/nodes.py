"""Node lifecycle: the one home of what happens to a node and what it reports.

`Nodes` registers nodes (first contact, or a join with a token), applies what their
reports say (capacity, labels, heartbeat; pod statuses; telemetry), keeps them alive
or not (heard -> Ready; missed heartbeats or a last will -> NotReady; Unknown after a
cloud restart until they report), takes their pods' readiness back while they are
NotReady (Kubernetes' MarkPodsNotReady, and NodeLost once the eviction timeout has
passed, decided by `eviction.py`), patches, cordons and deletes them, and keeps their
forecasts and readiness counts.

It changes node and pod objects in place through `Objects` and never runs a
controller itself: a method whose change may move pods says so in its return value
and the `Fleet` facade runs the DaemonSet sync, the pending retry and the commit.
Workloads whose pods' readiness changed are touched through the `touch` callable
(the rollout plans), so the rollout tick refreshes their status.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from cloudcore.errors import NotFound
from cloudcore.fleet import naming
from cloudcore.fleet.desired import DesiredSets
from cloudcore.fleet.edgemetrics import EdgeSeries
from cloudcore.fleet.events import EventLog
from cloudcore.fleet.forecast import FORECAST_KEYS, WARN_INTERVAL, normalise
from cloudcore.fleet.lifecycle import Liveness, Wave
from cloudcore.fleet.noderecord import NO_VALUES, NodeRecord
from cloudcore.fleet.objects import Key, Objects, now_iso
from cloudcore.fleet.placement import Placement, pending_status
from cloudcore.scheduler.core import ARCH_LABEL
from shared.entries import POD, agent_upgrade_value, parse_agent_upgrade, split_key
from shared.models import Node, NodeSpec, Pod, PodStatus

log = logging.getLogger("cloudcore.fleet")

Ready = Literal["Ready", "NotReady", "Unknown"]
Touch = Callable[[str | None], None]
Observer = Callable[[str, int, float, float], None]

CLOUD_LABELS = frozenset({ARCH_LABEL, "kubernetes.io/os", "kubernetes.io/hostname"})
"""Labels the cloud sets from what it knows (arch and os as reported, the name)."""


@functools.lru_cache(maxsize=4096)
def _applied(raw: str | None) -> Mapping[str, str]:
    """The APPLIED_LABELS annotation parsed (read only; cached, as nodes report often and
    the annotation rarely changes)."""
    return MappingProxyType(dict(json.loads(raw))) if raw else MappingProxyType({})


_PLAIN_SPEC = NodeSpec()
"""The spec of every node without taints that is not cordoned: one object for all of
them. Node specs are replaced (`apply`, `patch` copy on write), never changed in place."""


class Nodes:
    """Registration, reports, liveness, telemetry and forecasts of the fleet's nodes.

    Memory: a node is a compact `NodeRecord` (two slotted objects, its labels dict
    and its uid's 16 bytes; `noderecord.py`), and at 100,000 nodes what every node
    would hold a copy of is shared. Equal capacity / allocatable dicts (`_shape`),
    equal annotation dicts (`_annotations`), the plain spec and the empty usage are one
    object each, and the strings a report repeats (label keys and values, arch, os,
    agent version) are interned. Shared dicts are replaced on change, never edited in
    place. The full `Node` is made only when the API, a watch or the store asks."""

    def __init__(self, *, objects: Objects, placement: Placement, desired: DesiredSets,
                 liveness: Liveness, events: EventLog, touch: Touch,
                 clock: Callable[[], float] = time.time,
                 protected_labels: tuple[str, ...] = (),
                 telemetry_points: int = 120,
                 edge_series: EdgeSeries | None = None) -> None:
        self.objects = objects
        self.store = objects.store
        self.placement = placement
        self.desired = desired
        self.liveness = liveness
        self.events = events
        self.touch = touch
        self.clock = clock
        self.protected_labels = protected_labels
        """Label prefixes an admin protects besides `naming.PROTECTED_LABEL_PREFIXES`:
        a node's report cannot set them on itself."""
        self.telemetry: dict[str, list[dict[str, Any]]] = {}
        self.telemetry_points = telemetry_points
        self.observer: Observer | None = None
        """Gets every valid telemetry point as (node, minute, cpu 0..1, mem 0..1): the
        forecaster, when it is enabled."""
        self.telemetry_malformed = 0
        self.edge_series = edge_series or EdgeSeries(clock=clock)
        """The newest Prometheus samples scraped on each device (`/metrics/edge`)."""
        self._warned: dict[str, float] = {}  # node -> clock of its last over-capacity warning
        self._deleted: dict[str, float] = {}
        """Nodes deleted through the API (name -> when): their agents' messages do not
        register them again (a deleted node's session may outlive its credentials);
        joining again with a token clears the mark."""
        self._shapes: dict[tuple[tuple[str, int], ...], dict[str, int]] = {}
        """Capacity / allocatable dicts by content: nodes of one hardware shape share one
        (they are replaced on a change, never edited in place)."""
        self._shared_annotations: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        """Annotation dicts by content (`_annotations`), shared likewise."""
        self._lost: dict[Key, tuple[str | None, PodStatus]] = {}
        """pod -> (its uid, its last reported status), for pods marked not ready: put back
        only on that pod object (one deleted and made again meanwhile is another pod)."""
        self._lost_on: dict[str, set[Key]] = {}
        """node -> its pods in `_lost` (by the kept status' node): a node coming back looks
        at its own, not at every lost pod of the fleet (after a region-wide outage that
        scan made recovery quadratic in the fleet's size)."""
        self._node_lost: set[str] = set()  # nodes whose pods were marked NodeLost

    # -- reads --------------------------------------------------------------------------

    @property
    def table(self) -> dict[str, NodeRecord]:
        return self.objects.nodes

    @property
    def deleted(self) -> Mapping[str, float]:
        """Nodes deleted through the API -> when (read only)."""
        return self._deleted

    def known(self, name: str) -> bool:
        return name in self.objects.nodes

    def is_deleted(self, name: str) -> bool:
        """Deleted through the API and not joined again."""
        return name in self._deleted and name not in self.objects.nodes

    def readiness(self, name: str) -> str | None:
        node = self.objects.nodes.get(name)
        return None if node is None else node.status.ready

    def readiness_counts(self) -> dict[str, int]:
        counts = {"Ready": 0, "NotReady": 0, "Unknown": 0}
        for node in self.objects.nodes.values():
            counts[node.status.ready] += 1
        return counts

    @staticmethod
    def applied_labels(node: NodeRecord) -> dict[str, str]:
        """Labels set through the API (kept over what the agent reports); a copy."""
        return dict(_applied(node.metadata.annotations.get(naming.APPLIED_LABELS)))

    def unchanged(self, obj: Node) -> bool:
        """Whether applying Node `obj` would change nothing; ObjectError-free check,
        the node must exist."""
        cur = self.objects.nodes[obj.metadata.name]
        return (cur.spec == obj.spec and all(
            cur.metadata.labels.get(k) == v for k, v in obj.metadata.labels.items())
            and self.applied_labels(cur) == obj.metadata.labels)

    # -- loading ------------------------------------------------------------------------

    def load(self, records: dict[str, dict[str, Any]]) -> None:
        """Nodes from the store; they are Unknown until they report."""
        for name, raw in records.get("nodes", {}).items():
            node = NodeRecord.of(Node.model_validate(raw))
            node.status.ready = "Unknown"
            node.status.reason = "CloudcoreRestarted"
            self._compact(node)
            self.objects.nodes[name] = node
            hb = node.metadata.annotations.get(naming.HEARTBEAT)
            self.liveness.set_heartbeat(name, float(hb) if hb else None)
            self.liveness.start(name)
        self._deleted = {k: float(v.get("at", 0)) if isinstance(v, dict) else 0.0
                         for k, v in records.get("deletednodes", {}).items()}

    # -- registration and the API -------------------------------------------------------

    def register(self, name: str, *, rejoin: bool = False) -> bool:
        """Create an unknown node on first contact; True if it was new (the caller
        then runs the node's controllers). A node deleted through the API is not
        created again by its agent's messages, only by a join (`rejoin`)."""
        if name in self.objects.nodes:
            return False
        if name in self._deleted:
            if not rejoin:
                return False
            del self._deleted[name]
            self.store.delete("deletednodes", name)
        # validated as a Node is (its name), then kept as a compact record
        node = NodeRecord.of(Node.model_validate({"metadata": {"name": name,
                                                               "namespace": "default"}}))
        node.puid = uuid.uuid4().bytes  # what `pack_uid` keeps of its text
        node.creation_timestamp = now_iso()
        node.labels = {"kubernetes.io/hostname": name}
        self._compact(node)
        self.objects.nodes[name] = node
        self.objects.save("Node", name)
        log.info("node %s registered", name)
        self.events.add(type="Normal", reason="Registered", obj=f"Node/{name}",
                        message=f"node {name} registered")
        return True

    def joined(self, name: str, labels: dict[str, str]) -> None:
        """The Joined event of a node that joined with a token."""
        self.events.add(type="Normal", reason="Joined", obj=f"Node/{name}",
                        message=f"node {name} joined with labels "
                                f"{','.join(f'{k}={v}' for k, v in sorted(labels.items())) or '-'}")

    def apply(self, obj: Node) -> None:
        """`apply` of a Node: its spec, and labels that become API-owned."""
        name = obj.metadata.name
        node = self.objects.nodes[name]
        prev = self.applied_labels(node)
        labels = {k: v for k, v in node.metadata.labels.items() if k not in prev}
        labels.update(obj.metadata.labels)
        node.metadata.labels = labels
        node.metadata.annotations = self._annotations({
            **node.metadata.annotations,
            naming.APPLIED_LABELS: json.dumps(obj.metadata.labels, sort_keys=True)})
        node.spec = _PLAIN_SPEC if obj.spec == _PLAIN_SPEC else obj.spec
        self.objects.save("Node", name)

    def patch(self, name: str, *, labels: dict[str, str | None] | None = None,
              unschedulable: bool | None = None) -> NodeRecord:
        """Set or remove (value None) node labels and/or (un)cordon. Labels set here are
        API-owned (kept over what the agent reports), as with `apply` of a Node."""
        node = self.objects.nodes.get(name)
        if node is None:
            raise NotFound("Node", name)
        if labels:
            applied = self.applied_labels(node)
            for k, v in labels.items():
                if v is None:
                    node.metadata.labels.pop(k, None)
                    applied.pop(k, None)
                else:
                    node.metadata.labels[k] = v
                    applied[k] = v
            node.metadata.annotations = self._annotations({
                **node.metadata.annotations,
                naming.APPLIED_LABELS: json.dumps(applied, sort_keys=True)})
        if unschedulable is not None and unschedulable != node.spec.unschedulable:
            spec = node.spec.model_copy(update={"unschedulable": unschedulable})
            node.spec = _PLAIN_SPEC if spec == _PLAIN_SPEC else spec
            self.events.add(type="Normal",
                            reason="Cordoned" if unschedulable else "Uncordoned",
                            obj=f"Node/{name}",
                            message=f"node {name} marked "
                                    f"{'unschedulable' if unschedulable else 'schedulable'}")
        self.objects.save("Node", name)
        return node

    def remove(self, name: str) -> NodeRecord:
        """Delete the node record (its pods were dealt with by the caller); it is
        marked deleted so its agent's messages do not bring it back."""
        node = self.objects.nodes[name]
        self.objects.remove("Node", name)
        self.events.add(type="Normal", reason="Deleted", obj=f"Node/{name}",
                        message=f"node {name} deleted; its pods were unbound")
        self.desired.forget_report_seq(name)
        self.liveness.forget(name)
        self._deleted[name] = self.clock()
        self.store.put("deletednodes", name, {"at": self._deleted[name]})
        return node

    # -- reports ------------------------------------------------------------------------

    def status(self, name: str, status: dict[str, Any], *,
               trusted: bool = False) -> tuple[int, bool]:
        """Apply the node_status of a report (capacity, labels, heartbeat...); returns
        (how many labels were refused, whether what placement sees changed). A node
        cannot set protected labels on itself (`naming.protected_label`); `trusted` (a
        join, whose labels the API vetted) can."""
        node = self.objects.nodes[name]
        refused = 0
        st = node.status
        placed = False  # what placement sees changed: allocatable, labels, arch
        saved = False  # anything at all changed
        for attr in ("capacity", "allocatable"):
            val = status.get(attr)
            if isinstance(val, dict):
                shape = self._shape(val)  # shapes are shared: unchanged is the same dict
                if shape is not getattr(st, attr) and shape != getattr(st, attr):
                    setattr(st, attr, shape)
                    saved = True
                    placed = placed or attr == "allocatable"
        agent = status.get("agentVersion", status.get("agent_version"))
        for attr, val in (("arch", status.get("arch")), ("os", status.get("os")),
                          ("agent_version", agent)):
            if isinstance(val, str) and val != getattr(st, attr):
                setattr(st, attr, sys.intern(val))
                saved = True
                placed = placed or attr == "arch"
        upgrade = parse_agent_upgrade(status.get("agentUpgrade"))
        if upgrade is not None:  # absent or malformed: the last report stands
            value = agent_upgrade_value(upgrade)
            if value != st.agent_upgrade:
                st.agent_upgrade = value
                saved = True
        labels = status.get("labels")
        have = node.metadata.labels
        if isinstance(labels, dict):
            applied = _applied(node.metadata.annotations.get(naming.APPLIED_LABELS))
            for k, v in labels.items():
                if not (isinstance(k, str) and isinstance(v, str)) or k in applied:
                    continue
                if not trusted and (k in CLOUD_LABELS
                                    or naming.protected_label(k, self.protected_labels)):
                    refused += 1
                    continue
                if have.get(k) != v:
                    have[sys.intern(k)] = sys.intern(v)
                    placed = True
        for k, v in (("kubernetes.io/hostname", have.get("kubernetes.io/hostname", name)),
                     (ARCH_LABEL, st.arch), ("kubernetes.io/os", st.os)):
            if have.get(k) != v:
                have[k] = v
                placed = True
        hb = status.get("heartbeat")
        if isinstance(hb, int | float) and not isinstance(hb, bool) and hb > 0:
            text = f"{float(hb):g}"
            if node.metadata.annotations.get(naming.HEARTBEAT) != text:
                node.metadata.annotations = self._annotations(
                    {**node.metadata.annotations, naming.HEARTBEAT: text})
                saved = True
            self.liveness.set_heartbeat(name, float(hb))
        if saved or placed:  # a report that repeats what the node said is not a write
            self.objects.save("Node", name)
        return refused, placed

    def _compact(self, node: NodeRecord) -> None:
        """Share what a loaded node holds like many others (see the class)."""
        if node.spec == _PLAIN_SPEC:
            node.spec = _PLAIN_SPEC
        st = node.status
        for attr in ("capacity", "allocatable", "usage"):
            val = getattr(st, attr)
            if not val:
                setattr(st, attr, NO_VALUES)
            elif attr != "usage":
                setattr(st, attr, self._shape(val))
        for attr in ("arch", "os", "agent_version", "reason"):
            val = getattr(st, attr)
            if isinstance(val, str):
                setattr(st, attr, sys.intern(val))
        if node.creation_timestamp is not None:
            node.creation_timestamp = sys.intern(node.creation_timestamp)
        node.annotations = self._annotations(node.annotations)
        node.labels = {sys.intern(k): sys.intern(v) for k, v in node.labels.items()}

    def _annotations(self, ann: dict[str, str]) -> dict[str, str]:
        """A node's annotations, shared with every node that has the same (most have
        only the heartbeat interval, the same everywhere). Never change it in place."""
        items = tuple(ann.items())  # in order: what the API shows stays as it was
        shared = self._shared_annotations.get(items)
        if shared is None:
            if len(self._shared_annotations) >= 10_000:  # few in practice; a flood is not kept
                self._shared_annotations.clear()
            shared = self._shared_annotations[items] = dict(items)
        return shared

    def _shape(self, val: dict[Any, Any]) -> dict[str, int]:
        """A capacity / allocatable dict, shared with every node that reports the same."""
        items = tuple((str(k), int(v)) for k, v in val.items()
                      if isinstance(v, int | float) and not isinstance(v, bool))
        shape = self._shapes.get(items)
        if shape is None:
            if len(self._shapes) >= 10_000:  # shapes are few; a flood of them is not kept
                self._shapes.clear()
            shape = self._shapes[items] = dict(items)
        return shape

    def pod_statuses(self, name: str, pods: dict[str, dict[str, Any] | None]
                     ) -> tuple[int, list[tuple[Key, Pod]]]:
        """Apply pod statuses a node reported; returns how many were ignored and the
        pods that took a new status."""
        ignored = 0
        reported: list[tuple[Key, Pod]] = []
        table = self.objects.pods
        for k, value in pods.items():
            try:
                kind, ns, pname = split_key(k)
            except ValueError:
                ignored += 1
                continue
            pk = (ns, pname)
            pod = table.get(pk)
            if (kind != POD or pod is None or self.placement.node_of(pk) != name
                    or value is None):
                ignored += 1
                continue
            try:
                status = PodStatus.model_validate(value)
            except ValueError:
                ignored += 1
                continue
            status.node_name = name
            self._drop_lost(pk)  # reported afresh: nothing to put back
            self._pod_events(pk, pod.status, status)
            pod.status = status
            self.objects.save("Pod", pk)
            reported.append((pk, pod))
        return ignored, reported

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

    def undeliverable(self, name: str, key: str, reason: str) -> None:
        """A desired entry of node `name` cannot be sent (over the wire limits): the
        pods there that need it get a Warning event, and a pod still Pending says why
        in its status. The node's other entries are sent without it."""
        kind, ns, ename = split_key(key)
        table = self.objects.pods
        pods = [(ns, ename)] if kind == POD else [
            pk for pk in self.placement.on_node(name) if pk in table
            and key in self.desired.pod_refs(pk)]
        for pk in pods:
            pod = table.get(pk)
            if pod is None:
                continue
            message = f"cannot be delivered to node {name}: {reason}"
            self.events.add(type="Warning", reason="Undeliverable",
                            obj=f"Pod/{pk[0]}/{pk[1]}", message=message)
            if pod.status.phase == "Pending" and pod.status.message != message:
                pod.status = pending_status(reason="Undeliverable", message=message,
                                            node_name=name)
                self.objects.save("Pod", pk)

    def add_telemetry(self, name: str, samples: list[dict[str, Any]]) -> None:
        """Keep recent samples per node, feed valid points to the forecaster (`observer`)
        and put the newest utilisation into status.usage (`cpu`, `mem`, 0..1); batches
        of scraped Prometheus samples go to `edge_series` instead.
        Malformed points are ignored and counted in `telemetry_malformed`."""
        if not isinstance(samples, list) or not samples:
            return
        samples = self.edge_series.take(name, samples)  # scraped samples (issue 17)
        if not samples:
            return
        node = self.objects.nodes[name]
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
            self.objects.save("Node", name)

    def apply_forecasts(self, forecasts: dict[str, dict[str, float]]) -> None:
        """Store per-node forecasts (`FORECAST_KEYS`, peaks over the horizon) in
        status.usage and warn about nodes predicted at or over capacity (at most once
        per node per `WARN_INTERVAL`)."""
        now = self.clock()
        nodes = self.objects.nodes
        for name, fc in forecasts.items():
            node = nodes.get(name)
            if node is None:
                continue
            usage = {k: v for k, v in node.status.usage.items() if k not in FORECAST_KEYS}
            usage.update({k: float(fc[k]) for k in FORECAST_KEYS})
            node.status.usage = usage
            self.objects.save("Node", name)
            peak = max(fc["cpu_p90"], fc["mem_p90"])
            if peak >= 1.0 and now - self._warned.get(name, -WARN_INTERVAL) >= WARN_INTERVAL:
                self._warned[name] = now
                res = "cpu" if fc["cpu_p90"] >= fc["mem_p90"] else "memory"
                self.events.add(type="Warning", reason="PredictedOverCapacity",
                                obj=f"Node/{name}",
                                message=f"{res} predicted to reach {100 * peak:.0f}% (p90) "
                                        f"within 15 minutes")
        for name in [n for n in self._warned if n not in nodes]:
            del self._warned[name]

    def clear_forecasts(self) -> None:
        """Drop forecasts from every node (forecasting is off: schedule by requests)."""
        for name, node in self.objects.nodes.items():
            if any(k in node.status.usage for k in FORECAST_KEYS):
                node.status.usage = {k: v for k, v in node.status.usage.items()
                                     if k not in FORECAST_KEYS}
                self.objects.save("Node", name)

    # -- liveness -----------------------------------------------------------------------

    def heard(self, name: str, now: float) -> None:
        """Any valid message from the node restarts its liveness clock (monotonic `now`)."""
        self.liveness.heard(name, now)

    def deaf(self, select: Callable[[str], bool], now: float, *, deaf_s: float,
             lost: bool, wave: Wave | None = None) -> None:
        """The cloud could not hear the nodes `select` picks for `deaf_s` s up to `now`
        (`Liveness.deaf`)."""
        self.liveness.deaf(select, now, deaf_s=deaf_s, lost=lost, wave=wave)

    def mark_ready(self, name: str) -> bool:
        """A report arrived: the node is Ready and last_seen is now (wall clock).
        True if it was not Ready before."""
        node = self.objects.nodes[name]
        node.status.last_seen = self.clock()
        became = node.status.ready != "Ready"
        if became:
            self._set_ready(node, "Ready", "NodeReported", "the agent reported")
            self._pods_back(name)
        self.objects.save("Node", name)
        return became

    def mark_not_ready(self, name: str, *, reason: str, message: str) -> bool:
        """The node is NotReady (missed heartbeats, last will); True if it was not."""
        node = self.objects.nodes.get(name)
        if node is None or node.status.ready == "NotReady":
            return False
        self._set_ready(node, "NotReady", reason, message)
        self.pods_not_ready(name)
        self.objects.save("Node", name)
        return True

    def expire(self, now: float) -> list[str]:
        """Mark nodes NotReady whose liveness deadline passed; returns them."""
        out = []
        for name in self.liveness.expired(now):
            if name not in self.objects.nodes:
                continue
            window = self.liveness.window(name)
            if self.mark_not_ready(name, reason="NodeStatusUnknown",
                                   message=f"no report for {window:g}s"):
                out.append(name)
        return out

    def _set_ready(self, node: NodeRecord, ready: Ready, reason: str, message: str) -> None:
        node.status.ready = ready
        node.status.reason = reason
        pods = self.objects.pods
        for pk in self.placement.on_node(node.metadata.name):
            pod = pods.get(pk)
            if pod is not None:
                self.touch(pod.metadata.annotations.get(naming.OWNER))
        self.events.add(type="Normal" if ready == "Ready" else "Warning",
                        reason=f"Node{ready}", obj=f"Node/{node.metadata.name}",
                        message=message)
        # NodeStatus has no conditions list (yet); the transition is logged instead.
        log.info("node %s is %s: %s (%s)", node.metadata.name, ready, message, reason)

    # -- pods of nodes that are not Ready (Kubernetes: MarkPodsNotReady, NodeLost) --------
    # The node's last reported statuses are kept aside in memory and put back when it
    # reports again (the agent sends only changes, so it will not repeat them); a pod the
    # node reports meanwhile simply takes the new status. Lost on a cloud restart: such a
    # pod then shows NodeLost until its status next changes on the node.

    def lost(self, name: str) -> bool:
        """Whether the pods of `name` are marked NodeLost."""
        return name in self._node_lost

    def mark_lost(self, name: str, lost_for: float) -> None:
        """The node has been NotReady for `lost_for` seconds, past the eviction
        timeout: its pods are phase Unknown, reason NodeLost."""
        self._node_lost.add(name)
        self.pods_not_ready(name, lost_for=lost_for)

    def pods_not_ready(self, name: str, *, lost_for: float | None = None) -> None:
        """The pods on `name` are not ready (its node is NotReady); with `lost_for`
        (seconds NotReady), also phase Unknown, reason NodeLost."""
        pods = self.objects.pods
        for pk in sorted(self.placement.on_node(name)):
            pod = pods.get(pk)
            if pod is None or pod.status.node_name != name:
                continue  # never reported: nothing to take back
            kept = self._lost.get(pk)
            if kept is None or kept[0] != pod.metadata.uid:
                self._drop_lost(pk)
                kept = self._lost[pk] = (pod.metadata.uid, pod.status)
                self._lost_on.setdefault(name, set()).add(pk)
            was = kept[1]
            update: dict[str, Any] = {"ready": False, "container_statuses": [
                c.model_copy(update={"ready": False}) for c in pod.status.container_statuses]}
            if lost_for is not None:
                update.update(phase="Unknown", reason="NodeLost", message=(
                    f"node {name} has been NotReady for {lost_for:.0f}s; last reported "
                    f"{was.phase}" + (f" ({was.reason})" if was.reason else "")))
            status = pod.status.model_copy(update=update)
            if status != pod.status:
                pod.status = status
                self.objects.save("Pod", pk)
                self.touch(pod.metadata.annotations.get(naming.OWNER))

    def _drop_lost(self, pk: Key) -> None:
        """Forget what `pk` last reported before its node was lost (and its index entry)."""
        kept = self._lost.pop(pk, None)
        if kept is not None and (node := kept[1].node_name) is not None:
            on = self._lost_on.get(node)
            if on is not None:
                on.discard(pk)
                if not on:
                    del self._lost_on[node]

    def _pods_back(self, name: str) -> None:
        """`name` reports again: its pods get back what it last reported."""
        # Every entry of this node, also of pods deleted or moved meanwhile (dropped).
        pods = self.objects.pods
        for pk in sorted(self._lost_on.pop(name, ())):
            uid, was = self._lost.pop(pk)
            pod = pods.get(pk)
            if (pod is not None and pod.metadata.uid == uid and pod.status.node_name == name
                    and pk in self.placement.on_node(name)):
                pod.status = was
                self.objects.save("Pod", pk)
                self.touch(pod.metadata.annotations.get(naming.OWNER))
        self._node_lost.discard(name)
