"""The collector between DaemonSet expansion slices (issue 13 part 3,
`cloudcore.fleet.workloads.between_slices`)."""

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
