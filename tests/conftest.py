"""Test-wide rules: no test may leave asyncio tasks running (as kopf does); property
tests have no per-example deadline (hypothesis's 200 ms default fails them on a
loaded 2-core machine, which says nothing about the property); pod network namespaces
that tests leave behind are removed at the end of the run, and named with the tests that
left them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("edgefed", deadline=None)
settings.load_profile("edgefed")


@pytest.fixture(autouse=True)
async def _no_leftover_tasks():
    """Fails a test whose tasks outlive it and its fixtures' teardown."""
    yield
    me = asyncio.current_task()
    for _ in range(20):  # give cancelled tasks a moment to finish unwinding
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        if not left:
            return
        await asyncio.sleep(0.05)
    for t in left:
        t.cancel()
    pytest.fail(f"test left {len(left)} task(s) running: {[t.get_name() for t in left]}")


NETNS_DIR = Path("/run/netns")
POD_NETNS_PREFIX = "edgefed-"  # edgecore.podnet.network's default prefix
_left_by: dict[str, str] = {}  # pod netns -> the test at whose end it was still there


def _pod_netns() -> set[str]:
    try:
        return {n for n in os.listdir(NETNS_DIR) if n.startswith(POD_NETNS_PREFIX)}
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def _pod_netns_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Notes the pod network namespaces a test created and did not remove (an agent
    killed with its pods running, its state directory then deleted: nothing owns them
    any more). A module's agent may still use them in its next test, so they are only
    removed when the run ends (`pytest_sessionfinish`)."""
    before = _pod_netns()
    yield
    for n in _pod_netns() - before:
        _left_by.setdefault(n, request.node.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    left = {n: t for n, t in _left_by.items() if (NETNS_DIR / n).exists()}
    if not left:
        return
    for n in left:
        subprocess.run(["ip", "netns", "del", n], check=False, capture_output=True)
    tests = sorted(set(left.values()))
    print(f"\nremoved {len(left)} pod network namespace(s) the tests left behind, "
          f"from: {', '.join(tests)}", file=sys.stderr)
