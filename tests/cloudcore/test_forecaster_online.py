"""Online learning in the forecaster: scale-free forecasts, the learner's bounds, and
the runner learning off the event loop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from cloudcore.forecaster import Forecaster, OnlineSettings, default_model_path
from cloudcore.forecaster.runner import ForecastRunner


def wavy(minutes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(minutes)
    x = 0.4 + 0.1 * np.sin(t / 9.0)[:, None] + rng.normal(0, 0.02, (minutes, 2))
    return np.clip(x, 0.05, 0.95)


@pytest.mark.parametrize(("scale", "shift"), [(0.25, 0.0), (1.0, 0.3), (0.5, 0.1)])
def test_same_window_at_another_level_or_capacity_same_relative_forecast(
        scale: float, shift: float) -> None:
    """y = scale * x + shift (a node c = 1/scale times larger, or busier by `shift`):
    its forecast is scale * forecast(x) + shift, for both heads, after learning."""
    fc = Forecaster(default_model_path(), capacity_nodes=8)
    x = wavy(150, seed=0) * 0.6  # room for the shift inside 0..1
    for t in range(150):
        fc.observe("x", t, *x[t])
        fc.observe("y", t, *(scale * x[t] + shift))
        if t >= 120:
            fc.observe("young-x", t, *x[t])
            fc.observe("young-y", t, *(scale * x[t] + shift))
        fc.predict(now_minute=t)
        fc.learner.learn(fc.training_sample(now_minute=t))
    assert fc.learner.heads[60].seen > 0  # learned, not only the prior
    out = fc.predict()
    for a, b, method in (("x", "y", "MODEL"), ("young-x", "young-y", "SHORT")):
        i, j = out.position(a), out.position(b)
        assert out.get(a)["method"] == method
        np.testing.assert_allclose(out.p50[j], scale * out.p50[i] + shift, atol=2e-5)
        np.testing.assert_allclose(out.p90[j], scale * out.p90[i] + shift, atol=2e-5)


def test_learner_memory_is_bounded_and_weights_move_from_the_prior() -> None:
    st = OnlineSettings(sample_nodes=30, residuals=256)
    fc = Forecaster(default_model_path(), capacity_nodes=100, online=st)
    names = [f"n{i}" for i in range(100)]
    x = wavy(200, seed=1)
    rng = np.random.default_rng(2)
    prior = fc.learner.weights(60)
    sizes = None
    for t in range(200):
        v = np.clip(x[t] + rng.normal(0, 0.05, (100, 2)), 0, 1).astype(np.float32)
        fc.observe_batch(names, t, v[:, 0], v[:, 1])
        sample = fc.training_sample(now_minute=t)
        assert sample.long.shape[1] <= 30 and sample.short.shape[1] <= 30
        fc.learner.learn(sample)
        head = fc.learner.heads[60]
        now = (head.xtx.shape, head.res.shape)
        assert sizes in (None, now)
        sizes = now
    assert fc.learner.heads[60].seen == 30 * (200 - 74)
    assert not np.allclose(fc.learner.weights(60).w1, prior.w1)


async def test_runner_learns_in_a_worker_thread() -> None:
    seen: list[str] = []
    runner = ForecastRunner(default_model_path(), capacity_nodes=4, apply=lambda r: None,
                            clock=lambda: 100 * 60.0)
    learn = runner.forecaster.learner.learn

    def spy(sample: object) -> None:
        learn(sample)  # type: ignore[arg-type]
        # after learning: the worker thread goes on after the task is cancelled, so a
        # name appended before it would let the assert below race the learning
        seen.append(threading.current_thread().name)

    runner.forecaster.learner.learn = spy  # type: ignore[method-assign]
    x = wavy(101, seed=3)
    for t in range(101):
        runner.observe("a", t, *x[t])
    task = asyncio.create_task(runner.run(0.01))
    for _ in range(3000):  # up to 30 s on a loaded machine
        await asyncio.sleep(0.01)
        if seen:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen and seen[0] != threading.main_thread().name
    assert runner.forecaster.learner.heads[60].seen >= 1


def test_a_learning_failure_keeps_the_weights_and_the_runner(caplog) -> None:
    runner = ForecastRunner(default_model_path(), capacity_nodes=4, apply=lambda r: None)
    x = wavy(80, seed=4)
    for t in range(80):
        runner.observe("a", t, *x[t])
    runner.tick(now_minute=79)
    before = runner.forecaster.learner.weights(60)

    def broken(sample: object) -> None:
        raise np.linalg.LinAlgError("singular")

    runner.forecaster.learner.learn = broken  # type: ignore[method-assign]
    runner.learn_pending()
    assert runner.learn_failures == 1 and "online learning failed" in caplog.text
    assert runner.forecaster.learner.weights(60) is before
    assert runner.tick(now_minute=80)["a"]["trusted"] == 0.0  # not calibrated yet


def _run(series: np.ndarray, settings: OnlineSettings | None = None) -> Forecaster:
    fc = Forecaster(default_model_path(), capacity_nodes=4, online=settings)
    for t in range(len(series)):
        fc.observe_batch(["a", "b"], t, series[t, :, 0], series[t, :, 1])
        fc.learner.learn(fc.training_sample(now_minute=t))
    return fc


def test_the_combination_follows_the_best_expert_of_the_fleet() -> None:
    """A random walk (last value is the best forecast there is) moves the weight to
    last value; the served forecast then is (close to) the last value. The prior is
    made heavy here (2,000 examples) so that the ridge head stays off the walk's best
    forecast for these 900 minutes (with the default 200 it learns close to last value
    itself and shares the weight, which the second test checks)."""
    rng = np.random.default_rng(5)
    walk = np.clip(0.5 + np.cumsum(rng.normal(0, 0.01, (900, 2, 2)), axis=0), 0.02, 0.98)
    fc = _run(walk, OnlineSettings(prior_weight=2000.0))
    head = fc.learner.heads[60]
    assert head.mix.shape == (4, 2, 15)
    np.testing.assert_allclose(head.mix.sum(axis=0), 1.0)
    assert (head.mix[1].mean(axis=1) > 0.5).all()  # last value leads, cpu and memory
    out = fc.predict()
    lv = walk[-1]  # [node, resource]
    assert np.abs(out.p50[:, :, 0] - lv).max() < 0.02


def test_the_combination_weighs_most_the_expert_with_the_lowest_loss() -> None:
    """Default settings, the same walk: whichever expert has the lowest decayed loss at
    a step has the largest weight there, and the served forecast is close to last value."""
    rng = np.random.default_rng(5)
    walk = np.clip(0.5 + np.cumsum(rng.normal(0, 0.01, (900, 2, 2)), axis=0), 0.02, 0.98)
    fc = _run(walk)
    head = fc.learner.heads[60]
    np.testing.assert_array_equal(head.mix.argmax(axis=0), head.loss.argmin(axis=0))
    out = fc.predict()
    assert np.abs(out.p50[:, :, 0] - walk[-1]).max() < 0.02


def test_combination_off_serves_the_ridge_head_alone() -> None:
    rng = np.random.default_rng(6)
    walk = np.clip(0.5 + np.cumsum(rng.normal(0, 0.01, (300, 2, 2)), axis=0), 0.02, 0.98)
    fc = _run(walk, OnlineSettings(mix=False))
    head = fc.learner.heads[60]
    assert (head.mix[0] == 1.0).all() and (head.mix[1:] == 0.0).all()
    np.testing.assert_array_equal(head.wmix, head.wn)


def test_expert_weights_are_the_ewma_in_normalised_form() -> None:
    from cloudcore.forecaster.online import EWMA_ALPHAS, LEVELS, expert_weights

    e = expert_weights(60)
    assert e.shape == (1 + len(EWMA_ALPHAS), 60 + LEVELS)
    assert (e[:, 59:] == 0).all()  # no level feature, no bias
    assert (e[0] == 0).all()  # last value
    x = np.random.default_rng(7).uniform(0.2, 0.8, 60)
    a, s = x[-1], max((x.max() - x.min()) / 4, 1e-3)
    for row, al in zip(e[1:], EWMA_ALPHAS, strict=True):
        w = (1 - al) ** np.arange(59, -1, -1.0)
        w[1:] *= al
        assert abs(a + s * (row[:59] @ ((x[:-1] - a) / s)) - x @ w) < 1e-12


def test_the_long_run_level_is_the_nodes_own_mean_and_the_sample_has_it_as_it_was() -> None:
    """The second level feature mu is the node's bias-corrected EWMA (half-life
    MEAN_HALF_LIFE, so about the plain mean of a young node's history), and a training
    example carries the levels the node had at the end of its context (minute now - 15),
    not the newer ones."""
    from cloudcore.forecaster.online import LEVEL_HALF_LIFE, MEAN_HALF_LIFE

    fc = Forecaster(default_model_path(), capacity_nodes=4)
    x = wavy(240, seed=5)
    x[120:] += 0.3  # a step
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    gamma = 1 - 0.5 ** (1 / MEAN_HALF_LIFE)
    alpha = 1 - 0.5 ** (1 / LEVEL_HALF_LIFE)
    raw, lvl = np.zeros(2), x[0].copy()
    for t in range(240):
        fc.observe("n", t, *x[t])
        raw += gamma * (x[t] - raw)
        lvl += alpha * (x[t] - lvl) if t else 0.0
        row = fc._row["n"]
        mu = fc._mean(fc.mean[[row]], np.array([t + 1]))[:, 0]
        np.testing.assert_allclose(mu, raw / (1 - (1 - gamma) ** (t + 1)), rtol=1e-9)
        np.testing.assert_allclose(fc.level[row], lvl, rtol=1e-9)
        seen.append((lvl.copy(), mu))
        if t >= 74:
            s = fc.training_sample(now_minute=t)
            np.testing.assert_allclose(s.long_level[:, 0, 0], seen[t - 15][0], atol=2e-6)
            np.testing.assert_allclose(s.long_level[:, 0, 1], seen[t - 15][1], atol=2e-6)
    np.testing.assert_allclose(seen[-1][1], x.mean(axis=0), atol=0.005)  # ~ plain mean
    # a young node's long-run level is its mean so far; the 6 h EWMA, started at its first
    # point, still lags behind the step: two different features
    assert (np.abs(seen[-1][0] - seen[-1][1]) > 0.05).all()


def test_the_prior_as_a_fifth_expert_is_mixed_into_the_served_weights() -> None:
    """`prior_expert`: the shipped prior joins the combination; the served weights are
    the mix of all five, and the prior earns weight only by its own loss."""
    rng = np.random.default_rng(8)
    walk = np.clip(0.5 + np.cumsum(rng.normal(0, 0.01, (300, 2, 2)), axis=0), 0.02, 0.98)
    fc = _run(walk, OnlineSettings(prior_expert=True))
    head = fc.learner.heads[60]
    assert head.names[-1] == "prior" and head.mix.shape == (5, 2, 15)
    np.testing.assert_allclose(head.mix.sum(axis=0), 1.0)
    want = head.mix[0][:, None, :] * head.wn + sum(
        head.mix[k + 1][:, None, :] * head.experts[k] for k in range(4))
    np.testing.assert_allclose(head.wmix, want, atol=1e-12)
    np.testing.assert_array_equal(head.experts[-1], head.prior)
    np.testing.assert_array_equal(head.mix.argmax(axis=0), head.loss.argmin(axis=0))


def test_weight_power_sets_how_much_a_busy_window_weighs_in_the_fit() -> None:
    """weight_power 0: every example weighs the same in the ridge statistics (X'X is the
    plain sum of f f'); 1 (default): weighed by s / mean s."""
    from cloudcore.forecaster.online import LONG, design

    rng = np.random.default_rng(9)
    walk = np.clip(0.5 + np.cumsum(rng.normal(0, 0.01, (75, 2, 2)), axis=0), 0.02, 0.98)
    for power in (0.0, 1.0):
        fc = _run(walk, OnlineSettings(weight_power=power))
        head = fc.learner.heads[LONG]
        s = fc.training_sample(now_minute=74)
        f, _, sc = design(s.long[..., :LONG], s.long_level)
        w = (sc[..., 0] / sc[..., 0].mean(axis=1, keepdims=True)) ** power
        np.testing.assert_allclose(head.xtx, (f * w[..., None]).transpose(0, 2, 1) @ f,
                                   rtol=1e-5, atol=1e-6)
        assert power == 0.0 or not np.allclose(w, 1.0)  # the windows' scales differ
