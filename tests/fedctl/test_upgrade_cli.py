"""`fedctl upgrade nodes`, `get agentupgrades`, `describe agentupgrade` and `delete`
against a real cloudcore API (FastAPI + LMDB, served in a thread as in
test_fedctl_real); the tests play the nodes' agents and the tick on the server's loop."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_fedctl_real import Cloud, _cloud, fed

from fedctl import upgrade
from fedctl.errors import UsageError
from shared.entries import AGENT_RELEASE_KEY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloudcore"))
from cloudcore_fakes import add_node

IMAGE = "reg.example:5000/edgefed/agent:0.9.1"


def _nodes(cloud: Cloud) -> None:
    for n, site in (("n1", "berlin"), ("n2", "berlin"), ("n3", "paris")):
        add_node(cloud.fleet, n, labels={"site": site})
        cloud.fleet.node_status(n, {"agentVersion": "0.9.0"})


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    for c in _cloud(tmp_path, False):
        c.call(_nodes, c)
        yield c


def _agents_step(cloud: Cloud, *, crash: frozenset[str] = frozenset()) -> None:
    """Every node with a release entry acts on it (upgrades, or crashes and rolls back);
    then the fleet ticks."""
    def step() -> None:
        fleet = cloud.fleet
        for name, nd in fleet.desired.items():
            item = nd.items.get(AGENT_RELEASE_KEY)
            if item is None:
                continue
            value: dict[str, Any] = item[0]
            have = fleet.nodes[name].status.agent_version
            if name in crash and value["image"] is not None:
                report = {"version": value["version"], "phase": "RolledBack",
                          "message": "no commit in 120 s", "previous": have}
                fleet.node_status(name, {"agentUpgrade": report})
            else:
                report = {"version": value["version"], "phase": "Healthy", "message": "",
                          "previous": have}
                fleet.node_status(name, {"agentVersion": value["version"],
                                         "agentUpgrade": report})
        fleet.expire(0.0)
    cloud.call(step)


def test_upgrade_nodes_get_describe_delete(cloud: Cloud) -> None:
    r = fed(cloud, "upgrade", "nodes", "-l", "site=berlin", "--version", "0.9.1",
            "--image", IMAGE, "--max-unavailable", "1", "--deadline", "5m")
    assert r.exit_code == 0, r.output
    assert "agentupgrade/agent-0.9.1 created" in r.stdout
    assert "0 of 2 nodes at 0.9.1, 1 in progress" in r.stdout
    au = cloud.fleet.objects.agentupgrades["agent-0.9.1"]
    assert au.spec.health_deadline_seconds == 300
    assert au.spec.selector.match_labels == {"site": "berlin"}
    r = fed(cloud, "get", "agentupgrades")
    assert r.exit_code == 0, r.output
    header, row = r.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "VERSION", "PHASE", "UPGRADED"]
    assert row.split()[:7] == ["agent-0.9.1", "0.9.1", "Progressing", "0/2", "1", "0", "0"]
    _agents_step(cloud)
    _agents_step(cloud)
    r = fed(cloud, "get", "au")
    assert r.stdout.splitlines()[1].split()[:4] == ["agent-0.9.1", "0.9.1", "Complete", "2/2"]
    assert cloud.fleet.nodes["n3"].status.agent_version == "0.9.0"  # not selected
    r = fed(cloud, "describe", "agentupgrade", "agent-0.9.1")
    assert r.exit_code == 0, r.output
    for text in ("Version:", "0.9.1", IMAGE, "site=berlin", "Complete",
                 "2 upgraded of 2", "maxUnavailable 1", "healthDeadlineSeconds 300"):
        assert text in r.stdout
    # the same command again changes nothing
    r = fed(cloud, "upgrade", "nodes", "-l", "site=berlin", "--version", "0.9.1",
            "--image", IMAGE, "--deadline", "5m")
    assert "agentupgrade/agent-0.9.1 unchanged" in r.stdout, r.output
    r = fed(cloud, "delete", "agentupgrade", "agent-0.9.1")
    assert r.exit_code == 0, r.output
    assert "agentupgrade/agent-0.9.1 deleted" in r.stdout
    assert fed(cloud, "get", "agentupgrades").stderr.strip() == "No agentupgrades found."


def test_an_aborted_upgrade_says_so_and_describe_names_the_failed_node(cloud: Cloud) -> None:
    r = fed(cloud, "upgrade", "nodes", "--version", "0.9.1", "--image", IMAGE,
            "--max-unavailable", "2")
    assert r.exit_code == 0, r.output
    _agents_step(cloud, crash=frozenset({"n2"}))
    r = fed(cloud, "get", "agentupgrades", "-o", "wide")
    assert "Aborted" in r.stdout
    r = fed(cloud, "describe", "agentupgrade", "agent-0.9.1")
    assert "Failed Nodes:" in r.stdout
    assert "n2" in r.stdout and "RolledBack" in r.stdout and "no commit in 120 s" in r.stdout
    r = fed(cloud, "upgrade", "nodes", "--version", "0.9.1", "--image", IMAGE,
            "--max-unavailable", "3")
    assert r.exit_code == 0, r.output
    assert "was aborted" in r.stderr and "--name" in r.stderr
    r = fed(cloud, "events", "AgentUpgrade/agent-0.9.1")
    assert "AgentUpgradeAborted" in r.stdout


def test_flags_are_checked_before_anything_is_sent(cloud: Cloud) -> None:
    for args, text in ((["--max-unavailable", "0"], "--max-unavailable '0'"),
                       (["--failure-threshold", "120%"], "--failure-threshold"),
                       (["-l", "site!=x"], "KEY=VALUE"),
                       (["--deadline", "0s"], "--deadline")):
        r = fed(cloud, "upgrade", "nodes", "--version", "1.0", "--image", IMAGE, *args)
        assert r.exit_code != 0
        assert text in r.output
    assert not cloud.fleet.objects.agentupgrades
    r = fed(cloud, "upgrade", "nodes", "--version", "1.0/x", "--image", IMAGE)
    assert r.exit_code != 0
    assert "spec.version" in r.output


def test_names_and_counts() -> None:
    assert upgrade.upgrade_name("0.9.1") == "agent-0.9.1"
    assert upgrade.upgrade_name("1.0.0+Build_2") == "agent-1.0.0-build-2"
    assert upgrade.count("--max-unavailable", "25%", low=1) == "25%"
    assert upgrade.count("--failure-threshold", "0", low=0) == 0
    assert upgrade.match_labels("a=b, c=d") == {"a": "b", "c": "d"}
    with pytest.raises(UsageError):
        upgrade.match_labels("a in (b)")


def test_apply_of_an_agentupgrade_document(cloud: Cloud) -> None:
    import yaml
    from typer.testing import CliRunner

    from fedctl.app import app

    doc = upgrade.document(name="agent-0.9.1", version="0.9.1", image=IMAGE,
                           selector={"site": "paris"}, max_unavailable=1,
                           failure_threshold=0, deadline=60)
    r = CliRunner().invoke(app, ["--server", cloud.url, "apply", "-f", "-"],
                           input=yaml.safe_dump(doc))
    assert r.exit_code == 0, r.output
    assert "agentupgrade/agent-0.9.1 created" in r.stdout
    r = fed(cloud, "get", "agentupgrade", "agent-0.9.1", "-o", "yaml")
    got = yaml.safe_load(r.stdout)
    assert got["spec"]["selector"] == {"matchLabels": {"site": "paris"}}
    assert got["status"]["total"] == 1


class _Agents:
    """The nodes' agents and the tick, in a thread, every 0.2 s until the block ends."""

    def __init__(self, cloud: Cloud, *, crash: frozenset[str] = frozenset()) -> None:
        import threading

        self.cloud, self.crash = cloud, crash
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            _agents_step(self.cloud, crash=self.crash)

    def __enter__(self) -> None:
        self.thread.start()

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_wait_follows_the_upgrade_to_its_end(cloud: Cloud) -> None:
    with _Agents(cloud):
        r = fed(cloud, "upgrade", "nodes", "--version", "0.9.1", "--image", IMAGE, "--wait",
                "--timeout", "60s")
    assert r.exit_code == 0, r.output
    assert "Waiting for agentupgrade/agent-0.9.1: Progressing" in r.stdout
    assert "agentupgrade/agent-0.9.1 complete: 3 of 3 nodes at 0.9.1" in r.stdout
    with _Agents(cloud, crash=frozenset({"n1"})):
        r = fed(cloud, "upgrade", "nodes", "--version", "1.0.0", "--image", IMAGE, "--wait",
                "--timeout", "60s")
    assert r.exit_code == 1
    assert "agentupgrade/agent-1.0.0 aborted: aborted: 1 failed" in r.output
    r = fed(cloud, "upgrade", "nodes", "--version", "1.0.1", "--image", IMAGE, "--wait",
            "--timeout", "1s")  # nobody plays the agents: it never ends
    assert r.exit_code == 1
    assert "timed out after 1 s waiting for agentupgrade/agent-1.0.1" in r.output
