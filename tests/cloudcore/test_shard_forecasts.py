"""`cloudcore.cluster.forecasts` between two real fleet cores in one event loop, each
with a real forecaster (the shipped ONNX model): shard B forecasts its own nodes from
their telemetry and writes one value per partition; shard A, holding the global lease
and none of B's partitions, gets those nodes' forecasts in the table its scheduler
reads (a pod pinned to B's hot node stays Pending, predicted over capacity), and stops
using them once they are stale, written by a shard that no longer holds the partition,
or fenced off (tests/integration/test_shard_forecasts_kv.py runs the same exchange
through a real nats-server)."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from cloudcore_fakes import GI, add_node, make_fleet

from cloudcore.cluster.forecasts import SharedForecasts, decode, encode, key_of
from cloudcore.cluster.kv import Entry
from cloudcore.fleet.controller import Fleet
from cloudcore.fleet.forecast import forecast_of
from cloudcore.forecaster import default_model_path
from cloudcore.forecaster.runner import ForecastRunner
from shared import topics
from shared.models import parse_object

T0 = 1_800_000_000 // 60 * 60  # a minute start, Unix seconds
LOAD = {"a1": (0.30, 0.30), "hot": (0.97, 0.60), "cool": (0.10, 0.20)}
OWNER = {"a1": "A", "hot": "B", "cool": "B"}
INTERVAL = 60.0


def telemetry(name: str, minutes: int = 60) -> list[dict[str, Any]]:
    cpu, mem = LOAD[name]
    return [{"ts": T0 + 60 * m, "node": {"cpu": cpu if name != "hot" or m < 50 else 1.0,
                                         "mem": mem * 8 * GI}, "pods": {}}
            for m in range(minutes)]


class Bucket:
    """What `write_pending` needs of a KV bucket: `put`, with revisions."""

    def __init__(self) -> None:
        self.rev = 0
        self.values: dict[str, Entry] = {}

    async def put(self, key: str, value: bytes) -> int:
        self.rev += 1
        self.values[key] = Entry(key, value, self.rev)
        return self.rev


class Cluster:
    """Who holds which partition (both shards' lease views), and each token."""

    def __init__(self) -> None:
        self.holder = {topics.partition_of(n): s for n, s in OWNER.items()}
        self.token = dict.fromkeys(self.holder, 5)


class Side:
    def __init__(self, name: str, cluster: Cluster, bucket: Bucket) -> None:
        self.name = name
        self.t = [T0 + 3600.0]
        self.fleet: Fleet = make_fleet()
        for n in LOAD:
            add_node(self.fleet, n)
        c = cluster
        self.shared = SharedForecasts(
            self.fleet, shard=name, owns=lambda p: c.holder.get(p) == name,
            holder=c.holder.get,
            fence=lambda p: c.token[p] if c.holder.get(p) == name else None,
            instance=lambda: f"{name}-1", interval=INTERVAL, wall=lambda: self.t[0])
        self.shared.bucket = bucket  # type: ignore[assignment]
        self.origins: list[dict[str, float]] = []

        def origins(o: dict[str, float]) -> None:
            self.origins.append(dict(o))
            self.fleet.scheduler.forecast_made(o)

        self.runner = ForecastRunner(default_model_path(), capacity_nodes=16,
                                     apply=self.fleet.apply_forecasts,
                                     known=lambda: self.fleet.nodes, origins=origins,
                                     exchange=self.shared.exchange)
        self.fleet.observer = self.runner.observe

    def feed(self, minutes: int = 60) -> None:
        """Telemetry of this shard's own nodes (only the owner hears a node)."""
        for n, owner in OWNER.items():
            if owner == self.name:
                self.fleet.add_telemetry(n, telemetry(n, minutes))

    async def tick(self) -> None:
        self.runner.tick()
        await self.shared.write_pending()

    def forecast(self, node: str) -> dict[str, float] | None:
        """What the scheduler's lookup sees (`placement`: `forecast_of(status.usage)`)."""
        return forecast_of(self.fleet.nodes[node].status.usage)


async def deliver(bucket: Bucket, to: Side) -> None:
    for e in bucket.values.values():
        to.shared.take(e)
    await to.shared.apply_read()


def pinned_pod(name: str, node: str) -> Any:
    return parse_object({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                 "containers": [{"name": "m", "image": "nginx",
                                 "resources": {"requests": {"cpu": "500m"}}}]}})


