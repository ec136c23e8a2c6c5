"""Online learning: scale-free ridge heads fitted to the fleet's own telemetry, and a
p90 calibrated from their recent errors.

Why: a forecaster trained once on other clusters' traces transfers only partly to a
new fleet, and one that reads the utilisation LEVEL pulls every node toward the
levels it was trained on. The cloud sees every node every minute, so it can learn
the fleet it serves; only the shipped prior is learned elsewhere.

Scale-free inputs. A window x (L one-minute points, oldest first) is described
relative to itself: its last value `a` and its scale `s = max((max - min) / 4,
SCALE_FLOOR)`. A head predicts the normalised step z_h = (y_h - a) / s from the
normalised lags (x - a) / s, the node's own levels relative to the window,
clip((m - a) / s) and clip((mu - a) / s), and a bias; so p50_h = a + s * z_h. m is an
exponentially weighted mean of the node's history (half-life `LEVEL_HALF_LIFE`, 6 h),
mu its long-run level (half-life `MEAN_HALF_LIFE`, 7 days, bias-corrected: the plain
mean of a younger node's history); both kept per node by the `Forecaster`. mu is the
scale-free counterpart of what a ridge on raw lags with a bias learns on one series
(a pull toward that series' fixed long-run level, `sum(w) a + b`): the node's own
long-run level moves with the node when it is shifted or scaled, a fixed one does not
(since issue 15's sixth round; `models/README.md` has how it was chosen). Shifting a
node's series by a constant or multiplying it by a factor (another capacity) shifts or
multiplies its forecast the same way (exactly, as long as the range is above
4 x SCALE_FLOOR).

The graph (`models/forecaster_online.onnx`, see `models/online.py`) gets the weights
as INPUTS, so what is learned here is served by the same onnxruntime call:

    p50 = a + (x - a) @ w + s * b + s * clip((m - a) / s) * v + s * clip((mu - a) / s) * u
    p90 = p50 + d * q                      q >= 0 [2, 15] (p90 offset in units of d)

with d the node's spread: an exponentially weighted mean of its absolute one-minute
changes (half-life `SPREAD_HALF_LIFE`, bias-corrected for a young node, at least
`SPREAD_FLOOR`; kept per node by the `Forecaster` beside m and mu). Shifting a node's
series leaves d as it is, multiplying it multiplies d: the p90 stays scale-free.

(rearranged for speed as `Weights` describes: two MatMuls, no pass over the window
but the min/max and the one that multiplies it).

One `Head` per window length: `LONG` (60 minutes, nodes with a full hour) and `SHORT`
(the last 10 minutes, nodes with 10..59 minutes of history: a path fitted and
calibrated for short windows instead of padding them to a shape never seen).

Per head and resource it keeps the ridge's sufficient statistics (X'X [L+1, L+1],
X'Y [L+1, 15], each example weighted by its scale s relative to the running mean
scale, so a quiet window does not weigh as much as a busy one; decayed with a
half-life in examples) and solves
`(X'X + lam I) w = X'Y + lam w0` after each batch: the shipped prior w0 dominates
while a fleet is new and the fleet's own examples take over as they accumulate (lam
is the prior's weight in examples).

p90, calibrated online (split conformal with an adaptive level, the errors normalised
by the node's spread d, not by the window's scale s: a window's range says less about
the next 15 minutes' error than how much the node has been moving in the last hour;
chosen on the training series' history, `models/README.md`): before an example
joins the statistics, its error under the CURRENT weights, divided by d, is pushed into
a ring of the last `residuals` errors per resource; q = that ring's quantile (redone
once `residuals` / 256 new errors have arrived) at a level that is nudged by `gamma`
toward the 90 % target whenever the published q covered more or less than 90 % of
the new errors (adaptive conformal inference, Gibbs & Candes 2021). Per resource,
every horizon step its own q.

The combination of experts (per fleet, per resource and horizon step). The served
p50 is not the ridge head alone but a weighted mix of four experts: the ridge head,
last value, and EWMAs of the window with alpha 0.1 and 0.6 (`EWMA_ALPHAS`). Each
expert's loss on every example (the symmetric relative error |y - p| / (|y| + |p|),
what sMAPE averages; made with the weights in use, before the example is learned) is
added to a decayed sum L_k (half-life `mix_half_life` examples), and expert k weighs
exp(-eta (L_k / min_j L_j - 1)) (exponentiated weights on the loss relative to the
leader's, so the weights do not depend on the utilisation level; eta = `mix_eta`).
By construction the mix follows whichever expert has done best on this fleet at this
step, and mixes where they are close. All four are linear in the normalised
features (an EWMA's weights sum to one, so ewma - a = sum c_i (x_i - a)), so the mix
is one set of normalised weights: it is served by the same graph, the same MatMuls,
and stays exactly scale-free. The p90's calibration errors are those of the MIXED
p50 (conformal on what is served). Cost: per head 4 x [2, 15] float64 losses and
weights, fixed whatever the fleet (0 bytes per node); per batch one extra
[m, L] x [L] product per EWMA expert. Chosen on the training series' history only
(`models/README.md`): the experts, eta (20 / 50 / 100 / 300: 100 had the best worse
series against the online ridge baseline), the half-life.

Only the past: an example is a window whose 15 target minutes have all been
observed (`Forecaster.training_sample` cuts it from the ring at minute `now`: context
now-74..now-15, targets now-14..now). Nothing here reads a minute after `now`.

Cost (bounded whatever the fleet size): per head 2 x ((L+1)^2 + (L+1) x 15) float64
statistics and a [2, residuals, 15] float32 ring (LONG, 4096 errors: 0.5 MiB); one
batch of at most `sample_nodes` windows per minute: O(sample_nodes x L^2) for the
statistics, an L x L solve and a quantile over the ring. Run off the event loop by
`ForecastRunner` (a worker thread); `publish` swaps in the new weights atomically.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

HORIZON = 15
RESOURCES = 2
LONG = 60
SHORT = 10
SCALE_FLOOR = 1e-3
"""Smallest window scale s (utilisation units): a flat window is not divided by 0."""
LEVEL_HALF_LIFE = 360.0
"""Minutes: half-life of the per-node level m (an EWMA of the node's history)."""
MEAN_HALF_LIFE = 10_080.0
"""Minutes (7 days): half-life of the per-node long-run level mu, the second level
feature: an EWMA of the node's history, bias-corrected for the minutes it has (so a
node younger than a week gets the plain mean of its history)."""
LEVELS = 2
"""Per-node level features of a head: m (6 h) and mu (7 days), in this order."""
SPREAD_HALF_LIFE = 60.0
"""Minutes: half-life of the per-node spread d (an EWMA of |one-minute change|), the unit
of the p90 offset."""
SPREAD_FLOOR = 1e-4
"""Smallest spread d (utilisation units per minute): a flat node's p90 offset is not 0/0."""
TARGET_CLIP = 16.0
"""Normalised targets are clipped to +-this in the ridge fit (a jump out of a flat
window would otherwise weigh thousands of times more than a normal example); the
calibration uses the unclipped errors."""


@dataclass(frozen=True)
class OnlineSettings:
    """How the forecaster learns online; every field with its default and unit."""

    enabled: bool = True
    """Learn from the fleet (False: serve the shipped prior only)."""
    sample_nodes: int = 2000
    """Nodes per minute whose newest 75 minutes become training examples (random
    subset when more are eligible): bounds the CPU of learning whatever the fleet."""
    prior_weight: float = 200.0
    """lam: how many examples the shipped prior weighs in the ridge fit."""
    half_life: float = 200_000.0
    """Examples after which an old example weighs half (forgetting)."""
    residuals: int = 4096
    """Recent normalised errors kept per resource for the p90 calibration."""
    coverage: float = 0.9
    """Target coverage of the p90."""
    gamma: float = 0.001
    """Step of the adaptive calibration level per batch."""
    mix: bool = True
    """Serve the online combination of experts (the ridge head, last value, two EWMAs);
    False: the ridge head alone."""
    mix_eta: float = 100.0
    """Sharpness of the combination: expert k weighs exp(-eta (L_k / min L - 1)), L its
    decayed loss (dimensionless, so the weights do not depend on the utilisation level)."""
    mix_half_life: float = 20_000.0
    """Examples after which an old example's loss weighs half in the combination."""
    prior_expert: bool = False
    """Also mix the shipped prior's weights as a fifth expert (by its own recent loss)."""
    weight_power: float = 1.0
    """Each example weighs (s / mean s) ** weight_power in the ridge fit (s its window's
    scale; 2 = squared errors in utilisation units, 0 = every example alike)."""

    def validate(self) -> OnlineSettings:
        for name in ("sample_nodes", "residuals"):
            if getattr(self, name) < 1:
                raise ValueError(f"forecast.online.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("prior_weight", "half_life", "gamma", "mix_eta", "mix_half_life"):
            if not getattr(self, name) > 0:
                raise ValueError(f"forecast.online.{name} must be > 0, got {getattr(self, name)}")
        if not 0.5 <= self.coverage < 1:
            raise ValueError(f"forecast.online.coverage must be in [0.5, 1), got {self.coverage}")
        return self


@dataclass(frozen=True)
class Weights:
    """The graph's weight inputs for one head, in the form it computes fastest:
    y [2, B, 30] = x @ w1 + [a, s, s * clip((m_k - a) / s) for each level, d] @ w2,
    columns 0..14 the p50 and 15..29 the p90 (w1 [2, L, 30], w2 [2, 3 + LEVELS, 30]).
    This is the module doc's
    formula with (x - a) @ w = x @ w - a * sum(w) folded into the `a` row."""

    w1: np.ndarray
    w2: np.ndarray

    @classmethod
    def from_normalised(cls, wn: np.ndarray, q: np.ndarray) -> Weights:
        """wn [2, L + LEVELS, 15]: rows 0..L-2 weigh the normalised lags 0..L-2, rows
        L-1..L+LEVELS-2 the level features, the last row the bias (the last lag is always
        0 and has no row); q [2, 15] the p90 offset in units of the node's spread d
        (negative values count as 0)."""
        length = wn.shape[1] - LEVELS
        w = np.zeros((RESOURCES, length, HORIZON))
        w[:, :-1] = wn[:, : length - 1]
        b = wn[:, -1]
        vs = [wn[:, length - 1 + k] for k in range(LEVELS)]
        qq = np.maximum(np.asarray(q, np.float64).reshape(RESOURCES, HORIZON), 0.0)
        w1 = np.concatenate([w, w], axis=2)
        a_row = 1.0 - w.sum(axis=1)
        w2 = np.stack([np.concatenate([a_row, a_row], axis=1),
                       np.concatenate([b, b], axis=1),
                       *[np.concatenate([v, v], axis=1) for v in vs],
                       np.concatenate([np.zeros_like(qq), qq], axis=1)], axis=1)
        return cls(np.ascontiguousarray(w1, np.float32), np.ascontiguousarray(w2, np.float32))


EXPERTS = ("ridge head", "last value", "EWMA 0.1", "EWMA 0.6")
EWMA_ALPHAS = (0.1, 0.6)
"""Smoothing factors of the two EWMA experts (chosen on the training series' history:
one slow, one fast; last value is the third fixed expert)."""


def expert_weights(length: int) -> np.ndarray:
    """The fixed experts in the normalised form of `Head.wn` (one row per expert, the
    same for every step): last value (all zeros: p50 = a) and an EWMA of the window
    per `EWMA_ALPHAS`. An EWMA's weights sum to one, so ewma - a = sum c_i (x_i - a):
    a weighted sum of the normalised lags, without level or bias."""
    rows = [np.zeros(length + LEVELS)]
    for al in EWMA_ALPHAS:
        c = (1.0 - al) ** np.arange(length - 1, -1, -1, dtype=np.float64)
        c[1:] *= al  # oldest point keeps the rest of the mass: sum(c) == 1
        e = np.zeros(length + LEVELS)
        e[: length - 1] = c[:-1]  # the last lag is a itself (normalised 0): no row
        rows.append(e)
    return np.stack(rows)


def level_and_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [2, m, L] -> (a, s) [2, m, 1] as the graph computes them (float32)."""
    x = x.astype(np.float32, copy=False)
    a = x[..., -1:]
    s = np.maximum((x.max(axis=2, keepdims=True) - x.min(axis=2, keepdims=True))
                   * np.float32(0.25), np.float32(SCALE_FLOOR))
    return a, s


def design(x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [2, n, L], m [2, n, LEVELS] -> (f [2, n, L + LEVELS] = L-1 normalised lags, the
    level features and a 1, a, s), float64 f."""
    a, s = level_and_scale(x)
    length = x.shape[2]
    f = np.empty((*x.shape[:2], length + LEVELS), np.float64)
    f[..., : length - 1] = (x[..., :-1] - a) / s
    f[..., length - 1 : -1] = np.clip((m.astype(np.float32) - a) / s, -TARGET_CLIP,
                                      TARGET_CLIP)
    f[..., -1] = 1.0
    return f, a, s


def reference(x: np.ndarray, m: np.ndarray, d: np.ndarray, wt: Weights) -> np.ndarray:
    """Numpy reference of the graph: x [2, n, L], m [2, n, LEVELS], d [2, n, 1] ->
    y [2, n, 2, 15]
    (axis 2: p50, p90)."""
    a, s = level_and_scale(x)
    lv = np.clip((m.astype(np.float32) - a) / s, -TARGET_CLIP, TARGET_CLIP)
    g = np.concatenate([a, s, s * lv, d.astype(np.float32)], axis=2)
    y = x.astype(np.float32) @ wt.w1 + g @ wt.w2
    return np.clip(y, 0.0, 1.0).reshape(x.shape[0], x.shape[1], 2, HORIZON).astype(np.float32)


class Head:
    """Ridge statistics, weights and calibration of one window length."""

    def __init__(self, length: int, prior_wn: np.ndarray, prior_q: np.ndarray,
                 settings: OnlineSettings) -> None:
        k = length + LEVELS
        if prior_wn.shape != (RESOURCES, k, HORIZON):
            raise ValueError(f"prior of the {length}-minute head must be "
                             f"[2, {k}, 15], got {list(prior_wn.shape)} (a graph built "
                             "before the node's long-run level was a feature: rebuild it "
                             "with python -m models.online)")
        self.length = length
        self.settings = settings
        self.prior = prior_wn.astype(np.float64)
        self.xtx = np.zeros((RESOURCES, k, k))
        self.xty = np.zeros((RESOURCES, k, HORIZON))
        self.s_ref = np.zeros((RESOURCES, 1))  # running mean scale (example weights)
        self.examples = 0.0  # decayed count
        self.seen = 0  # examples ever learned from
        self.res = np.zeros((RESOURCES, settings.residuals, HORIZON), np.float32)
        self.res_n = 0
        self.res_i = 0
        self._since_q = 0
        self.level = np.full(RESOURCES, settings.coverage)
        self.covered = np.zeros(RESOURCES)  # of the published q, over the recent batches
        self.covered_n = 0
        self.wn = self.prior.copy()
        self.q = np.asarray(prior_q, np.float64).reshape(RESOURCES, HORIZON).copy()
        # the combination of experts (module doc): fixed experts in the normalised form,
        # their decayed losses and the weights they earn, per resource and step
        # [K - 1, 2, L + LEVELS, 15]: last value, the EWMAs (the same for every resource
        # and step) and, with `prior_expert`, the shipped prior
        fixed = np.broadcast_to(expert_weights(length)[:, None, :, None],
                                (len(EWMA_ALPHAS) + 1, RESOURCES, k, HORIZON))
        self.names = EXPERTS + (("prior",) if settings.prior_expert else ())
        self.experts = np.concatenate([fixed, self.prior[None]] if settings.prior_expert
                                      else [fixed])
        ne = 1 + len(self.experts)
        self.loss = np.zeros((ne, RESOURCES, HORIZON))
        self.mix = np.zeros((ne, RESOURCES, HORIZON))
        self.mix[0] = 1.0  # the ridge head alone until the first losses are in
        self.wmix = self._mixed()
        self.current = Weights.from_normalised(self.wmix, self.q)

    def _mixed(self) -> np.ndarray:
        """The served normalised weights [2, L + LEVELS, 15]: the mix of the ridge head and
        the fixed experts (all linear in the normalised features, so their mix is too)."""
        fixed = np.einsum("krh,krlh->rlh", self.mix[1:], self.experts)
        return self.mix[0][:, None, :] * self.wn + fixed

    def _update_mix(self, f: np.ndarray, a: np.ndarray, s: np.ndarray, y: np.ndarray) -> None:
        """Adds this batch's losses of every expert (made with the weights in use, before
        the batch is learned) and re-weighs them. Loss per example: the symmetric
        relative error |y - p| / (|y| + |p|) (what sMAPE averages; scale-free)."""
        st = self.settings
        m = f.shape[1]
        zs = [f @ self.wn] + [f @ e for e in self.experts]
        losses = []
        for z in zs:
            p = np.clip(a + s * z, 0.0, 1.0)
            losses.append((np.abs(y - p) / (np.abs(y) + p + 1e-6)).sum(axis=1))  # [2, 15]
        decay = 0.5 ** (m / st.mix_half_life)
        self.loss = decay * self.loss + np.stack(losses)
        rel = self.loss / np.maximum(self.loss.min(axis=0, keepdims=True), 1e-12)
        w = np.exp(-st.mix_eta * (rel - 1.0))
        self.mix = w / w.sum(axis=0, keepdims=True)

    def update(self, x: np.ndarray, lv: np.ndarray, sp: np.ndarray, y: np.ndarray) -> None:
        """Learns from examples: x [2, m, L] windows, lv [2, m, LEVELS] the node's levels
        and sp [2, m, 1] its spread at the window's end, y [2, m, 15] the minutes after."""
        m = x.shape[1]
        if m == 0:
            return
        st = self.settings
        f, a, s = design(x, lv)
        t = (y - a) / s  # normalised targets
        # calibration first: the errors of the weights in use, on examples they never saw
        err = ((t - f @ self.wmix) * (s / np.maximum(sp, SPREAD_FLOOR))).astype(np.float32)
        cov = (err <= self.q[:, None, :]).mean(axis=(1, 2))
        self.level = np.clip(self.level + st.gamma * (st.coverage - cov), 0.5, 0.995)
        self.covered = 0.98 * self.covered + 0.02 * cov if self.covered_n else cov
        self.covered_n += 1
        cap = st.residuals
        for lo in range(max(0, m - cap), m, cap):  # only the newest `cap` matter
            chunk = err[:, lo : lo + cap]
            k = chunk.shape[1]
            idx = (self.res_i + np.arange(k)) % cap
            self.res[:, idx] = chunk
            self.res_i = int((self.res_i + k) % cap)
            self.res_n = min(cap, self.res_n + k)
        if st.mix:
            self._update_mix(f, a, s, y)
        # ridge statistics, decayed, then the solve toward the prior
        tc = np.clip(t, -TARGET_CLIP, TARGET_CLIP)
        decay = 0.5 ** (m / st.half_life)
        sm = s[..., 0].astype(np.float64)  # [2, m]
        self.s_ref = (decay * self.s_ref * self.examples + sm.sum(axis=1, keepdims=True)) / (
            decay * self.examples + m)
        fw = f * ((sm / self.s_ref) ** st.weight_power)[..., None]
        fwt = fw.transpose(0, 2, 1)
        self.xtx = decay * self.xtx + fwt @ f  # BLAS, not einsum: 5x faster here
        self.xty = decay * self.xty + fwt @ tc
        self.examples = decay * self.examples + m
        self.seen += m
        lam = st.prior_weight
        eye = np.eye(self.length + LEVELS)[None]
        self.wn = np.linalg.solve(self.xtx + lam * eye, self.xty + lam * self.prior)
        self._since_q += m
        if self.res_n >= 50 and self._since_q >= max(1, st.residuals // 256):
            self._since_q = 0  # the quantile is the costly step: every 16 new errors
            ring = self.res[:, : self.res_n]
            self.q = np.maximum(np.stack([np.quantile(ring[r], self.level[r], axis=0)
                                          for r in range(RESOURCES)]), 0.0)
        self.wmix = self._mixed()
        self.current = Weights.from_normalised(self.wmix, self.q)


@dataclass(frozen=True)
class Sample:
    """Training examples cut at one minute: `long` [2, m, 75] (60 context + 15 target
    minutes) and `short` [2, k, 25] (10 + 15) of nodes too young for a long one, and
    each node's levels (m, mu) and spread d at the end of the context (`long_level`
    [2, m, LEVELS], `long_spread` [2, m, 1], `short_level` [2, k, LEVELS],
    `short_spread` [2, k, 1])."""

    long: np.ndarray
    short: np.ndarray
    long_level: np.ndarray
    short_level: np.ndarray
    long_spread: np.ndarray
    short_spread: np.ndarray


class OnlineLearner:
    """Both heads; `learn(sample)` may run in a worker thread while `weights()` is read
    on the event loop: each head publishes an immutable `Weights` by reference swap."""

    def __init__(self, prior: dict[int, tuple[np.ndarray, np.ndarray]],
                 settings: OnlineSettings | None = None) -> None:
        self.settings = (settings or OnlineSettings()).validate()
        self.heads = {n: Head(n, *prior[n], self.settings) for n in (LONG, SHORT)}
        self._lock = threading.Lock()  # one learn() at a time

    def weights(self, length: int) -> Weights:
        return self.heads[length].current

    def learn(self, sample: Sample) -> None:
        if not self.settings.enabled:
            return
        with self._lock:
            lg, sh = sample.long, sample.short
            if lg.shape[1]:
                self.heads[LONG].update(lg[..., :LONG], sample.long_level, sample.long_spread,
                                        lg[..., LONG:])
            # the short head learns from the last 10 context minutes of every window
            xs = np.concatenate([lg[..., LONG - SHORT :], sh], axis=1)
            ls = np.concatenate([sample.long_level, sample.short_level], axis=1)
            ds = np.concatenate([sample.long_spread, sample.short_spread], axis=1)
            if xs.shape[1]:
                self.heads[SHORT].update(xs[..., :SHORT], ls, ds, xs[..., SHORT:])

    def calibrated(self, length: int = LONG, *, band: tuple[float, float] = (0.85, 0.95),
                   min_examples: int = 500) -> bool:
        """Whether the head's p90 may be trusted: it has learned from `min_examples` and
        its recent coverage (an exponential average over the last ~50 batches of how
        often the published p90 covered the new errors) is within `band` for both
        resources."""
        h = self.heads[length]
        return bool(h.seen >= min_examples and h.covered_n > 0
                    and ((h.covered >= band[0]) & (h.covered <= band[1])).all())

    def status(self) -> dict[str, object]:
        """Examples learned and the calibration state per head (for logs and tests)."""
        return {str(n): {"examples": h.seen, "level": h.level.round(3).tolist(),
                         "recent_coverage": h.covered.round(3).tolist(),
                         "mix": dict(zip(h.names, h.mix.mean(axis=2).round(3).tolist(),
                                         strict=True))}
                for n, h in self.heads.items()}
