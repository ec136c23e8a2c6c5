"""DaemonSets over big fleets are expanded in the background, a bounded slice at a time
(issue 13: an apply over 100,000 nodes must not hold the event loop)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from cloudcore_fakes import FakeStore, add_node, daemonset

from cloudcore.fleet import Fleet, Liveness, workloads
from cloudcore.scheduler import Scheduler
from shared.entries import pod_key
from shared.models import parse_object

NODES = 40


@contextlib.asynccontextmanager
async def running(monkeypatch: pytest.MonkeyPatch, *, slice_s: float = 1e-6
                  ) -> AsyncIterator[Fleet]:
    """A background fleet of NODES nodes whose expansion runs (tiny slices)."""
    monkeypatch.setattr(workloads, "SYNC_NODES", 10)
    monkeypatch.setattr(workloads, "STEP", 3)
    fleet = Fleet(store=FakeStore(), scheduler=Scheduler(), background=True,
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    for i in range(NODES):
        add_node(fleet, f"n{i:02d}")
    task = asyncio.create_task(fleet.workloads.run_expansions(fleet.commit, budget=slice_s))
    try:
        yield fleet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def agent_pods(fleet: Fleet, name: str = "agent") -> set[str]:
    return {k[1] for k in fleet.owned_set(f"DaemonSet/default/{name}")}


async def test_apply_returns_at_once_and_the_pods_follow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(monkeypatch) as fleet:
        changed: list[set[str]] = []
        fleet.desired_sets.add_listener(changed.append)
        [res] = fleet.apply([parse_object(daemonset())])
        assert res.action == "created"
        assert fleet.get("DaemonSet", "default", "agent")["metadata"]["name"] == "agent"
        assert len(agent_pods(fleet)) < NODES  # not all in the call
        await asyncio.wait_for(fleet.expanded(), 5)
        assert agent_pods(fleet) == {f"agent-n{i:02d}" for i in range(NODES)}
        assert len(changed) > 1  # committed slice by slice, not once at the end
        for i in range(NODES):
            node = f"n{i:02d}"
            assert pod_key("default", f"agent-{node}") in fleet.desired[node].items
            assert fleet.bound[("default", f"agent-{node}")] == node
        fleet.expire(0.0)  # the status counts every pod once the expansion is done
        status = fleet.daemonsets[("default", "agent")].status
        assert status is not None and status.desired_number_scheduled == NODES


async def test_a_new_template_midway_starts_over_and_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(monkeypatch) as fleet:
        fleet.apply([parse_object(daemonset(args=["sleep", "1d"]))])
        await asyncio.sleep(0)
        fleet.apply([parse_object(daemonset(args=["sleep", "2d"]))])
        await asyncio.wait_for(fleet.expanded(), 5)
        assert len(agent_pods(fleet)) == NODES
        args = {tuple(fleet.pods[("default", p)].spec.containers[0].args or ())
                for p in agent_pods(fleet)}
        assert args == {("sleep", "2d")}


async def test_a_delete_midway_ends_the_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(monkeypatch) as fleet:
        fleet.apply([parse_object(daemonset())])
        await asyncio.sleep(0)
        fleet.delete("DaemonSet", "default", "agent")
        await asyncio.wait_for(fleet.expanded(), 5)
        await asyncio.sleep(0.01)
        assert agent_pods(fleet) == set()
        assert not [k for k in fleet.pods if k[1].startswith("agent-")]


async def test_a_node_that_joins_midway_gets_its_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(monkeypatch) as fleet:
        fleet.apply([parse_object(daemonset())])
        add_node(fleet, "late")
        assert "agent-late" in agent_pods(fleet)  # the node's own sync, at once
        await asyncio.wait_for(fleet.expanded(), 5)
        assert len(agent_pods(fleet)) == NODES + 1


def test_without_background_an_apply_expands_at_once() -> None:
    fleet = Fleet(store=FakeStore(), scheduler=Scheduler(),
                  liveness=Liveness(default_heartbeat=30, missed=3, now=0.0))
    for i in range(NODES):
        add_node(fleet, f"n{i:02d}")
    fleet.apply([parse_object(daemonset())])
    assert len(agent_pods(fleet)) == NODES and fleet.workloads.expanding() == 0


def test_expansion_freezes_survivors_only_in_a_tuned_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cloudcore import service

    frozen: list[int] = []
    monkeypatch.setattr(service.gc, "freeze", lambda: frozen.append(1))
    monkeypatch.setattr(service.gc, "get_count", lambda: (0, service.FREEZE_AFTER, 0))
    monkeypatch.setattr(service.gc, "get_threshold", lambda: (700, 10, 10))
    assert not service.freeze_survivors() and frozen == []  # an embedder's own settings
    monkeypatch.setattr(service.gc, "get_threshold", lambda: service.GC_THRESHOLDS)
    assert service.freeze_survivors() and frozen == [1]
    monkeypatch.setattr(service.gc, "get_count", lambda: (0, service.FREEZE_AFTER - 1, 0))
    assert not service.freeze_survivors() and frozen == [1]
