"""shared.brokermap: the partition -> broker map's rules (proposal 0007) and the
`broker/-/map` desired entry."""

from __future__ import annotations

import pytest

from shared import entries
from shared.brokermap import BrokerMap, normal_url, parse_partitions, parse_url
from shared.errors import ObjectError
from shared.topics import PARTITIONS

THREE = {"mq-1": "mqtts://b1:8883", "mq-0": "mqtts://b0:8883", "mq-2": "mqtts://b2:9883"}


def check_rules(m: BrokerMap) -> None:
    assert len(m.partitions) == PARTITIONS
    for names in m.partitions:
        assert names and len(set(names)) == len(names)
        assert all(n in m.brokers for n in names)
        assert m.brokers[names[0]].state == "active"
    assert BrokerMap.from_value(m.to_value()) == m


def test_single_is_today_one_broker_everywhere() -> None:
    m = BrokerMap.single("mq-0", "mqtts://127.0.0.1:8883")
    assert m.version == 1
    assert set(m.partitions) == {("mq-0",)}
    assert m.urls_for(200) == ["mqtts://127.0.0.1:8883"]
    check_rules(m)


def test_spread_homes_by_partition_in_name_order_and_rotates_fallbacks() -> None:
    m = BrokerMap.spread(THREE, 4)
    assert m.version == 4
    assert m.partitions[0] == ("mq-0", "mq-1", "mq-2")
    assert m.partitions[1] == ("mq-1", "mq-2", "mq-0")
    assert m.partitions[5] == ("mq-2", "mq-0", "mq-1")
    assert m.urls_for(5) == ["mqtts://b2:9883", "mqtts://b0:8883", "mqtts://b1:8883"]
    assert [len(ps) for ps in m.homes().values()] == [86, 85, 85]
    check_rules(m)


def test_move_puts_target_first_and_old_home_second() -> None:
    m = BrokerMap.spread(THREE)
    moved = m.move([1, 2, 3], "mq-0")
    assert moved.version == 2
    assert moved.partitions[1] == ("mq-0", "mq-1", "mq-2")  # old home second
    assert moved.partitions[2] == ("mq-0", "mq-2", "mq-1")
    assert moved.partitions[3] == m.partitions[3]  # already home: unchanged
    assert moved.partitions[4] == m.partitions[4]
    assert moved.move([1, 2, 3], "mq-0") is moved  # nothing changes, no new version
    check_rules(moved)


def test_move_refuses_unknown_or_draining_target_and_bad_partitions() -> None:
    m = BrokerMap.spread(THREE)
    with pytest.raises(ObjectError, match="no broker 'mq-9'"):
        m.move([0], "mq-9")
    with pytest.raises(ObjectError, match="not a partition"):
        m.move([256], "mq-0")
    with pytest.raises(ObjectError, match="draining"):
        m.drain("mq-1").move([0], "mq-1")


def test_drain_moves_homes_to_least_loaded_and_keeps_it_last() -> None:
    m = BrokerMap.spread(THREE).add("mq-3", "mqtts://b3")
    d = m.drain("mq-1")
    assert d.version == m.version + 1
    assert d.brokers["mq-1"].state == "draining"
    homes = d.homes()
    assert homes["mq-1"] == []
    # mq-3 had no homes, so it takes mq-1's (85) until it has caught up with the others
    assert len(homes["mq-3"]) == 85 and homes["mq-3"][:2] == [1, 4]
    assert sorted(len(v) for v in homes.values()) == [0, 85, 85, 86]
    for p, names in enumerate(d.partitions):
        if m.home(p) == "mq-1":
            assert names[-1] == "mq-1"  # its partitions keep it as the last fallback
        else:
            assert names == m.partitions[p]  # other lists are left alone
    assert d.partitions[1][:1] == ("mq-3",)
    check_rules(d)
    with pytest.raises(ObjectError, match="only active broker"):
        BrokerMap.single("mq-0", "mqtts://h:1").drain("mq-0")


def test_add_and_remove() -> None:
    m = BrokerMap.spread({"mq-0": "mqtts://b0"})
    a = m.add("mq-1", "mqtts://b1:8883")
    assert a.version == 2 and a.homes()["mq-1"] == []
    assert a.add("mq-1", "mqtts://b1") is a  # same address: nothing to do
    with pytest.raises(ObjectError, match="exists"):
        a.add("mq-1", "mqtts://other:8883")
    with pytest.raises(ObjectError, match="DNS label"):
        a.add("MQ_2", "mqtts://b2")
    moved = a.move(range(10), "mq-1")
    with pytest.raises(ObjectError, match=r"home of 10 partition\(s\) \(0-9\)"):
        moved.remove("mq-1")
    back = moved.drain("mq-1")
    gone = back.remove("mq-1")
    assert "mq-1" not in gone.brokers
    assert set(gone.partitions) == {("mq-0",)}
    assert gone.version == back.version + 1
    check_rules(gone)


@pytest.mark.parametrize(("value", "field"), [
    ({"version": 0, "brokers": {}, "partitions": []}, "version"),
    ({"version": 1, "brokers": {}, "partitions": []}, "brokers"),
    ({"version": 1, "brokers": {"a": {"urls": ["http://x"]}}, "partitions": []},
     "brokers.a.urls[0]"),
    ({"version": 1, "brokers": {"a": {"urls": ["mqtts://x:1"], "state": "gone"}},
      "partitions": []}, "brokers.a.state"),
    ({"version": 1, "brokers": {"a": {"urls": ["mqtts://x:1"]}}, "partitions": [["a"]]},
     "partitions"),
    ({"version": 1, "brokers": {"a": {"urls": ["mqtts://x:1"]}},
      "partitions": [["a"]] * 255 + [["a", "b"]]}, "partitions[255]"),
])
def test_from_value_names_the_bad_field(value: dict[str, object], field: str) -> None:
    with pytest.raises(ObjectError) as info:
        BrokerMap.from_value(value)
    assert info.value.field == field


def test_urls() -> None:
    assert parse_url("mqtts://mq.example") == ("mq.example", 8883, True)
    assert parse_url("mqtt://10.0.0.1:1884") == ("10.0.0.1", 1884, False)
    assert parse_url("mqtts://[::1]:8883") == ("::1", 8883, True)
    assert normal_url("mqtts://[::1]") == "mqtts://[::1]:8883"
    for bad in ("tcp://x:1", "mqtts://x:0", "mqtts://x:70000", "mqtts://", "mqtts://x/y"):
        with pytest.raises(ObjectError):
            parse_url(bad)


def test_parse_partitions() -> None:
    assert parse_partitions("0-3, 10,0x10") == [0, 1, 2, 3, 10, 16]
    for bad in ("x", "5-2", "256", "-1"):
        with pytest.raises(ObjectError, match="partitions"):
            parse_partitions(bad)


def test_broker_map_entry_round_trip_and_refusals() -> None:
    k = entries.BROKER_MAP_KEY
    assert k == "broker/-/map"
    value = entries.broker_map_entry(3, ["mqtts://b1:8883", "mqtts://b0"])
    e = entries.parse_broker_map_entry(k, value)
    assert e.version == 3 and e.urls == ("mqtts://b1:8883", "mqtts://b0:8883")
    for bad, field in (({"version": True, "urls": ["mqtts://a:1"]}, "version"),
                       ({"version": 2, "urls": []}, "urls"),
                       ({"version": 2, "urls": ["ftp://a"]}, "urls")):
        with pytest.raises(ObjectError) as info:
            entries.parse_broker_map_entry(k, bad)
        assert info.value.field == field
