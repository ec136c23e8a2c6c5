"""The cloudcore service: wires store, fleet, scheduler, sync hub and API together.

`run(settings)` opens the store, loads the fleet into memory, then owns one
asyncio.TaskGroup of named tasks until cancelled:

    cloudcore.store.writer        batched LMDB commits
    cloudcore.synchub.subscriber  MQTT in: reports, acks, resyncs, wills
    cloudcore.synchub.publisher[i] MQTT out: deltas and report acks
    cloudcore.synchub.retries     resend deltas whose ack is late
    cloudcore.synchub.liveness    NotReady after missed heartbeats
    cloudcore.fleet.encoder       re-encodes changed objects for recently listed views
    cloudcore.forecaster          batched forecast of every node, each forecast.interval
    cloudcore.api                 uvicorn serving the FastAPI app

If any task fails, the group cancels the rest and `run` raises; on cancellation
the store commits what is pending before it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from cloudcore.api import create_app
from cloudcore.auth import Auth
from cloudcore.auth.secrets import mosquitto_hash
from cloudcore.config import Settings
from cloudcore.errors import ConfigError
from cloudcore.fleet import Fleet, Liveness
from cloudcore.metrics import Labels, Metrics
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store
from cloudcore.synchub import SyncHub
from cloudcore.synchub.mqtt import Publisher, Subscriber
from shared import topics

log = logging.getLogger("cloudcore")


@dataclass
class Running:
    """Handles to a running service, for tests and the CLI."""

    fleet: Fleet
    auth: Auth
    hub: SyncHub
    store: Store
    metrics: Metrics
    app: FastAPI
    url: str


async def run(settings: Settings, *,
              on_started: Callable[[Running], None] | None = None) -> None:
    """Run cloudcore until cancelled. Raises on a fatal error (store, bad settings)."""
    settings.validate()
    metrics = Metrics()
    async with Store(settings.store) as store:
        liveness = Liveness(default_heartbeat=settings.sync.heartbeat,
                            missed=settings.sync.missed_heartbeats, now=time.monotonic())
        fleet = Fleet(store=store, scheduler=Scheduler(), liveness=liveness)
        fleet.telemetry_points = settings.sync.telemetry_points
        fleet.eviction.timeout = settings.sync.pod_eviction_timeout
        fleet.events.capacity = settings.api.events
        records = store.load()
        fleet.load(records)
        auth = _open_auth(settings, store, records)
        del records
        log.info("loaded %d nodes, %d pods; store epoch %s", len(fleet.nodes), len(fleet.pods),
                 store.epoch)
        forecaster = open_forecaster(settings, fleet)
        hub = SyncHub(fleet=fleet, store=store, settings=settings.sync, metrics=metrics)
        publishers = [Publisher(settings.mqtt, index=i) for i in range(settings.mqtt.publishers)]

        def send(topic: str, payload: bytes) -> None:
            parsed = topics.parse(topic)
            part = topics.partition_of(parsed[0]) if parsed else 0
            publishers[part % len(publishers)].enqueue(topic, payload)

        hub.attach(send, backlog=lambda: sum(p.backlog for p in publishers))
        connected = {"sub": False}

        def on_connected(up: bool) -> None:
            connected["sub"] = up

        subscriber = Subscriber(settings.mqtt, handler=hub.handle, on_connected=on_connected)
        _register_gauges(metrics, fleet=fleet, store=store, publishers=publishers)
        app = create_app(fleet, metrics=metrics, flush=store.flush,
                         ready=lambda: connected["sub"], auth=auth, settings=settings.api,
                         broker=settings.broker_address(),
                         join_ttl=settings.auth.join_token_ttl,
                         max_join_ttl=settings.auth.max_join_token_ttl,
                         requests=hub.requests)
        server = _Server(uvicorn.Config(app, host=settings.http.host, port=settings.http.port,
                                        lifespan="off", log_level="warning",
                                        access_log=False))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(store.run(), name="cloudcore.store.writer")
            tg.create_task(subscriber.run(), name="cloudcore.synchub.subscriber")
            for i, pub in enumerate(publishers):
                tg.create_task(pub.run(), name=f"cloudcore.synchub.publisher[{i}]")
            tg.create_task(hub.run_retries(), name="cloudcore.synchub.retries")
            tg.create_task(hub.run_liveness(), name="cloudcore.synchub.liveness")
            tg.create_task(fleet.keep_encoded(), name="cloudcore.fleet.encoder")
            if forecaster is not None:
                tg.create_task(forecaster.run(settings.forecast.interval),
                               name="cloudcore.forecaster")
            sock = _bind(settings.http.host, settings.http.port)
            api = tg.create_task(_serve(server, sock, on_stop=fleet.watches.close),
                                 name="cloudcore.api")
            while not server.started:
                if api.done():
                    break
                await asyncio.sleep(0.02)
            if server.started:
                host, port = server.bound()
                url = f"http://{host}:{port}"
                print(f"cloudcore listening on {url}", flush=True)
                if on_started is not None:
                    on_started(Running(fleet=fleet, auth=auth, hub=hub, store=store,
                                       metrics=metrics, app=app, url=url))


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield

    def bound(self) -> tuple[str, int]:
        for srv in self.servers:
            for sock in srv.sockets:
                addr = sock.getsockname()
                return str(addr[0]), int(addr[1])
        return self.config.host, self.config.port


def _bind(host: str, port: int) -> socket.socket:
    """Bind the API socket up front, so a busy port is a clear error, not a sys.exit."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family = infos[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise ConfigError(f"http: cannot bind {host}:{port}: {exc}", field="http.port") from exc
    sock.set_inheritable(True)
    return sock


