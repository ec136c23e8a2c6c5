"""fedctl as a person sees it: in a real terminal (tmux), and the same command piped.

A real cloudcore API serves a few nodes and pods (in a thread of this process; no
broker is needed for reads); `fedctl` runs as its own process inside a detached tmux
session of a fixed size, and `tmux capture-pane -e` returns the screen with its
colour escapes.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cloudcore"))
from cloudcore_fakes import add_node
from e2e_cloud import Cloud, serve_cloud

from shared.models import parse_object

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

FEDCTL = str(Path(sys.executable).with_name("fedctl"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    yield from serve_cloud(tmp_path)


class Tmux:
    """One private tmux server (own socket), killed at the end."""

    def __init__(self, tmp: Path) -> None:
        self.sock = str(tmp / "tmux.sock")
        self.n = 0
        self.history: list[str] = []  # every distinct screen (escapes removed) of the last run

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.sock, *args], check=True,
                              capture_output=True, text=True, timeout=10).stdout

    def run(self, command: str, *, env: dict[str, str], until: str,
            timeout: float = 20.0, width: int = 120, height: int = 30) -> str:
        """Run `command` in a new 120x30 window; the screen (with escapes) once
        `until` is on it (a marker printed after the command exits)."""
        self.n += 1
        name = f"t{self.n}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        shell = f"export {exports}; {command}; echo {until}; sleep 60"
        self._tmux("new-session", "-d", "-s", name, "-x", str(width), "-y", str(height),
                   "sh", "-c", shell)
        deadline = time.monotonic() + timeout
        screen = ""
        self.history = []
        while time.monotonic() < deadline:
            screen = self._tmux("capture-pane", "-p", "-e", "-t", name)
            plain = ANSI.sub("", screen)
            if not self.history or self.history[-1] != plain:
                self.history.append(plain)
            if until in plain:
                return screen
            time.sleep(0.05)
        raise AssertionError(f"{until!r} never appeared; screen:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True,
                       timeout=10, check=False)


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.close()


def _env(cloud: Cloud, tmp_path: Path) -> dict[str, str]:
    return {"FEDCTL_SERVER": cloud.url, "TERM": "xterm-256color", "COLUMNS": "120",
            "LINES": "30", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg"),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _fleet(cloud: Cloud) -> None:
    for n in ("edge-1", "edge-2", "edge-3"):
        cloud.call(add_node, cloud.fleet, n)
    cloud.call(cloud.fleet.mark_not_ready, "edge-3", reason="NodeStatusUnknown",
               message="no report for 30s")
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"metadata": {"labels": {"app": "web"}},
                                 "spec": {"containers": [{"name": "w", "image": "nginx"}]}}}}
    cloud.call(cloud.fleet.apply, [parse_object(dep)])


def test_get_nodes_on_a_terminal_and_in_a_pipe(cloud: Cloud, tmux: Tmux,
                                               tmp_path: Path) -> None:
    _fleet(cloud)
    env = _env(cloud, tmp_path)
    screen = tmux.run(f"{FEDCTL} get nodes", env=env, until="@@DONE@@")
    plain = ANSI.sub("", screen)
    lines = [ln for ln in plain.splitlines() if ln.strip()]
    # what a person reads: a header and one aligned row per node, nothing else
    assert re.match(r"^NAME\s+STATUS\s+", lines[0]), plain
    rows = {ln.split()[0]: ln.split()[1] for ln in lines[1:4]}
    assert rows == {"edge-1": "Ready", "edge-2": "Ready", "edge-3": "NotReady"}, plain
    assert lines[4] == "@@DONE@@"
    header_col = lines[0].index("STATUS")
    assert all(ln.index(ln.split()[1]) == header_col for ln in lines[1:4])  # aligned
    assert max(len(ln) for ln in lines) <= 120
    # ... with colours: a bold header, Ready and NotReady in different colours
    assert "\x1b[1m" in screen.splitlines()[0], repr(screen.splitlines()[0])
    ready_line = next(ln for ln in screen.splitlines() if "edge-1" in ln)
    notready_line = next(ln for ln in screen.splitlines() if "edge-3" in ln)
    ready_sgr = re.findall(r"\x1b\[([0-9;]*)mReady", ready_line)
    notready_sgr = re.findall(r"\x1b\[([0-9;]*)mNotReady", notready_line)
    assert ready_sgr and notready_sgr and ready_sgr != notready_sgr, (ready_line, notready_line)

    # the same command in a pipe: the same words, no escape at all
    piped = tmux.run(f"{FEDCTL} get nodes | cat", env=env, until="@@PIPED@@")
    body = piped.split("@@PIPED@@")[0]
    assert "\x1b[" not in ANSI.sub("", body)  # no stray escapes
    assert not re.search(r"\x1b\[[0-9;]*[1-9][0-9;]*m", body), repr(body)  # no colours/bold
    plain_piped = [ln.rstrip() for ln in body.splitlines() if ln.strip()]
    assert [ln.split()[:2] for ln in plain_piped] == [ln.split()[:2] for ln in lines[:4]]
    # and a pipe from this process, byte-exact: never an escape
    out = subprocess.run([FEDCTL, "get", "nodes"], env=env, capture_output=True, text=True,
                         timeout=20, check=True).stdout
    assert "\x1b" not in out and out.splitlines()[0].split()[:2] == ["NAME", "STATUS"]


def test_get_pods_and_wait_progress_on_a_terminal(cloud: Cloud, tmux: Tmux,
                                                   tmp_path: Path) -> None:
    _fleet(cloud)
    env = _env(cloud, tmp_path)
    screen = ANSI.sub("", tmux.run(f"{FEDCTL} get pods", env=env, until="@@DONE@@"))
    assert re.search(r"^NAME\s+", screen, re.M) and "web-0" in screen and "web-1" in screen
    # wait shows a progress line on the terminal (stderr) while it polls, then gives up
    # (the pods stay Pending: no agent runs them)
    screen = tmux.run(f"{FEDCTL} wait pods --for Running --timeout 3s -l app=web --interval "
                      "0.2; echo rc=$?", env=env, until="@@WAITED@@", timeout=30)
    plain = ANSI.sub("", screen)
    assert "rc=1" in plain and "Traceback" not in plain, plain
    bars = [s for s in tmux.history if "waiting for" in s and "━" in s]
    assert bars, tmux.history
    assert re.search(r"waiting for .*━.*0/2", bars[-1]), bars[-1]
    assert "━" not in plain  # transient: the bar is gone once wait returns
    assert "web-0" in plain  # the summary names the stragglers
