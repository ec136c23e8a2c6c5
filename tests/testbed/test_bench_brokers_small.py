"""`testbed bench brokers` on a small fleet with real brokers (issue 14 part 1): 200
secure sessions (TLS, a password per node, sealed messages) over 2 mosquittos and over a
2-server NATS cluster; every report reaches the cloud and every node applies and acks
its desired snapshot. And a broker that refuses sessions fails the run, naming them."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from testbed.bench_brokers import Identities, Settings, _run, bench_brokers
from testbed.broker import NatsSettings

pytestmark = [
    pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto")
                       .exists(), reason="mosquitto is not installed"),
    pytest.mark.skipif(shutil.which("nats-server") is None,
                       reason="nats-server is not installed"),
    pytest.mark.timeout(120),
]


def test_small_fleet_on_both_tiers(tmp_path: Path) -> None:
    # NATS's QoS 1 consumers on one server, in memory: replicated ones take ~0.5 s each
    # to create here, and the cloud alone makes 256
    nats = NatsSettings(mqtt_max_ack_pending=256, mqtt_consumer_replicas=1,
                        mqtt_consumer_memory=True)
    settings = Settings(workdir=tmp_path, sessions=(200,), brokers=2, nats_servers=2,
                        per_sim=100, rate=1000, idle_s=0.5, settle_s=0.5, stall_s=20,
                        nats=nats)
    assert bench_brokers(settings) == 0
    runs = json.loads((tmp_path / "result.json").read_text())["runs"]
    assert [(r["tier"], r["brokers"], r["ok"]) for r in runs] == [
        ("mosquitto", 2, True), ("nats", 2, True)]
    for r in runs:
        assert sum(r["sessions_homed"].values()) == 200
        assert r["simulator_processes"] == 2
        assert r["fanin"]["not_a_valid_report"] == 0
        assert r["targeted"]["not_a_valid_ack"] == 0
        assert r["targeted"]["all_applied_s"] is not None
        assert r["idle"]["broker_rss_mb"] > 0


class _SomeUnknown(Identities):
    """The brokers' password file leaves out three nodes: their sessions are refused."""

    def mosquitto_passwd(self, services: dict[str, str]) -> str:
        full = super().mosquitto_passwd(services)
        return "".join(line + "\n" for line in full.splitlines()
                       if line.split(":", 1)[0] not in ("sim-3", "sim-4", "sim-5"))


def test_refused_sessions_fail_the_run_and_are_named(tmp_path: Path) -> None:
    ids = _SomeUnknown.make(40)
    settings = Settings(workdir=tmp_path, sessions=(40,), brokers=1, per_sim=40, rate=1000,
                        idle_s=0.5, settle_s=0.5, stall_s=3)
    result = asyncio.run(_run(settings, "mosquitto", ids))
    assert result["ok"] is False
    err = result["error"]
    assert "sessions connected: 37 of 40" in err
    assert "no progress for 3 s" in err
    assert "sim-3" in err
    assert "not authorised" in err or "bad user name or password" in err
    assert "broker mq-0: pid" in err