async def _serve(server: _Server, sock: socket.socket, *,
                 on_stop: Callable[[], None] = lambda: None) -> None:
    """Serve until cancelled, then shut down gracefully (closing the sockets).

    `on_stop` ends long-lived responses (watch streams) so the graceful shutdown
    does not wait for them."""
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        on_stop()
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), timeout=5)
        if not task.done():
            task.cancel()
        raise
    finally:
        sock.close()
    raise RuntimeError("API server stopped unexpectedly")


def open_forecaster(settings: Settings, fleet: Fleet) -> Any | None:
    """A `ForecastRunner` wired to the fleet, or None (logged once) when forecasting is
    off or onnxruntime / the model cannot be loaded: then the scheduler uses requests."""
    if not settings.forecast.enabled:
        fleet.clear_forecasts()
        return None
    try:
        from cloudcore.forecaster import ForecasterError, default_model_path
        from cloudcore.forecaster.runner import ForecastRunner
    except ImportError as exc:
        log.warning("forecasting disabled: cannot import the forecaster (%s)", exc)
        fleet.clear_forecasts()
        return None
    path = settings.forecast.model_path or default_model_path()
    try:
        runner = ForecastRunner(path, capacity_nodes=settings.forecast.capacity_nodes,
                                apply=fleet.apply_forecasts, known=lambda: fleet.nodes,
                                clock=fleet.clock, origins=fleet.scheduler.forecast_made)
    except ForecasterError as exc:
        log.warning("forecasting disabled: %s", exc)
        fleet.clear_forecasts()
        return None
    fleet.observer = runner.observe
    log.info("forecasting on: model %s, every %gs", path, settings.forecast.interval)
    return runner


GC_THRESHOLDS = (100_000, 50, 100)
"""Young-generation collections every 100k allocations instead of Python's 700. The
fleet holds millions of long-lived objects (100k nodes and pods are ~10 M), and with
the default thresholds an apply that creates a pod per node spent half its time in
the collector: a DaemonSet over 20k nodes took 5.6 s, 2.7 s with these
(`docs/benchmarks.md`)."""


def tune_gc() -> None:
    """Collector settings for a process that holds the fleet: raise the thresholds and
    move what is loaded by now out of the collector's sight (gc.freeze). The
    `cloudcore` binary calls it once started; it changes the whole process, so a
    program that embeds `run` decides for itself."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _open_auth(settings: Settings, store: Store,
               records: dict[str, dict[str, object]]) -> Auth:
    """The auth registry from the store, static tokens and the first admin token."""
    cfg = settings.auth
    passwd = cfg.mosquitto_passwd
    own: dict[str, str] = {}  # cloudcore's own broker user goes in the same file
    if passwd is not None and settings.mqtt.username and settings.mqtt.password:
        own[settings.mqtt.username] = mosquitto_hash(settings.mqtt.password)

    def write_passwd() -> None:
        if passwd is None:
            return
        tmp = passwd.with_name(passwd.name + ".tmp")
        try:
            try:  # keep the file's group: the broker reads it through that group
                gid: int | None = passwd.stat().st_gid
            except FileNotFoundError:
                gid = None
            tmp.write_text(auth.mosquitto_passwd(own))
            tmp.chmod(0o640)
            if gid is not None and gid != tmp.stat().st_gid:
                os.chown(tmp, -1, gid)
            tmp.replace(passwd)
        except OSError as exc:
            log.error("cannot write mosquitto password file %s: %s", passwd, exc)

    auth = Auth(store=store, enabled=cfg.enabled, on_credentials=write_passwd)
    auth.load(records)  # type: ignore[arg-type]
    if cfg.tokens_file is not None:
        n = auth.load_static(cfg.tokens_file)
        log.info("auth: %d static API tokens from %s", n, cfg.tokens_file)
    if cfg.enabled and cfg.bootstrap_admin:
        auth.bootstrap(settings.store.state_dir / "admin.token")
    write_passwd()
    log.info("API auth is %s", "on" if cfg.enabled else "off (anyone may call the API)")
    return auth


def _register_gauges(metrics: Metrics, *, fleet: Fleet, store: Store,
                     publishers: list[Publisher]) -> None:
    metrics.describe("cloudcore_nodes", "Nodes by readiness.")
    metrics.describe("cloudcore_store_commits", "Batched store write transactions committed.")
    metrics.describe("cloudcore_store_ops_written", "Puts and deletes written by those commits.")

    def gauges() -> Iterable[tuple[str, Labels, float]]:
        for state, n in fleet.readiness_counts().items():
            yield "cloudcore_nodes", (("ready", state),), float(n)
        yield "cloudcore_store_commits", (), float(store.commits)
        yield "cloudcore_store_ops_written", (), float(store.ops_written)
        yield "cloudcore_store_pending_ops", (), float(store.pending)
        yield "cloudcore_pods", (), float(len(fleet.pods))
        yield "cloudcore_publish_backlog", (), float(sum(p.backlog for p in publishers))

    metrics.add_gauges(gauges)
