"""Evaluation of the online forecaster through `models.forecast_csv`, as a user would run it.

    python -m models.evaluate_online                # alibaba2018, google2019 (~5 min)
    python -m models.evaluate_online --held-out     # + azure_v2, reported once at the end
    python -m models.evaluate_online --write-readme # also writes the tables into README.md
    python -m models.evaluate_online --history-split [--set mix_eta=300 ...]
                                                    # the selection runs (history only)
    python -m models.evaluate_online --level-terms  # the ridge's level terms (diagnostic)

Each series (one-minute, `models.data`) is written to a CSV and run, whole (history
and held-out range), through `python -m models.forecast_csv`: the forecaster starts
from the shipped prior and learns online from the series' own past, seeing only
minutes <= t at origin t. Scored: the origins of the HELD-OUT range (last 20 %, real
-sample origins only for the upsampled series, context and target inside the range),
the same origins as `models.evaluate`.

Baselines, with the same visibility (only minutes <= t at origin t):

- last value;
- EWMA of the 60-minute window, alpha chosen on the history part (first 80 %) of the
  same series (grid 0.05..0.95), by the lowest p50 sMAPE there;
- ridge on the 60 raw lags (plus a bias), predicting y - last value, refit every
  minute on every example whose targets are <= t (online, the series' own past),
  lambda chosen on the history part the same way (grid 1e-3..10). On an upsampled
  series (google2019, azure_v2: 5-minute samples) both it and the forecaster learn
  only from examples whose window ends at a real sample (`forecast_csv
  --real-every 5`): the same training rule for both.

Every baseline's p90 = its p50 + the 90th percentile (per resource and step) of its
own errors over the last 4096 origins whose targets are <= t (redone every 16
minutes, as the forecaster's calibration). The capacity table scales every series
by 1/c (c = 1, 1.5, 2, 3, 4: the same fleet on nodes c times larger).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from cloudcore.forecaster.online import OnlineSettings
from models import data, forecast_csv, metrics

HERE = Path(__file__).resolve().parent
KEEP = 4096
EVERY = 16
CAPACITY_LEVELS = (1.0, 1.5, 2.0, 3.0, 4.0)
EWMA_GRID = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
C = data.CONTEXT
H = data.HORIZON


def all_windows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows [T, 2, 60] ending at every minute t (NaN before minute 59) and targets
    [T, 2, 15] after it (NaN past the end)."""
    t_len = values.shape[1]
    pad = np.concatenate([np.full((2, C - 1), np.nan), values, np.full((2, H), np.nan)], axis=1)
    idx = np.arange(t_len)[:, None]
    x = pad[:, idx + np.arange(C)[None, :]].transpose(1, 0, 2)
    y = pad[:, idx + C + np.arange(H)[None, :]].transpose(1, 0, 2)
    return x, y


