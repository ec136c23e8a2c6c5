"""edgecore.upgrade: boot.json and slots, and the launcher run for real in a child
process with stand-in releases (a slot holding a tiny `edgecore` package whose `main`
commits, crashes or hangs, as the test asks): a committed slot is exec'd with the
same pid, a committing trial is restarted as the node's agent, a crashing or silent
trial is rolled back with its exit code and stderr, an interrupted trial (second
start) is rolled back at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecore import __version__
from edgecore.upgrade.slots import BootState, Slots, Trial

ROOT = Path(__file__).resolve().parents[2]

# The stand-in agent: writes what it saw to RUNS (one JSON line per start), then acts
# by MODE: "commit" commits a trial (as the real upgrader does) and waits to be stopped;
# "crash" raises at once; "hang" waits forever. A non-trial start just exits 0.
FAKE_MAIN = '''
import json, os, sys, time
from pathlib import Path
from edgecore.upgrade.slots import Slots

def main():
    state_dir = Path(sys.argv[sys.argv.index("--state-dir") + 1])
    trial = os.environ.get("EDGEFED_AGENT_TRIAL") == "1"
    with open(state_dir / "runs.jsonl", "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "version": os.environ.get(
            "EDGEFED_AGENT_VERSION"), "trial": trial, "file": __file__}) + "\\n")
    if not trial:
        return 0
    mode = (state_dir / "mode").read_text().strip()
    if mode == "crash":
        print("starting the broken agent", file=sys.stderr, flush=True)
        raise RuntimeError("broken release: boom at start")
    if mode == "commit":
        slots = Slots(state_dir / "agent", base="0")
        st = slots.read()
        st.active = st.trial.slot
        st.trial = None
        st.status = {"version": os.environ["EDGEFED_AGENT_VERSION"], "phase": "Healthy"}
        slots.write(st)
    while True:
        time.sleep(1)
'''

LAUNCH = ("import os, sys; from pathlib import Path; print('pid', os.getpid(), flush=True); "
          "from edgecore.upgrade.launcher import launch; "
          "launch(Path(sys.argv[1]), ['run', '--state-dir', sys.argv[1]]); "
          "print('base', flush=True)")


def make_slot(slots: Slots, version: str) -> None:
    pkg = slots.path(version) / "edgecore"
    (pkg / "upgrade").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '0'\n")
    (pkg / "__main__.py").write_text(FAKE_MAIN)
    (pkg / "upgrade" / "__init__.py").write_text("")
    (pkg / "upgrade" / "slots.py").write_text((ROOT / "edgecore/upgrade/slots.py").read_text())


def trial(version: str, *, deadline_s: int = 30, starts: int = 0) -> Trial:
    return Trial(version=version, slot=version, deadline_s=deadline_s,
                 deadline_ts=time.time() + deadline_s, upgrade="agent-" + version,
                 previous=__version__, starts=starts)


def launch(state: Path, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str],
                                                       list[dict[str, object]]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFED_")}
    res = subprocess.run([sys.executable, "-c", LAUNCH, str(state)], capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT, env=env, check=False)
    runs_file = state / "runs.jsonl"
    runs = ([json.loads(line) for line in runs_file.read_text().splitlines()]
            if runs_file.exists() else [])
    return res, runs


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


def slots_of(state: Path) -> Slots:
    return Slots(state / "agent", base=__version__)


# -- slots and boot.json ----------------------------------------------------------------

def test_boot_state_round_trip_and_corrupt_file(state: Path) -> None:
    slots = slots_of(state)
    assert slots.read() == BootState(base=__version__)
    st = BootState(base=__version__, active="2.0", trial=trial("3.0"),
                   status={"version": "3.0", "phase": "Restarting"})
    st.refuse("1.5", "agent-1.5")
    slots.write(st)
    back = slots.read()
    assert back == st and back.is_refused("1.5", "agent-1.5")
    assert not back.is_refused("1.5", "agent-1.5-again")
    assert back.running() == "2.0"
    slots.boot_file.write_text("{not json")
    assert slots.read() == BootState(base=__version__)
    assert (slots.dir / "boot.json.corrupt").read_text() == "{not json"


def test_install_replaces_and_prune_keeps_what_it_is_told(state: Path) -> None:
    slots = slots_of(state)
    for v in ("1", "2", "3"):
        staged = slots.staging()
        (staged / "edgecore").mkdir(parents=True)
        (staged / "edgecore" / "__init__.py").write_text(f"# {v}\n")
        slots.install(staged, v)
    staged = slots.staging()
    (staged / "edgecore").mkdir(parents=True)
    (staged / "edgecore" / "__init__.py").write_text("# 3 again\n")
    slots.install(staged, "3")
    assert (slots.path("3") / "edgecore/__init__.py").read_text() == "# 3 again\n"
    assert sorted(slots.versions()) == ["1", "2", "3"]
    assert slots.prune({"2", "3"}) == ["1"]
    assert sorted(slots.versions()) == ["2", "3"] and slots.has("3") and not slots.has("1")
    assert not [p for p in slots.slots.iterdir() if p.name.startswith(".")]


# -- the launcher -----------------------------------------------------------------------

def test_without_boot_state_the_installed_agent_runs_in_process(state: Path) -> None:
    res, runs = launch(state)
    assert res.returncode == 0, res.stderr
    assert "base" in res.stdout and runs == []


def test_a_committed_slot_is_execd_with_the_same_pid(state: Path) -> None:
    slots = slots_of(state)
    make_slot(slots, "2.0")
    slots.write(BootState(base=__version__, active="2.0"))
    res, runs = launch(state)
    assert res.returncode == 0, res.stderr
    pid = int(res.stdout.split()[1])
    assert "base" not in res.stdout
    assert runs == [{"pid": pid, "version": "2.0", "trial": False,
                     "file": str(slots.path("2.0") / "edgecore/__main__.py")}]


def test_a_trial_that_commits_becomes_the_nodes_agent(state: Path) -> None:
    slots = slots_of(state)
    make_slot(slots, "2.0")
    slots.write(BootState(base=__version__, trial=trial("2.0")))
    (state / "mode").write_text("commit")
    res, runs = launch(state)
    assert res.returncode == 0, res.stderr
    pid = int(res.stdout.split()[1])
    # the trial ran as a child, then the committed release replaced the launcher
    assert [(r["version"], r["trial"]) for r in runs] == [("2.0", True), ("2.0", False)]
    assert runs[0]["pid"] != pid and runs[1]["pid"] == pid
    st = slots.read()
    assert st.active == "2.0" and st.trial is None and st.status == {
        "version": "2.0", "phase": "Healthy"}


def test_a_trial_that_crashes_is_rolled_back_with_its_exit_code_and_stderr(
        state: Path) -> None:
    slots = slots_of(state)
    make_slot(slots, "2.0")
    slots.write(BootState(base=__version__, trial=trial("2.0")))
    (state / "mode").write_text("crash")
    res, runs = launch(state)
    assert res.returncode == 0, res.stderr
    assert "base" in res.stdout  # the previous agent (the installed one) runs again
    assert [(r["version"], r["trial"]) for r in runs] == [("2.0", True)]
    st = slots.read()
    assert st.trial is None and st.active is None
    assert st.status is not None and st.status["phase"] == "RolledBack"
    assert st.status["previous"] == __version__ and st.status["upgrade"] == "agent-2.0"
    msg = st.status["message"]
    assert "exited with code 1" in msg and "boom at start" in msg, msg
    assert st.is_refused("2.0", "agent-2.0")
    assert "boom at start" in res.stderr  # the trial's stderr is passed through


def test_a_trial_that_never_commits_is_rolled_back_at_its_deadline(state: Path) -> None:
    slots = slots_of(state)
    make_slot(slots, "1.0")
    make_slot(slots, "2.0")
    slots.write(BootState(base=__version__, active="1.0", trial=trial("2.0", deadline_s=2)))
    (state / "mode").write_text("hang")
    res, runs = launch(state)
    assert res.returncode == 0, res.stderr
    # rolled back to the previous slot, which is exec'd
    assert [(r["version"], r["trial"]) for r in runs] == [("2.0", True), ("1.0", False)]
    st = slots.read()
    assert st.active == "1.0" and st.trial is None
    assert st.status is not None and st.status["phase"] == "RolledBack"
    assert st.status["message"].startswith("no commit in 2 s")


def test_a_trial_started_before_is_rolled_back_without_running(state: Path) -> None:
    slots = slots_of(state)
    make_slot(slots, "2.0")
    slots.write(BootState(base=__version__, trial=trial("2.0", starts=1)))
    (state / "mode").write_text("commit")
    res, runs = launch(state)
    assert res.returncode == 0, res.stderr
    assert runs == [] and "base" in res.stdout
    st = slots.read()
    assert st.status is not None and st.status["phase"] == "RolledBack"
    assert "never committed" in st.status["message"]


def test_a_missing_active_slot_falls_back_to_the_installed_agent(state: Path) -> None:
    slots = slots_of(state)
    slots.write(BootState(base=__version__, active="9.9"))
    res, _ = launch(state)
    assert res.returncode == 0 and "base" in res.stdout, res.stderr
    assert slots.read().active is None


def test_an_installed_package_of_another_version_wins_over_the_slots(state: Path) -> None:
    slots = slots_of(state)
    make_slot(slots, "2.0")
    older = Slots(state / "agent", base="0.0.1-before-apt-upgrade")
    older.write(BootState(base="0.0.1-before-apt-upgrade", active="2.0"))
    res, runs = launch(state)
    assert res.returncode == 0 and "base" in res.stdout, res.stderr
    assert runs == []
    assert slots.read().active is None and slots.recorded_base() == __version__


def _start_launcher(state: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFED_")}
    return subprocess.Popen([sys.executable, "-c", LAUNCH, str(state)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trial_pid(state: Path, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    runs = state / "runs.jsonl"
    while time.monotonic() < deadline:
        if runs.exists() and runs.read_text().strip():
            return int(json.loads(runs.read_text().splitlines()[0])["pid"])
        time.sleep(0.05)
    raise AssertionError("the trial never started")


def _gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_during_a_trial_stops_it_and_rolls_back(state: Path) -> None:
    slots = slots_of(state)
    make_slot(slots, "2.0")
    slots.write(BootState(base=__version__, trial=trial("2.0")))
    (state / "mode").write_text("hang")
    proc = _start_launcher(state)
    child = _trial_pid(state)
    proc.terminate()  # as systemd stops the agent: SIGTERM to the main process
    proc.communicate(timeout=30)
    assert _gone(child)
    st = slots.read()
    assert st.trial is None and st.status is not None and st.status["phase"] == "RolledBack"
    assert "stopped (SIGTERM) during its trial" in st.status["message"]


def test_kill_9_of_the_launcher_kills_the_trial_and_the_next_start_rolls_back(
        state: Path) -> None:
    slots = slots_of(state)
    make_slot(slots, "2.0")
    slots.write(BootState(base=__version__, trial=trial("2.0")))
    (state / "mode").write_text("hang")
    proc = _start_launcher(state)
    child = _trial_pid(state)
    proc.kill()  # as the fault tests kill an agent
    proc.communicate(timeout=30)
    assert _gone(child)  # the trial dies with its launcher: no agent left running
    res, runs = launch(state)
    assert "base" in res.stdout and len(runs) == 1  # not started a second time
    st = slots.read()
    assert st.status is not None and st.status["phase"] == "RolledBack"
    assert "never committed" in st.status["message"]


def test_a_trial_of_the_installed_agent_runs_it_from_the_installed_package(
        state: Path) -> None:
    # Back to the installed agent (slot None), which here refuses to start: this
    # state dir has no config and no --name (exit 2). Rolled back to the slot.
    slots = slots_of(state)
    make_slot(slots, "1.0")
    t = trial(__version__)
    t.slot, t.previous = None, "1.0"
    slots.write(BootState(base=__version__, active="1.0", trial=t))
    res, runs = launch(state)
    assert res.returncode == 0, res.stderr
    assert [(r["version"], r["trial"]) for r in runs] == [("1.0", False)]
    st = slots.read()
    assert st.active == "1.0" and st.status is not None
    assert st.status["phase"] == "RolledBack"
    assert "exited with code 2" in st.status["message"]
    assert "invalid setting node" in st.status["message"], st.status["message"]
