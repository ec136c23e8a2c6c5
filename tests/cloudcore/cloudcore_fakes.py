"""Fakes injected through cloudcore's small interfaces (unit tests only)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cloudcore.fleet import Fleet, Liveness
from cloudcore.scheduler import Scheduler

GI = 2**30


class FakeStore:
    """A Persister that keeps the last write of each key in a dict."""

    epoch = "e1"

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], Any] = {}

    def put(self, db: str, key: str, value: Any) -> None:
        self.data[(db, key)] = value

    def put_later(self, db: str, key: str, producer: Callable[[], Any]) -> None:
        self.data[(db, key)] = producer()

    def delete(self, db: str, key: str) -> None:
        self.data.pop((db, key), None)


def make_fleet(store: Any = None, *, scheduler: Scheduler | None = None) -> Fleet:
    return Fleet(store=store or FakeStore(), scheduler=scheduler or Scheduler(),
                 liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))


def add_node(fleet: Fleet, name: str, *, labels: dict[str, str] | None = None,
             cpu: int = 4000, memory: int = 8 * GI, arch: str = "amd64") -> None:
    fleet.register_node(name)
    fleet.node_status(name, {"allocatable": {"cpu": cpu, "memory": memory, "pods": 110},
                             "capacity": {"cpu": cpu, "memory": memory, "pods": 110},
                             "arch": arch, "labels": labels or {}, "heartbeat": 10})
    fleet.mark_ready(name)


def daemonset(name: str = "agent", *, args: list[str] | None = None,
              node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"nodeSelector": node_selector or {},
                                           "containers": [{"name": "main", "image": "busybox",
                                                           "args": args or ["sleep", "1d"]}]}}}}


def deployment(name: str = "web", *, replicas: int = 2, memory: str = "64Mi") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{
                                      "name": "main", "image": "nginx",
                                      "resources": {"requests": {"memory": memory}}}]}}}}


def hub_and_shard(fleet: Fleet, name: str, *, clock: Callable[[], float] = time.monotonic,
                  wall: Callable[[], float] = time.time) -> tuple[Any, Any, list[Any], list[int]]:
    """A sync hub over `fleet` whose publishes are decoded into `sent` as (node, message),
    its publish queue depth `backlog[0]`, and a Shard `name` on it whose subscriptions
    are no-ops, holding nothing yet: (hub, shard, sent, backlog)."""
    from cloudcore.cluster.leases import LeaseSettings
    from cloudcore.cluster.shard import GatedNodes, Shard
    from cloudcore.config import SyncSettings
    from cloudcore.metrics import Metrics
    from cloudcore.synchub.hub import SyncHub
    from shared import topics
    from shared.codec import decode

    backlog = [0]
    sent: list[Any] = []
    hub = SyncHub(nodes=GatedNodes(fleet, is_global=lambda: False),
                  desired=fleet.desired_sets, store=FakeStore(),  # type: ignore[arg-type]
                  settings=SyncSettings(), metrics=Metrics(), clock=clock, insecure=True)
    hub.attach(lambda p, t, payload, b: sent.append(
        (topics.parse(t)[0], decode(payload))),  # type: ignore[index]
        backlog=lambda: backlog[0])

    async def noop(filters: list[str]) -> None:
        return None

    shard = Shard(name=name, fleet=fleet, hub=hub, subscribe=noop, unsubscribe=noop,
                  lease=LeaseSettings(name=name), status_interval=3.0, clock=clock, wall=wall)
    shard.forget_all()
    return hub, shard, sent, backlog


class FixedLeases:
    """What a Shard asks of its member for fencing: one partition token for all (None:
    no lease, or past its deadline)."""

    def __init__(self, fence: int | None) -> None:
        self.fence = fence
        self.instance = "i-1"

    def partition_revision(self, p: int) -> int | None:
        return self.fence


def fenced_shard(name: str, bucket: Any, fence: int | None, node: str) -> Any:
    """A Shard `name` (`hub_and_shard`) over a fleet of one node, holding the node's
    partition with lease token `fence` and writing its liveness into `bucket`."""
    from shared import topics

    fleet = make_fleet()
    add_node(fleet, node)
    _, shard, _, _ = hub_and_shard(fleet, name)
    shard._status = bucket
    shard.member = FixedLeases(fence)
    shard.owned.add(topics.partition_of(node))
    return shard
