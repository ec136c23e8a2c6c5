"""`fedctl rollout`, and the rollout columns of `get` and `describe`, against a real
cloudcore API (FastAPI + LMDB store, served in a thread as in test_fedctl_real).

cloudcore's liveness tick does not run there: the tests play the nodes' agents and
the tick themselves, on the server's loop, with a fake rollout clock (`Agents`).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_fedctl_real import Cloud, _cloud, fed
from typer.testing import CliRunner

from cloudcore.fleet.template import Template
from fedctl.app import app, rollout_state
from shared.entries import pod_key
from shared.models import parse_object

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloudcore"))
from cloudcore_fakes import add_node, daemonset, deployment

NODES = ("n1", "n2", "n3")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _nodes_and_clock(cloud: Cloud) -> None:
    cloud.fleet.rollouts.clock = Clock()
    for n in NODES:
        add_node(cloud.fleet, n)


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    """A real cloudcore with three Ready nodes and a fake rollout clock."""
    for c in _cloud(tmp_path, False):
        c.call(_nodes_and_clock, c)
        yield c


def staged(args: list[str], *, threshold: int = 0, paused: bool = False) -> dict[str, Any]:
    """The agent DaemonSet, updated one node at a time."""
    doc = daemonset(args=args)
    doc["spec"].update({
        "paused": paused,
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1},
                           "failureThreshold": threshold, "autoRollback": True}})
    return doc


def revision(doc: dict[str, Any]) -> str:
    return Template(parse_object(doc).spec.template).revision


def apply(cloud: Cloud, doc: dict[str, Any]) -> None:
    r = CliRunner().invoke(app, ["--server", cloud.url, "apply", "-f", "-"],
                           input=yaml.safe_dump(doc))
    assert r.exit_code == 0, r.output


class Agents:
    """The nodes' agents and cloudcore's tick: each step, every node reports its pod at
    the revision its desired set holds (Running and Ready, or its container waiting in
    CrashLoopBackOff at revision `bad`), then the rollout clock moves 1 s and the fleet
    ticks. `start()` repeats steps in a thread until the `with` block ends."""

    def __init__(self, cloud: Cloud, *, bad: str | None = None, delay: float = 0.0) -> None:
        self.cloud, self.bad, self.delay = cloud, bad, delay
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _step(self) -> None:
        fleet = self.cloud.fleet
        for key, pod in list(fleet.pods.items()):
            node = fleet.bound.get(key)
            if node is None:
                continue  # placed nowhere: no agent to report it
            rev = fleet.desired[node].items[pod_key(*key)][0]["revision"]
            container: dict[str, Any] = {"name": "main", "state": "running", "ready": True}
            if rev == self.bad:
                container = {"name": "main", "state": "waiting", "reason": "CrashLoopBackOff",
                             "restartCount": 3}
            fleet.pod_statuses(node, {pod_key(pod.metadata.namespace, pod.metadata.name): {
                "phase": "Running", "revision": rev, "ready": rev != self.bad,
                "containerStatuses": [container]}})
        fleet.rollouts.clock.t += 1.0  # type: ignore[attr-defined]  # the fixture's Clock
        fleet.expire(0.0)

    def step(self) -> None:
        self.cloud.call(self._step)

    def _run(self) -> None:
        if self.stop.wait(self.delay):
            return
        while not self.stop.is_set():
            self.step()
            self.stop.wait(0.2)

    def __enter__(self) -> Agents:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def rolled_out_v1(cloud: Cloud) -> str:
    """agent v1 created and running everywhere; its revision."""
    v1 = staged(["v1"])
    apply(cloud, v1)
    Agents(cloud).step()
    return revision(v1)


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


# --- get and describe ---------------------------------------------------------------


def test_get_daemonsets_shows_the_rollout(cloud: Cloud) -> None:
    rolled_out_v1(cloud)
    r = fed(cloud, "get", "daemonsets")
    assert r.exit_code == 0, r.output
    assert rows(r.stdout)[0] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "ROLLOUT",
                                 "NODE", "SELECTOR", "AGE"]
    assert rows(r.stdout)[1][:6] == ["agent", "3/3", "3", "3", "Complete", "<all>"]

    v2 = staged(["v2"])
    apply(cloud, v2)  # n1 gets v2 and is not Ready at it yet
    r = fed(cloud, "get", "ds")
    assert rows(r.stdout)[1][:6] == ["agent", "2/3", "1", "2", "Progressing", "<all>"]
    r = fed(cloud, "get", "ds", "-o", "wide")
    header, line = r.stdout.splitlines()
    assert header.split()[-2:] == ["IMAGES", "MESSAGE"]
    assert line.endswith(f"busybox   1 of 3 pods updated to revision {revision(v2)}, 0 failed")

    # Deployments have the same columns (their status's names), and the mixed table
    # still lists both kinds
    apply(cloud, deployment("web", replicas=1))
    r = fed(cloud, "get", "deployments")
    assert rows(r.stdout)[0] == ["NAME", "READY", "REPLICAS", "UP-TO-DATE", "AVAILABLE",
                                 "ROLLOUT", "NODE", "SELECTOR", "AGE"]
    # its replica is not available yet: not Complete (kubectl rollout status would wait)
    assert rows(r.stdout)[1][:6] == ["web", "0/1", "1", "1", "0", "Progressing"]
    r = fed(cloud, "get", "workloads")
    assert r.exit_code == 0, r.output
    assert rows(r.stdout)[0] == ["KIND", "NAME", "READY", "NODE", "SELECTOR", "AGE", "IMAGES"]
    assert [row[:3] for row in rows(r.stdout)[1:]] == [["DaemonSet", "agent", "2/3"],
                                                      ["Deployment", "web", "0/1"]]


def test_describe_daemonset_has_a_rollout_section(cloud: Cloud) -> None:
    r1 = rolled_out_v1(cloud)
    v2 = staged(["v2"], threshold=1)
    apply(cloud, v2)
    r = fed(cloud, "describe", "daemonset", "agent")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    at = lines.index("Rollout:")
    assert lines[at + 1:at + 8] == [
        "  Phase:       Progressing",
        f"  Message:     1 of 3 pods updated to revision {revision(v2)}, 0 failed",
        f"  Revisions:   current {r1}, update {revision(v2)}",
        "  Pods:        1 updated, 2 ready, 2 available of 3 desired (0 failed)",
        "  Strategy:    RollingUpdate: maxUnavailable 1, failureThreshold 1, autoRollback true",
        "  Health Gate: minReadySeconds 0, progressDeadlineSeconds 600",
        "  Paused:      false",
    ]
    assert lines.index("Spec:") > at  # every field still follows

    apply(cloud, daemonset("plain"))
    r = fed(cloud, "describe", "ds", "plain")
    lines = r.stdout.splitlines()
    at = lines.index("Rollout:")
    assert lines[at + 1] == "  Phase:       Progressing"  # no pod of it reported yet
    assert lines[at + 2].startswith("  Message:     0 of 3 pods available at revision ")
    assert "  Strategy:    all pods at once (no updateStrategy)" in lines[at:]
    assert not [x for x in lines if x.startswith("  Health Gate:")]


def test_max_surge_a_deployment_shows_it_and_a_daemonset_is_refused_with_why(
        cloud: Cloud) -> None:
    """Issue 18: a Deployment takes maxSurge (describe shows it); a DaemonSet's apply
    fails naming the field, why, and what to use instead."""
    dep = deployment("web", replicas=2)
    dep["spec"]["strategy"] = {"type": "RollingUpdate",
                               "rollingUpdate": {"maxSurge": "50%", "maxUnavailable": 0}}
    apply(cloud, dep)
    r = fed(cloud, "describe", "deployment", "web")
    assert r.exit_code == 0, r.output
    assert ("  Strategy:    RollingUpdate: maxSurge 50%, maxUnavailable 0, failureThreshold "
            "0, autoRollback true") in r.stdout.splitlines()
    ds = staged(["v1"])
    ds["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] = 1
    r = CliRunner().invoke(app, ["--server", cloud.url, "apply", "-f", "-"],
                           input=yaml.safe_dump(ds))
    assert r.exit_code != 0
    text = " ".join(r.output.split())
    assert "spec.updateStrategy.rollingUpdate.maxSurge" in text
    assert "one pod per node" in text and "rollingUpdate.maxUnavailable" in text
    assert ("default", "agent") not in cloud.fleet.daemonsets  # nothing applied


# --- rollout status -------------------------------------------------------------------


WAITING = re.compile(r'^Waiting for daemonset "agent" rollout: (\d) of 3 pods updated to '
                     r"revision (\w+), 0 failed$")


def test_rollout_status_follows_the_rollout_to_its_end(cloud: Cloud) -> None:
    rolled_out_v1(cloud)
    v2 = staged(["v2"])
    apply(cloud, v2)
    with Agents(cloud, delay=0.5):
        started = time.monotonic()
        r = fed(cloud, "rollout", "status", "ds/agent", "--interval", "0.05", "--timeout", "60s")
    assert r.exit_code == 0, r.output
    assert time.monotonic() - started < 30  # it followed the rollout to its end
    *waiting, done = r.stdout.splitlines()
    assert done == 'daemonset "agent" successfully rolled out'
    matches = [WAITING.match(line) for line in waiting]
    assert all(matches), waiting
    counts = [int(m.group(1)) for m in matches if m]
    assert counts[0] == 1  # the agents start after the first poll
    assert counts == sorted(set(counts))  # a line each time it changes, never twice
    assert {m.group(2) for m in matches if m} == {revision(v2)}
    # done: nothing to wait for
    r = fed(cloud, "rollout", "status", "daemonset", "agent")
    assert (r.exit_code, r.stdout) == (0, 'daemonset "agent" successfully rolled out\n')


def test_rollout_status_fails_with_the_message_when_rolled_back(cloud: Cloud) -> None:
    r1 = rolled_out_v1(cloud)
    v2 = staged(["v2"])
    r2 = revision(v2)
    apply(cloud, v2)
    with Agents(cloud, bad=r2, delay=0.3):
        r = fed(cloud, "rollout", "status", "daemonsets/agent", "--interval", "0.05",
                "--timeout", "20s")
    assert r.exit_code == 1, r.output
    assert r.stdout.splitlines()[0] == (
        f'Waiting for daemonset "agent" rollout: 1 of 3 pods updated to revision {r2}, 0 failed')
    assert r.stderr == (
        f'error: daemonset "agent" rollout rolled back: revision {r2} failed on 1 pod(s); '
        f"back to revision {r1}; apply a fixed template "
        "(see: fedctl events daemonset/default/agent)\n")
    r = fed(cloud, "get", "ds", "agent")
    assert rows(r.stdout)[1][4] == "RolledBack"
    r = fed(cloud, "events", "daemonset/default/agent")
    assert "CrashLoopBackOff" in r.stdout


def test_rollout_status_times_out_while_paused_and_goes_on_after_resume(cloud: Cloud) -> None:
    rolled_out_v1(cloud)
    v2 = staged(["v2"], paused=True)
    apply(cloud, v2)
    r = fed(cloud, "rollout", "status", "ds/agent", "--timeout", "0.5s", "--interval", "0.1")
    assert r.exit_code == 1
    progress = f"paused, 0 of 3 pods updated to revision {revision(v2)}, 0 failed"
    assert r.stdout == (f'Waiting for daemonset "agent" rollout: {progress} '
                        "(resume with: fedctl rollout resume daemonset/agent)\n")
    assert r.stderr == (
        f'error: timed out after 0.5 s waiting for daemonset "agent" rollout: {progress}\n')

    r = fed(cloud, "rollout", "resume", "ds/agent")
    assert (r.exit_code, r.stdout) == (0, "daemonset/agent resumed\n")
    with Agents(cloud):
        r = fed(cloud, "rollout", "status", "ds/agent", "--interval", "0.05", "--timeout", "20")
    assert r.exit_code == 0, r.output
    assert r.stdout.endswith('daemonset "agent" successfully rolled out\n')


def test_a_status_of_an_older_generation_is_not_done() -> None:
    obj: dict[str, Any] = {"metadata": {"name": "agent", "generation": 4}, "status": {
        "observedGeneration": 3, "rollout": {"phase": "RolledBack", "message": "old"}}}
    assert rollout_state(obj) == ("waiting", "cloudcore has not observed generation 4 yet")
    obj["status"]["observedGeneration"] = 4
    assert rollout_state(obj) == ("failed", "rolled back: old")
    del obj["status"]["rollout"]  # cloudcore leaves out the default phase, Complete
    assert rollout_state(obj)[0] == "done"
    assert rollout_state({"metadata": {"generation": 1}})[0] == "waiting"


# --- pause, resume, undo, retry ---------------------------------------------------------


def test_pause_resume_undo_retry(cloud: Cloud) -> None:
    r1 = rolled_out_v1(cloud)
    r = fed(cloud, "rollout", "undo", "ds/agent")
    assert r.exit_code == 1 and r.stdout == ""
    assert "nothing to undo" in r.stderr and r.stderr.startswith("error: ")
    r = fed(cloud, "rollout", "retry", "ds/agent")
    assert r.exit_code == 1 and "no aborted rollout" in r.stderr

    v2 = staged(["v2"])
    r2 = revision(v2)
    apply(cloud, v2)
    r = fed(cloud, "rollout", "pause", "daemonset/agent")
    assert (r.exit_code, r.stdout) == (0, "daemonset/agent paused\n")
    assert cloud.fleet.daemonsets[("default", "agent")].spec.paused is True
    assert rows(fed(cloud, "get", "ds").stdout)[1][4] == "Paused"
    r = fed(cloud, "rollout", "resume", "daemonset", "agent")
    assert (r.exit_code, r.stdout) == (0, "daemonset/agent resumed\n")
    assert cloud.fleet.daemonsets[("default", "agent")].spec.paused is False

    # a crash rolls it back; retry starts the same template again; undo drops it
    bad = Agents(cloud, bad=r2)
    bad.step()
    assert rows(fed(cloud, "get", "ds").stdout)[1][4] == "RolledBack"
    r = fed(cloud, "rollout", "retry", "ds/agent")
    assert (r.exit_code, r.stdout) == (0, "daemonset/agent rollout restarted\n")
    assert rows(fed(cloud, "get", "ds").stdout)[1][4] == "Progressing"
    r = fed(cloud, "rollout", "undo", "ds/agent")
    assert (r.exit_code, r.stdout) == (0, f"daemonset/agent rolled back to revision {r1}\n")
    r = fed(cloud, "rollout", "status", "ds/agent", "--timeout", "0.3s")
    assert r.exit_code == 1 and "available" in r.stderr  # the crashed pod is not back yet
    with Agents(cloud):
        r = fed(cloud, "rollout", "status", "ds/agent", "--interval", "0.05", "--timeout", "10")
    assert r.exit_code == 0, r.output
    assert r.stdout.endswith('daemonset "agent" successfully rolled out\n')


def test_rollout_errors(cloud: Cloud) -> None:
    r = fed(cloud, "rollout", "undo", "ds/nope")
    assert (r.exit_code, r.stderr) == (
        3, 'error: daemonset "nope" in namespace "default" not found\n')
    r = fed(cloud, "rollout", "status", "ds/nope", "-n", "shop")
    assert (r.exit_code, r.stderr) == (
        3, 'error: daemonset "nope" in namespace "shop" not found\n')
    apply(cloud, deployment("web"))
    for argv in (["status", "configmap/web"], ["pause", "agent"], ["undo", "ds/"],
                 ["status", "ds/agent", "--timeout", "soon"], ["resume", "pods/x"]):
        r = fed(cloud, "rollout", *argv)
        assert r.exit_code == 2, (argv, r.output)
        assert r.stderr.startswith("error: ") and r.stdout == ""


def test_a_daemonset_without_status_shows_dashes() -> None:
    import io

    from rich.console import Console

    from fedctl import kinds, render

    out = io.StringIO()
    obj = {"kind": "DaemonSet", "metadata": {"name": "old"}, "spec": {}}
    render.table(Console(file=out, width=200, color_system=None), kinds.DAEMONSET, [obj])
    assert out.getvalue().splitlines()[1].split() == ["old", "-", "-", "-", "-", "<all>", "-"]


def test_a_deployment_rollout_is_followed_paused_and_resumed(cloud: Cloud) -> None:
    def web(args: list[str], *, paused: bool = False) -> dict[str, Any]:
        doc = deployment("web", replicas=3)
        doc["spec"]["template"]["spec"]["containers"][0]["args"] = args
        doc["spec"].update({"paused": paused, "strategy": {
            "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}})
        return doc

    apply(cloud, web(["v1"]))
    Agents(cloud).step()
    apply(cloud, web(["v2"], paused=True))
    r = fed(cloud, "rollout", "status", "deploy/web", "--timeout", "0.3s")
    assert r.exit_code == 1
    assert r.stdout.startswith('Waiting for deployment "web" rollout: paused, 0 of 3 pods')
    assert "fedctl rollout resume deployment/web" in r.stdout
    r = fed(cloud, "rollout", "resume", "deployment/web")
    assert (r.exit_code, r.stdout) == (0, "deployment/web resumed\n")
    with Agents(cloud):
        r = fed(cloud, "rollout", "status", "deploy/web", "--interval", "0.05",
                "--timeout", "20")
    assert r.exit_code == 0, r.output
    assert r.stdout.endswith('deployment "web" successfully rolled out\n')
    assert rows(fed(cloud, "get", "deploy").stdout)[1][:6] == [
        "web", "3/3", "3", "3", "3", "Complete"]
    r = fed(cloud, "describe", "deployment", "web")
    assert "RollingUpdate: maxUnavailable 1" in r.stdout
