"""The forecaster with the real shipped ONNX model and a real onnxruntime session:
nodes joining and leaving, late and missing points, short histories, a big batch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cloudcore.forecaster import (
    CapacityExceeded,
    Forecaster,
    Method,
    ModelLoadError,
    default_model_path,
)
from cloudcore.forecaster.core import RING
from cloudcore.forecaster.online import reference


def make(capacity: int = 16) -> Forecaster:
    return Forecaster(default_model_path(), capacity_nodes=capacity)


def feed(fc: Forecaster, node: str, minutes: range, cpu: float = 0.3, mem: float = 0.6) -> None:
    for t in minutes:
        fc.observe(node, t, cpu, mem)


def window(fc: Forecaster, node: str) -> np.ndarray:
    """The stored ring of a node, oldest first, ending at its last minute (test helper)."""
    row = fc._row[node]
    last = int(fc.last[row])
    cols = np.arange(last - 59, last + 1) % RING
    return fc.values[row][:, cols]


def test_full_history_uses_the_model_and_returns_every_node() -> None:
    fc = make()
    feed(fc, "a", range(100, 160), cpu=0.2, mem=0.5)
    feed(fc, "b", range(100, 160), cpu=0.8, mem=0.1)
    out = fc.predict()
    assert out.now == 159 and len(out) == 2
    assert out.p50.shape == (2, 2, 15) and out.p90.shape == (2, 2, 15)
    a = out.get("a")
    assert a["method"] == "MODEL" and a["points"] == 60 and a["gaps"] == 0
    assert abs(a["cpu"]["p50"][0] - 0.2) < 0.02 and abs(a["memory"]["p50"][0] - 0.5) < 0.02
    b = out.get("b")
    assert abs(b["cpu"]["p50"][-1] - 0.8) < 0.03
    assert (out.p90 >= out.p50 - 1e-6).all()


def test_nodes_join_and_leave_and_rows_are_reused() -> None:
    fc = make(capacity=2)
    feed(fc, "a", range(60))
    feed(fc, "b", range(60))
    with pytest.raises(CapacityExceeded, match="capacity_nodes=2"):
        fc.observe("c", 59, 0.1, 0.1)
    assert "c" not in fc
    row_a = fc._row["a"]
    assert fc.remove("a") and not fc.remove("a")
    feed(fc, "c", range(50, 60), cpu=0.9, mem=0.9)
    assert fc._row["c"] == row_a  # the freed row, no reallocation
    out = fc.predict()
    assert sorted(out.nodes.tolist()) == ["b", "c"]
    c = out.get("c")
    assert c["method"] == "SHORT" and c["points"] == 10
    # nothing of the node that left shows through in the new node's forecast
    assert abs(c["cpu"]["p50"][0] - 0.9) < 0.03
    with pytest.raises(KeyError):
        out.get("a")


def test_gaps_are_carried_forward_and_counted() -> None:
    fc = make()
    feed(fc, "a", range(30), cpu=0.2)
    feed(fc, "a", range(35, 60), cpu=0.4)  # minutes 30..34 missing
    w = window(fc, "a")
    assert np.allclose(w[0, 30:35], 0.2)  # carried forward from minute 29
    out = fc.predict()
    assert out.get("a")["gaps"] == 5 and out.get("a")["method"] == "MODEL"


def test_late_points_inside_the_window_are_placed_others_dropped() -> None:
    fc = make()
    feed(fc, "a", range(30), cpu=0.2)
    fc.observe("a", 40, 0.2, 0.6)  # gap 30..39 carried forward
    assert fc.observe("a", 35, 0.7, 0.6)  # late, inside the window: replaces the fill
    assert window(fc, "a")[0, 60 - 6] == pytest.approx(0.7)  # minute 35 of 40
    fc.observe("a", 100, 0.2, 0.6)  # a gap of 60: the history restarts at 100
    assert not fc.observe("a", 80, 0.5, 0.5)  # before the restarted history
    assert not fc.observe("a", 20, 0.5, 0.5)  # an hour too old
    st = fc.stats()
    assert st.late_placed == 1 and st.late_dropped == 2 and st.history_restarts == 1
    assert fc.predict().get("a")["method"] == "FALLBACK"


def test_same_minute_twice_keeps_the_newer_report() -> None:
    fc = make()
    feed(fc, "a", range(60))
    fc.observe("a", 59, 0.9, 0.6)
    assert window(fc, "a")[0, -1] == pytest.approx(0.9)


def test_invalid_values_are_dropped_or_clipped() -> None:
    fc = make()
    assert not fc.observe("a", 0, math.nan, 0.5)
    assert not fc.observe("a", 0, 0.5, math.inf)
    assert fc.observe("a", 0, 1.7, -0.2)
    assert window(fc, "a")[:, -1].tolist() == [1.0, 0.0]
    assert fc.stats().invalid_dropped == 2


def test_short_history_fallbacks() -> None:
    fc = make()
    feed(fc, "new", range(55, 60), cpu=0.1)  # 5 points: no model
    fc.observe("new", 57, 0.5, 0.6)  # a late peak
    feed(fc, "young", range(40, 60), cpu=0.3)  # 20 points: the short head
    feed(fc, "full", range(60))
    out = fc.predict()
    new = out.get("new")
    assert new["method"] == "FALLBACK" and new["points"] == 5
    assert new["cpu"]["p50"] == pytest.approx([0.1] * 15)
    assert new["cpu"]["p90"] == pytest.approx([0.5] * 15)  # the peak it has seen
    young = out.get("young")
    assert young["method"] == "SHORT" and young["points"] == 20
    assert abs(young["cpu"]["p50"][0] - 0.3) < 0.02
    assert out.get("full")["method"] == "MODEL"


def test_nodes_that_fall_behind_are_carried_forward_then_stale() -> None:
    fc = make()
    feed(fc, "quiet", range(60), cpu=0.25)
    feed(fc, "busy", range(70))
    out = fc.predict()  # now = 69: quiet is 10 minutes behind
    q = out.get("quiet")
    assert q["method"] == "MODEL" and abs(q["cpu"]["p50"][0] - 0.25) < 0.02
    out = fc.predict(now_minute=90)  # 31 minutes behind > stale_after (15)
    q = out.get("quiet")
    assert q["method"] == "STALE"
    assert q["cpu"]["p50"] == pytest.approx([0.25] * 15)


def test_batch_of_1000_nodes_in_one_call() -> None:
    n = 1000
    fc = make(capacity=n)
    rng = np.random.default_rng(0)
    names = [f"n{i}" for i in range(n)]
    level = rng.uniform(0.1, 0.9, (n, 2)).astype(np.float32)
    for t in range(60):
        v = np.clip(level + rng.normal(0, 0.02, (n, 2)), 0, 1).astype(np.float32)
        assert fc.observe_batch(names, t, v[:, 0], v[:, 1]) == n
    for name in names[::7]:  # churn: holes in the rows, then newcomers
        fc.remove(name)
    feed(fc, "late-joiner", range(45, 60))
    calls = 0
    run = fc._model.run

    def counting(x: np.ndarray, m: np.ndarray, d: np.ndarray, wt: object,
                 out: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        return run(x, m, d, wt, out)

    fc._model.run = counting  # type: ignore[method-assign]
    out = fc.predict()
    assert calls == 2  # one per head: the long one and the short one (late-joiner)
    assert len(out) == n - len(names[::7]) + 1
    model_rows = out.method == Method.MODEL
    assert model_rows.sum() == n - len(names[::7])
    got = out.p50[model_rows][:, :, 0]
    want = level[[i for i in range(n) if i % 7]]
    assert np.abs(got - want).mean() < 0.03


def test_missing_or_broken_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        Forecaster(tmp_path / "nope.onnx", capacity_nodes=1)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        Forecaster(bad, capacity_nodes=1)
    with pytest.raises(ValueError, match="capacity_nodes"):
        Forecaster(default_model_path(), capacity_nodes=0)


def test_predict_equals_the_numpy_reference_and_forecasts_do_not_alias() -> None:
    """The io-bound path (input buffer reused, onnxruntime writing into the result)
    gives the numpy reference of the online graph (with the weights in use), for the
    all-model case and the mixed case (some FALLBACK rows), and an earlier Forecast is
    not overwritten by the next predict()."""

    def forward(x: np.ndarray, rows: list[int]) -> np.ndarray:
        mu = fc._mean(fc.mean[rows], fc.last[rows] - fc.first[rows] + 1)
        m = np.stack([fc.level[rows].T, mu], axis=2)
        d = fc._spread(fc.spread[rows], fc.last[rows] - fc.first[rows])
        y = reference(x.transpose(1, 0, 2), m, d, fc.learner.weights(60))  # [2, n, 2, 15]
        return y.transpose(1, 0, 3, 2)  # [n, 2, 15, 2]

    rng = np.random.default_rng(3)
    fc = make(capacity=64)
    names = [f"n{i}" for i in range(40)]
    level = rng.uniform(0.1, 0.9, (40, 2))
    for t in range(60):
        v = np.clip(level + rng.normal(0, 0.05, (40, 2)), 0, 1).astype(np.float32)
        fc.observe_batch(names, t, v[:, 0], v[:, 1])
    first = fc.predict()
    kept = first.p50.copy(), first.p90.copy()
    x = np.stack([window(fc, n) for n in names]).astype(np.float32)
    ref = forward(x, [fc._row[n] for n in names])
    np.testing.assert_allclose(first.p50, ref[..., 0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(first.p90, ref[..., 1], atol=1e-4, rtol=0)

    fc.observe("newcomer", 60, 0.5, 0.5)  # too short: FALLBACK, so the mixed path
    fc.observe_batch(names, 60, np.full(40, 0.99, np.float32), np.full(40, 0.01, np.float32))
    second = fc.predict()
    assert second.get("newcomer")["method"] == "FALLBACK"
    np.testing.assert_array_equal(first.p50, kept[0])
    np.testing.assert_array_equal(first.p90, kept[1])
    x2 = np.stack([window(fc, n) for n in names]).astype(np.float32)
    ref2 = forward(x2, [fc._row[n] for n in names])
    rows = [second.position(n) for n in names]
    np.testing.assert_allclose(second.p50[rows], ref2[..., 0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(second.p90[rows], ref2[..., 1], atol=1e-4, rtol=0)


def test_a_resource_pinned_at_capacity_has_its_p90_at_capacity() -> None:
    """Usage at 100 % is censored: a node pinned there for its last 10 minutes (after a
    quiet hour, so its spread is small) is forecast at capacity (p90), the other
    resource and a node just under it are not."""
    fc = make(capacity=4)
    for m in range(60):
        fc.observe("hot", m, 0.97 if m < 50 else 1.0, 0.6)
        fc.observe("warm", m, 0.97 if m < 50 else 0.99, 0.6)
    out = fc.predict()
    hot, warm = out.position("hot"), out.position("warm")
    assert (out.p90[hot, 0] == 1.0).all()
    assert (out.p90[hot, 1] < 1.0).all()
    assert (out.p90[warm, 0] < 1.0).all()
