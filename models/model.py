"""The forecaster model: its features, its numpy reference forward pass, and its
export to ONNX. `train.py` fits the parameters, `evaluate.py` scores them; the
runtime (`cloudcore.forecaster`) only loads the exported `.onnx` file.

Contract of the ONNX graph (opset 17):

    input  "x"  float32 [batch, 2, 60]      last 60 one-minute points, oldest first;
                                             resource 0 = cpu, 1 = memory, in 0..1
    output "y"  float32 [batch, 2, 15, 2]   next 15 minutes (t+1 .. t+15);
                                             last axis: 0 = p50, 1 = p90; in 0..1,
                                             p90 >= p50 by construction

Design (per resource, weights not shared between cpu and memory):

- Normalise each window by its own last value `a` and scale
  `s = (max - min) / 4 + 0.01` (the range, about 4 standard deviations for 60
  points; a range rather than a std because it needs no cancelling sums, so float32
  gives the same answer in any summation order): z = (x - a) / s. The model is then
  about shape, not level, and works for nodes at any utilisation.
- Features: the 60 normalised lags plus summaries of the window (mean, min, max over
  all 60 and the last 15, mean of the last 5 and 15) and two level features (a and
  s themselves, since dynamics near 0 or 1 differ): 69 features.
- Model: a linear map plus a small ReLU layer (16 units) on the same features,
  giving 30 outputs o: p50 = a + k * s * o[:15], p90 = p50 + s * exp(o[15:]).
  Trained with the pinball loss at 0.5 and 0.9 (see train.py).
- k (`params["shrink"]`, one value or one per resource, default 1) weighs the
  network's p50 step from the last value; `params["lin"]` (optional, [2, 67, 15])
  adds a linear path on the graph's raw inputs g = [the 60 raw lags, min, max,
  min15, max15, a s, s s, s]: a ridge fit of y - a, times a blend weight per
  resource. So p50 = a + k s o50 + g @ lin, an ensemble of the network, a
  ridge-like linear model and the last value, with the weights chosen on the
  validation part only (`train.choose_blend`).
- `params["p90_log_scale"]` (optional, [2], per resource) calibrates the p90:
  p90 = p50 + s exp(o90 + c) (`train.calibrate`, validation part only).
- None of these adds an operation to the graph: they are folded into its weights
  (`scaled_weights`), so the inference cost does not change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONTEXT = 60
HORIZON = 15
RESOURCES = 2
QUANTILES = (0.5, 0.9)
SCALE_EPS = 0.01
N_SUMMARY = 9
N_FEATURES = CONTEXT + N_SUMMARY
OPSET = 17


def features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [B, 2, 60] -> (f [B, 2, 70], anchor [B, 2, 1], scale [B, 2, 1]), float32,
    computed exactly as the ONNX graph does."""
    x = x.astype(np.float32, copy=False)
    a = x[..., CONTEXT - 1 : CONTEXT]
    mn, mx = x.min(axis=2, keepdims=True), x.max(axis=2, keepdims=True)
    s = (mx - mn) * np.float32(0.25) + np.float32(SCALE_EPS)
    z = (x - a) / s
    z5 = z[..., CONTEXT - 5 :]
    z15 = z[..., CONTEXT - 15 :]
    summary = [
        z.mean(axis=2, keepdims=True),
        z5.mean(axis=2, keepdims=True),
        z15.mean(axis=2, keepdims=True),
        z.min(axis=2, keepdims=True),
        z.max(axis=2, keepdims=True),
        z15.min(axis=2, keepdims=True),
        z15.max(axis=2, keepdims=True),
        a,
        s,
    ]
    f = np.concatenate([z, *summary], axis=2)
    return f, a, s


