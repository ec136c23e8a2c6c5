"""The launcher: the first thing `edgecore run` does, before the agent is imported.

It always runs from the installed package, never from a release slot, so a release
can never break the thing that brings the previous one back. It reads
`STATE_DIR/agent/boot.json` (`edgecore.upgrade.slots`) and:

- no boot.json, or nothing active and no trial: returns, and the installed agent runs
  in this very process (the common case costs one `stat`);
- a committed slot: `exec`s the agent from that slot. The process id stays the same,
  so systemd, the testbed and anything that signals or measures the agent's pid see
  the agent itself, as before upgrades existed;
- a trial: starts the trial agent as a CHILD process (it dies with the launcher,
  PR_SET_PDEATHSIG), copies its stderr through while keeping the last lines, forwards
  SIGTERM/SIGINT, and watches `boot.json`. When the trial commits (it sets `active`
  and clears `trial`), the launcher stops it (SIGTERM: containers keep running) and
  `exec`s the committed agent, so the node runs one agent process again. When the
  trial exits first, or its deadline passes, the launcher writes the rollback
  (status `RolledBack` with the exit code and the last stderr lines, or "no commit in
  N s"; the request goes on the refused list) and `exec`s the previous agent;
- a trial that was already started once and never came back to its launcher (power
  cut, launcher killed: Mender's boot counter) is rolled back at once;
- an installed package of another version than the one that wrote boot.json (an
  upgrade by the package manager) wins: the slots are no longer run.

Why a child during the trial and `exec` otherwise: only a parent learns a crashed
child's exit code and stderr without an outside supervisor (the testbed has none),
and only `exec` keeps the agent's pid and RSS what they were. A trial lasts seconds.

Pods are untouched throughout: containers live under conmon and every agent start
adopts them.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import NoReturn

import edgecore
from edgecore import __version__
from edgecore.upgrade import (
    ENV_ALL,
    ENV_LAUNCHED,
    ENV_LAUNCHER,
    ENV_TRIAL,
    ENV_VERSION,
)
from edgecore.upgrade.slots import BootState, Slots, Trial

log = logging.getLogger("edgecore.upgrade.launcher")

STDERR_TAIL = 15
"""Lines of a failed trial's stderr kept in its RolledBack message."""
STOP_GRACE_S = 20.0
"""Seconds a trial agent has to stop after SIGTERM before SIGKILL."""
POLL_S = 0.25
MESSAGE_BUDGET = 1200
"""Characters of a failed trial's stderr in its RolledBack message (the cloud keeps the
first 2000 of a message)."""

# Run an agent from a directory holding edgecore/ and shared/ (a slot, or the
# installed package's root): that directory first on sys.path, then the agent's CLI.
# argv: python -c _BOOT edgecore DIR run ...; the literal "edgecore" argument keeps the
# process findable as the agent (ps, pgrep -f, testbed.bench_edge) and is dropped.
_BOOT = ("import sys; del sys.argv[1]; sys.path.insert(0, sys.argv.pop(1)); "
         "sys.argv[0] = 'edgecore'; from edgecore.__main__ import main; sys.exit(main())")


def agent_dir(state_dir: Path) -> Path:
    return state_dir / "agent"


def launcher_argv() -> list[str]:
    """The command that starts the launcher again: the one this chain began with."""
    saved = os.environ.get(ENV_LAUNCHER)
    if saved:
        argv: list[str] = json.loads(saved)
        return argv
    return [sys.executable, *sys.orig_argv[1:]]


def _base_root() -> str:
    """The directory holding the installed `edgecore` package."""
    return str(Path(edgecore.__file__).resolve().parents[1])


def agent_command(slots: Slots, slot: str | None, args: Sequence[str]) -> list[str]:
    """argv that runs the agent of `slot` (None: the installed package) with `args`."""
    root = str(slots.path(slot)) if slot is not None else _base_root()
    return [sys.executable, "-c", _BOOT, "edgecore", root, *args]


def agent_env(version: str, *, trial: bool, launcher: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_ALL}
    env[ENV_LAUNCHED] = "1"
    env[ENV_VERSION] = version
    env[ENV_LAUNCHER] = json.dumps(launcher)
    if trial:
        env[ENV_TRIAL] = "1"
    return env


def restart_into_launcher() -> NoReturn:
    """Replace this (agent) process by the launcher: how a prepared trial starts."""
    argv = launcher_argv()
    env = {k: v for k, v in os.environ.items() if k not in ENV_ALL}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


