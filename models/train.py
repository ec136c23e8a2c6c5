"""Trains the forecaster and writes `models/forecaster.onnx`.

    python -m models.train [--out models/forecaster.onnx] [--seed 0]

Data: alibaba2018 and google2019 only (never azure_v2, the held-out series), the
history part (first 80 %) of each, spread into synthetic nodes (see data.py).
Tuning: candidates are fitted on the first 75 % of the history and compared on the
validation part (the last 25 % of the history, real series only); the chosen one is
refitted on the whole history and exported. The held-out last 20 % is never read.

Fit: Adam on the pinball loss at 0.5 (p50) and 0.9 (p90), computed in the
normalised space, optionally weighted by each window's scale (then it equals the
pinball loss in utilisation units). Plain numpy: forward and backward are written out below.

After the network: a linear path (ridge on the graph's 67 raw inputs, fitted on the
same windows) and the blend p50 = a + alpha * (network step) + beta * (linear
step), alpha and beta chosen on validation (`choose_blend`); then a per-resource p90
scale chosen on validation so p90 covers 90 % there (`calibrate`). Validation sets:
the validation part of each training series, and synthetic nodes cut from that part
(drawn with their own seed), so the choices weigh the aggregate traces and the
per-node job alike. `--post-only` redoes these choices for the shipped network
without refitting it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models import data
from models.baselines import Ridge, ewma, last_value
from models.metrics import score
from models.model import (
    HORIZON,
    export_onnx,
    features,
    forward,
    graph_inputs,
    init_params,
    load_params,
    raw_outputs,
    save_params,
)

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Hyper:
    hidden: int = 16
    epochs: int = 8
    lr: float = 2e-3
    batch: int = 1024
    l2: float = 1e-5
    synthetic_nodes: int = 6
    weight_by_scale: bool = True  # loss in utilisation units (else in normalised units)


def training_windows(
    series: list[data.Series], stop_of: str, *, nodes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Windows from the real series and `nodes` synthetic variants of each, cut only
    from [0, stop) where stop is the series' `valid_start` or `split`. Upsampled series
    give only origins at real samples (data.origins), which also roughly balances them
    (google2019 is 4x longer than alibaba2018 but has a real sample every 5 minutes)."""
    xs, ys = [], []
    for s in series:
        stop = getattr(s, stop_of)
        hist = s.values[:, :stop]
        for v in [hist, *data.synthetic_nodes(hist, count=nodes, rng=rng)]:
            x, y = data.windows(v, 0, stop, step=s.step)
            xs.append(x)
            ys.append(y)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)


