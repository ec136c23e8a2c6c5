"""The LMDB store: batched commits, flush, durable(), reload, and a stable epoch."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from cloudcore.config import StoreSettings
from cloudcore.store import Store


async def _with_writer(store: Store):  # type: ignore[no-untyped-def]
    return asyncio.create_task(store.run(), name="test.writer")


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_batches_many_puts_into_few_commits(tmp_path: Path) -> None:
    settings = StoreSettings(state_dir=tmp_path / "s", batch_interval=0.05)
    async with Store(settings) as store:
        writer = await _with_writer(store)
        for i in range(500):
            store.put("reportseq", f"node-{i % 50}", i)
        await store.flush()
        assert store.commits == 1
        assert store.ops_written == 50  # last write of a key wins inside a batch
        await _stop(writer)
    async with Store(settings) as store:
        loaded = store.load()
    assert loaded["reportseq"]["node-49"] == 499


async def test_commits_after_interval_and_durable_future(tmp_path: Path) -> None:
    settings = StoreSettings(state_dir=tmp_path / "s", batch_interval=0.01)
    async with Store(settings) as store:
        writer = await _with_writer(store)
        state = {"v": 1}
        store.put_later("meta", "x", lambda: dict(state))
        fut = store.durable()
        state["v"] = 2  # value is taken at commit time
        await asyncio.wait_for(fut, 2)
        assert store.commits == 1
        store.delete("meta", "x")
        store.put("nodes", "a", {"n": 1})
        await store.flush()
        await _stop(writer)
        loaded = store.load()
    assert "x" not in loaded["meta"]
    assert loaded["nodes"] == {"a": {"n": 1}}


async def test_pending_writes_committed_on_close_and_epoch_survives(tmp_path: Path) -> None:
    settings = StoreSettings(state_dir=tmp_path / "s")
    async with Store(settings) as store:
        epoch = store.epoch
        store.put("pods", "default/p", {"a": 1})  # no writer running: close commits it
    async with Store(settings) as store:
        assert store.epoch == epoch
        assert store.load()["pods"] == {"default/p": {"a": 1}}


async def test_flush_with_nothing_pending_returns(tmp_path: Path) -> None:
    async with Store(StoreSettings(state_dir=tmp_path / "s")) as store:
        await asyncio.wait_for(store.flush(), 1)
