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
  giving 30 outputs o: p50 = a + s * o[:15], p90 = p50 + s * exp(o[15:]).
  Trained with the pinball loss at 0.5 and 0.9 (see train.py).
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
    p50 = a + s * o[..., :HORIZON]
    p90 = p50 + s * np.exp(o[..., HORIZON:])
    y = np.stack([p50, p90], axis=3)
    return np.clip(y, 0.0, 1.0).astype(np.float32)


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

    # The graph computes the same function as `forward`, rearranged for speed (every
    # full-size [batch, 2, 60] pass costs ~50 MB of memory traffic at 100k nodes):
    # all features that are linear in z (the lags and the window means) are folded,
    # with the "- a" of z, into one weight matrix applied to the raw window, so z is
    # never materialised: z @ W == (x @ W') / s.
    wx, gw, bias, w2h, hidden = folded_weights(params)
    ax2 = const("ax2", [2])
    xt = node("Transpose", ["x"], "xt", perm=[1, 0, 2])  # [2, B, 60]
    lin = node("MatMul", [xt, const("wx", wx)], "lin")  # [2, B, H + 30]
    a = node("Slice", [xt, const("a_st", [CONTEXT - 1]), const("a_en", [CONTEXT]), ax2], "a")
    x15 = node("Slice", [xt, const("x15_st", [CONTEXT - 15]), const("x15_en", [CONTEXT]), ax2],
               "x15")
    mn = node("ReduceMin", [xt], "mn", axes=[2], keepdims=1)
    mx = node("ReduceMax", [xt], "mx", axes=[2], keepdims=1)
    s = node("Add", [node("Mul", [node("Sub", [mx, mn], "rng"), const("quarter", 0.25)], "rq"),
                     const("eps", SCALE_EPS)], "s")
    ext = node("Concat", [mn, mx,
                          node("ReduceMin", [x15], "mn15", axes=[2], keepdims=1),
                          node("ReduceMax", [x15], "mx15", axes=[2], keepdims=1)], "ext", axis=2)
    ext_z = node("Div", [node("Sub", [ext, a], "ext_a"), s], "ext_z")
    g = node("Concat", [ext_z, a, s], "g", axis=2)  # [2, B, 6]
    pre = node("Add", [node("Add", [node("Div", [lin, s], "lin_s"),
                                    node("MatMul", [g, const("gw", gw)], "g_mm")], "pre0"),
                       const("bias", bias)], "pre")
    if hidden:
        h = node("Relu", [node("Slice", [pre, const("h_st", [0]), const("h_en", [hidden]), ax2],
                               "pre_h")], "h")
        o_lin = node("Slice", [pre, const("o_st", [hidden]),
                               const("o_en", [hidden + 2 * HORIZON]), ax2], "o_lin")
        o = node("Add", [o_lin, node("MatMul", [h, const("w2h", w2h)], "h_mm")], "o")
    else:
        o = pre
    o50 = node("Slice", [o, const("q50_st", [0]), const("q50_en", [HORIZON]), ax2], "o50")
    o90 = node("Slice", [o, const("q90_st", [HORIZON]), const("q90_en", [2 * HORIZON]), ax2],
               "o90")
    t90 = node("Add", [o50, node("Exp", [o90], "e90")], "t90")
    ax3 = const("ax3", [3])
    tq = node("Concat", [node("Unsqueeze", [o50, ax3], "t50u"),
                         node("Unsqueeze", [t90, ax3], "t90u")], "tq", axis=3)  # [2, B, 15, 2]
    s4 = node("Unsqueeze", [s, ax3], "s4")
    a4 = node("Unsqueeze", [a, ax3], "a4")
    y = node("Add", [a4, node("Mul", [s4, tq], "stq")], "y_t")
    y = node("Clip", [y, const("lo", 0.0), const("hi", 1.0)], "y_clip")
    node("Transpose", [y], "y", perm=[1, 0, 2, 3])

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


def save_params(params: dict[str, np.ndarray], path: Path) -> None:
    """The trained parameters in numpy form, for the reference forward in the tests."""
    np.savez(path, **params)


def load_params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k].astype(np.float32) for k in ("w1", "b1", "w2", "b2")}