def graph_inputs(x: np.ndarray) -> np.ndarray:
    """x [B, 2, 60] -> g [B, 2, 67], the graph's MatMul input before the scaling:
    [60 raw lags, min, max, min15, max15, a s, s s, s] (the linear path's features)."""
    x = x.astype(np.float32, copy=False)
    a = x[..., CONTEXT - 1 : CONTEXT]
    mn, mx = x.min(axis=2, keepdims=True), x.max(axis=2, keepdims=True)
    x15 = x[..., CONTEXT - 15 :]
    s = (mx - mn) * np.float32(0.25) + np.float32(SCALE_EPS)
    return np.concatenate([x, mn, mx, x15.min(axis=2, keepdims=True),
                           x15.max(axis=2, keepdims=True), a * s, s * s, s], axis=2)


N_GRAPH_INPUTS = CONTEXT + 7


def linear_path(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray | float:
    """The linear path's p50 term [B, 2, 15] (0 if the parameters have none)."""
    if "lin" not in params:
        return 0.0
    return np.einsum("brf,rfh->brh", graph_inputs(x), params["lin"]).astype(np.float32)


def p90_log_scale(params: dict[str, np.ndarray]) -> np.ndarray:
    """Per-resource calibration c of the p90 offset (0 = as trained), [2]."""
    if "p90_log_scale" not in params:
        return np.zeros(RESOURCES, np.float32)
    return params["p90_log_scale"].reshape(RESOURCES).astype(np.float32)


def init_params(hidden: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Parameters: w1 [2, F, H], b1 [2, 1, H], w2 [2, F + H, 30], b2 [2, 1, 30]."""
    f = N_FEATURES
    return {
        "w1": (rng.normal(0, 1, (RESOURCES, f, hidden)) * np.sqrt(2.0 / f)).astype(np.float32),
        "b1": np.zeros((RESOURCES, 1, hidden), np.float32),
        "w2": np.zeros((RESOURCES, f + hidden, 2 * HORIZON), np.float32),
        "b2": np.zeros((RESOURCES, 1, 2 * HORIZON), np.float32),
    }


def raw_outputs(params: dict[str, np.ndarray], f: np.ndarray) -> tuple[np.ndarray, ...]:
    """f [B, 2, F] -> (ft [2, B, F], h [2, B, H], o [2, B, 30]) before de-normalising."""
    ft = np.ascontiguousarray(f.transpose(1, 0, 2))
    h = np.maximum(ft @ params["w1"] + params["b1"], np.float32(0.0))
    o = np.concatenate([ft, h], axis=2) @ params["w2"] + params["b2"]
    return ft, h, o


def forward(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Numpy reference of the ONNX graph: x [B, 2, 60] -> y [B, 2, 15, 2]."""
    f, a, s = features(x)
    _, _, o = raw_outputs(params, f)
    o = o.transpose(1, 0, 2)  # [B, 2, 30]
    p50 = a + shrink_of(params)[None, :, None] * (s * o[..., :HORIZON]) + linear_path(params, x)
    p90 = p50 + s * np.exp(o[..., HORIZON:] + p90_log_scale(params)[None, :, None])
    y = np.stack([p50, p90], axis=3)
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def shrink_of(params: dict[str, np.ndarray]) -> np.ndarray:
    """The weight k of the network's p50 step per resource, [2] (1 = as trained)."""
    if "shrink" not in params:
        return np.ones(RESOURCES, np.float32)
    k = params["shrink"].reshape(-1).astype(np.float32)
    return np.repeat(k, RESOURCES) if k.size == 1 else k


def export_onnx(params: dict[str, np.ndarray], path: Path, *, doc: str = "") -> None:
    """Writes the graph described in the module docstring, batch dimension "batch"."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value: np.ndarray | list[int] | float) -> str:
        arr = np.asarray(value)
        arr = arr.astype(np.float32) if arr.dtype.kind == "f" else arr.astype(np.int64)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def node(op: str, inputs: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    # The graph computes the same function as `forward`, rearranged for speed: at
    # 100k nodes every full-size pass costs milliseconds of memory traffic, so the
    # graph is built to make few of them (see `scaled_weights` for the algebra):
    # - nothing is divided by s before the last step: ONE MatMul per output group
    #   on [window, 7 window summaries] gives s * (pre-activations) directly, the
    #   ReLU commuting with the positive factor s;
    # - the window's min/max over all 60 and the last 15 minutes come from one
    #   ReduceMin/ReduceMax over [2, B, 4, 15] (quarters), not a strided slice;
    # - elementwise ops on [2, B, 1] tensors use [2, B] views when a scalar is
    #   broadcast (onnxruntime walks a trailing dimension of 1 element by element);
    # - the output is assembled as [2, B, 15, 2] so the final Transpose moves
    #   contiguous 30-float rows.
    w_h, w_o, w2h, hidden = scaled_weights(params)
    r_ = RESOURCES
    xt = node("Transpose", ["x"], "xt", perm=[1, 0, 2])  # [2, B, 60]
    q4 = node("Reshape", [xt, const("shp_q4", [r_, -1, 4, 15])], "q4")  # quarters
    mn4 = node("ReduceMin", [q4], "mn4", axes=[3], keepdims=0)  # [2, B, 4]
    mx4 = node("ReduceMax", [q4], "mx4", axes=[3], keepdims=0)
    mn = node("ReduceMin", [mn4], "mn", axes=[2], keepdims=1)  # [2, B, 1]
    mx = node("ReduceMax", [mx4], "mx", axes=[2], keepdims=1)
    ax2 = const("ax2", [2])
    last_q = [const("lq_st", [3]), const("lq_en", [4]), ax2]
    mn15 = node("Slice", [mn4, *last_q], "mn15")
    mx15 = node("Slice", [mx4, *last_q], "mx15")
    a = node("Slice", [xt, const("a_st", [CONTEXT - 1]), const("a_en", [CONTEXT]), ax2], "a")
    rng2 = node("Reshape", [node("Sub", [mx, mn], "rng"), const("shp_2b", [r_, -1])], "rng2")
    s2 = node("Add", [node("Mul", [rng2, const("quarter", 0.25)], "rq"),
                      const("eps", SCALE_EPS)], "s2")  # [2, B]
    s = node("Unsqueeze", [s2, ax2], "s")  # [2, B, 1]
    g = node("Concat", [mn, mx, mn15, mx15, node("Mul", [a, s], "as"),
                        node("Mul", [s, s], "ss"), s], "g", axis=2)  # [2, B, 7]
    f = node("Concat", [xt, g], "f", axis=2)  # [2, B, 67]
    so = node("MatMul", [f, const("w_o", w_o)], "q_o")  # s * (linear part of o)
    if hidden:
        hr = node("Relu", [node("MatMul", [f, const("w_h", w_h)], "q_h")], "hr")  # s * h
        so = node("Add", [so, node("MatMul", [hr, const("w2h", w2h)], "h_mm")], "so")  # s * o
    d = node("Reshape", [so, const("shp_d", [r_, -1, 2, HORIZON])], "d")  # [2, B, 2, 15]
    nodes.append(helper.make_node("Split", [d], ["d50", "d90"], name="split", axis=2))
    ax3 = const("ax3", [3])
    s4 = node("Unsqueeze", [s, ax3], "s4")  # [2, B, 1, 1]
    p50 = node("Add", ["d50", node("Unsqueeze", [a, ax3], "a4")], "p50")  # a + s * o50
    e90 = node("Mul", [node("Exp", [node("Div", ["d90", s4], "o90")], "e90"), s4], "se90")
    p90 = node("Add", [p50, e90], "p90")  # p50 + s * exp(o90)
    col = const("shp_col", [r_, -1, HORIZON, 1])
    pq = node("Concat", [node("Reshape", [p50, col], "p50c"), node("Reshape", [p90, col], "p90c")],
              "pq", axis=3)  # [2, B, 15, 2]
    pq = node("Clip", [pq, const("lo", 0.0), const("hi", 1.0)], "y_clip")
    node("Transpose", [pq], "y", perm=[1, 0, 2, 3])

    graph = helper.make_graph(
        nodes,
        "edgefed_forecaster",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", RESOURCES, CONTEXT])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                       ["batch", RESOURCES, HORIZON, len(QUANTILES)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgefed.models.train")
    model.ir_version = 8  # readable by onnxruntime >= 1.14
    model.doc_string = doc
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def folded_weights(
    params: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Rearranges (w1, b1, w2, b2) for the exported graph: returns wx [2, 60, H + 30]
    (applied to the window minus its last value, divided by s afterwards), gw [2, 7, H + 30] for the
    non-linear summaries (min, max, min15, max15, std/s, a, s), the bias and w2 of
    the hidden units, and H."""
    hidden = params["w1"].shape[2]
    wf = np.concatenate([params["w1"], params["w2"][:, :N_FEATURES]], axis=2).astype(np.float64)
    lag = wf[:, :CONTEXT].copy()
    lag += wf[:, CONTEXT : CONTEXT + 1] / CONTEXT  # mean of z
    lag[:, CONTEXT - 5 :] += wf[:, CONTEXT + 1 : CONTEXT + 2] / 5  # mean of the last 5
    lag[:, CONTEXT - 15 :] += wf[:, CONTEXT + 2 : CONTEXT + 3] / 15  # mean of the last 15
    lag[:, CONTEXT - 1] -= lag.sum(axis=1)  # z = (x - a) / s with a = x[59]
    gw = wf[:, CONTEXT + 3 :]
    bias = np.concatenate([params["b1"], params["b2"]], axis=2)
    w2h = params["w2"][:, N_FEATURES:]
    return (lag.astype(np.float32), gw.astype(np.float32), bias.astype(np.float32),
            w2h.astype(np.float32), hidden)


def scaled_weights(
    params: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Weights of the exported graph, which computes s * (pre-activations) instead of
    the pre-activations, so nothing is divided by s until the p90 exponent.

    With `folded_weights`: pre = x @ lag / s + ((ext - a) / s) @ gw[:4] + a * gw[4]
    + s * gw[5] + bias, ext = (min, max, min15, max15). Multiplied by s > 0:
    s * pre = x @ lag' + ext @ gw[:4] + (a s) gw[4] + (s s) gw[5] + s bias, where
    lag' subtracts the ext weights from the last lag (a = x[59]). So one MatMul of
    f = [x (60), min, max, min15, max15, a s, s s, s] (67 columns) by W [2, 67, H + 30]
    gives s * pre; relu(s * pre_h) = s * h (s > 0), and s * o = (s * pre_o) + (s * h) @ w2h.
    The p50 columns are multiplied by the damping factor k (`shrink_of`), and the
    linear path (`lin`, on exactly these 67 columns) is added to them; the p90
    calibration c adds c * s to the p90 columns (the `s` row), i.e. c to o90.
    Returns (w_h [2, 67, H], w_o [2, 67, 30], w2h [2, H, 30], H), float32."""
    lag, gw, bias, w2h, hidden = folded_weights(params)
    lag = lag.astype(np.float64)
    gw = gw.astype(np.float64)
    lag[:, CONTEXT - 1] -= gw[:, :4].sum(axis=1)
    w = np.concatenate([lag, gw, bias.astype(np.float64)], axis=1)
    w2h = w2h.astype(np.float64)
    k = shrink_of(params).astype(np.float64)[:, None, None]  # p50 = a + k * (s * o50)
    w[:, :, hidden : hidden + HORIZON] *= k
    w2h[:, :, :HORIZON] *= k
    if "lin" in params:
        w[:, :, hidden : hidden + HORIZON] += params["lin"].astype(np.float64)
    w[:, N_GRAPH_INPUTS - 1, hidden + HORIZON :] += p90_log_scale(params).astype(
        np.float64)[:, None]
    w = w.astype(np.float32)
    return w[:, :, :hidden], w[:, :, hidden:], w2h.astype(np.float32), hidden


def save_params(params: dict[str, np.ndarray], path: Path) -> None:
    """The trained parameters in numpy form, for the reference forward in the tests."""
    np.savez(path, **params)


def load_params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k].astype(np.float32)
                for k in ("w1", "b1", "w2", "b2", "shrink", "lin", "p90_log_scale")
                if k in z.files}
