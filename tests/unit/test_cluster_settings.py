"""cloudcore.cluster's pure parts: target shares, lease keys, and the settings checks
that refuse an unsafe or inconsistent configuration before anything connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudcore.cluster.errors import ConfigError
from cloudcore.cluster.kv import KVSettings
from cloudcore.cluster.leases import LeaseSettings, partition_key, partition_of, shares
from shared import topics


def test_shares_cover_every_partition_once_and_agree_on_order() -> None:
    for n in range(1, 10):
        names = [f"S{i}" for i in range(n)]
        s = shares(reversed(names))
        assert sum(s.values()) == topics.PARTITIONS
        assert max(s.values()) - min(s.values()) <= 1
        assert s == shares(names)  # every member computes the same from the same set
    assert shares(["b", "a", "c"]) == {"a": 86, "b": 85, "c": 85}
    assert shares([]) == {}


def test_partition_keys_round_trip() -> None:
    assert partition_key(10) == "partition.0a"
    assert [partition_of(partition_key(p)) for p in range(256)] == list(range(256))
    assert partition_of("global") is None
    assert partition_of("partition.zz") is None


def test_lease_settings_are_checked() -> None:
    LeaseSettings(name="S1").validate()
    s = LeaseSettings(name="S1", lease_period=15)
    assert s.margin_s == 1.5 and s.tick_s < s.margin_s and s.renew_every == 5
    with pytest.raises(ConfigError, match="name"):
        LeaseSettings(name="bad name").validate()
    with pytest.raises(ConfigError, match="margin"):
        LeaseSettings(name="S1", lease_period=3, margin=1.5).validate()
    with pytest.raises(ConfigError, match="tick"):  # the holder must notice in time
        LeaseSettings(name="S1", lease_period=3, margin=0.3, tick=0.5).validate()
    with pytest.raises(ConfigError, match="lease_period"):
        LeaseSettings(name="S1", lease_period=0.1).validate()


def test_kv_settings_are_secure_by_default(tmp_path: Path) -> None:
    from cloudcore.auth.pki import FleetCA

    ca = FleetCA.open(tmp_path / "pki").cert_path
    junk = tmp_path / "junk.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="no usable CA certificate"):
        KVSettings(urls=("tls://127.0.0.1:4222",), user="u", password="p",
                   ca_file=junk).validate()
    with pytest.raises(ConfigError, match="plain text") as err:
        KVSettings(urls=("nats://127.0.0.1:4222",), user="u", password="p",
                   ca_file=ca).validate()
    assert err.value.field == "nats.urls"
    with pytest.raises(ConfigError, match="fleet CA"):
        KVSettings(urls=("tls://127.0.0.1:4222",), user="u", password="p").validate()
    with pytest.raises(ConfigError, match="user and password"):
        KVSettings(urls=("tls://127.0.0.1:4222",), ca_file=ca).validate()
    with pytest.raises(ConfigError, match="not a readable file"):
        KVSettings(urls=("tls://127.0.0.1:4222",), user="u", password="p",
                   ca_file=tmp_path / "nope.crt").validate()
    with pytest.raises(ConfigError, match="not nats://"):
        KVSettings(urls=("http://x:1",), insecure=True).validate()
    KVSettings(urls=("tls://127.0.0.1:4222",), user="u", password="p", ca_file=ca).validate()
    KVSettings(urls=("nats://127.0.0.1:4222",), insecure=True).validate()  # explicit only
