"""`testbed chaos` on a kernel without netem: loss falls back to nftables random drops
in the agent's network namespace, a line says what is missing and what stands in, and
an impairment nftables cannot do (delay) is refused by name instead of a traceback.

A real network namespace on a real bridge (root, iproute2, nftables), and real pings
(busybox's) across it; no fleet: `Chaos` needs only the agents' hosts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from testbed import netns
from testbed.chaos import CHAOS_TABLE, Chaos, Netem, NetemMissing, impair_all
from testbed.fleet import Agent, Fleet


class _Hosts:
    """What Chaos asks of a fleet: its agents and their hosts, and the nodes' status
    (`status`: name -> (ready, ackedGen, desiredGen))."""

    def __init__(self, agents: list[Agent],
                 status: dict[str, tuple[str, int, int]] | None = None) -> None:
        self.agents = agents
        self.status = status or {}

    def agent(self, name: str) -> Agent:
        return next(a for a in self.agents if a.name == name)

    def nodes(self) -> list[dict[str, Any]]:
        return [{"metadata": {"name": n}, "status": {"ready": r, "ackedGen": a,
                                                     "desiredGen": d}}
                for n, (r, a, d) in self.status.items()]

    def wait(self, check: Any, **kw: Any) -> Any:
        return Fleet.wait(cast(Fleet, self), check, **kw)


class _Running:
    """An agent process that is up (restore() starts the ones that are not)."""

    def alive(self) -> bool:
        return True


def _free_net_id() -> int:
    for i in range(249, 200, -1):
        r = subprocess.run(["ip", "link", "show", f"efbr{i}"], capture_output=True, check=False)
        if r.returncode != 0:
            return i
    raise RuntimeError("no free testbed network id")


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    if os.geteuid() != 0 or not all(shutil.which(b) for b in ("ip", "nsenter", "nft", "busybox")):
        pytest.fail("needs root, iproute2, nftables and busybox (make test installs them)")
    net = netns.Network(_free_net_id()).up()
    try:
        host = net.add_host(0)
        agent = Agent(name="edge-1", state_dir=Path("/nonexistent"), proc=cast(Any, _Running()),
                      host=host, address=host.address)
        yield cast(Fleet, _Hosts([agent]))
    finally:
        net.close()


def _loss(address: str, count: int = 200) -> float:
    r = subprocess.run(["busybox", "ping", "-q", "-c", str(count), "-i", "0.005", "-W", "1",
                        address], capture_output=True, text=True, check=False, timeout=60)
    m = re.search(r"([\d.]+)% packet loss", r.stdout)
    assert m, r.stdout + r.stderr
    return float(m.group(1))


def _tables(f: Fleet) -> str:
    host = f.agent("edge-1").host
    assert host is not None
    return subprocess.run([*host.nsenter(), "nft", "list", "tables"], capture_output=True,
                          text=True, check=True).stdout


def test_loss_by_nftables_when_netem_is_not_used(fleet: Fleet) -> None:
    addr = fleet.agent("edge-1").address
    assert _loss(addr, 20) == 0.0
    with Chaos(fleet, netem=False) as chaos:
        what = chaos.impair("edge-1", loss_pct=50)
        assert what == "edge-1: loss 50 % by nftables random drops"
        assert CHAOS_TABLE in _tables(fleet)
        assert 25.0 < _loss(addr) < 75.0
    # leaving the block cleared it
    assert CHAOS_TABLE not in _tables(fleet)
    assert _loss(addr, 20) == 0.0


def test_what_nftables_cannot_do_is_refused_by_name(fleet: Fleet) -> None:
    with Chaos(fleet, netem=False) as chaos, pytest.raises(NetemMissing) as exc:
        chaos.impair("edge-1", delay_ms=200, loss_pct=5)
    assert "netem is missing from this kernel" in str(exc.value)
    assert "cannot apply delay 200ms to edge-1" in str(exc.value)
    assert CHAOS_TABLE not in _tables(fleet)


def test_flaky_says_what_is_missing_and_what_stands_in(fleet: Fleet) -> None:
    lines: list[str] = []
    with Chaos(fleet, netem=False) as chaos:
        impair_all(chaos, Netem(delay_ms=200, jitter_ms=50, loss_pct=5), out=lines.append)
        assert CHAOS_TABLE in _tables(fleet)
    assert lines == [
        "netem is missing from this kernel (`tc qdisc add ... netem`: 'Specified qdisc kind "
        "is unknown'; module sch_netem): using nftables random drops for the loss (5 %); "
        "not applied: delay 200ms 50ms",
        "  edge-1: loss 5 % by nftables random drops (delay 200ms 50ms not applied: no netem)"]


def test_this_kernel_gets_netem_or_the_fallback(fleet: Fleet) -> None:
    """Whatever this kernel has, a flaky link is set up and cleared without a traceback."""
    with Chaos(fleet) as chaos:
        what = chaos.impair("edge-1", Netem(delay_ms=20, loss_pct=50), partial=True)
        assert chaos.netem is not None
        assert what == ("edge-1: netem delay 20ms loss 50.0%" if chaos.netem else
                        "edge-1: loss 50 % by nftables random drops (delay 20ms not applied: "
                        "no netem)")
    assert CHAOS_TABLE not in _tables(fleet)


def test_a_scenario_that_does_not_converge_names_the_nodes() -> None:
    from testbed.chaos import _wait_converged

    agents = [Agent(name=n, state_dir=Path("/nonexistent"), proc=cast(Any, _Running()),
                    host=None, address="127.0.0.1") for n in ("edge-1", "edge-2")]
    hosts = _Hosts(agents, {"edge-1": ("Ready", 3, 3), "edge-2": ("NotReady", 2, 3)})
    with pytest.raises(TimeoutError) as exc:
        _wait_converged(cast(Fleet, hosts), timeout=0.2)
    assert str(exc.value) == ("fleet not converged after 0.2 s: edge-2 (NotReady, acked gen 2 "
                              "of 3)")
