"""Between DaemonSet expansion slices and their commits (issue 13 part 3,
`cloudcore.fleet.workloads.between_slices`, `run_expansions`)."""

from __future__ import annotations


def test_between_slices_freezes_only_in_a_tuned_process() -> None:
    """Between expansion slices a process tuned for a big heap (young threshold raised,
    as cloudcore.service.tune_gc does) freezes what the slice made instead of a young
    collection (issue 13 part 3); one with the default settings collects, as before."""
    import gc

    from cloudcore.fleet.workloads import DEFAULT_YOUNG_THRESHOLD, between_slices

    before = gc.get_threshold()
    try:
        frozen = gc.get_freeze_count()
        gc.set_threshold(DEFAULT_YOUNG_THRESHOLD, *before[1:])
        kept = [[i] for i in range(1000)]  # young objects
        between_slices()
        assert gc.get_freeze_count() == frozen and gc.get_count()[0] < 1000
        gc.set_threshold(25_000, *before[1:])
        kept += [[i] for i in range(1000)]
        between_slices()
        assert gc.get_freeze_count() >= frozen + 1000 and gc.get_count()[0] == 0
        assert len(kept) == 2000
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_the_loop_gets_a_turn_before_the_commit_of_an_overrun_slice() -> None:
    """An expansion that took the slice's whole budget (a table of every pod grew)
    is followed by a loop turn before its commit, so the two do not hold the event
    loop as one stretch (issue 13 part 3)."""
    import asyncio
    import time

    from cloudcore_fakes import make_fleet

    fleet = make_fleet()
    work = fleet.workloads
    events: list[str] = []
    slices = iter([0.03, 0.0, 0.0])  # the first expansion overruns a 10 ms budget

    def expand_slice(budget: float) -> bool:
        took = next(slices)
        time.sleep(took)
        events.append("expand")
        return False

    def commit(more: bool = False) -> bool:
        events.append("commit")
        return False

    async def other() -> None:  # a task woken by a timer, as the lag monitor is
        while True:
            await asyncio.sleep(0.002)
            events.append("loop")

    work.expand_slice = expand_slice  # type: ignore[method-assign]
    ticker = asyncio.create_task(other())
    runner = asyncio.create_task(work.run_expansions(commit, budget=0.01))
    await asyncio.sleep(0)
    events.clear()
    work._scaling["Deployment/default/x"] = None  # type: ignore[assignment]
    work.wake()
    for _ in range(20):
        await asyncio.sleep(0)
        if events.count("commit") >= 1:
            work._scaling.clear()
    await asyncio.sleep(0.05)
    runner.cancel()
    ticker.cancel()
    first = events.index("expand")
    assert events[first + 1] == "loop" and "commit" in events[first + 2:], events
