"""Moving Deployment replicas off nodes that stay NotReady (Kubernetes' taint-based
eviction, adapted to edges that keep running while offline).

An edge runs its pods autonomously while it is cut off, so a short outage must not
move anything: a pod is only moved after its node has been NotReady for longer than
the pod tolerates. As in Kubernetes, that is a NoExecute toleration of
`node.kubernetes.io/unreachable` or `node.kubernetes.io/not-ready` with
`tolerationSeconds` (both keys mean "NotReady" here, where NotReady always means
"the cloud does not hear the node"; the longest matching toleration counts, one
without `tolerationSeconds` tolerates forever, <= 0 moves at once), or else the
cloud-wide default `pod_eviction_timeout` (5 min, as Kubernetes'
DefaultTolerationSeconds).

Order: the replicas of a node whose toleration ran out are moved in priority order
(`spec.priority`, from their PriorityClass: higher first, then by name), so when the
other nodes have room for only some of them, the higher ones get it and the lower ones
stay (EvictionBlocked, retried). This is the cloud's whole use of priority: nothing is
preempted to make room, and the agent has no eviction under memory or disk pressure
(docs/pods.md, "Priority").

What moves: Deployment replicas only. DaemonSet pods belong to their node, pods
pinned with `spec.nodeName` cannot go anywhere else, and a bare Pod has no
controller to recreate it (Kubernetes would delete it; here it stays). A replica is
moved only when the scheduler finds another node for it: the NotReady node's
desired set drops it (when the node comes back it stops it) and the new node's set
gains it. If nothing else fits, the pod stays where it is (still running there as
far as anyone knows), an `EvictionBlocked` event says why, and it is retried every
`retry_s`. During the partition the old node may still run its copy: like
Kubernetes, this trades at-most-once for availability.

Timing: the NotReady time is taken from `clock` (monotonic) when the fleet records
the transition (`observe`); `run()` is called on every liveness tick (about once a
second), so moves happen within a tick of the deadline. After a cloudcore restart
nodes are Unknown, not NotReady, and their clocks start again when they become
NotReady: a restart never causes a mass eviction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from cloudcore.fleet import naming
from cloudcore.fleet.desired import DesiredSets
from cloudcore.fleet.events import EventLog
from cloudcore.fleet.nodes import Nodes
from cloudcore.fleet.objects import Objects
from cloudcore.fleet.placement import Placement, by_priority
from cloudcore.scheduler import Scheduler
from shared.models import Pod, Toleration

UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
_KEYS = (UNREACHABLE, NOT_READY)


def toleration_seconds(tolerations: Iterable[Toleration], default: float) -> float | None:
    """How long a pod with these tolerations stays on a NotReady node (None: forever)."""
    best: float | None = None
    for t in tolerations:
        if t.effect not in (None, "NoExecute"):
            continue
        if t.key is None:
            if t.operator != "Exists":
                continue
        elif t.key not in _KEYS or (t.operator == "Equal" and (t.value or "") != ""):
            continue
        if t.toleration_seconds is None:
            return None
        best = float(t.toleration_seconds) if best is None else max(best,
                                                                       t.toleration_seconds)
    if best is None:
        return default
    return max(0.0, best)


class Eviction:
    """NotReady clocks per node and the moves they trigger (through the public
    methods of the objects, placement, desired sets and nodes)."""

    def __init__(self, *, objects: Objects, placement: Placement, desired: DesiredSets,
                 nodes: Nodes, scheduler: Scheduler, events: EventLog,
                 timeout: float = 300.0, retry_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.objects = objects
        self.placement = placement
        self.desired = desired
        self.nodes = nodes
        self.scheduler = scheduler
        self.events = events
        self.timeout = timeout
        """Default toleration of a NotReady node, seconds (`--pod-eviction-timeout`)."""
        self.retry_s = retry_s
        """Seconds between attempts to move a pod that nothing else could take."""
        self.clock = clock
        self.evicted = 0
        self.trusted: Callable[[str], bool] | None = None
        """Shards (`cloudcore.cluster.status.NodeStatuses.trusted`): whether a node's
        NotReady may be acted on now; while not, its clock starts again."""
        self._since: dict[str, float] = {}  # node -> clock() when it became NotReady
        self._next: dict[str, float] = {}  # node -> clock() of its next useful check

    def observe(self, node: str, ready: str) -> None:
        """The fleet changed a node's readiness."""
        if ready == "NotReady":
            self._since[node] = self.clock()
            self._next.pop(node, None)
        else:
            self._since.pop(node, None)
            self._next.pop(node, None)

    def not_ready_since(self, node: str) -> float | None:
        return self._since.get(node)

    def mark_lost(self) -> None:
        """Pods of nodes NotReady for longer than the eviction timeout: NodeLost."""
        now = self.clock()
        nodes = self.objects.nodes
        # only the NotReady nodes (`_since`), not the whole fleet every tick (issue 13)
        trusted = self.trusted
        for name, since in list(self._since.items()):
            if trusted is not None and not trusted(name):
                continue  # `run` restarts its clock
            node = nodes.get(name)
            if (node is None or node.status.ready != "NotReady" or self.nodes.lost(name)
                    or now - since < self.timeout):
                continue
            self.nodes.mark_lost(name, now - since)

    def run(self) -> int:
        """Move every replica whose toleration ran out; returns how many moved.

        Costs only the NotReady nodes whose next deadline has come.
        """
        now = self.clock()
        moved = 0
        trusted = self.trusted
        for name, since in list(self._since.items()):
            if trusted is not None and not trusted(name):
                # another shard's node whose owner died or is being taken over: its
                # NotReady is an old word; the clock counts from the new owner's
                self._since[name] = now
                self._next.pop(name, None)
                continue
            if self._next.get(name, since) > now:
                continue
            node = self.objects.nodes.get(name)
            if node is None or node.status.ready != "NotReady":
                self.observe(name, "Ready" if node is not None else "Gone")
                continue
            next_at = math.inf
            # higher priority first: on scarce capacity the higher ones get the room
            for key in by_priority(self.placement.on_node(name), self.objects.pods):
                pod = self.objects.pods.get(key)
                if pod is None or not _movable(pod, name):
                    continue
                grace = toleration_seconds(pod.spec.tolerations, self.timeout)
                if grace is None:
                    continue
                if since + grace > now:
                    next_at = min(next_at, since + grace)
                elif self._move(key, name, grace):
                    moved += 1
                else:
                    next_at = min(next_at, now + self.retry_s)
            self._next[name] = next_at
        if moved:
            self.evicted += moved
            self.placement.retry_pending()  # the moves may have freed room elsewhere
            self.desired.commit()
        return moved

    def _move(self, key: tuple[str, str], node: str, grace: float) -> bool:
        pod = self.objects.pods[key]
        ref = f"Pod/{key[0]}/{key[1]}"
        why = f"node {node} NotReady for more than {grace:g}s (the pod's toleration)"
        topology = self.placement.topology(key)  # inter-pod affinity, if any concerns it
        decision = self.scheduler.schedule(
            pod.spec, (self.placement.view(n, topology=topology)
                       for n in self.objects.nodes if n != node))
        if decision.node is None:
            self.events.add(type="Warning", reason="EvictionBlocked", obj=ref,
                             message=f"{why}, but no other node fits ({decision.message}); "
                                     f"kept on {node}")
            return False
        self.placement.move(key, decision.node, decision.message)
        self.events.add(type="Normal", reason="Evicted", obj=ref,
                         message=f"{why}: moved to {decision.node}")
        return True


def _movable(pod: Pod, node: str) -> bool:
    """Deployment replicas not pinned to `node` by spec.nodeName."""
    owner = pod.metadata.annotations.get(naming.OWNER, "")
    return owner.startswith("Deployment/") and pod.spec.node_name != node
