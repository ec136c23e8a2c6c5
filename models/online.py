"""The online forecaster's graph and its shipped prior.

    python -m models.online     # fits the prior on the training series, writes
                                # forecaster_online.onnx (~1 min; needs the models extra)

cloudcore learns the weights of two scale-free ridge heads online
(`cloudcore.forecaster.online`, where the model is described); this program builds
the graph that serves them (weights as inputs) and the prior those heads start from:
the same ridge, fitted offline on the HISTORY part (first 80 %) of the training
series alibaba2018 and google2019 plus their synthetic nodes (`data.synthetic_nodes`,
seed 0), with the p90 offset q at 90 % coverage of the training errors. azure_v2 is
not read. The prior is stored in the graph as constant outputs (`prior_w60`...), so
the runtime reads it through onnxruntime like everything else.

Graph (opset 17), L symbolic (60 for the long head, 10 for the short one):

    x [2, B, L], m [2, B, 2] (the node's levels: 6 h and long-run), d [2, B, 1] (its
    spread) -> a = x[..., -1], s = max((max - min) / 4, SCALE_FLOOR),
    g = [a, s, s * clip((m - a) / s, -16, 16) (two columns), d]
    y [2, B, 2, 15] = clip(x @ w1 + g @ w2, 0, 1)       (axis 2: p50, p90)

with w1, w2 from `cloudcore.forecaster.online.Weights` (the heads' weights folded so
the window is read by the min/max and one MatMul only).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from cloudcore.forecaster.online import (
    HORIZON,
    LEVEL_HALF_LIFE,
    LEVELS,
    LONG,
    MEAN_HALF_LIFE,
    RESOURCES,
    SCALE_FLOOR,
    SHORT,
    SPREAD_FLOOR,
    SPREAD_HALF_LIFE,
    TARGET_CLIP,
    design,
)

OPSET = 17
HERE = Path(__file__).resolve().parent
ONLINE_PATH = HERE / "forecaster_online.onnx"
PRIOR_SEED = 0
PRIOR_NODES = 6
PRIOR_RIDGE = 1.0  # per example, on the normalised features


def export_online(path: Path, priors: dict[int, tuple[np.ndarray, np.ndarray]], *,
                  doc: str = "") -> None:
    """Writes the graph of the module docstring with `priors[L] = (wn [2, L, 15], q [2, 15])`
    as constant outputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: object) -> str:
        arr = np.asarray(value)
        arr = arr.astype(np.float32) if arr.dtype.kind == "f" else arr.astype(np.int64)
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    ax2 = const("ax2", [2])
    a = node("Slice", ["x", const("a_st", [-1]), const("a_en", [2**62]), ax2], "a")
    mn = node("ReduceMin", ["x"], "mn", axes=[2], keepdims=1)
    mx = node("ReduceMax", ["x"], "mx", axes=[2], keepdims=1)
    s = node("Max", [node("Mul", [node("Sub", [mx, mn], "rng"), const("quarter", 0.25)], "rq"),
                     const("floor", SCALE_FLOOR)], "s")
    lv = node("Clip", [node("Div", [node("Sub", ["m", a], "ma"), s], "mas"),
                       const("lv_lo", -TARGET_CLIP), const("lv_hi", TARGET_CLIP)], "lv")
    g = node("Concat", [a, s, node("Mul", [s, lv], "slv"), "d"], "g", axis=2)  # [2, B, 5]
    y30 = node("Add", [node("MatMul", ["x", "w1"], "xw"), node("MatMul", [g, "w2"], "gw")],
               "y30")  # [2, B, 30]: p50 (0..14), p90 (15..29)
    y4 = node("Reshape", [y30, const("shp", [RESOURCES, -1, 2, HORIZON])], "y4")
    node("Clip", [y4, const("lo", 0.0), const("hi", 1.0)], "y")
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                          [RESOURCES, "batch", 2, HORIZON])]
    for n in (LONG, SHORT):
        wn, q = priors[n]
        node("Identity", [const(f"c_w{n}", wn.astype(np.float32))], f"prior_w{n}")
        node("Identity", [const(f"c_q{n}", q.astype(np.float32).reshape(RESOURCES, HORIZON))],
             f"prior_q{n}")
        outs += [helper.make_tensor_value_info(f"prior_w{n}", TensorProto.FLOAT,
                                               [RESOURCES, n + LEVELS, HORIZON]),
                 helper.make_tensor_value_info(f"prior_q{n}", TensorProto.FLOAT,
                                               [RESOURCES, HORIZON])]
    f32 = TensorProto.FLOAT
    ins = [helper.make_tensor_value_info("x", f32, [RESOURCES, "batch", "L"]),
           helper.make_tensor_value_info("m", f32, [RESOURCES, "batch", LEVELS]),
           helper.make_tensor_value_info("d", f32, [RESOURCES, "batch", 1]),
           helper.make_tensor_value_info("w1", f32, [RESOURCES, "L", 2 * HORIZON]),
           helper.make_tensor_value_info("w2", f32, [RESOURCES, 3 + LEVELS, 2 * HORIZON])]
    graph = helper.make_graph(nodes, "edgefed_forecaster_online", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgefed.models.online")
    model.ir_version = 8
    model.doc_string = doc
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


def fit_ridge(x: np.ndarray, m: np.ndarray, d: np.ndarray, y: np.ndarray,
              lam: float = PRIOR_RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """Scale-free ridge of the head of length L = x.shape[2] on examples x [2, n, L],
    levels m [2, n, LEVELS], spreads d [2, n, 1], y [2, n, 15], weighted as online (by
    s / mean s): (wn [2, L + LEVELS, 15], q [2, 15] = 90th percentile of the errors in
    units of d)."""
    f, a, s = design(x, m)
    t = (y - a) / s
    tc = np.clip(t, -TARGET_CLIP, TARGET_CLIP)
    k = x.shape[2] + LEVELS
    sw = s[..., 0] / s[..., 0].mean(axis=1, keepdims=True)
    fw = f * sw[..., None]
    xtx = np.einsum("rml,rmk->rlk", fw, f) + lam * x.shape[1] * 1e-3 * np.eye(k)[None]
    wn = np.linalg.solve(xtx, np.einsum("rml,rmh->rlh", fw, tc))
    err = (t - np.einsum("rml,rlh->rmh", f, wn)) * (s / np.maximum(d, SPREAD_FLOOR))
    return wn, np.quantile(err, 0.9, axis=1)


def levels(v: np.ndarray) -> np.ndarray:
    """The per-node level m after each minute of v [2, T] (the Forecaster's EWMA)."""
    alpha = 1.0 - 0.5 ** (1.0 / LEVEL_HALF_LIFE)
    out = np.empty_like(v)
    lv = v[:, 0].copy()
    for t in range(v.shape[1]):
        lv += alpha * (v[:, t] - lv)
        out[:, t] = lv
    return out


def means(v: np.ndarray) -> np.ndarray:
    """The per-node long-run level mu after each minute of v [2, T] (the Forecaster's
    EWMA started at 0, half-life MEAN_HALF_LIFE, bias-corrected)."""
    gamma = 1.0 - 0.5 ** (1.0 / MEAN_HALF_LIFE)
    out = np.empty_like(v)
    mu = np.zeros(v.shape[0])
    for t in range(v.shape[1]):
        mu += gamma * (v[:, t] - mu)
        out[:, t] = mu / (1.0 - (1.0 - gamma) ** (t + 1))
    return out


def spreads(v: np.ndarray) -> np.ndarray:
    """The per-node spread d after each minute of v [2, T] (the Forecaster's EWMA of
    absolute one-minute changes, bias-corrected, at least SPREAD_FLOOR)."""
    beta = 1.0 - 0.5 ** (1.0 / SPREAD_HALF_LIFE)
    out = np.empty_like(v)
    sp = np.zeros(v.shape[0])
    for t in range(v.shape[1]):
        if t:
            sp += beta * (np.abs(v[:, t] - v[:, t - 1]) - sp)
        w = 1.0 - (1.0 - beta) ** t
        out[:, t] = np.maximum(sp / w if w > 0 else 0.0, SPREAD_FLOOR)
    return out


def training_examples(length: int, *, every: int = 3, history_fraction: float = 1.0,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Examples x [2, n, L], m [2, n, LEVELS], d [2, n, 1], y [2, n, 15] from the history
    part of the training series and their synthetic nodes (every `every`-th origin; real-sample
    origins only). `history_fraction` < 1 uses only the first part of each history (the
    prior of a history-split run, `models.evaluate_online --history-split`, must not see
    the part that run scores)."""
    from models import data

    xs, ms, ds, ys = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        series = [data.load_series(n) for n in data.TRAIN_SERIES]
    rng = np.random.default_rng(PRIOR_SEED)
    for s in series:
        hist = s.values[:, : int(s.split * history_fraction)]
        nodes = [hist, *data.synthetic_nodes(hist, count=PRIOR_NODES, rng=rng)]
        o = np.arange(LONG, hist.shape[1] - HORIZON + 1)
        o = o[(o - 1) % s.step == 0][::every]
        for v in nodes:
            idx_x = o[:, None] + np.arange(-length, 0)[None, :]
            idx_y = o[:, None] + np.arange(HORIZON)[None, :]
            xs.append(v[:, idx_x].astype(np.float32))
            ms.append(np.stack([levels(v)[:, o - 1], means(v)[:, o - 1]],
                               axis=2).astype(np.float32))
            ds.append(spreads(v)[:, o - 1, None].astype(np.float32))
            ys.append(v[:, idx_y].astype(np.float32))
    return (np.concatenate(xs, axis=1), np.concatenate(ms, axis=1),
            np.concatenate(ds, axis=1), np.concatenate(ys, axis=1))


def build(path: Path, *, history_fraction: float = 1.0, verbose: bool = True) -> None:
    """Fits both heads' priors on the training series' history (its first
    `history_fraction`) and writes the graph to `path`."""
    priors = {}
    for n in (LONG, SHORT):
        x, m, d, y = training_examples(n, history_fraction=history_fraction)
        wn, q = fit_ridge(x, m, d, y)
        priors[n] = (wn, q)
        if verbose:
            print(f"prior L={n}: {x.shape[1]} examples; q (p90 offset, in units of d) "
                  f"cpu {q[0].mean():.3f}, mem {q[1].mean():.3f} (mean over steps)")
    part = "" if history_fraction == 1.0 else f" (first {history_fraction:g} of it)"
    export_online(path, priors,
                  doc="edgefed online forecaster: scale-free ridge heads, weights as inputs; "
                      f"prior fitted on alibaba2018 + google2019 history{part} (models/online.py)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="fit the online forecaster's prior and "
                                             "write its graph")
    ap.add_argument("--output", default=str(ONLINE_PATH))
    args = ap.parse_args(argv)
    build(Path(args.output))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
