"""The agent's metrics file: what the link and the sync handler refused, in the
Prometheus text format, rewritten atomically while the agent runs and once at the end."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgecore import metrics
from edgecore.link import LinkStats
from edgecore.sync import SyncStats


def test_refusals_are_rendered_by_reason_with_the_node() -> None:
    link = LinkStats(received=7, auth_failed=3, malformed=1, connects=2)
    sync = SyncStats(replayed_requests=2, refused_epochs=1, applied=4)
    text = metrics.render("edge-1", metrics.samples(link, sync))
    lines = text.splitlines()
    assert 'edgecore_messages_refused_total{node="edge-1",reason="auth_failed"} 3' in lines
    assert 'edgecore_messages_refused_total{node="edge-1",reason="replayed_request"} 2' in lines
    assert 'edgecore_messages_refused_total{node="edge-1",reason="left_epoch"} 1' in lines
    assert 'edgecore_messages_received_total{node="edge-1"} 7' in lines
    assert 'edgecore_desired_applied_total{node="edge-1"} 4' in lines
    assert lines.count("# TYPE edgecore_messages_refused_total counter") == 1


async def test_the_file_follows_the_counters_and_is_written_once_more_at_stop(
        tmp_path: Path) -> None:
    link, sync = LinkStats(), SyncStats()
    path = tmp_path / "m" / "metrics.prom"
    task = asyncio.create_task(metrics.run(
        path, node="n", interval=0.05, collect=lambda: metrics.samples(link, sync)))
    for _ in range(100):
        if path.exists():
            break
        await asyncio.sleep(0.01)
    assert 'reason="auth_failed"} 0' in path.read_text()
    link.auth_failed = 5
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert 'reason="auth_failed"} 5' in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".metrics-")]


async def test_a_disk_that_refuses_the_file_does_not_stop_the_agent(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A full disk made the metrics task raise ENOSPC and take the whole agent down
    (the disk-full fault test); the write is logged and tried again next interval."""
    import errno

    calls = []

    def full(path: Path, text: str) -> None:
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(metrics, "write", full)
    task = asyncio.create_task(metrics.run(
        tmp_path / "metrics.prom", node="n", interval=0.01,
        collect=lambda: metrics.samples(LinkStats(), SyncStats())))
    for _ in range(100):
        if len(calls) >= 3:
            break
        await asyncio.sleep(0.01)
    assert len(calls) >= 3 and not task.done()  # still running, still trying
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
