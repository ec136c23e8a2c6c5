"""A real testbed fleet for the tests that need one (integration, corpus, console):
mosquitto, registry, cloudcore and agents in network namespaces, real crun."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.fleet import Fleet, FleetSettings

NEEDS = ("mosquitto", "crun", "conmon", "skopeo", "umoci", "docker-registry")


def missing_tools(needs: tuple[str, ...] = NEEDS) -> list[str]:
    return [b for b in needs if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]


@contextlib.contextmanager
def real_fleet(settings: FleetSettings, *, needs: tuple[str, ...] = NEEDS) -> Iterator[Fleet]:
    """The fleet of `settings` started with every node Ready, stopped on exit; skipped
    without root, failed (not skipped) when a system package is missing."""
    if os.geteuid() != 0:
        pytest.skip("the fleet runs real containers and network namespaces: needs root")
    if missing := missing_tools(needs):
        pytest.fail(f"missing system packages: {missing} (make test installs them)")
    f = Fleet(settings)
    f.start()
    try:
        f.wait_nodes_ready(timeout=60)
        yield f
    finally:
        f.stop()
