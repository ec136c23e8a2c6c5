"""What a simulated node does with an `agent/-/release` entry (`SimNode.release_changed`),
no broker needed: it runs the version at once and reports it Healthy, or RolledBack
(staying at its version) when the version holds the crash marker; its node status then
carries both, in the form cloudcore's AgentUpgrade controller reads."""

from __future__ import annotations

from typing import Any

from shared.entries import agent_release_entry, parse_agent_upgrade
from testbed.simulator import AGENT_VERSION, SimSettings, Simulator


def _node(crash_marker: str | None = None) -> Any:
    sim = Simulator(SimSettings(names=("sim-0",), report_pods=True, crash_marker=crash_marker))
    return sim.nodes[0]


def test_a_release_entry_is_run_and_reported_healthy() -> None:
    node = _node()
    seq = node.seq
    node.release_changed(None, agent_release_entry(version="1.2.3", image="reg/a:1.2.3",
                                                   upgrade="agent-1.2.3"))
    assert node.seq == seq + 1  # one report
    status = node.node_status()
    assert status["agentVersion"] == "1.2.3"
    report = parse_agent_upgrade(status["agentUpgrade"])
    assert report is not None
    assert (report.version, report.phase, report.previous) == ("1.2.3", "Healthy",
                                                               AGENT_VERSION)
    # the same entry again (a snapshot) is not news
    same = agent_release_entry(version="1.2.3", image="reg/a:1.2.3", upgrade="agent-1.2.3")
    node.release_changed(same, dict(same))
    assert node.seq == seq + 1


def test_a_version_with_the_crash_marker_is_rolled_back() -> None:
    node = _node("crash-now")
    node.release_changed(None, agent_release_entry(version="2.0.0-crash-now", image="x",
                                                   upgrade="agent-2"))
    status = node.node_status()
    assert status["agentVersion"] == AGENT_VERSION
    report = parse_agent_upgrade(status["agentUpgrade"])
    assert report is not None and (report.version, report.phase) == ("2.0.0-crash-now",
                                                                     "RolledBack")