@pytest.fixture
def two() -> tuple[Cluster, Bucket, Side, Side]:
    cluster, bucket = Cluster(), Bucket()
    a, b = Side("A", cluster, bucket), Side("B", cluster, bucket)
    a.feed()
    b.feed()
    return cluster, bucket, a, b


async def test_holder_schedules_by_the_forecast_of_another_shards_node(
        two: tuple[Cluster, Bucket, Side, Side]) -> None:
    _, bucket, a, b = two
    await a.tick()
    await b.tick()
    # each shard wrote one value per partition it holds, none for the other's
    assert sorted(bucket.values) == sorted(key_of(topics.partition_of(n)) for n in OWNER)
    assert b.shared.writes == 2 and a.shared.writes == 1
    # B applied its own nodes only; A has no forecast of B's nodes before the exchange
    assert b.forecast("hot") is not None and b.forecast("a1") is None
    assert a.forecast("hot") is None and a.forecast("a1") is not None

    await deliver(bucket, a)
    await deliver(bucket, b)
    for node, name in OWNER.items():  # both shards see every node's forecast: the owner's
        owner = a if name == "A" else b
        mine, theirs = owner.forecast(node), (b if owner is a else a).forecast(node)
        assert mine is not None and theirs is not None
        assert theirs == pytest.approx(mine, abs=1e-4)
    fc = a.forecast("hot")
    assert fc is not None and fc["cpu_p90"] > 0.95

    # A's scheduler places by it: pinned to B's hot node, a pod stays Pending
    a.fleet.apply([pinned_pod("p", "hot")])
    st = a.fleet.pods[("default", "p")].status
    assert st.phase == "Pending" and "predicted over capacity (cpu p90" in (st.message or "")
    a.fleet.apply([pinned_pod("q", "cool")])
    assert a.fleet.pods[("default", "q")].status.node_name == "cool"

    # A's next tick tells its scheduler the origins of B's nodes too (own + shared)
    await a.tick()
    assert set(a.origins[-1]) == set(OWNER)
    assert a.origins[-1]["hot"] == T0 + 59 * 60


async def test_stale_moved_and_fenced_forecasts_are_not_used(
        two: tuple[Cluster, Bucket, Side, Side]) -> None:
    cluster, bucket, a, b = two
    await b.tick()
    await deliver(bucket, a)
    assert a.forecast("hot") is not None

    # stale: B stopped forecasting; 3 intervals later A drops them, the scheduler then
    # admits by requests
    a.t[0] += 3 * INTERVAL + 1
    await a.shared.apply_read()
    assert a.forecast("hot") is None and a.forecast("cool") is None
    assert a.shared.origins == {}
    a.fleet.apply([pinned_pod("p", "hot")])
    assert a.fleet.pods[("default", "p")].status.node_name == "hot"

    # fresh again from B: used again
    b.t[0] = a.t[0]
    await b.tick()
    await deliver(bucket, a)
    assert a.forecast("hot") is not None

    # the partition of `hot` moved to a shard C (it holds the lease now): B's value is a
    # former owner's word, not used
    p_hot = topics.partition_of("hot")
    cluster.holder[p_hot] = "C"
    await a.shared.apply_read()
    assert a.forecast("hot") is None and a.forecast("cool") is not None

    # B, paused past its lease, writes late under its old token after C wrote under the
    # new one: refused (and not shown even if B held the partition again in A's view)
    c_value = encode(shard="C", instance="C-1", fence=9, at=a.t[0],
                     results={"hot": {"cpu_p50": 0.1, "cpu_p90": 0.2, "mem_p50": 0.1,
                                      "mem_p90": 0.2, "trusted": 0.0}},
                     origins={"hot": float(T0 + 59 * 60)})
    a.shared.take(Entry(key_of(p_hot), c_value, 100))
    await a.shared.apply_read()
    fc = a.forecast("hot")
    assert fc is not None and fc["cpu_p90"] == pytest.approx(0.2)
    late = bucket.values[key_of(p_hot)]  # B's value, token 5
    a.shared.take(Entry(late.key, late.value, 101))
    assert a.shared.fenced == 1
    cluster.holder[p_hot] = "B"
    await a.shared.apply_read()
    assert a.forecast("hot") is None  # C's is not B's; B's late one was refused


