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


SHRINK_GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def choose_shrink(params: dict[str, np.ndarray],
                  valid: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[str]]:
    """The p50 damping factor k (p50 = last + k * (model p50 - last)) with the best mean,
    over the training series, of validation sMAPE relative to the last value (so the
    smooth google2019 counts as much as alibaba2018). `params` must be fitted without
    the validation part; the held-out range is never read. Ties go to the larger k."""
    best = (np.inf, 1.0)
    log = []
    for k in SHRINK_GRID:
        p = {**params, "shrink": np.array([k], np.float32)}
        rel = []
        for vx, vy in valid:
            rel.append(score(vy, forward(p, vx))["smape_p50"]
                       / score(vy, last_value(vx))["smape_p50"])
        log.append(f"k {k}: sMAPE / last value {', '.join(f'{r:.4f}' for r in rel)}")
        if np.mean(rel) < best[0] - 1e-9:
            best = (float(np.mean(rel)), k)
    return best[1], log


def shrink_only(args: argparse.Namespace) -> None:
    """Adds the damping factor to the shipped model without refitting it: refits the
    recorded hyper-parameters on the history minus validation (as the tuning did),
    chooses k on validation, writes k into the shipped .npz/.onnx/train_config."""
    cfg = json.loads((HERE / "train_config.json").read_text())
    hp = Hyper(**cfg["hyper"])
    rng = np.random.default_rng(cfg["seed"])
    series = [data.load_series(n) for n in data.TRAIN_SERIES]  # never azure_v2
    valid = [data.windows(s.values, s.valid_start, s.split, step=s.step) for s in series]
    xt, yt = training_windows(series, "valid_start", nodes=hp.synthetic_nodes, rng=rng)
    fitted = fit(xt, yt, hp, np.random.default_rng(cfg["seed"]))
    k, log = choose_shrink(fitted, valid)
    for line in log:
        print(" ", line)
    print(f"chosen k = {k}")
    params = load_params(args.out.with_suffix(".npz"))
    params["shrink"] = np.array([k], np.float32)
    export_onnx(params, args.out, doc=DOC)
    save_params(params, args.out.with_suffix(".npz"))
    cfg["p50_shrink"] = k
    cfg["p50_shrink_criterion"] = ("mean over training series of validation sMAPE / "
                                   "last-value sMAPE; grid " + ", ".join(map(str, SHRINK_GRID)))
    (HERE / "train_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


DOC = ("edgefed forecaster: x[batch,2,60] cpu/mem utilisation, last 60 minutes -> "
       "y[batch,2,15,2] next 15 minutes, p50/p90. See models/model.py.")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "forecaster.onnx")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="no tuning grid (for a smoke run)")
    ap.add_argument("--shrink-only", action="store_true",
                    help="only choose the p50 damping of the shipped model (see shrink_only)")
    args = ap.parse_args(argv)
    if args.shrink_only:
        shrink_only(args)
        return
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    series = [data.load_series(n) for n in data.TRAIN_SERIES]  # never azure_v2
    valid = [data.windows(s.values, s.valid_start, s.split, step=s.step) for s in series]

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
    shrink, shrink_log = choose_shrink(best_params, valid)
    for line in shrink_log:
        print(" ", line, flush=True)
    lam = ridge_lambda(xt, yt, valid)
    alpha = ewma_alpha(valid)
    print(f"chosen {best}; ridge lambda {lam}; ewma alpha {alpha}", flush=True)

    print("refitting on the whole history ...", flush=True)
    xh, yh = training_windows(series, "split", nodes=best.synthetic_nodes, rng=rng)
    params = fit(xh, yh, best, np.random.default_rng(args.seed), log=True)
    params["shrink"] = np.array([shrink], np.float32)
    export_onnx(params, args.out, doc=DOC)
    save_params(params, args.out.with_suffix(".npz"))
    ridge = Ridge.fit(xh, yh, lam)  # the ridge baseline sees exactly the same windows
    np.savez(HERE / "ridge_baseline.npz", coef=ridge.coef, resid_q90=ridge.resid_q90)
    (HERE / "train_config.json").write_text(json.dumps({
        "hyper": asdict(best), "ridge_lambda": lam, "ewma_alpha": alpha, "seed": args.seed,
        "train_series": list(data.TRAIN_SERIES), "training_windows": len(xh),
        "p50_shrink": shrink,
    }, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