def model_forecast(values: np.ndarray, tmp: Path, step: int = 1, *,
                   model: Path | None = None, online: OnlineSettings | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """p50, p90 [T, 2, 15] at every origin, through the forecast_csv program (learning
    from real-sample examples only on an upsampled series: `--real-every step`). With
    `online` settings other than the defaults (the history split's candidates), through
    `forecast_csv.forecast_array`, the same code without the files."""
    if online is not None:
        res = forecast_csv.forecast_array(["node"], values.T[None].astype(np.float32),
                                          model=model or forecast_csv.DEFAULT_MODEL,
                                          online=online, real_every=step)
        return res["p50"][0].astype(np.float64), res["p90"][0].astype(np.float64)
    csv_path, out = tmp / "series.csv", tmp / "series.npz"
    np.savetxt(csv_path, values.T, fmt="%.7g", delimiter=",", header="cpu,mem", comments="")
    forecast_csv.main(["--input", str(csv_path), "--output", str(out),
                       "--real-every", str(step)]
                      + (["--model", str(model)] if model is not None else []))
    with np.load(out) as z:
        return z["p50"][0].astype(np.float64), z["p90"][0].astype(np.float64)


def ewma(x: np.ndarray, alpha: float) -> np.ndarray:
    w = (1.0 - alpha) ** np.arange(C - 1, -1, -1, dtype=np.float64)
    w[1:] *= alpha
    return np.repeat((x @ w)[..., None], H, axis=2)


LEVEL_TERMS = {
    "raw lags + bias (the baseline)": "raw",
    "lags - last value, no bias (shift- and scale-free)": "free",
    "lags - last value + bias": "bias",
    "lags - last value + last value": "level",
}
"""Feature sets of `online_ridge` for the `--level-terms` diagnostic: the baseline's raw
lags and bias can express a pull toward a fixed utilisation level (sum(w) a + b), which
a shift- and scale-free forecaster must give up."""


def online_ridge(x: np.ndarray, y: np.ndarray, lam: float, step: int = 1,
                 features: str = "raw") -> np.ndarray:
    """p50 [T, 2, 15]: at origin t, a ridge fitted on the examples of origins <= t - 15
    (on an upsampled series only those whose window ends at a real sample, as the
    forecaster learns: `forecast_csv --real-every`). `features` (`LEVEL_TERMS`): "raw"
    the 60 raw lags and a bias (the baseline); "free" the lags minus the last value
    only; "bias" those and a bias; "level" those and the last value."""
    t_len = len(x)
    a = np.nan_to_num(x[..., -1:])
    raw = np.nan_to_num(x)
    f = {"raw": lambda: np.concatenate([raw, np.ones((t_len, 2, 1))], axis=2),
         "free": lambda: raw - a,
         "bias": lambda: np.concatenate([raw - a, np.ones((t_len, 2, 1))], axis=2),
         "level": lambda: np.concatenate([raw - a, a], axis=2)}[features]()
    k = f.shape[2]
    tgt = np.nan_to_num(y - a)
    xtx = np.zeros((2, k, k))
    xty = np.zeros((2, k, H))
    eye = lam * np.eye(k)[None]
    w = np.zeros((2, k, H))
    out = np.empty((t_len, 2, H))
    for t in range(t_len):
        u = t - H
        if u >= C - 1 and u % step == 0:
            fu = f[u]
            xtx += fu[:, :, None] * fu[:, None, :]
            xty += fu[:, :, None] * tgt[u][:, None, :]
            if step > 1 or u % 5 == 0 or t < 400:
                w = np.linalg.solve(xtx + eye, xty)
        out[t] = a[t] + np.einsum("rl,rlh->rh", f[t], w)
    return np.clip(out, 0.0, 1.0)


def past_error_p90(p50: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p90 [T, 2, 15] = p50 + the 90th percentile of the errors of the last KEEP origins
    whose targets are all <= t (origins <= t - 15), redone every EVERY minutes."""
    err = y - p50
    q = np.zeros_like(p50)
    t_len = len(p50)
    for t0 in range(0, t_len, EVERY):
        hi = t0 - H + 1  # origins < hi have targets <= t0
        lo = max(0, hi - KEEP)
        e = err[lo:max(lo, hi)]
        e = e[np.isfinite(e).all(axis=(1, 2))]
        if len(e) >= 50:
            q[t0 : t0 + EVERY] = np.quantile(e, 0.9, axis=0)
    return p50 + q


def scores(y: np.ndarray, p50: np.ndarray, p90: np.ndarray) -> dict[str, float]:
    pred = np.stack([p50, p90], axis=-1)
    out = metrics.score(y, pred)
    for r, name in enumerate(("cpu", "mem")):
        out[f"coverage_{name}"] = float(100.0 * (y[:, r] <= p90[:, r]).mean())
        out[f"smape_{name}"] = metrics.smape(y[:, r], p50[:, r])
    return out


def choose(series: data.Series, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """EWMA alpha and ridge lambda, on the history part only (origins before the split)."""
    o = data.origins(0, series.split, step=series.step) - 1
    ya = y[o]
    best_a = min(EWMA_GRID, key=lambda al: metrics.smape(ya, ewma(x[o], al)))
    hist_x, hist_y = x[: series.split], y[: series.split]
    hist_y = np.where(np.arange(series.split)[:, None, None] + H < series.split, hist_y, np.nan)
    best_l = min(RIDGE_GRID, key=lambda lam: metrics.smape(
        ya, online_ridge(hist_x, hist_y, lam, series.step)[o]))
    return {"ewma_alpha": float(best_a), "ridge_lambda": float(best_l)}


def evaluate_series(series: data.Series, scale: float, cfg: dict[str, float] | None,
                    tmp: Path) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    values = series.values / scale
    x, y = all_windows(values)
    if cfg is None:
        cfg = choose(series, x, y)
    o = data.origins(series.split, values.shape[1], step=series.step) - 1
    p50m, p90m = model_forecast(values, tmp, series.step)
    last = np.repeat(x[..., -1:], H, axis=2)
    ew = ewma(x, cfg["ewma_alpha"])
    ridge = online_ridge(x, y, cfg["ridge_lambda"], series.step)
    out = {"model (online)": scores(y[o], p50m[o], p90m[o])}
    for name, p50 in (("last value", last), ("EWMA", ew), ("ridge, 60 lags, online", ridge)):
        out[name] = scores(y[o], p50[o], past_error_p90(np.nan_to_num(p50), y)[o])
    return out, cfg


def table(rows: list[tuple[str, str, dict[str, float]]]) -> str:
    head = ("| series | method | sMAPE p50 % | MAE p50 | pinball p90 | coverage p90 % "
            "(cpu / mem) |\n|---|---|---:|---:|---:|---:|")
    lines = [head]
    for series, method, s in rows:
        lines.append(f"| {series} | {method} | {s['smape_p50']:.2f} | {s['mae_p50']:.4f} | "
                     f"{s['pinball_p90']:.5f} | {s['coverage_p90']:.1f} "
                     f"({s['coverage_cpu']:.1f} / {s['coverage_mem']:.1f}) |")
    return "\n".join(lines)


def verdicts(name: str, res: dict[str, dict[str, float]]) -> list[str]:
    m = res["model (online)"]
    base = {k: v for k, v in res.items() if k != "model (online)"}
    best = min(base, key=lambda k: base[k]["smape_p50"])
    lv = res["last value"]["smape_p50"]
    gain = 100 * (1 - m["smape_p50"] / lv)
    cov_ok = all(85 <= m[k] <= 95 for k in ("coverage_cpu", "coverage_mem"))
    pin_best = min(v["pinball_p90"] for v in base.values())
    ok50 = "met" if m["smape_p50"] <= base[best]["smape_p50"] else "NOT met"
    return [
        f"- {name}: p50 sMAPE {m['smape_p50']:.3f} vs best baseline {best} "
        f"{base[best]['smape_p50']:.3f} ({ok50}"
        f": no worse than the best baseline); {abs(gain):.1f} % "
        f"{'below' if gain >= 0 else 'ABOVE'} last value; p90 coverage "
        f"cpu {m['coverage_cpu']:.1f} %, mem {m['coverage_mem']:.1f} % "
        f"({'met' if cov_ok else 'NOT met'}: 85-95 % per resource); pinball {m['pinball_p90']:.5f} "
        f"vs best baseline {pin_best:.5f} ({'met' if m['pinball_p90'] < pin_best else 'NOT met'})"]


def history_split(names: list[str], settings: dict[str, str], cut: float = 1.0) -> None:
    """The selection protocol (module doc of `models/README.md`, "Chosen on the training
    series' history only"): each series cut to its history part (first 80 %), the last
    fifth of that scored, the prior refitted on the first 80 % of the history
    (`models.online.build(history_fraction=0.8)`: it must not have seen the scored
    part), `settings` (OnlineSettings fields) for the forecaster. `cut` < 1: an earlier
    fold, the series cut to the first `cut` of its history instead (the last fifth of
    that scored, the prior fitted on what comes before). Prints the model's and the
    online ridge's figures; writes nothing."""
    if not 0.3 <= cut <= 1.0:
        raise SystemExit(f"--cut must be within 0.3..1, got {cut}")
    from models import online as prior_fit

    fields = {f.name: f.type for f in dataclasses.fields(OnlineSettings)}
    kw: dict[str, object] = {}
    for k, v in settings.items():
        if k not in fields:
            raise SystemExit(f"--set: unknown OnlineSettings field {k!r}; known: "
                             f"{', '.join(fields)}")
        kw[k] = (v.lower() in ("1", "true", "yes")) if fields[k] in (bool, "bool") else (
            int(v) if fields[k] in (int, "int") else float(v))
    st = OnlineSettings(**kw)  # type: ignore[arg-type]
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as td:
        warnings.simplefilter("ignore", DeprecationWarning)
        tmp = Path(td)
        prior = tmp / "prior_history_0.8.onnx"
        prior_fit.build(prior, history_fraction=0.8 * cut, verbose=False)
        for name in names:
            full = data.load_series(name)
            series = data.Series(name=full.name,
                                 values=full.values[:, : int(full.split * cut)],
                                 note=full.note, step=full.step)
            x, y = all_windows(series.values)
            cfg = choose(series, x, y)
            o = data.origins(series.split, series.values.shape[1], step=series.step) - 1
            p50, p90 = model_forecast(series.values, tmp, series.step, model=prior, online=st)
            ridge = online_ridge(x, y, cfg["ridge_lambda"], series.step)
            rows = [(name, f"model (online) {kw or 'defaults'}", scores(y[o], p50[o], p90[o])),
                    (name, "ridge, 60 lags, online",
                     scores(y[o], ridge[o], past_error_p90(ridge, y)[o]))]
            print(table(rows), flush=True)
            print(f"{name}: sMAPE p50 model {rows[0][2]['smape_p50']:.4f}, online ridge "
                  f"{rows[1][2]['smape_p50']:.4f}; pinball p90 {rows[0][2]['pinball_p90']:.6f}, "
                  f"{rows[1][2]['pinball_p90']:.6f}", flush=True)


def level_terms(names: list[str]) -> None:
    """Prints p50 sMAPE on the held-out range of each series for the online ridge with
    each feature set of `LEVEL_TERMS` (lambda chosen on the history part, as the
    baseline's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in names:
            series = data.load_series(name)
            x, y = all_windows(series.values)
            lam = choose(series, x, y)["ridge_lambda"]
            o = data.origins(series.split, series.values.shape[1], step=series.step) - 1
            for label, feats in LEVEL_TERMS.items():
                p = online_ridge(x, y, lam, series.step, feats)
                print(f"| {name} | {label} | {metrics.smape(y[o], p[o]):.3f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="evaluate the online forecaster via forecast_csv")
    ap.add_argument("--held-out", action="store_true", help="also score azure_v2 (once)")
    ap.add_argument("--write-readme", action="store_true")
    ap.add_argument("--series", default=",".join(data.TRAIN_SERIES))
    ap.add_argument("--history-split", action="store_true",
                    help="only the selection run: the last fifth of each training series' "
                         "history scored, prior refitted on the rest (writes nothing)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="with --history-split: an OnlineSettings field for the forecaster")
    ap.add_argument("--cut", type=float, default=1.0,
                    help="with --history-split: an earlier fold, the series cut to this "
                         "fraction of its history (default 1: the whole history)")
    ap.add_argument("--level-terms", action="store_true",
                    help="only the diagnostic: the online ridge baseline with and without "
                         "its absolute-level terms, on the held-out ranges of --series "
                         "(chooses nothing)")
    args = ap.parse_args(argv)
    if args.history_split:
        names = [s for s in args.series.split(",") if s]
        if any(n not in data.TRAIN_SERIES for n in names):
            raise SystemExit("--history-split runs on the training series only")
        history_split(names, dict(kv.split("=", 1) for kv in args.set), args.cut)
        return
    if args.level_terms:
        level_terms([s for s in args.series.split(",") if s])
        return
    names = [s for s in args.series.split(",") if s]
    if args.held_out:
        names += [n for n in data.HELD_OUT_SERIES if n not in names]
    t_start = time.time()
    rows: list[tuple[str, str, dict[str, float]]] = []
    cap_rows: list[str] = []
    notes: list[str] = []
    result: dict[str, object] = {}
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as td:
        warnings.simplefilter("ignore", DeprecationWarning)
        tmp = Path(td)
        for name in names:
            series = data.load_series(name)
            res, cfg = evaluate_series(series, 1.0, None, tmp)
            rows += [(name, k, v) for k, v in res.items()]
            notes += verdicts(name, res)
            result[name] = {"x1": res, "chosen_on_history": cfg}
            print(table([(name, k, v) for k, v in res.items()]), flush=True)
            for c in CAPACITY_LEVELS:
                r = res if c == 1.0 else evaluate_series(series, c, cfg, tmp)[0]
                m, lv = r["model (online)"], r["last value"]
                best = min((k for k in r if k != "model (online)"),
                           key=lambda k: r[k]["smape_p50"])
                cap_rows.append(
                    f"| {name} | x{c:g} | {m['smape_p50']:.3f} | {lv['smape_p50']:.3f} | "
                    f"{100 * (m['smape_p50'] / lv['smape_p50'] - 1):+.1f} % | "
                    f"{best} {r[best]['smape_p50']:.3f} | {m['coverage_cpu']:.1f} / "
                    f"{m['coverage_mem']:.1f} | {m['pinball_p90'] * c:.5f} |")
                result[name][f"x{c:g}"] = r  # type: ignore[index]
                print(cap_rows[-1], flush=True)
    cap = ("| series | capacity | model sMAPE p50 % | last value | model vs last value | "
           "best baseline | model coverage cpu / mem % | model pinball p90 x c |\n"
           "|---|---|---:|---:|---:|---|---:|---:|\n" + "\n".join(cap_rows))
    text = (table(rows) + "\n\nTargets of issue 15 (held-out ranges, x1):\n\n" + "\n".join(notes)
            + "\n\nThe same series at 5 capacity levels (utilisation / c):\n\n" + cap
            + f"\n\n({time.time() - t_start:.0f} s, load average "
            f"{' '.join(f'{v:.2f}' for v in os.getloadavg())})")
    print(text)
    (HERE / "metrics_online.json").write_text(json.dumps(result, indent=1, default=float))
    if args.write_readme:
        readme = HERE / "README.md"
        block = ("<!-- online:begin (generated by python -m models.evaluate_online"
                 f"{' --held-out' if args.held_out else ''}) -->\n" + text
                 + "\n<!-- online:end -->")
        old = readme.read_text()
        if "<!-- online:begin" in old:
            new = re.sub(r"<!-- online:begin.*?<!-- online:end -->", lambda _: block, old,
                         flags=re.S)
        else:
            new = old.rstrip("\n") + "\n\n" + block + "\n"
        readme.write_text(new)


if __name__ == "__main__":
    main()
