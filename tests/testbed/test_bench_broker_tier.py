"""The broker tier's configuration (issue 14 part 1): partitions spread over brokers,
the partition -> broker map the simulators follow, the NATS users and config, and what
`testbed bench brokers` reads out of a broker log. Pure functions; no broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared import topics
from testbed.bench_brokers import (
    home_brokers,
    log_problems,
    mosquitto_partitions,
    nats_partitions,
)
from testbed.broker import (
    NatsPorts,
    NatsSettings,
    broker_map,
    brokers_for,
    nats_config,
    nats_subject,
    nats_users,
    parse_broker_map,
    spread_partitions,
)
from testbed.simulator import SimSettings, Simulator


@pytest.mark.parametrize("brokers", [1, 2, 3, 6, 7, 8, 100, 256])
def test_spread_partitions_contiguous_and_balanced(brokers: int) -> None:
    spread = spread_partitions(brokers)
    assert len(spread) == topics.PARTITIONS
    assert spread == sorted(spread)  # contiguous ranges, in broker order
    sizes = [spread.count(b) for b in range(brokers)]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1


def test_spread_partitions_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match=r"0 is not in 1\.\.256"):
        spread_partitions(0)
    with pytest.raises(ValueError, match="257"):
        spread_partitions(257)


def test_brokers_for_rounds_up() -> None:
    assert brokers_for(100_000, per_broker=15_000) == 7
    assert brokers_for(20_000, per_broker=15_000) == 2
    assert brokers_for(15_000, per_broker=15_000) == 1
    assert brokers_for(0, per_broker=15_000) == 1
    with pytest.raises(ValueError, match="per_broker"):
        brokers_for(10, per_broker=0)


def test_fleet_spread_by_partition_stays_under_a_brokers_share() -> None:
    """100,000 nodes named as the simulators name them, over 7 brokers: every broker
    gets its share within a few percent, far under the 20,000 open files of a process."""
    names = [f"sim-{i}" for i in range(100_000)]
    homes = home_brokers(names, mosquitto_partitions([f"mq-{i}" for i in range(7)]))
    assert sum(homes.values()) == 100_000
    assert set(homes) == {f"mq-{i}" for i in range(7)}
    assert max(homes.values()) < 100_000 / 7 * 1.05
    assert max(homes.values()) < 19_900


def test_nats_partitions_home_first_then_every_other_server() -> None:
    servers = ["nats-0", "nats-1", "nats-2"]
    parts = nats_partitions(servers)
    assert len(parts) == topics.PARTITIONS
    assert parts[0] == ["nats-0", "nats-1", "nats-2"]
    assert parts[-1] == ["nats-2", "nats-0", "nats-1"]
    assert all(sorted(p) == servers for p in parts)
    assert [p[0] for p in parts] == [servers[h] for h in spread_partitions(3)]


def test_broker_map_round_trip() -> None:
    parts = nats_partitions(["a", "b"])
    doc = broker_map({"a": "127.0.0.1:1883", "b": "10.0.0.2:8883"}, parts)
    ends = parse_broker_map(json.loads(json.dumps(doc)))
    assert ends[0] == (("127.0.0.1", 1883), ("10.0.0.2", 8883))
    assert ends[255] == (("10.0.0.2", 8883), ("127.0.0.1", 1883))


def test_broker_map_errors_name_the_entry() -> None:
    parts = [["a"]] * topics.PARTITIONS
    with pytest.raises(ValueError, match=r"partitions\[3\]: unknown broker\(s\) \['z'\]"):
        broker_map({"a": "h:1"}, [*parts[:3], ["z"], *parts[4:]])
    with pytest.raises(ValueError, match="255 entries"):
        broker_map({"a": "h:1"}, parts[:255])
    good = broker_map({"a": "h:1"}, parts)
    with pytest.raises(ValueError, match=r"brokers\['a'\] = 'h:99999' is not host:port"):
        parse_broker_map({**good, "brokers": {"a": "h:99999"}})
    with pytest.raises(ValueError, match=r"partitions\[7\]"):
        parse_broker_map({**good, "partitions": [*parts[:7], [], *parts[8:]]})
    with pytest.raises(ValueError, match="'brokers' and 'partitions'"):
        parse_broker_map([])


def test_simulator_follows_the_map_and_its_fallbacks() -> None:
    ends = tuple(parse_broker_map(broker_map(
        {"a": "127.0.0.1:1001", "b": "127.0.0.1:1002"}, nats_partitions(["a", "b"]))))
    sim = Simulator(SimSettings(names=("sim-1", "sim-2"), brokers=ends))
    node = sim.nodes[0]
    home = ends[topics.partition_of("sim-1")]
    assert sim.endpoint(node, 0) == home[0]
    assert sim.endpoint(node, 1) == home[1]  # a failed first connect tries the fallback
    assert sim.endpoint(node, 2) == home[0]
    plain = Simulator(SimSettings(names=("sim-1",), host="10.1.1.1", port=8883))
    assert plain.endpoint(plain.nodes[0], 5) == ("10.1.1.1", 8883)


def test_nats_subject_maps_mqtt_filters() -> None:
    assert nats_subject("fed/v1/+/sim-1/down") == "fed.v1.*.sim-1.down"
    assert nats_subject("fed/v1/#") == "fed.v1.>"
    with pytest.raises(ValueError, match="no NATS form"):
        nats_subject("fed/v1/a.b/up")


def test_nats_users_a_node_gets_only_its_own_topics() -> None:
    text = nats_users(services={"cloud_sub": "s3cret"}, nodes=[("edge-1", "pw1")])
    cloud, node = text.strip().splitlines()
    assert 'user: "cloud_sub", password: "s3cret"' in cloud
    assert 'publish: ["fed.v1.>"]' in cloud
    assert ('publish: ["fed.v1.*.edge-1.up", "fed.v1.*.edge-1.will"]' in node)
    assert 'subscribe: ["fed.v1.*.edge-1.down", "$MQTT.sub.>"]' in node
    assert "fed.v1.>" not in node


def test_nats_users_refuses_what_would_break_the_config() -> None:
    with pytest.raises(ValueError, match="not a valid node name"):
        nats_users(services={}, nodes=[("Edge 1", "pw")])
    with pytest.raises(ValueError, match="no quotes"):
        nats_users(services={}, nodes=[("edge-1", 'p"w')])


def test_nats_config_routes_jetstream_tls_and_users(tmp_path: Path) -> None:
    ports = NatsPorts(client=4222, cluster=6222, mqtt=8883, http=8222)
    text = nats_config(name="nats-0", settings=NatsSettings(servers=3, mqtt_max_ack_pending=256),
                       ports=ports, routes=[6223, 6224], store_dir=tmp_path / "js",
                       tls_dir=tmp_path / "tls", users_file=tmp_path / "users.conf")
    assert 'server_name: "nats-0"' in text
    assert "routes: [nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224]" in text
    assert f'store_dir: "{tmp_path / "js"}"' in text
    assert "listen: 127.0.0.1:8883" in text
    assert f'cert_file: "{tmp_path / "tls" / "broker.crt"}"' in text
    assert "max_ack_pending: 256" in text
    assert 'include "users.conf"' in text  # relative: nats-server resolves it beside
    single = nats_config(name="n", settings=NatsSettings(servers=1), ports=ports, routes=[],
                         store_dir=tmp_path, tls_dir=tmp_path, users_file=tmp_path / "u")
    assert "cluster {" not in single
    assert "max_ack_pending" not in single


def test_log_problems_keeps_causes_once_and_drops_noise() -> None:
    log = "\n".join([
        "2026-12-06T10:00:01: Client connection from 127.0.0.1 failed: error:0A000126:SSL "
        "routines::unexpected eof while reading.",
        "2026-12-06T10:00:02: Client sim-1 disconnected, not authorised.",
        "2026-12-06T10:00:03: Error: Too many open files",
        "2026-12-06T10:00:04: Client sim-2 disconnected, not authorised.",
        "2026-12-06T10:00:05: New client connected from 127.0.0.1 as sim-3",
        "[7] 2026/12/06 10:00:06.1 [WRN] Plaintext passwords detected, use nkeys or bcrypt",
    ])
    probs = log_problems(log)
    assert probs == ["2026-12-06T10:00:03: Error: Too many open files",
                     "2026-12-06T10:00:04: Client sim-2 disconnected, not authorised."]