def launch(state_dir: Path, args: Sequence[str]) -> None:
    """Run what boot.json says; returns only when the installed agent should run here.

    `args` are this command's arguments (`run --state-dir ...`), passed on unchanged.
    """
    slots = Slots(agent_dir(state_dir), base=__version__)
    if not slots.boot_file.exists():
        return
    recorded = slots.recorded_base()
    state = slots.read()
    if recorded is not None and recorded != __version__ and (state.active or state.trial):
        # Installed by hand (package manager) since: that installation wins over releases.
        log.warning("the installed agent changed from %s to %s since agent release %s was "
                    "committed: running the installed one", recorded, __version__,
                    state.active or (state.trial.version if state.trial else ""))
        state.active = None
        state.trial = None
        slots.write(state)
    launcher = launcher_argv()
    trial = state.trial
    if trial is not None:
        if trial.starts >= 1:
            _roll_back(slots, state, trial,
                       f"the new agent {trial.version} was started and never committed "
                       "(the device or its launcher stopped during the trial)")
        elif time.time() > trial.deadline_ts:
            _roll_back(slots, state, trial,
                       f"no commit in {trial.deadline_s} s (deadline passed before it ran)")
        else:
            trial.starts += 1
            slots.write(state)
            state = _supervise(slots, trial, args, launcher)
    _run_committed(slots, state, args, launcher)


def _run_committed(slots: Slots, state: BootState, args: Sequence[str],
                   launcher: list[str]) -> None:
    """exec the active slot's agent; return if the installed one should run here."""
    if state.active is None:
        return
    if not slots.has(state.active):
        log.error("the active agent release %s has no slot (%s); running the installed "
                  "agent %s", state.active, slots.path(state.active), state.base)
        state.active = None
        slots.write(state)
        return
    log.info("starting agent release %s from %s", state.active, slots.path(state.active))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, agent_command(slots, state.active, args),
              agent_env(state.active, trial=False, launcher=launcher))


def _roll_back(slots: Slots, state: BootState, trial: Trial, reason: str) -> None:
    log.error("agent upgrade to %s rolled back to %s: %s", trial.version, trial.previous,
              reason)
    state.trial = None
    state.status = {"version": trial.version, "phase": "RolledBack", "message": reason,
                    "previous": trial.previous, "upgrade": trial.upgrade}
    state.refuse(trial.version, trial.upgrade)
    slots.write(state)


def _set_pdeathsig() -> None:
    """In the child: die with the launcher (so killing the agent's pid kills the agent)."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _supervise(slots: Slots, trial: Trial, args: Sequence[str],
               launcher: list[str]) -> BootState:
    """Run the trial as a child until it commits, exits, or its deadline passes; returns
    the boot state to go on with (committed, or rolled back). Exits the process with
    the child's code if the launcher was asked to stop."""
    log.info("starting agent release %s on trial (%d s to commit; previous %s)",
             trial.version, trial.deadline_s, trial.previous)
    child = subprocess.Popen(
        agent_command(slots, trial.slot, args),
        env=agent_env(trial.version, trial=True, launcher=launcher),
        stderr=subprocess.PIPE, preexec_fn=_set_pdeathsig)  # noqa: PLW1509 (no threads yet)
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    copier = threading.Thread(target=_copy_stderr, args=(child, tail), daemon=True,
                              name="trial-stderr")
    copier.start()
    stop: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        stop.append(signum)
        child.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        reason = _watch(slots, trial, child, stop)
        if reason is None:  # committed
            _stop(child)
            copier.join(2.0)
            state = slots.read()
            log.info("agent release %s committed; restarting it as the node's agent",
                     trial.version)
            return state
        copier.join(2.0)
        state = slots.read()
        if state.trial is None:  # committed in the last instant before exiting
            return state
        reason += _stderr_summary(list(tail))
        _roll_back(slots, state, trial, reason)
        if stop:
            sys.exit(child.returncode if child.returncode and child.returncode > 0 else 0)
        return state
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _watch(slots: Slots, trial: Trial, child: subprocess.Popen[bytes],
           stop: list[int]) -> str | None:
    """None once the trial committed; else why it is abandoned."""
    while True:
        rc = child.poll()
        if slots.read().trial is None:
            return None
        if rc is not None:
            if stop:
                return (f"the agent was stopped ({signal.Signals(stop[0]).name}) during "
                        "its trial, before it committed")
            how = (f"was killed by {signal.Signals(-rc).name}" if rc < 0
                   else f"exited with code {rc}")
            return f"the new agent {trial.version} {how} before it committed"
        if time.time() > trial.deadline_ts:
            _stop(child)
            if slots.read().trial is None:
                return None
            return f"no commit in {trial.deadline_s} s"
        time.sleep(POLL_S)


def _stderr_summary(lines: list[str], budget: int = MESSAGE_BUDGET) -> str:
    """': LAST LINE (stderr: earlier | lines)': the last line (a traceback's exception)
    first, since a status message may be cut at its end; then as many earlier lines as
    fit in `budget` characters."""
    if not lines:
        return ""
    out = f": {lines[-1]}"
    earlier: list[str] = []
    for line in reversed(lines[:-1]):
        if len(out) + sum(len(e) + 3 for e in earlier) + len(line) + 14 > budget:
            break
        earlier.insert(0, line)
    return out + (f" (stderr: {' | '.join(earlier)})" if earlier else "")


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _copy_stderr(child: subprocess.Popen[bytes], tail: collections.deque[str]) -> None:
    """Pass the child's stderr through to ours, keeping the last lines."""
    assert child.stderr is not None
    out = sys.stderr.buffer
    for line in child.stderr:
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):
            pass
        text = line.decode(errors="replace").rstrip()
        if text:
            tail.append(text[:300])
