"""The service side of the forecaster: fed by fleet telemetry, run every interval.

`ForecastRunner.observe` is the fleet's telemetry observer; `tick()` runs one batched
`predict()` and hands each node's horizon peaks (p50/p90 of cpu and memory) to a
callback (`Fleet.apply_forecasts`), with `trusted` = 1.0 when the node has a full
hour of history (method MODEL) and the forecaster's p90 is calibrated within
85-95 % (`OnlineLearner.calibrated`), else 0.0 (the scheduler's right-sizing mode
admits by forecast only on trusted nodes). Before that, `origins` (the scheduler's
`Scheduler.forecast_made`) learns each node's forecast origin: the start, in Unix
seconds, of the newest minute the node reported, so placements made since still
count against the node. `run()` is the `cloudcore.forecaster` task.

`exchange` (shards only: `cloudcore.cluster.forecasts.SharedForecasts.exchange`) sees
each tick's results and origins first and returns what is applied and what the
scheduler learns: the forecasts of the nodes the shard owns (the others' histories here
are left over from partitions it gave up), and the origins of those nodes plus of every
other shard's node whose forecast it shares.

Online learning: each tick also cuts the learner's examples at that minute
(`Forecaster.training_sample`, a copy of at most `online.sample_nodes` windows, made
on the event loop so it never races `observe`); `run()` then hands them to a worker
thread (`asyncio.to_thread(learn_pending)`), so fitting and calibrating never hold
the event loop. The new weights serve from the next tick on. `run()` awaits the learning before it
sleeps again, so batches never queue up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Container
from pathlib import Path

import numpy as np

from cloudcore.forecaster.core import Forecaster, Method
from cloudcore.forecaster.errors import CapacityExceeded, ForecasterError
from cloudcore.forecaster.online import OnlineSettings, Sample

log = logging.getLogger("cloudcore.forecaster")

Results = dict[str, dict[str, float]]
Origins = dict[str, float]


class ForecastRunner:
    def __init__(self, model_path: Path | str, *, capacity_nodes: int,
                 apply: Callable[[Results], None],
                 known: Callable[[], Container[str]] = lambda: (),
                 clock: Callable[[], float] = time.time,
                 origins: Callable[[dict[str, float]], None] | None = None,
                 online: OnlineSettings | None = None,
                 exchange: Callable[[Results, Origins], tuple[Results, Origins]] | None = None
                 ) -> None:
        self.forecaster = Forecaster(model_path, capacity_nodes=capacity_nodes, online=online)
        self._pending: Sample | None = None
        self.learn_failures = 0
        self.apply = apply
        self.origins = origins
        self.exchange = exchange
        self.known = known
        self.clock = clock
        self.rejected = 0  # points refused because the forecaster is full
        self._full_logged = False

    def observe(self, node: str, minute: int, cpu: float, mem: float) -> None:
        try:
            self.forecaster.observe(node, minute, cpu, mem)
        except CapacityExceeded as exc:
            self.rejected += 1
            if not self._full_logged:
                self._full_logged = True
                log.warning("forecaster full, nodes beyond it get no forecast: %s", exc)

    def tick(self, *, now_minute: int | None = None) -> Results:
        """One batched forecast; forgets nodes no longer in the fleet. Returns the
        forecasts applied (with `exchange`: this shard's nodes' only)."""
        fc = self.forecaster.predict(now_minute=now_minute)
        known = self.known()
        p50 = fc.p50.max(axis=2)  # [n, 2] peak over the horizon
        p90 = fc.p90.max(axis=2)
        out: Results = {}
        origin: dict[str, float] = {}
        gone = []
        newest = (fc.newest * 60).tolist()
        calibrated = self.forecaster.learner.calibrated()
        trusted = ((fc.method == Method.MODEL) & calibrated).tolist()
        for i, name in enumerate(fc.nodes.tolist()):
            if known and name not in known:
                gone.append(name)
                continue
            out[name] = {"cpu_p50": float(p50[i, 0]), "cpu_p90": float(p90[i, 0]),
                         "mem_p50": float(p50[i, 1]), "mem_p90": float(p90[i, 1]),
                         "trusted": 1.0 if trusted[i] else 0.0}
            origin[name] = float(newest[i])
        for name in gone:
            self.forecaster.remove(name)
        if self.exchange is not None:
            out, origin = self.exchange(out, origin)
        if self.origins is not None:
            self.origins(origin)
        self.apply(out)
        if self.forecaster.learner.settings.enabled:
            self._pending = self.forecaster.training_sample(now_minute=fc.now)
        return out

    def learn_pending(self) -> None:
        """Learns from the examples the last tick cut (thread-safe against ticks: the
        sample is a copy and the weights are swapped in whole)."""
        sample, self._pending = self._pending, None
        if sample is None:
            return
        try:
            self.forecaster.learner.learn(sample)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            # the weights in use stay as they were; forecasting goes on
            self.learn_failures += 1
            log.error("online learning failed, keeping the current weights: %s", exc)

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick(now_minute=int(self.clock() // 60))
            except ForecasterError as exc:
                log.error("forecast failed: %s", exc)
                continue
            await asyncio.to_thread(self.learn_pending)
