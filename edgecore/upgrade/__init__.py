"""edgecore.upgrade: the agent upgrades itself, A/B, with rollback (proposal 0006).

- `slots`: the release slots under `STATE_DIR/agent/` and `boot.json` (what runs
  next, what is on trial, the `agentUpgrade` status, the refused requests).
- `launcher`: the first thing `edgecore run` does, always from the installed package
  (a release never replaces it): runs the committed slot, or a trial under its eye.
- `upgrader`: the agent's task that follows the desired `agent/-/release` entry:
  fetch through the image store, verify (`shared.release`), install into a slot,
  restart into it; and, in a trial, commit once healthy.

This module holds only what both need and what the agent's status reads (the
environment names and the running version); it imports nothing heavy, because the
launcher runs before the agent is imported.
"""

from __future__ import annotations

import os

from edgecore import __version__

ENV_LAUNCHED = "EDGEFED_LAUNCHED"
"""Set by the launcher for the agent process it starts: that process must not launch."""
ENV_VERSION = "EDGEFED_AGENT_VERSION"
"""The release version the process runs (its slot's name); absent: the installed base."""
ENV_TRIAL = "EDGEFED_AGENT_TRIAL"
"""'1' when the process is a trial: it must commit itself before its deadline."""
ENV_LAUNCHER = "EDGEFED_LAUNCHER_ARGV"
"""JSON argv that starts the launcher again (how a running agent restarts into a trial)."""
ENV_ALL = (ENV_LAUNCHED, ENV_VERSION, ENV_TRIAL, ENV_LAUNCHER)


class RestartRequested(Exception):
    """Raised by the upgrader to end the agent so that `edgecore run` starts the launcher
    again (a trial is prepared in boot.json). The agent's TaskGroup stops every other
    task first, so the cache is closed; containers keep running."""


def running_version() -> str:
    """The version this agent runs and reports as `agentVersion`: its release slot's,
    or the installed package's."""
    return os.environ.get(ENV_VERSION) or __version__


def launched() -> bool:
    """Whether the launcher started this process (then it must not launch again)."""
    return os.environ.get(ENV_LAUNCHED) == "1"


def on_trial() -> bool:
    return os.environ.get(ENV_TRIAL) == "1"