async def test_a_lost_partition_keeps_no_forecast_of_its_own_and_takes_the_new_owners(
        two: tuple[Cluster, Bucket, Side, Side]) -> None:
    cluster, bucket, a, b = two
    await b.tick()
    assert b.forecast("hot") is not None
    # B loses `hot`'s partition to A: its own forecaster still has the history, but the
    # node is not its own any more; the tick drops it and writes nothing for it
    p_hot = topics.partition_of("hot")
    cluster.holder[p_hot], cluster.token[p_hot] = "A", 8
    bucket.values.clear()
    await b.tick()
    assert b.forecast("hot") is None and b.forecast("cool") is not None
    assert list(bucket.values) == [key_of(topics.partition_of("cool"))]
    # A heard hot's telemetry since it took it over: A's value reaches B
    a.fleet.add_telemetry("hot", telemetry("hot"))
    await a.tick()
    await deliver(bucket, b)
    fc = b.forecast("hot")
    assert fc is not None and fc == pytest.approx(a.forecast("hot"), abs=1e-4)


async def test_forecasts_loaded_from_the_store_are_dropped_at_the_first_tick(
        two: tuple[Cluster, Bucket, Side, Side]) -> None:
    _, bucket, a, b = two
    # an earlier run's forecasts, as loaded with the nodes: not this run's word
    old = {"cpu_p50": 0.9, "cpu_p90": 0.99, "mem_p50": 0.9, "mem_p90": 0.99, "trusted": 1.0}
    a.fleet.apply_forecasts(dict.fromkeys(OWNER, old))
    await a.tick()
    assert a.forecast("hot") is None and a.forecast("cool") is None  # B's: not shared yet
    fc = a.forecast("a1")  # A's own: this run's forecast
    assert fc is not None and fc["cpu_p90"] < 0.9
    await b.tick()
    await deliver(bucket, a)
    assert a.forecast("hot") is not None


def test_a_value_is_checked_before_it_is_used() -> None:
    p = topics.partition_of("hot")
    good = encode(shard="B", instance="i", fence=3, at=1.0,
                  results={"hot": {"cpu_p50": 0.5, "cpu_p90": 1.0, "mem_p50": 0.25,
                                   "mem_p90": 0.3333, "trusted": 1.0}},
                  origins={"hot": 600.0})
    v = decode(good, partition=p)
    assert v.nodes["hot"] == ({"cpu_p50": 0.5, "cpu_p90": 1.0, "mem_p50": 0.25,
                               "mem_p90": 0.3333, "trusted": 1.0}, 600.0)
    with pytest.raises(ValueError, match="not in partition"):
        decode(good, partition=(p + 1) % 256)
    doc = msgpack.unpackb(good)
    doc["nodes"]["hot"] = [1, 2, 3]
    with pytest.raises(ValueError, match="node hot: expected 6 integers"):
        decode(msgpack.packb(doc), partition=p)
    with pytest.raises(ValueError, match="not msgpack"):
        decode(b"\xc1", partition=p)
    fleet = make_fleet()
    add_node(fleet, "hot")
    s = SharedForecasts(fleet, shard="A", owns=lambda _: False, holder=lambda _: "B",
                        fence=lambda _: None, interval=INTERVAL, wall=lambda: 2.0)
    s.take(Entry(key_of(p), b"junk", 1))
    assert s.unreadable == 1 and s.read == {}
