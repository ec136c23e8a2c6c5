"""Test-wide rules: no test may leave asyncio tasks running (as kopf does); property
tests have no per-example deadline (hypothesis's 200 ms default fails them on a
loaded 2-core machine, which says nothing about the property)."""

from __future__ import annotations

import asyncio

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
