"""What the simulator reports for applied pods (`SimNode.pod_changes`), no broker needed."""

from __future__ import annotations

from typing import Any

import pytest

from cloudcore.fleet.rollout import failure, ready_at
from shared.entries import parse_status, pod_entry, pod_key
from shared.models import Pod, parse_object
from testbed.simulator import SimSettings, Simulator


def _entry(node: str, container: dict[str, Any]) -> dict[str, Any]:
    obj = parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"bench-{node}", "labels": {"app": "bench"}},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "c", "image": "busybox", **container}],
            },
        }
    )
    assert isinstance(obj, Pod)
    return pod_entry(obj)


def _node(crash_marker: str | None) -> Any:
    sim = Simulator(SimSettings(names=("sim-0",), report_pods=True, crash_marker=crash_marker))
    return sim.nodes[0]


def test_a_pod_with_the_marker_in_its_args_is_reported_crash_looping() -> None:
    node = _node("crash-now")
    key = pod_key("default", "bench-sim-0")
    entry = _entry("sim-0", {"args": ["sh", "-c", "crash-now"]})
    out = node.pod_changes({}, {key: entry})
    status = parse_status(out[key])
    assert status.phase == "Running" and status.ready is False
    assert status.revision == entry["revision"] and status.node_name == "sim-0"
    [c] = status.container_statuses
    assert (c.name, c.state, c.ready, c.reason, c.restart_count) == (
        "c",
        "waiting",
        False,
        "CrashLoopBackOff",
        1,
    )
    # cloudcore's rollout gate sees it as failed, and not Ready.
    pod = Pod.model_validate(
        {"metadata": {"name": "bench-sim-0"}, "spec": entry["spec"], "status": out[key]}
    )
    assert failure(pod, entry["revision"]) == "container c: CrashLoopBackOff"
    assert not ready_at(pod, entry["revision"])


def test_the_marker_in_the_command_counts_too_and_other_pods_run() -> None:
    node = _node("crash-now")
    bad, good = pod_key("default", "a"), pod_key("default", "b")
    out = node.pod_changes(
        {},
        {
            bad: _entry("sim-0", {"command": ["/bin/crash-now"]}),
            good: _entry("sim-0", {"args": ["sleep", "v2"]}),
        },
    )
    assert parse_status(out[bad]).container_statuses[0].reason == "CrashLoopBackOff"
    ok = parse_status(out[good])
    assert ok.phase == "Running" and ok.ready is None
    assert [(c.state, c.ready, c.reason) for c in ok.container_statuses] == [
        ("running", True, None)
    ]


def test_without_a_marker_every_pod_runs_and_removed_pods_are_gone() -> None:
    node = _node(None)
    key = pod_key("default", "bench-sim-0")
    entry = _entry("sim-0", {"args": ["sh", "-c", "crash-now"]})
    out = node.pod_changes({}, {key: entry})
    assert parse_status(out[key]).container_statuses[0].state == "running"
    assert node.pod_changes({key: entry}, {key: entry}) == {}
    assert node.pod_changes({key: entry}, {}) == {key: None}


def test_an_empty_marker_is_refused() -> None:
    with pytest.raises(ValueError, match="crash_marker"):
        _node("")
