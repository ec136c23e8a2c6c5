"""fedctl brokers: flags are checked before any call (the commands against a real
cloudcore run in tests/integration/test_broker_tier_real.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from fedctl.app import app

NOWHERE = "http://127.0.0.1:9"  # nothing listens: a call would fail as unreachable


def test_bad_partitions_are_a_usage_error_before_any_call() -> None:
    r = CliRunner().invoke(app, ["--server", NOWHERE, "brokers", "move", "--partitions",
                                 "3-300", "--to", "mq-1"])
    assert r.exit_code == 2
    assert "--partitions '3-300'" in r.output and "0-255" in r.output


def test_get_brokers_takes_no_name_or_watch() -> None:
    r = CliRunner().invoke(app, ["--server", NOWHERE, "get", "brokers", "-w"])
    assert r.exit_code == 2 and "get brokers takes no name" in r.output


def test_an_unreachable_server_is_named() -> None:
    r = CliRunner().invoke(app, ["--server", NOWHERE, "brokers", "drain", "mq-0"])
    assert r.exit_code == 1 and "127.0.0.1:9" in r.output


def test_a_broker_name_that_is_no_dns_label_is_refused_before_any_call() -> None:
    # The name goes into the request path: `../../nodes/edge-1` was sent as
    # DELETE /api/v1/nodes/edge-1 (httpx resolves the dot segments) and deleted a node.
    for argv in (["brokers", "remove", "../../nodes/edge-1"],
                 ["brokers", "drain", "../../nodes/edge-1"],
                 ["brokers", "add", "Mq_1", "mqtts://mq-1:8883"],
                 ["brokers", "move", "--partitions", "0", "--to", "../x"]):
        r = CliRunner().invoke(app, ["--server", NOWHERE, *argv])
        assert r.exit_code == 2, (argv, r.output)
        assert "a broker name is a DNS label" in r.output, (argv, r.output)