def fit(
    x: np.ndarray, y: np.ndarray, hp: Hyper, rng: np.random.Generator, *, log: bool = False
) -> dict[str, np.ndarray]:
    f_all, a_all, s_all = features(x)
    t_all = ((y - a_all) / s_all).transpose(1, 0, 2)  # [2, B, 15], normalised targets
    w_all = s_all[..., 0].T[:, :, None]  # [2, B, 1]
    if not hp.weight_by_scale:
        w_all = np.full_like(w_all, float(w_all.mean()))
    params = init_params(hp.hidden, rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    step = 0
    n = len(x)
    n_feat = f_all.shape[2]
    total_steps = hp.epochs * ((n + hp.batch - 1) // hp.batch)
    for epoch in range(hp.epochs):
        order = rng.permutation(n)
        loss_sum = 0.0
        for i in range(0, n, hp.batch):
            idx = order[i : i + hp.batch]
            ft, h, o = raw_outputs(params, f_all[idx])
            t, w = t_all[:, idx], w_all[:, idx]
            o50, o90 = o[..., :HORIZON], o[..., HORIZON:]
            ex = np.exp(np.minimum(o90, 20.0))
            q90 = o50 + ex
            g50 = (t < o50).astype(np.float32) - 0.5
            g90 = (t < q90).astype(np.float32) - 0.9
            e50, e90 = t - o50, t - q90
            loss_sum += float((w * (np.maximum(0.5 * e50, -0.5 * e50)
                                    + np.maximum(0.9 * e90, -0.1 * e90))).sum())
            scale = 1.0 / (len(idx) * HORIZON)
            d_o = np.concatenate([w * (g50 + g90), w * g90 * ex], axis=2)
            d_o = (d_o * scale).astype(np.float32)
            fh = np.concatenate([ft, h], axis=2)
            grads = {
                "w2": fh.transpose(0, 2, 1) @ d_o + hp.l2 * params["w2"],
                "b2": d_o.sum(axis=1, keepdims=True),
            }
            d_h = (d_o @ params["w2"][:, n_feat:, :].transpose(0, 2, 1)) * (h > 0)
            grads["w1"] = ft.transpose(0, 2, 1) @ d_h + hp.l2 * params["w1"]
            grads["b1"] = d_h.sum(axis=1, keepdims=True)
            step += 1
            lr = hp.lr * 0.5 * (1.0 + np.cos(np.pi * step / total_steps))  # cosine decay
            for k, g in grads.items():
                m[k] = b1 * m[k] + (1 - b1) * g
                v2[k] = b2 * v2[k] + (1 - b2) * g * g
                mh = m[k] / (1 - b1**step)
                vh = v2[k] / (1 - b2**step)
                params[k] = (params[k] - lr * mh / (np.sqrt(vh) + eps)).astype(np.float32)
        if log:
            print(f"  epoch {epoch + 1}/{hp.epochs} loss {loss_sum / (n * 2 * HORIZON):.5f}",
                  flush=True)
    return params


def ridge_lambda(x: np.ndarray, y: np.ndarray, valid: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Ridge strength with the best mean validation sMAPE."""
    best = (np.inf, 1.0)
    for lam in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
        r = Ridge.fit(x, y, lam)
        sm = np.mean([score(vy, r.predict(vx))["smape_p50"] for vx, vy in valid])
        best = min(best, (sm, lam))
    return best[1]


def ewma_alpha(valid: list[tuple[np.ndarray, np.ndarray]]) -> float:
    best = (np.inf, 0.5)
    for alpha in (0.05, 0.1, 0.2, 0.3, 0.5, 0.7):
        sm = np.mean([score(vy, ewma(vx, alpha))["smape_p50"] for vx, vy in valid])
        best = min(best, (sm, alpha))
    return best[1]


BLEND_GRID = tuple(round(0.1 * i, 1) for i in range(11))
VALID_NODES = 4  # synthetic nodes per training series cut from its validation part
VALID_NODE_SEED = 1000  # their own seed (training draws from `seed`, evaluation from another)
LIN_LAMBDAS = (1e-3, 1e-1, 10.0)


def validation_sets(series: list[data.Series], seed: int) -> dict[str, tuple[np.ndarray, ...]]:
    """Windows of the validation part of each training series: the real series, and
    `VALID_NODES` synthetic nodes of it (variation drawn over the history part, windows
    cut only from the validation part). Never the held-out range, never azure_v2."""
    rng = np.random.default_rng(seed + VALID_NODE_SEED)
    out: dict[str, tuple[np.ndarray, ...]] = {}
    for s in series:
        out[s.name] = data.windows(s.values, s.valid_start, s.split, step=s.step)
        hist = s.values[:, : s.split]
        xs, ys = [], []
        for v in data.synthetic_nodes(hist, count=VALID_NODES, rng=rng):
            x, y = data.windows(v, s.valid_start, s.split, step=s.step)
            xs.append(x)
            ys.append(y)
        out[f"{s.name} nodes"] = (np.concatenate(xs), np.concatenate(ys))
    return out


def fit_linear(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """The linear path: per resource, ridge of y - a on the graph's 67 raw inputs
    (`model.graph_inputs`; no intercept, the inputs hold s and the level), [2, 67, 15]."""
    g = graph_inputs(x)
    a = x[..., -1:].astype(np.float64)
    lin = np.empty((x.shape[1], g.shape[2], HORIZON))
    for r in range(x.shape[1]):
        m = g[:, r].astype(np.float64)
        lin[r] = np.linalg.solve(m.T @ m + lam * np.eye(m.shape[1]), m.T @ (y[:, r] - a[:, r]))
    return lin.astype(np.float32)


class _Parts:
    """The pieces of the blend for one validation set, computed once."""

    def __init__(self, params: dict[str, np.ndarray], lin: np.ndarray, x: np.ndarray,
                 y: np.ndarray) -> None:
        f, a, s = features(x)
        _, _, o = raw_outputs(params, f)
        o = o.transpose(1, 0, 2)
        self.y, self.a, self.s = y, a, s
        self.net = s * o[..., :HORIZON]  # the network's p50 step (k = 1)
        self.width = s * np.exp(o[..., HORIZON:])  # the p90 offset before calibration
        self.lin = np.einsum("brf,rfh->brh", graph_inputs(x), lin)
        self.last = score(y, last_value(x))["smape_p50"]

    def p50(self, alpha: np.ndarray | float, beta: np.ndarray | float) -> np.ndarray:
        """alpha, beta: scalars or one per resource."""
        al = np.broadcast_to(np.asarray(alpha, np.float64), (2,))[None, :, None]
        be = np.broadcast_to(np.asarray(beta, np.float64), (2,))[None, :, None]
        return self.a + al * self.net + be * self.lin

    def pred(self, alpha: np.ndarray, beta: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
        p50 = self.p50(alpha, beta)
        p90 = p50 + self.width * np.exp(log_scale)[None, :, None]
        return np.clip(np.stack([p50, p90], axis=3), 0.0, 1.0)


def linear_lambda(x: np.ndarray, y: np.ndarray,
                  valid: dict[str, tuple[np.ndarray, ...]]) -> float:
    """Ridge strength of the linear path alone with the best mean validation sMAPE."""
    best = (np.inf, 1.0)
    for lam in LIN_LAMBDAS:
        lin = fit_linear(x, y, lam)
        sm = []
        for vx, vy in valid.values():
            p50 = vx[..., -1:] + np.einsum("brf,rfh->brh", graph_inputs(vx), lin)
            sm.append(score(vy, np.stack([p50, p50], axis=3))["smape_p50"])
        best = min(best, (float(np.mean(sm)), lam))
    return best[1]


def choose_blend(params: dict[str, np.ndarray], lin: np.ndarray,
                 valid: dict[str, tuple[np.ndarray, ...]],
                 ridge: Ridge) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per resource, (alpha, beta) of p50 = a + alpha * network step + beta * linear
    step, each pair from `BLEND_GRID` squared, cpu and memory searched jointly: the
    lowest mean over the validation sets of sMAPE (cpu and memory pooled, as in the
    table) relative to the last value, among the choices not worse than the ridge
    baseline on either real training series' validation part (if none is, among
    all). `params` and `lin` must be fitted without the validation part; the
    held-out range is never read. Returns alpha [2], beta [2] and a log."""
    from models.metrics import smape

    parts = {k: _Parts(params, lin, vx, vy) for k, (vx, vy) in valid.items()}
    names = list(parts)
    ridge_sm = np.array([score(vy, ridge.predict(vx))["smape_p50"]
                         for vx, vy in valid.values()])
    last = np.array([parts[k].last for k in names])
    real = np.array([not k.endswith(" nodes") for k in names])
    pairs = [(a, b) for a in BLEND_GRID for b in BLEND_GRID]
    # sMAPE of each resource alone, [set, resource, pair]; pooled = their mean
    per = np.empty((len(names), 2, len(pairs)))
    for i, k in enumerate(names):
        p = parts[k]
        for j, (a, b) in enumerate(pairs):
            p50 = p.a + a * p.net + b * p.lin
            for r in range(2):
                per[i, r, j] = smape(p.y[:, r], p50[:, r])
    pooled = 0.5 * (per[:, 0, :, None] + per[:, 1, None, :])  # [set, cpu pair, mem pair]
    rel = (pooled / last[:, None, None]).mean(axis=0)
    bad = (pooled[real] > ridge_sm[real, None, None]).any(axis=0)
    ok_any = not bad.all()
    # lowest rel among the allowed; ties to the larger weights (order of `pairs`)
    key = np.where(bad & ok_any, np.inf, rel)
    ci, mi = np.unravel_index(int(np.argmin(key[::-1, ::-1])), key.shape)
    ci, mi = len(pairs) - 1 - ci, len(pairs) - 1 - mi
    alpha = np.array([pairs[ci][0], pairs[mi][0]], np.float32)
    beta = np.array([pairs[ci][1], pairs[mi][1]], np.float32)
    sm = pooled[:, ci, mi]
    log = ["ridge validation sMAPE: "
           + ", ".join(f"{k} {v:.3f}" for k, v in zip(names, ridge_sm, strict=True)),
           "last value validation sMAPE: "
           + ", ".join(f"{k} {v:.3f}" for k, v in zip(names, last, strict=True)),
           f"chosen cpu alpha {pairs[ci][0]} beta {pairs[ci][1]}, memory alpha "
           f"{pairs[mi][0]} beta {pairs[mi][1]}: mean sMAPE / last value {rel[ci, mi]:.4f} ("
           + ", ".join(f"{k} {v:.3f}" for k, v in zip(names, sm, strict=True))
           + ("" if ok_any else "; no choice was as good as ridge on both series") + ")"]
    return alpha, beta, log


def calibrate(params: dict[str, np.ndarray], lin: np.ndarray, alpha: np.ndarray,
              beta: np.ndarray,
              valid: dict[str, tuple[np.ndarray, ...]]) -> tuple[np.ndarray, list[str]]:
    """Per resource, the log scale c of the p90 offset at which the mean over the
    validation sets of p90 coverage is 90 % (bisection; coverage grows with c)."""
    parts = [_Parts(params, lin, vx, vy) for vx, vy in valid.values()]
    out = np.zeros(2, np.float32)
    log = []
    for r in range(2):
        def coverage(c: float, r: int = r) -> float:
            ls = np.zeros(2)
            ls[r] = c
            return float(np.mean([100.0 * (p.y[:, r] <= p.pred(alpha, beta, ls)[:, r, :, 1])
                                  .mean() for p in parts]))
        lo, hi = -3.0, 3.0
        before = coverage(0.0)
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if coverage(mid) < 90.0:
                lo = mid
            else:
                hi = mid
        out[r] = hi
        log.append(f"{('cpu', 'memory')[r]}: p90 scale x{np.exp(hi):.3f} (mean validation "
                   f"coverage {before:.1f} % -> {coverage(hi):.1f} %)")
    return out, log


def post_fit(params: dict[str, np.ndarray], lin: np.ndarray, alpha: np.ndarray,
             beta: np.ndarray, log_scale: np.ndarray) -> dict[str, np.ndarray]:
    """The exported parameters: the network with its blend weight, the weighted
    linear path, the p90 calibration."""
    return {**{k: v for k, v in params.items() if k in ("w1", "b1", "w2", "b2")},
            "shrink": np.asarray(alpha, np.float32).reshape(2),
            "lin": (np.asarray(beta, np.float32).reshape(2, 1, 1) * lin).astype(np.float32),
            "p90_log_scale": log_scale.astype(np.float32)}


def tune_post(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
              valid: dict[str, tuple[np.ndarray, ...]],
              ridge: Ridge) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Linear-path lambda, blend and calibration, all chosen on validation for a
    network fitted without it (on windows x, y)."""
    lam = linear_lambda(x, y, valid)
    lin = fit_linear(x, y, lam)
    alpha, beta, log = choose_blend(params, lin, valid, ridge)
    log_scale, cal_log = calibrate(params, lin, alpha, beta, valid)
    return lam, alpha, beta, log_scale, [f"linear path lambda {lam}", *log, *cal_log]


def post_only(args: argparse.Namespace) -> None:
    """Redoes the post-fit choices for the shipped network without refitting it:
    refits the recorded hyper-parameters on the history minus validation (as the
    tuning did), chooses the linear path's lambda, the blend and the calibration on
    validation, refits the linear path on the whole history and writes the shipped
    .npz/.onnx/train_config."""
    cfg = json.loads((HERE / "train_config.json").read_text())
    hp = Hyper(**cfg["hyper"])
    rng = np.random.default_rng(cfg["seed"])
    series = [data.load_series(n) for n in data.TRAIN_SERIES]  # never azure_v2
    valid = validation_sets(series, cfg["seed"])
    xt, yt = training_windows(series, "valid_start", nodes=hp.synthetic_nodes, rng=rng)
    fitted = fit(xt, yt, hp, np.random.default_rng(cfg["seed"]))
    ridge_t = Ridge.fit(xt, yt, cfg["ridge_lambda"])
    lam, alpha, beta, log_scale, log = tune_post(fitted, xt, yt, valid, ridge_t)
    for line in log:
        print(" ", line, flush=True)
    xh, yh = training_windows(series, "split", nodes=hp.synthetic_nodes, rng=rng)
    params = post_fit(load_params(args.out.with_suffix(".npz")), fit_linear(xh, yh, lam),
                      alpha, beta, log_scale)
    export_onnx(params, args.out, doc=DOC)
    save_params(params, args.out.with_suffix(".npz"))
    cfg.pop("p50_shrink", None)
    cfg.pop("p50_shrink_criterion", None)
    cfg.update(_post_config(lam, alpha, beta, log_scale))
    (HERE / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _post_config(lam: float, alpha: np.ndarray, beta: np.ndarray,
                 log_scale: np.ndarray) -> dict[str, object]:
    return {
        "linear_path_lambda": lam,
        "blend_network": [round(float(v), 2) for v in alpha],  # cpu, memory
        "blend_linear": [round(float(v), 2) for v in beta],
        "blend_criterion": ("per resource, searched jointly: mean over the validation sets "
                            f"(training series, real and {VALID_NODES} synthetic nodes each, "
                            f"seed + {VALID_NODE_SEED}) of pooled sMAPE / last-value sMAPE, "
                            "among choices not worse than ridge on the real ones; grid "
                            + ", ".join(map(str, BLEND_GRID))),
        "p90_log_scale": [round(float(v), 5) for v in log_scale],
        "p90_criterion": "mean validation coverage 90 % per resource",
    }


DOC = ("edgefed forecaster: x[batch,2,60] cpu/mem utilisation, last 60 minutes -> "
       "y[batch,2,15,2] next 15 minutes, p50/p90. See models/model.py.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "forecaster.onnx")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="no tuning grid (for a smoke run)")
    ap.add_argument("--post-only", action="store_true",
                    help="only redo the blend and calibration of the shipped network "
                         "(see post_only)")
    args = ap.parse_args(argv)
    if args.post_only:
        post_only(args)
        return
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    series = [data.load_series(n) for n in data.TRAIN_SERIES]  # never azure_v2
    valid = [data.windows(s.values, s.valid_start, s.split, step=s.step) for s in series]
    valid_sets = validation_sets(series, args.seed)

    print("tuning on the validation part of the history ...", flush=True)
    xt, yt = training_windows(series, "valid_start", nodes=Hyper().synthetic_nodes, rng=rng)
    print(f"  {len(xt)} training windows", flush=True)
    grid = [Hyper()] if args.quick else [
        Hyper(hidden=0),
        Hyper(hidden=16),
        Hyper(hidden=32, epochs=16),
        Hyper(hidden=32, epochs=16, weight_by_scale=False),
    ]
    results = []
    for hp in grid:
        params = fit(xt, yt, hp, np.random.default_rng(args.seed))
        scores = [score(vy, forward(params, vx)) for vx, vy in valid]
        sm = float(np.mean([sc["smape_p50"] for sc in scores]))
        pin = float(np.mean([sc["pinball_p90"] for sc in scores]))
        cov = [round(sc["coverage_p90"], 1) for sc in scores]
        print(f"  {hp}: valid sMAPE {sm:.3f} pinball90 {pin:.5f} coverage {cov}", flush=True)
        results.append((sm + 100 * pin, hp, params))
    _, best, best_params = min(results, key=lambda r: r[0])
    lam = ridge_lambda(xt, yt, valid)
    alpha = ewma_alpha(valid)
    print(f"chosen {best}; ridge lambda {lam}; ewma alpha {alpha}", flush=True)
    lin_lam, w_net, w_lin, log_scale, post_log = tune_post(
        best_params, xt, yt, valid_sets, Ridge.fit(xt, yt, lam))
    for line in post_log:
        print(" ", line, flush=True)

    print("refitting on the whole history ...", flush=True)
    xh, yh = training_windows(series, "split", nodes=best.synthetic_nodes, rng=rng)
    params = fit(xh, yh, best, np.random.default_rng(args.seed), log=True)
    params = post_fit(params, fit_linear(xh, yh, lin_lam), w_net, w_lin, log_scale)
    export_onnx(params, args.out, doc=DOC)
    save_params(params, args.out.with_suffix(".npz"))
    ridge = Ridge.fit(xh, yh, lam)  # the ridge baseline sees exactly the same windows
    np.savez(HERE / "ridge_baseline.npz", coef=ridge.coef, resid_q90=ridge.resid_q90)
    (HERE / "train_config.json").write_text(json.dumps({
        "hyper": asdict(best), "ridge_lambda": lam, "ewma_alpha": alpha, "seed": args.seed,
        "train_series": list(data.TRAIN_SERIES), "training_windows": len(xh),
        **_post_config(lin_lam, w_net, w_lin, log_scale),
    }, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
