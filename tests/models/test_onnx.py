"""The shipped ONNX model honours its contract and computes exactly what the numpy
reference forward pass (models/model.py) computes with the trained parameters.
Needs onnx and onnxruntime, not the datasets package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models.model import CONTEXT, HORIZON, forward, load_params

MODELS = Path(__file__).resolve().parents[2] / "models"
ONNX_PATH = MODELS / "forecaster.onnx"
PARAMS_PATH = MODELS / "forecaster.npz"


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(ONNX_PATH), opts, providers=["CPUExecutionProvider"])


def _windows(n: int, seed: int) -> np.ndarray:
    """Plausible utilisation windows: levels, trends, noise, spikes, flat and clipped."""
    rng = np.random.default_rng(seed)
    t = np.arange(CONTEXT, dtype=np.float32)
    level = rng.uniform(0.0, 1.0, (n, 2, 1))
    trend = rng.normal(0, 0.002, (n, 2, 1)) * t
    noise = rng.normal(0, 1, (n, 2, CONTEXT)) * rng.uniform(0, 0.08, (n, 2, 1))
    x = level + trend + noise
    x[: n // 10] = rng.uniform(0, 1, (n // 10, 2, 1))  # flat windows
    x[n // 10 : n // 5, :, -3:] += 0.5  # a late spike
    if n >= 4:
        x[-2] = 0.0
        x[-1] = 1.0
    return np.clip(x, 0, 1).astype(np.float32)


def test_file_is_small_valid_and_has_the_contract() -> None:
    assert ONNX_PATH.stat().st_size < 1_000_000
    model = onnx.load(str(ONNX_PATH))
    onnx.checker.check_model(model)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    dims_in = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    dims_out = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert (inp.name, dims_in) == ("x", ["batch", 2, CONTEXT])
    assert (out.name, dims_out) == ("y", ["batch", 2, HORIZON, 2])


@pytest.mark.parametrize("batch", [1, 7, 2048])
def test_onnx_equals_numpy_reference(session: ort.InferenceSession, batch: int) -> None:
    params = load_params(PARAMS_PATH)
    x = _windows(batch, seed=batch)
    (y,) = session.run(["y"], {"x": x})
    ref = forward(params, x)
    assert y.shape == (batch, 2, HORIZON, 2)
    np.testing.assert_allclose(y, ref, atol=1e-4, rtol=0)


def test_outputs_are_ordered_quantiles_in_range(session: ort.InferenceSession) -> None:
    x = _windows(4096, seed=1)
    (y,) = session.run(["y"], {"x": x})
    assert np.isfinite(y).all()
    assert (y >= 0).all() and (y <= 1).all()
    assert (y[..., 1] >= y[..., 0] - 1e-6).all()  # p90 >= p50


def test_flat_history_forecasts_about_the_same_level(session: ort.InferenceSession) -> None:
    x = np.full((3, 2, CONTEXT), 0.4, np.float32)
    (y,) = session.run(["y"], {"x": x})
    assert np.abs(y[..., 0] - 0.4).max() < 0.02


@pytest.mark.parametrize(("hidden", "shrink", "folded"),
                         [(0, 1.0, False), (8, 0.6, False), (8, 0.4, True), (0, 0.0, True),
                          (8, (0.3, 0.9), True)])
def test_export_of_any_parameters_equals_the_reference(
        tmp_path: Path, hidden: int, shrink: float | tuple[float, float], folded: bool) -> None:
    """The rearranged graph (scaled weights, p50 damping) for other shapes too: no
    hidden layer, a damping factor other than the shipped one (one, or one per
    resource), and with the linear path and the p90 calibration folded into the
    weights (or the linear path alone)."""
    from models.model import N_GRAPH_INPUTS, export_onnx, init_params

    rng = np.random.default_rng(hidden)
    params = init_params(hidden, rng)
    for k in ("w2", "b1", "b2"):
        params[k] = rng.normal(0, 0.3, params[k].shape).astype(np.float32)
    params["shrink"] = np.atleast_1d(np.array(shrink, np.float32))  # one, or per resource
    if folded:
        params["lin"] = rng.normal(0, 0.02, (2, N_GRAPH_INPUTS, HORIZON)).astype(np.float32)
        params["p90_log_scale"] = np.array([-0.3, 0.2], np.float32)
    path = tmp_path / "m.onnx"
    export_onnx(params, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _windows(512, seed=5)
    (y,) = sess.run(["y"], {"x": x})
    np.testing.assert_allclose(y, forward(params, x), atol=1e-4, rtol=0)
