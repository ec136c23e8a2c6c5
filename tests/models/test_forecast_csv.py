"""`models.forecast_csv`: the cloud's forecaster (online learning included) over a
one-minute trace. The online part never sees the future; the p90 is calibrated on a
synthetic series of known quantiles; young nodes get the short head, calibrated too."""

from __future__ import annotations

import numpy as np
import pytest

from cloudcore.forecaster import Method
from models import forecast_csv


def noisy_fleet(nodes: int, minutes: int, seed: int, sigma: float = 0.03) -> np.ndarray:
    """[nodes, minutes, 2]: level + iid normal noise, so the p90 of every future
    minute is known: level + 1.2816 sigma."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.2, 0.7, (nodes, 1, 2))
    return (level + rng.normal(0, sigma, (nodes, minutes, 2))).astype(np.float32), level


def coverage(res: dict[str, np.ndarray], rows: np.ndarray) -> tuple[np.ndarray, int]:
    """Share of actuals <= p90 per resource, over the (node, origin) pairs in `rows`."""
    act = res["actual"]
    t_len = act.shape[1]
    hits, n = np.zeros(2), 0
    for i, t in zip(*np.nonzero(rows), strict=True):
        if t + 15 >= t_len:
            continue
        y = act[i, t + 1 : t + 16]  # [15, 2]
        if not np.isfinite(y).all():
            continue
        hits += (y <= res["p90"][i, t].T).mean(axis=0)
        n += 1
    return hits / max(n, 1), n


def test_csv_in_npz_out(tmp_path) -> None:
    rng = np.random.default_rng(0)
    lines = ["node,cpu,mem"]
    for node, length in (("a", 90), ("b", 40)):
        for t in range(length):
            cpu = "" if (node, t) == ("a", 50) else f"{0.3 + 0.01 * rng.normal():.4f}"
            lines.append(f"{node},{cpu},{0.6:.2f}")
    src = tmp_path / "trace.csv"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "f.npz"
    forecast_csv.main(["--input", str(src), "--output", str(out)])
    with np.load(out) as z:
        assert z["nodes"].tolist() == ["a", "b"]
        assert z["p50"].shape == z["p90"].shape == (2, 90, 2, 15)
        method, p50, p90 = z["method"], z["p50"], z["p90"]
        assert np.isnan(z["actual"][0, 50, 0]) and np.isnan(z["actual"][1, 40:]).all()
    assert method[0, 5] == Method.FALLBACK and method[0, 30] == Method.SHORT
    assert method[0, 89] == Method.MODEL and method[1, 39] == Method.SHORT
    assert method[1, 60] == Method.STALE  # b stopped reporting at minute 39
    ok = np.isfinite(p50[0, 10:])
    assert ok.all() and (p90[0, 10:] >= p50[0, 10:]).all()
    assert abs(float(p50[0, 89, 0, 0]) - 0.3) < 0.03 and abs(float(p50[0, 89, 1, 0]) - 0.6) < 0.01


def test_a_bad_csv_is_a_clear_error(tmp_path) -> None:
    src = tmp_path / "bad.csv"
    src.write_text("cpu,memory\n0.1,0.2\n")
    with pytest.raises(SystemExit, match="column 'mem' missing"):
        forecast_csv.main(["--input", str(src), "--output", str(tmp_path / "o.npz")])


def test_the_online_part_never_sees_the_future() -> None:
    """Change every minute after T: every forecast made at or before T must stay
    bit-identical (fails if an example, a level or a calibration error used a minute
    after its origin)."""
    act, _ = noisy_fleet(6, 200, seed=1)
    act[:, :, 0] += np.linspace(0, 0.2, 200)[None, :]  # a trend, so the heads learn
    names = [f"n{i}" for i in range(6)]
    first = forecast_csv.forecast_array(names, act)
    cut = 140
    changed = act.copy()
    changed[:, cut + 1 :] = np.clip(changed[:, cut + 1 :] * 1.7 + 0.1, 0, 1)
    second = forecast_csv.forecast_array(names, changed)
    for k in ("p50", "p90", "method"):
        np.testing.assert_array_equal(first[k][:, : cut + 1], second[k][:, : cut + 1])
    assert not np.allclose(first["p50"][:, cut + 1 :], second["p50"][:, cut + 1 :])
    # and the learner did learn before the cut (so the test has teeth)
    assert not np.array_equal(first["p50"][:, cut], forecast_csv.forecast_array(
        names, act, online=forecast_csv.OnlineSettings(enabled=False))["p50"][:, cut])


def test_p90_is_calibrated_on_a_series_of_known_quantiles() -> None:
    act, level = noisy_fleet(150, 260, seed=2)
    res = forecast_csv.forecast_array([f"n{i}" for i in range(150)], act)
    late = np.zeros(act.shape[:2], bool)
    late[:, 160:] = True  # after the calibration has seen ~1,500 errors per resource
    cov, n = coverage(res, late & (res["method"] == Method.MODEL))
    assert n > 1000
    assert ((cov >= 0.85) & (cov <= 0.95)).all(), cov
    # the p90 is near the known one (level + 1.2816 sigma), not just covering
    true90 = level[:, 0, :] + 1.2816 * 0.03  # [nodes, 2]
    p90 = res["p90"][:, 160:245].mean(axis=(1, 3))  # [nodes, 2]
    assert np.abs(p90 - true90).mean() < 0.015


def test_short_history_gets_the_short_head_calibrated() -> None:
    """Nodes that live 45 minutes each, staggered: most forecasts come from the short
    head, whose p90 is calibrated from its own errors."""
    nodes, minutes = 240, 300
    act, _ = noisy_fleet(nodes, minutes, seed=3, sigma=0.04)
    start = np.random.default_rng(4).integers(0, minutes - 45, nodes)
    alive = (np.arange(minutes)[None, :] >= start[:, None]) & (
        np.arange(minutes)[None, :] < start[:, None] + 45)
    act[~alive] = np.nan
    res = forecast_csv.forecast_array([f"y{i}" for i in range(nodes)], act)
    short = res["method"] == Method.SHORT
    assert short.sum() > 3000 and not (res["method"] == Method.MODEL).any()
    late = np.zeros_like(short)
    late[:, 150:] = True
    cov, n = coverage(res, short & late)
    assert n > 500
    assert ((cov >= 0.85) & (cov <= 0.95)).all(), cov


def test_real_every_learns_only_from_examples_ending_at_a_real_sample(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--real-every K: the learner takes the example of minute t only when its context
    ends at a multiple of K (t - 15 % K == 0); forecasts are still made every minute."""
    act, _ = noisy_fleet(3, 160, seed=5)
    names = ["a", "b", "c"]
    seen: list[int] = []
    real_sample = forecast_csv.Forecaster.training_sample

    def spy(self, *, now_minute=None, max_nodes=None):  # type: ignore[no-untyped-def]
        seen.append(int(now_minute))
        return real_sample(self, now_minute=now_minute, max_nodes=max_nodes)

    monkeypatch.setattr(forecast_csv.Forecaster, "training_sample", spy)
    res = forecast_csv.forecast_array(names, act, real_every=5)
    assert seen and all((t - 15) % 5 == 0 for t in seen) and len(seen) == 32
    assert np.isfinite(res["p50"][:, 10:]).all()  # a forecast at every minute
    with pytest.raises(forecast_csv.InputError, match="real_every"):
        forecast_csv.forecast_array(names, act, real_every=0)
