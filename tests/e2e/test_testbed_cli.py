"""`testbed` as a new user meets it: every command and option explains itself, a second
`testbed up` says what it takes over from the first (and `--fresh` starts clean), the
demo starts clean in a directory of its own, and a demo that does not converge names
the objects that did not and their state, counting only what the demo applied."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

import pytest

from testbed.__main__ import (
    _prepare_workdir,
    build_parser,
    example_documents,
    stragglers,
    workload_refs,
)
from testbed.fleet import Agent, Fleet, FleetSettings, clear_workdir, earlier_run


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    subs = _subparsers(parser)
    assert set(subs) == {"up", "demo", "broker", "bench", "chaos"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    top = capsys.readouterr().out
    for name, sub in subs.items():
        assert f"    {name} " in top  # listed with its summary
        assert sub.description and len(sub.description) > 40, name
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"testbed {name} {action.option_strings or action.dest}"
    assert "--fresh" in subs["up"].format_help() and "--reuse" in subs["demo"].format_help()
    assert "default: var/demo" in subs["demo"].format_help()


def _earlier_fleet(workdir: Path) -> None:
    (workdir / "cloud" / "pki").mkdir(parents=True)
    (workdir / "cloud" / "data.mdb").write_bytes(b"x")
    for n in ("edge-1", "edge-2"):
        (workdir / "nodes" / n / "cache").mkdir(parents=True)
    (workdir / "fedctl.yaml").write_text("{}")


def test_up_says_what_it_reuses_and_fresh_starts_clean(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "testbed"
    assert earlier_run(work) == []
    _prepare_workdir(work, fresh=False, what="run", fresh_flag="--fresh")
    assert capsys.readouterr().out == ""  # nothing to reuse, nothing said
    _earlier_fleet(work)
    assert earlier_run(work) == [
        "the cloud's state (workloads and other objects, nodes, tokens, CA)",
        "the state of agents edge-1, edge-2 (joins, images, pods)"]
    _prepare_workdir(work, fresh=False, what="run", fresh_flag="--fresh")
    out = capsys.readouterr().out
    assert out.startswith(f"reusing {work} from an earlier run: the cloud's state")
    assert "edge-1, edge-2" in out and out.rstrip().endswith("--fresh starts clean.")
    assert work.exists()
    _prepare_workdir(work, fresh=True, what="run", fresh_flag="--fresh")
    assert capsys.readouterr().out == f"starting clean: removed {work} (an earlier run's state)\n"
    assert not work.exists()


def test_clear_workdir_refuses_a_directory_that_is_not_a_fleets(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(RuntimeError, match="does not look like a testbed work directory"):
        clear_workdir(tmp_path)
    assert (tmp_path / "thesis.tex").exists()


def test_demo_defaults_to_its_own_directory_started_clean() -> None:
    args = build_parser().parse_args(["demo"])
    assert args.workdir == "var/demo" and args.reuse is False
    assert build_parser().parse_args(["up"]).workdir == "var/testbed"


def _ds(name: str, ns: str = "default", *, phase: str = "Complete", msg: str = "",
        gen: int = 1, observed: int = 1) -> dict[str, Any]:
    return {"kind": "DaemonSet", "metadata": {"name": name, "namespace": ns, "generation": gen},
            "status": {"observedGeneration": observed,
                       "rollout": {"phase": phase, "message": msg}}}


def _pod(name: str, owner: str, node: str | None, *, phase: str = "Running",
         ready: bool | None = True, reason: str | None = None,
         message: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "ready": ready}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return {"metadata": {"name": name, "namespace": "default",
                         "annotations": {"edgefed.io/owner": owner}},
            "spec": {"nodeName": node}, "status": status}


def test_stragglers_name_what_did_not_converge_and_only_what_the_demo_applied() -> None:
    refs = workload_refs(example_documents("reg:5000/busybox:latest"))
    assert refs == ["DaemonSet/default/web-canary", "Deployment/default/counter",
                    "DaemonSet/default/web"]
    nodes = {"edge-1", "edge-2"}
    workloads: dict[str, dict[str, Any] | None] = {
        "DaemonSet/default/web": _ds("web"),
        "DaemonSet/default/web-canary": _ds("web-canary", phase="Progressing",
                                            msg="1/2 nodes updated"),
        "Deployment/default/counter": None}
    pods = [
        _pod("web-edge-1", "DaemonSet/default/web", "edge-1"),
        _pod("web-edge-2", "DaemonSet/default/web", "edge-2", phase="Pending",
             reason="ImagePullBackOff", message="manifest unknown"),
        _pod("web-canary-edge-1", "DaemonSet/default/web-canary", "edge-1", ready=False),
        # a leftover of an earlier run: another namespace's DaemonSet, and a node that
        # is not part of this run; neither is the demo's to wait for
        _pod("agent-edge-1", "DaemonSet/kube-system/agent", "edge-1", phase="Pending"),
        _pod("web-edge-3", "DaemonSet/default/web", "edge-3", phase="Unknown"),
    ]
    assert stragglers(workloads, pods, want=4, nodes=nodes) == [
        "daemonset/default/web-canary: rollout Progressing: 1/2 nodes updated",
        "deployment/default/counter: not found",
        "pod/default/web-canary-edge-1 on edge-1: Running (not Ready)",
        "pod/default/web-edge-2 on edge-2: Pending: ImagePullBackOff: manifest unknown",
        "1 of 4 pods Running and Ready (3 exist)",
    ]
    converged = {"DaemonSet/default/web": _ds("web")}
    ok = [_pod(f"web-{n}", "DaemonSet/default/web", n) for n in sorted(nodes)]
    assert stragglers(converged, ok + pods[3:], want=2, nodes=nodes) == []
    behind = {"DaemonSet/default/web": _ds("web", gen=2, observed=1)}
    assert stragglers(behind, ok, want=2, nodes=nodes) == [
        "daemonset/default/web: generation 2 not observed yet (at 1)"]


def test_nodes_that_do_not_get_ready_are_named_with_their_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = Fleet(FleetSettings(nodes=0, workdir=tmp_path, use_netns=False))
    for name in ("edge-1", "edge-2", "edge-3"):
        fleet.agents.append(Agent(name=name, state_dir=tmp_path, proc=cast(Any, None),
                                  host=None, address="127.0.0.1"))
    monkeypatch.setattr(fleet, "nodes", lambda: [
        {"metadata": {"name": "edge-1"}, "status": {"ready": "Ready"}},
        {"metadata": {"name": "edge-2"},
         "status": {"ready": "NotReady", "reason": "HeartbeatMissed"}}])
    with pytest.raises(TimeoutError) as exc:
        fleet.wait_nodes_ready(timeout=0.3)
    assert str(exc.value) == ("nodes not Ready after 0.3 s: edge-2 (NotReady: "
                              "HeartbeatMissed), edge-3 (not registered)")
