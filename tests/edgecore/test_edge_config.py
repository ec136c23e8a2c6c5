"""Settings validation, the CLI, and the backoff helper."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgecore.__main__ import build_parser, main, settings_from_args
from edgecore.config import AgentSettings
from edgecore.errors import ConfigError
from shared.backoff import Backoff, capped_delay, jittered


def test_defaults_are_valid(tmp_path: Path) -> None:
    s = AgentSettings(node="edge-1", state_dir=tmp_path)
    assert s.heartbeat_s == 60 and s.outbox_budget_bytes == 64 * 2**20
    assert s.mqtt_keepalive_s == 600  # paho pings every keepalive (proposal 0003)
    assert s.runtime_root == tmp_path / "runtime" and s.cache_dir == tmp_path / "cache"
    assert s.event_loop == "asyncio"  # uvloop costs 2.2 MiB of RSS for no gain here


def test_cli_event_loop(tmp_path: Path) -> None:
    base = ["run", "--name", "edge-7", "--state-dir", str(tmp_path), "--insecure"]
    assert settings_from_args(build_parser().parse_args(base)).event_loop == "asyncio"
    s = settings_from_args(build_parser().parse_args([*base, "--event-loop", "uvloop"]))
    assert s.event_loop == "uvloop"


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"node": "Edge_1"}, "node"),
    ({"mqtt_port": 0}, "mqtt_port"),
    ({"heartbeat_s": 0}, "heartbeat_s"),
    ({"labels": {"bad key!": "v"}}, "labels"),
    ({"labels": {"k": "x" * 64}}, "labels"),
    ({"outbox_budget_bytes": 10}, "outbox_budget_bytes"),
    ({"insecure_registries": ("not a host",)}, "insecure_registries"),
    ({"capacity_pods": -1}, "capacity_pods"),
    ({"event_loop": "trio"}, "event_loop"),
])
def test_invalid_settings_name_the_field(tmp_path: Path, kwargs: dict, field: str) -> None:
    args = {"node": "edge-1", "state_dir": tmp_path, **kwargs}
    with pytest.raises(ConfigError) as err:
        AgentSettings(**args)
    assert err.value.field == field and field in str(err.value)


def test_cli_builds_settings(tmp_path: Path) -> None:
    args = build_parser().parse_args([
        "run", "--name", "edge-7", "--state-dir", str(tmp_path), "--mqtt-host", "broker",
        "--mqtt-port", "1884", "--label", "zone=a", "--label", "gpu=", "--heartbeat", "5",
        "--insecure-registry", "localhost:5000", "--insecure"])
    s = settings_from_args(args)
    assert (s.node, s.mqtt_host, s.mqtt_port, s.heartbeat_s) == ("edge-7", "broker", 1884, 5)
    assert s.labels == {"zone": "a", "gpu": ""}
    assert s.insecure_registries == ("localhost:5000",)


def test_run_refuses_to_start_without_a_key_unless_insecure(tmp_path: Path, capsys,
                                                           caplog) -> None:
    assert main(["run", "--name", "edge-7", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "invalid setting node_key: no node key" in err and "--insecure" in err
    s = settings_from_args(build_parser().parse_args(
        ["run", "--name", "edge-7", "--state-dir", str(tmp_path), "--insecure"]))
    assert s.node_key is None
    assert "RUNNING INSECURE" in caplog.text


def test_tls_and_key_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        AgentSettings(node="n", state_dir=tmp_path, node_key=b"short")
    assert err.value.field == "node_key"
    # a plain agent may keep the fleet CA (for the mqtts:// brokers of a mixed map, issue
    # 14), not a client certificate
    AgentSettings(node="n", state_dir=tmp_path, ca_file=tmp_path / "ca.crt")
    with pytest.raises(ConfigError) as err:
        AgentSettings(node="n", state_dir=tmp_path, client_cert=tmp_path / "c",
                      client_key=tmp_path / "k")
    assert err.value.field == "tls"
    with pytest.raises(ConfigError) as err:
        AgentSettings(node="n", state_dir=tmp_path, tls=True, client_cert=tmp_path / "c")
    assert err.value.field == "client_cert"
    s = AgentSettings(node="n", state_dir=tmp_path, node_key=bytes(32), tls=True)
    assert bytes(32).hex() not in repr(s) and "node_key" not in repr(s)


def test_cli_bad_setting_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["run", "--name", "BAD", "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgecore: invalid setting node:") and "Traceback" not in err


def test_capped_delay_and_jitter() -> None:
    assert [capped_delay(i, initial=10, cap=300) for i in range(8)] == [
        0, 10, 20, 40, 80, 160, 300, 300]
    assert capped_delay(10_000, initial=1, cap=5) == 5
    rng = random.Random(1)
    b = Backoff(initial=1, cap=8, rng=rng)
    delays = [b.next() for _ in range(6)]
    for d, top in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert top / 2 <= d <= top
    b.reset()
    assert b.next() <= 1
    for _ in range(100):
        assert 27 <= jittered(30, 0.1, rng) <= 33
