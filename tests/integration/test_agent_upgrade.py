"""Agent self-upgrade end to end (issue 16 part 3, proposal 0006): real mosquitto,
registry, cloudcore and two agents in network namespaces, real crun containers.

Releases are built from this checkout with other version strings and published the
way an operator does (`cloudcore release publish`, signed with the cloud's release
key); `fedctl upgrade nodes` rolls them out (an AgentUpgrade object). The agents
trust the cloud's key from their join (`releaseKeys` -> `release_keys`).

- a good release: every node reports the new agentVersion and Healthy, the agent's
  process id is the one the testbed started (the launcher exec'd the release), and
  every pod container has the same id, pid and creation time as before;
- a release whose agent raises at start: the first node rolls back on its own and
  reports RolledBack with the exit code and the traceback's last line, the rollout
  is Aborted, the second node is never asked, and no pod restarted;
- a node cut off when the upgrade is asked: it keeps its version while offline and
  upgrades once its link is back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleet import real_fleet

from shared import release
from testbed.fleet import Fleet, FleetSettings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DS = "upgrade-pause"
DEADLINE_S = 60


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("upgrade-fleet")
    with real_fleet(FleetSettings(nodes=2, workdir=workdir, heartbeat_s=1.0)) as f:
        # The cloud's release key (made at its first start) reached every node at join.
        key = release.load_key(f.cloud_state / "pki" / "release.key")
        for a in f.agents:
            assert f.node_config(a.name)["release_keys"] == [release.public_key_b64(key)]
        f.apply([pause_daemonset(f.image)])
        f.wait(lambda: running_pods(f) == len(f.agents), timeout=120,
               what="the DaemonSet's pods Running")
        yield f


def pause_daemonset(image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": DS},
        "spec": {"selector": {"matchLabels": {"app": DS}},
                 "template": {"metadata": {"labels": {"app": DS}},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                                  "name": "sleep", "image": image,
                                  "command": ["sleep", "100000"]}]}}},
    }


def running_pods(fleet: Fleet) -> int:
    return sum(1 for p in fleet.pods(f"app={DS}")
               if (p.get("status") or {}).get("phase") == "Running")


def containers(fleet: Fleet) -> dict[str, list[tuple[str, int, str]]]:
    """Per node: (id, pid, created) of every running container, from crun itself."""
    out: dict[str, list[tuple[str, int, str]]] = {}
    for a in fleet.agents:
        res = subprocess.run(["crun", "--root", str(a.state_dir / "runtime" / "crun"), "list",
                              "--format", "json"], capture_output=True, text=True, check=True)
        out[a.name] = sorted((c["id"], c["pid"], c["created"]) for c in json.loads(res.stdout)
                             if c["status"] == "running")
    return out


def node_status(fleet: Fleet, name: str) -> dict[str, Any]:
    return dict(fleet.get(f"/api/v1/nodes/{name}").get("status") or {})


def versions(fleet: Fleet) -> dict[str, str | None]:
    return {a.name: node_status(fleet, a.name).get("agentVersion") for a in fleet.agents}


def boot(fleet: Fleet, name: str) -> dict[str, Any]:
    path = fleet.agent(name).state_dir / "agent" / "boot.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def source(tmp: Path, *, broken: bool = False) -> Path:
    """A source tree for a release: this checkout's edgecore/ and shared/; `broken`:
    its agent raises as soon as `edgecore run` starts it."""
    src = tmp / ("broken-src" if broken else "src")
    if not src.exists():
        for pkg in release.PACKAGES:
            shutil.copytree(ROOT / pkg, src / pkg,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if broken:
            main = src / "edgecore" / "__main__.py"
            main.write_text(main.read_text().replace(
                "def main(argv: Sequence[str] | None = None) -> int:\n",
                "def main(argv: Sequence[str] | None = None) -> int:\n"
                "    raise RuntimeError('this release is broken on purpose')\n", 1))
            assert "broken on purpose" in main.read_text()
    return src


def publish(fleet: Fleet, tmp: Path, version: str, *, broken: bool = False) -> str:
    """`cloudcore release publish` of a release built from this checkout; its image."""
    image = f"{fleet.registry.address}/edgefed/agent:{version}"
    res = subprocess.run(
        [sys.executable, "-m", "cloudcore", "release", "publish", "--version", version,
         "--image", image, "--source", str(source(tmp, broken=broken)),
         "--state-dir", str(fleet.cloud_state), "--insecure-registry"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return image


def upgrade_nodes(fleet: Fleet, version: str, image: str, *, max_unavailable: int) -> None:
    """`fedctl upgrade nodes`, as an operator starts it (the AgentUpgrade agent-VERSION)."""
    fleet.fedctl("upgrade", "nodes", "-l", "edgefed.io/role=edge", "--version", version,
                 "--image", image, "--max-unavailable", str(max_unavailable),
                 "--failure-threshold", "0", "--deadline", f"{DEADLINE_S}s")


def upgrade_phase(fleet: Fleet, version: str) -> str | None:
    obj = fleet.get(f"/api/v1/agentupgrades/agent-{version}")
    return (obj.get("status") or {}).get("phase")


def figure(name: str, value: Any) -> None:
    print(f"\nFIGURE {name} = {value}", file=sys.stderr)


def test_an_upgrade_moves_every_agent_and_restarts_no_pod(
        fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.getbasetemp()
    version = "0.1.0-up1"
    image = publish(fleet, tmp, version)
    before = containers(fleet)
    assert all(len(c) >= 1 for c in before.values()), before
    pids = {a.name: a.proc.pid for a in fleet.agents}
    t0 = time.monotonic()
    upgrade_nodes(fleet, version, image, max_unavailable=1)

    def done() -> bool:
        for a in fleet.agents:
            st = node_status(fleet, a.name)
            up = st.get("agentUpgrade") or {}
            if st.get("agentVersion") != version or up.get("phase") != "Healthy":
                return False
        return True

    fleet.wait(done, timeout=240, interval=0.5, what=f"every node at {version} and Healthy")
    figure("agent_upgrade.two_nodes_one_at_a_time_s", round(time.monotonic() - t0, 1))
    fleet.wait(lambda: upgrade_phase(fleet, version) == "Complete", timeout=60,
               what="AgentUpgrade Complete")
    for a in fleet.agents:
        st = node_status(fleet, a.name)
        assert st["agentUpgrade"]["version"] == version
        assert st["agentUpgrade"]["previous"] not in (None, version)
        # exec'd: the process the testbed started now runs the release from its slot,
        # and is still found as the agent (testbed.bench_edge.agent_pid's rule)
        # (the committed trial reports Healthy, then its launcher execs it: a moment)
        slot = a.state_dir / "agent" / "slots" / version

        def args(pid: int | None = a.proc.pid) -> list[str]:
            return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")

        fleet.wait(lambda s=str(slot): s in args(), timeout=30,  # type: ignore[misc]
                   what=f"{a.name} exec'd {slot}")
        assert a.proc.alive() and a.proc.pid == pids[a.name]
        assert "edgecore" in args() and str(a.state_dir) in args(), args()
        b = boot(fleet, a.name)
        assert b["active"] == version and b["trial"] is None
        assert (slot / "edgecore").is_dir()
    assert containers(fleet) == before  # same ids, pids and creation times
    restarts = [c.get("restartCount", 0) for p in fleet.pods(f"app={DS}")
                for c in (p.get("status") or {}).get("containerStatuses") or []]
    assert restarts and not any(restarts)
    # kill -9 of an upgraded agent (as the fault tests do): restarted, it runs the
    # release again and adopts the same containers
    a = fleet.agents[0]
    fleet.restart_agent(a.name, kill=True)
    slot = str(a.state_dir / "agent" / "slots" / version)
    fleet.wait(lambda: slot in Path(f"/proc/{a.proc.pid}/cmdline").read_bytes().decode(),
               timeout=30, what="the restarted agent on the release")
    fleet.wait(lambda: node_status(fleet, a.name).get("ready") == "Ready", timeout=60,
               what="Ready after the kill")
    time.sleep(3)
    assert versions(fleet)[a.name] == version
    assert containers(fleet) == before


def test_a_release_that_crashes_is_rolled_back_and_the_rollout_aborts(
        fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.getbasetemp()
    version = "0.1.0-broken"
    image = publish(fleet, tmp, version, broken=True)
    first, second = sorted(a.name for a in fleet.agents)
    was = versions(fleet)
    before = containers(fleet)
    upgrade_nodes(fleet, version, image, max_unavailable=1)

    def rolled_back() -> bool:
        # RolledBack; or already Healthy on its version again once the aborted rollout
        # sent it back there, the rollback's report kept in the message
        up = node_status(fleet, first).get("agentUpgrade") or {}
        return ((up.get("version"), up.get("phase")) == (version, "RolledBack")
                or f"before: {version} RolledBack" in (up.get("message") or ""))

    fleet.wait(rolled_back, timeout=180, interval=0.5, what=f"{first} RolledBack")
    up = node_status(fleet, first)["agentUpgrade"]
    assert "exited with code 1" in up["message"], up
    assert "broken on purpose" in up["message"], up
    assert up["previous"] == was[first]
    fleet.wait(lambda: upgrade_phase(fleet, version) == "Aborted", timeout=60,
               what="AgentUpgrade Aborted")
    described = fleet.fedctl("describe", "agentupgrade", f"agent-{version}").stdout
    assert first in described and "RolledBack" in described, described
    fleet.wait(lambda: node_status(fleet, first).get("ready") == "Ready", timeout=60,
               what=f"{first} Ready on its previous agent")
    time.sleep(3)  # what the second node would have started by now, had it been asked
    assert versions(fleet) == was
    assert (node_status(fleet, second).get("agentUpgrade") or {}).get("version") != version
    assert boot(fleet, second).get("trial") is None
    b = boot(fleet, first)
    assert b["trial"] is None and {"version": version,
                                   "upgrade": f"agent-{version}"} in b["refused"]
    assert fleet.agent(first).proc.alive()
    assert containers(fleet) == before


def test_an_offline_node_upgrades_when_its_link_is_back(
        fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.getbasetemp()
    version = "0.1.0-up2"
    image = publish(fleet, tmp, version)
    online, offline = sorted(a.name for a in fleet.agents)
    host = fleet.agent(offline).host
    assert host is not None, "needs network namespaces (root)"
    was = versions(fleet)[offline]
    before = containers(fleet)
    host.cut()
    try:
        fleet.wait(lambda: node_status(fleet, offline).get("ready") != "Ready", timeout=60,
                   what=f"{offline} NotReady while cut")
        upgrade_nodes(fleet, version, image, max_unavailable=2)
        fleet.wait(lambda: versions(fleet)[online] == version, timeout=180, interval=0.5,
                   what=f"{online} upgraded")
        time.sleep(3)
        assert boot(fleet, offline).get("trial") is None
        assert (boot(fleet, offline).get("status") or {}).get("version") != version
        assert versions(fleet)[offline] == was
    finally:
        host.heal()
    t0 = time.monotonic()

    def upgraded() -> bool:
        st = node_status(fleet, offline)
        return (st.get("agentVersion") == version
                and (st.get("agentUpgrade") or {}).get("phase") == "Healthy")

    fleet.wait(upgraded, timeout=180, interval=0.5, what=f"{offline} upgraded after heal")
    figure("agent_upgrade.after_heal_s", round(time.monotonic() - t0, 1))
    fleet.wait(lambda: upgrade_phase(fleet, version) == "Complete", timeout=60,
               what="AgentUpgrade Complete")
    assert containers(fleet) == before
