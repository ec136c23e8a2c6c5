"""Concurrent pulls of one image share one copy (ImageStore with a stand-in skopeo)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from edgecore.runtime.errors import ImagePullError
from edgecore.runtime.images import ImageStore


def fake_skopeo(tmp_path: Path, *, seconds: float, hang: bool = False) -> tuple[Path, Path]:
    """A skopeo that logs its argv, waits, then fails as an unreachable registry does
    (`hang`: it only waits, as one process, so killing it ends it)."""
    calls = tmp_path / "calls"
    script = tmp_path / "skopeo"
    tail = (f"exec sleep {seconds}\n" if hang else f"sleep {seconds}\n"
            "echo 'pinging container registry: connection timed out' >&2\nexit 1\n")
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n{tail}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script, calls


async def test_pods_wanting_one_image_share_one_copy_and_its_failure(tmp_path: Path) -> None:
    script, calls = fake_skopeo(tmp_path, seconds=0.3)
    store = ImageStore(tmp_path / "rt", skopeo=str(script), min_free_bytes=0)
    results = await asyncio.gather(
        *(store.pull("gone.example:5000/busybox:1") for _ in range(3)),
        store.pull("gone.example:5000/busybox:1", policy="Always"),
        return_exceptions=True)
    assert all(isinstance(r, ImagePullError) for r in results), results
    assert "connection timed out" in str(results[0])
    assert len(calls.read_text().splitlines()) == 1  # one skopeo for all four
    assert store._pulls == {}
    # a later pull is a new attempt, not the remembered failure
    with pytest.raises(ImagePullError):
        await store.pull("gone.example:5000/busybox:1")
    assert len(calls.read_text().splitlines()) == 2


async def test_the_last_waiter_leaving_stops_the_copy(tmp_path: Path) -> None:
    script, calls = fake_skopeo(tmp_path, seconds=30, hang=True)
    store = ImageStore(tmp_path / "rt", skopeo=str(script), min_free_bytes=0)
    one = asyncio.create_task(store.pull("gone.example:5000/busybox:1"))
    two = asyncio.create_task(store.pull("gone.example:5000/busybox:1"))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if calls.exists():
            break
    (task, _waiters), = store._pulls.values()
    one.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # the other pod still waits for it
    two.cancel()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if task.done():
            break
    assert task.cancelled() and store._pulls == {}
