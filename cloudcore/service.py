"""The cloudcore service: wires store, fleet, scheduler, sync hub and API together.

`run(settings)` opens the store, loads the fleet into memory, then owns one
asyncio.TaskGroup of named tasks until cancelled:

    cloudcore.store.writer        batched LMDB commits
    cloudcore.synchub.brokers     the broker connections, per broker of the map:
      cloudcore.synchub.subscriber[B]    MQTT in: reports, acks, resyncs, wills
      cloudcore.synchub.publisher[B][i]  MQTT out: deltas and report acks
    cloudcore.synchub.retries     resend deltas whose ack is late
    cloudcore.synchub.liveness    NotReady after missed heartbeats
    cloudcore.fleet.expander      expands DaemonSets over big fleets in bounded slices
    cloudcore.api.list-cache      re-encodes changed objects for recently listed views
    cloudcore.forecaster          batched forecast of every node, each forecast.interval
    cloudcore.auth.broker-files   rewrites the broker's password file after joins/deletes
    cloudcore.synchub.closer      closes a revoked node's session (--node-certs only)
    cloudcore.auth.api-cert       issues the API's certificate again before it expires
    cloudcore.api                 uvicorn serving the FastAPI app (HTTPS by default)
    cloudcore[S].cluster          with --shard S only: NATS KV, the partition and global
                                  leases and what the shard does with them
                                  (cloudcore.cluster.shard; the forecaster then
                                  forecasts S's own nodes and the shards share their
                                  forecasts through KV: cloudcore.cluster.forecasts)

Before the store opens, the fleet CA is loaded or made (`STATE/pki`, cloudcore.auth.pki)
and the API's certificate issued; with `--insecure` the API serves plain HTTP, without
auth, and the hub accepts unsealed messages, after a loud warning.

The brokers (proposal 0007): the partition -> broker map comes from the store, else
from `--broker` flags, else it is one broker `mq-0` at `--mqtt-host:port` (today's
behaviour; `cloudcore.synchub.brokers.initial_map`). cloudcore keeps one subscriber and
`--publishers` publishers on every broker of the map, all logging in with the same
service identities (every broker shares the password file, ACL and TLS files cloudcore
writes), and the API changes the map live (`BrokerTier`).

If any task fails, the group cancels the rest and `run` raises; on cancellation
the store commits what is pending before it closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from cloudcore.api import create_app
from cloudcore.api.listcache import ListCache
from cloudcore.auth import Auth
from cloudcore.auth.broker import BrokerFiles, mosquitto_acl, service_identities
from cloudcore.auth.pki import RENEW_BEFORE, FleetCA, api_hosts, not_after
from cloudcore.auth.secrets import mosquitto_hash
from cloudcore.cluster.bindings import Bindings
from cloudcore.cluster.brokermap import SharedBrokerMap
from cloudcore.cluster.forecasts import SharedForecasts
from cloudcore.cluster.identities import BrokerIdentities
from cloudcore.cluster.kv import KV, KVSettings
from cloudcore.cluster.leases import LeaseSettings
from cloudcore.cluster.objects import ClusterObjects
from cloudcore.cluster.rollouts import SharedSteps
from cloudcore.cluster.shard import GatedNodes, Shard, status_bucket
from cloudcore.cluster.status import NodeStatuses, run_shared
from cloudcore.cluster.upgrades import SharedBatches
from cloudcore.config import MqttSettings, Settings
from cloudcore.errors import ConfigError
from cloudcore.fleet import Fleet, Liveness
from cloudcore.fleet.admission import Admission
from cloudcore.metrics import (
    Labels,
    LoopLag,
    Metrics,
    add_edge_gauges,
    add_rollout_gauges,
    add_upgrade_gauges,
)
from cloudcore.release import open_release_key
from cloudcore.scheduler import Scheduler
from cloudcore.store import Store
from cloudcore.store.encryption import KeyRing
from cloudcore.synchub import SyncHub
from cloudcore.synchub.brokers import (
    STORE_DB,
    STORE_KEY,
    TOLD_KEY,
    BrokerTier,
    Routes,
    initial_map,
    initial_told,
)
from cloudcore.synchub.mqtt import Publisher, SessionCloser, Subscriber, client_tls
from shared.brokermap import Broker, parse_url, url_of
from shared.entries import BROKER_MAP_KEY
from shared.errors import ObjectError

log = logging.getLogger("cloudcore")

INSECURE_WARNING = (
    "RUNNING INSECURE (--insecure): the API needs no token (anyone is admin) and serves "
    "plain HTTP; the sync hub accepts unsealed messages and registers nodes that never "
    "joined. Anyone who reaches the API or the broker owns the fleet. Never do this "
    "outside a throwaway experiment.")


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
    ca: FleetCA
    broker_files: BrokerFiles
    brokers: BrokerTier


async def run(settings: Settings, *,
              on_started: Callable[[Running], None] | None = None) -> None:
    """Run cloudcore until cancelled. Raises on a fatal error (store, bad settings)."""
    settings.validate()
    if settings.insecure:
        log.warning(INSECURE_WARNING)
        if not log.isEnabledFor(logging.WARNING):  # loud even with --log-level ERROR
            print(f"cloudcore: WARNING: {INSECURE_WARNING}", file=sys.stderr, flush=True)
    if settings.cluster.enabled:  # the shard's own broker identities: <user>_<shard>_...
        settings = replace(settings, mqtt=replace(
            settings.mqtt, username=f"{settings.mqtt.username}_{settings.cluster.shard}"))
    metrics = Metrics()
    ca = FleetCA.open(settings.pki_dir)
    kv_settings = _kv_settings(settings, ca) if settings.cluster.enabled else None
    release_key = open_release_key(settings.pki_dir)  # signs agent releases; nodes get it
    api_tls = None
    if not settings.insecure:
        api_tls = ca.ensure_server_cert("api", api_hosts(settings.http.host,
                                                         settings.http.sans))
    if settings.auth.broker_cert_dir is not None:
        ca.write_broker_certs(settings.auth.broker_cert_dir, broker_hosts(settings))
    _mqtt_password(settings)
    mqtt_tls = _mqtt_tls(settings, ca)
    if settings.auth.node_certs and not settings.advertised_broker()[2]:
        log.warning("--node-certs with a plain broker address: nodes get certificates "
                    "they cannot use; advertise mqtts://HOST:PORT")
    if settings.auth.node_certs and settings.auth.broker_cert_dir is None:
        log.warning("--node-certs without --broker-cert-dir: the certificates of deleted "
                    "nodes go into no CRL the broker reads, so they can connect until "
                    "they expire (their messages are still refused)")
    async with Store(settings.store) as store:
        liveness = Liveness(default_heartbeat=settings.sync.heartbeat,
                            missed=settings.sync.missed_heartbeats, now=time.monotonic())
        scheduler = (Scheduler.right_sizing(safety=settings.forecast.placement_safety,
                                            overcommit=settings.forecast.placement_overcommit)
                     if settings.forecast.placement == "right-sizing" else Scheduler())
        fleet = Fleet(store=store, scheduler=scheduler, liveness=liveness,
                      admission=Admission(settings.policy),
                      telemetry_points=settings.sync.telemetry_points,
                      eviction_timeout=settings.sync.pod_eviction_timeout,
                      events=settings.api.events, background=True)
        records = store.load()
        fleet.load(records)
        stored_map = records.get(STORE_DB, {}).get(STORE_KEY)
        try:
            first_map, to_store = initial_map(
                stored_map, settings.mqtt.brokers,
                default_url=url_of(*settings.advertised_broker()[:2],
                                   tls=settings.advertised_broker()[2]),
                joined=bool(fleet.nodes))
        except ObjectError as exc:
            raise ConfigError(exc.message, field="mqtt.brokers") from None
        told = initial_told(stored_map, records.get(STORE_DB, {}).get(TOLD_KEY), first_map)
        if to_store:
            store.put(STORE_DB, STORE_KEY, first_map.to_value())
            store.put(STORE_DB, TOLD_KEY, told)
        routes = Routes(first_map)
        closer = _session_closer(settings, ca)
        auth, broker_files, service_users = _open_auth(
            settings, store, records, ca=ca, on_revoked=closer.close if closer else None)
        del records
        log.info("loaded %d nodes, %d pods; store epoch %s", len(fleet.nodes), len(fleet.pods),
                 store.epoch)
        forecaster = open_forecaster(settings, fleet)
        shard: Shard | None = None
        sink: Any = fleet
        if settings.cluster.enabled:
            sink = GatedNodes(fleet, is_global=lambda: shard is not None and shard.holds_global)
        hub = SyncHub(nodes=sink, desired=fleet.desired_sets, store=store,
                      settings=settings.sync, metrics=metrics,
                      keys=auth.node_key, insecure=settings.insecure, routes=routes)
        links = BrokerLinks(settings, hub=hub, tls=mqtt_tls)
        hub.listen_to(links.heard_at, stall_s=float(settings.mqtt.keepalive))
        if settings.cluster.enabled:
            shard = _shard(settings, fleet=fleet, hub=hub, links=links)
            links.filters = shard.filters
        for name, b in first_map.brokers.items():
            links.open(name, b)
        hub.attach(links.send, backlog=links.backlog)

        tier = BrokerTier(routes=routes, store=store, connections=links,
                          nodes=lambda: list(fleet.nodes), tell=broker_map_teller(fleet),
                          persisted=to_store or stored_map is not None, told=told)
        _register_gauges(metrics, fleet=fleet, store=store, backlog=links.backlog)
        lists = ListCache(fleet.objects)
        replica: ClusterObjects | None = None  # the global objects and node statuses
        statuses: NodeStatuses | None = None  # shared by shards (proposal 0008 steps 2, 5)
        bindings: Bindings | None = None
        steps: SharedSteps | None = None
        batches: SharedBatches | None = None
        shared_map: SharedBrokerMap | None = None
        identities: BrokerIdentities | None = None
        forecasts: SharedForecasts | None = None
        if shard is not None:
            c = settings.cluster
            replica = ClusterObjects(fleet, shard=shard.name, prefix=c.bucket_prefix,
                                     replicas=c.replicas, auth=auth, keys=KeyRing.open(
                                         settings.store.state_dir,
                                         settings.store.encryption_key_file))
            statuses = NodeStatuses(fleet, shard=shard.name, owns=shard.owns,
                                    holder=shard.partition_holder, fence=shard.partition_fence,
                                    interval=min(2.0, c.status_interval))
            bindings = Bindings(fleet, shard=shard.name,  # placement behind the global lease
                                holds_global=lambda: shard is not None and shard.holds_global,
                                fence=shard.global_fence)
            shard.on_global.append(bindings.global_changed)
            steps = SharedSteps(fleet, shard=shard.name,  # rollout batches by the holder
                                holds_global=lambda: shard is not None and shard.holds_global,
                                fence=shard.global_fence, version=replica.version_by_key)
            shard.on_global.append(steps.global_changed)  # a scale made while none held
            batches = SharedBatches(fleet, shard=shard.name,  # agent upgrades by the holder
                                    holds_global=lambda: shard is not None
                                    and shard.holds_global, fence=shard.global_fence)
            shard.on_global.append(batches.global_changed)
            shared_map = SharedBrokerMap(tier, shard=shard.name)  # the map through KV
            if forecaster is not None:  # each shard forecasts its own nodes; shared in KV
                forecasts = SharedForecasts(fleet, shard=shard.name, owns=shard.owns,
                                            holder=shard.partition_holder,
                                            fence=shard.partition_fence,
                                            instance=shard.instance,
                                            interval=settings.forecast.interval)
                forecaster.exchange = forecasts.exchange

            def others_changed(users: dict[str, str | None]) -> None:
                service_users.others = users
                broker_files.changed()
            identities = BrokerIdentities(shard=shard.name, own=service_users.published(),
                                          on_change=others_changed)
        app = create_app(fleet, cache=lists, metrics=metrics, flush=store.flush,
                         ready=lambda: links.ready(routes.map), auth=auth,
                         settings=settings.api, auth_settings=settings.auth,
                         broker=settings.advertised_broker(), ca=ca,
                         requests=hub.requests, release_keys=[release_key],
                         brokers=shared_map or tier,
                         cluster=replica)
        tls_kw: dict[str, Any] = {}
        if api_tls is not None:
            tls_kw = {"ssl_certfile": str(api_tls[0]), "ssl_keyfile": str(api_tls[1])}
        server = _Server(uvicorn.Config(app, host=settings.http.host, port=settings.http.port,
                                        lifespan="off", log_level="warning",
                                        access_log=False, **tls_kw))
        async with asyncio.TaskGroup() as tg:
            tg.create_task(store.run(), name="cloudcore.store.writer")
            tg.create_task(links.run(), name="cloudcore.synchub.brokers")
            tg.create_task(hub.run_retries(), name="cloudcore.synchub.retries")
            # nodes behind the map (a tell cut short, or --broker flags replacing the
            # default they joined under) are told their lists
            tg.create_task(tier.catch_up(), name="cloudcore.synchub.brokers.catch-up")
            tg.create_task(hub.run_liveness(), name="cloudcore.synchub.liveness")

            async def settle() -> None:  # after each expansion slice
                await store.flush()
                freeze_survivors()

            tg.create_task(fleet.run(settle=settle), name="cloudcore.fleet.expander")
            tg.create_task(lists.keep_encoded(), name="cloudcore.api.list-cache")
            tg.create_task(LoopLag(metrics).run(), name="cloudcore.metrics.loop-lag")
            if broker_files.enabled:
                tg.create_task(broker_files.run(), name="cloudcore.auth.broker-files")
            if closer is not None:
                tg.create_task(closer.run(), name="cloudcore.synchub.closer")
            if api_tls is not None:
                tg.create_task(_renew_api_cert(settings, ca, server),
                               name="cloudcore.auth.api-cert")
            if forecaster is not None:  # a shard's own nodes (cloudcore.cluster.forecasts)
                tg.create_task(forecaster.run(settings.forecast.interval),
                               name="cloudcore.forecaster")
            if shard is not None and kv_settings is not None:
                tg.create_task(_run_shard(shard, kv_settings),
                               name=f"cloudcore[{shard.name}].cluster")
            if replica is not None and statuses is not None and kv_settings is not None:
                tg.create_task(run_shared(
                    kv_settings, replica, statuses, replicas=settings.cluster.replicas,
                    status_bucket=status_bucket(settings.cluster.bucket_prefix),
                    bindings=bindings, brokermap=shared_map, identities=identities,
                    rollouts=steps, upgrades=batches, forecasts=forecasts,
                    prefix=settings.cluster.bucket_prefix),
                    name=f"cloudcore[{statuses.shard}].shared")
            sock = _bind(settings.http.host, settings.http.port)
            api = tg.create_task(_serve(server, sock, on_stop=fleet.watches.close),
                                 name="cloudcore.api")
            while not server.started:
                if api.done():
                    break
                await asyncio.sleep(0.02)
            if server.started:
                host, port = server.bound()
                url = f"{'https' if api_tls else 'http'}://{_url_host(host)}:{port}"
                print(f"cloudcore listening on {url}", flush=True)
                if api_tls:
                    print(f"fleet CA {ca.cert_path} ({ca.hash})", flush=True)
                if on_started is not None:
                    on_started(Running(fleet=fleet, auth=auth, hub=hub, store=store,
                                       metrics=metrics, app=app, url=url, ca=ca,
                                       broker_files=broker_files, brokers=tier))


class BrokerLinks:
    """The cloud's connections to every broker of the map (`brokers.Connections`): one
    subscriber, whose messages the hub learns the broker of, and `mqtt.publishers`
    publishers each. `run()` owns their tasks until cancelled; `open`/`close` add and
    stop a broker's connections while it runs (a live map change)."""

    def __init__(self, settings: Settings, *, hub: SyncHub,
                 tls: dict[str, ssl.SSLContext]) -> None:
        self._settings = settings
        self._hub = hub
        self._tls = tls
        self._advertised = url_of(*settings.advertised_broker()[:2],
                                  tls=settings.advertised_broker()[2])
        self._subs: dict[str, Subscriber] = {}
        self._pubs: dict[str, list[Publisher]] = {}
        self._up: dict[str, bool] = {}
        self._tasks: dict[str, list[asyncio.Task[None]]] = {}
        self._tg: asyncio.TaskGroup | None = None
        self.filters: Callable[[], list[str]] | None = None
        """A shard's subscriptions (`Shard.filters`); None: every partition."""
        self.unroutable = 0
        """Messages dropped because their broker had no connections (the hub resends)."""

    def endpoint(self, broker: Broker) -> MqttSettings:
        """Where cloudcore reaches a broker: the broker that `--advertise-mqtt` (or the
        default) names at `--mqtt-host:port`, as before the tier; any other at its first
        URL."""
        m = self._settings.mqtt
        if self._advertised in broker.urls:
            return m
        u = parse_url(broker.urls[0])
        return replace(m, host=u.host, port=u.port, tls=u.tls)

    def open(self, name: str, broker: Broker) -> None:
        if name in self._subs:
            return
        m = self.endpoint(broker)
        tls = self._tls if m.tls else {}
        if m.tls and not tls:
            log.error("broker %s is TLS (%s) but cloudcore has no TLS context for it",
                      name, broker.urls[0])

        def on_connected(up: bool) -> None:
            self._up[name] = up

        def on_back(deaf_s: float, lost: bool, restarted: bool) -> None:
            self._hub.broker_back(name, deaf_s, lost, restarted=restarted)

        self._subs[name] = Subscriber(m, handler=self._hub.handler_for(name),
                                      on_connected=on_connected, on_back=on_back,
                                      tls=tls.get("sub"), filters=self.filters)
        self._pubs[name] = [Publisher(m, index=i, tls=tls.get(f"pub{i}"))
                            for i in range(m.publishers)]
        self._up[name] = False
        if self._tg is not None:
            self._start(name)
        log.info("broker %s: connecting to %s:%d (%s)", name, m.host, m.port,
                 "TLS" if m.tls else "plain")

    def close(self, name: str) -> None:
        for task in self._tasks.pop(name, []):
            task.cancel()
        self._subs.pop(name, None)
        self._pubs.pop(name, None)
        self._up.pop(name, None)
        log.info("broker %s: connections closed (taken out of the map)", name)

    def connected(self, name: str) -> bool:
        return self._up.get(name, False)

    def heard_at(self, name: str) -> float | None:
        """Loop time of the last packet from broker `name` to our subscriber (None while
        it is not subscribed, or the broker is not in the map)."""
        sub = self._subs.get(name)
        return None if sub is None else sub.heard_at()

    def ready(self, brokermap: Any) -> bool:
        """Every active broker's subscriber is connected."""
        return all(self._up.get(n, False) for n, b in brokermap.brokers.items()
                   if b.state == "active")

    def send(self, partition: int, topic: str, payload: bytes, broker: str) -> None:
        pubs = self._pubs.get(broker)
        if not pubs:
            self.unroutable += 1
            return
        pubs[partition % len(pubs)].enqueue(topic, payload)

    def backlog(self) -> int:
        return sum(p.backlog for pubs in self._pubs.values() for p in pubs)

    def drop_queued(self, partitions: set[int]) -> int:
        """A shard gave these partitions up: what it queued for their nodes and has not
        handed to a broker yet is not sent (the next owner sends them their sets)."""
        return sum(p.drop_partitions(partitions) for pubs in self._pubs.values()
                   for p in pubs)

    async def subscribe(self, filters: list[str]) -> None:
        """A shard took partitions: subscribe their filters on every broker."""
        await asyncio.gather(*(s.add(filters) for s in list(self._subs.values())))

    async def unsubscribe(self, filters: list[str]) -> None:
        """A shard gave partitions up: unsubscribe on every broker (answers awaited)."""
        await asyncio.gather(*(s.remove(filters) for s in list(self._subs.values())))

    def _start(self, name: str) -> None:
        assert self._tg is not None
        tasks = [self._tg.create_task(self._subs[name].run(),
                                      name=f"cloudcore.synchub.subscriber[{name}]")]
        tasks += [self._tg.create_task(p.run(), name=f"cloudcore.synchub.publisher[{name}][{i}]")
                  for i, p in enumerate(self._pubs[name])]
        self._tasks[name] = tasks

    async def run(self) -> None:
        """Run every broker's connections until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                for name in list(self._subs):
                    self._start(name)
                await asyncio.Event().wait()
            finally:
                self._tg = None


def broker_map_teller(fleet: Fleet) -> Callable[[dict[str, dict[str, Any]]], None]:
    """The broker tier's `tell`: put each `broker/-/map` entry into its node's desired
    set and commit. A node deleted since the tier listed the nodes (a tell goes in
    slices, giving the loop back between them) is skipped: it would keep an entry for
    ever."""
    def tell(entries: dict[str, dict[str, Any]]) -> None:
        for node, value in entries.items():
            if node in fleet.nodes:
                fleet.desired_sets.put_entry(node, BROKER_MAP_KEY, value)
        fleet.commit()
    return tell


def _kv_settings(settings: Settings, ca: FleetCA) -> KVSettings:
    """The shard's NATS connection settings, checked before the store opens; the CA is
    the fleet CA unless `--nats-ca-file` names another."""
    c = settings.cluster
    kv = KVSettings(urls=c.nats_urls, user=c.nats_user, password=c.nats_password,
                    ca_file=c.nats_ca_file or ca.cert_path, insecure=c.nats_insecure,
                    client_name=f"cloudcore-{c.shard}")
    kv.validate()
    if kv.insecure:
        log.warning("shard %s: NATS without TLS or login (--nats-insecure): anyone who "
                    "reaches NATS can take this fleet's partitions", c.shard)
    return kv


def _shard(settings: Settings, *, fleet: Fleet, hub: SyncHub, links: BrokerLinks) -> Shard:
    c = settings.cluster
    assert c.shard is not None
    lease = LeaseSettings(name=c.shard, lease_period=c.lease_period, replicas=c.replicas,
                          bucket_prefix=c.bucket_prefix)
    lease.validate()
    shard = Shard(name=c.shard, fleet=fleet, hub=hub, subscribe=links.subscribe,
                  unsubscribe=links.unsubscribe, lease=lease,
                  status_interval=c.status_interval, drop_queued=links.drop_queued)
    shard.forget_all()  # no partition held yet: no node's liveness runs here
    log.info("shard %s: joining through NATS %s (lease period %gs)", c.shard,
             ", ".join(c.nats_urls), c.lease_period)
    return shard


async def _run_shard(shard: Shard, kv_settings: KVSettings) -> None:
    async with KV(kv_settings) as kv:
        await shard.run(kv)


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
        from cloudcore.forecaster import ForecasterError, OnlineSettings, default_model_path
        from cloudcore.forecaster.runner import ForecastRunner
    except ImportError as exc:
        log.warning("forecasting disabled: cannot import the forecaster (%s)", exc)
        fleet.clear_forecasts()
        return None
    path = settings.forecast.model_path or default_model_path()
    try:
        runner = ForecastRunner(path, capacity_nodes=settings.forecast.capacity_nodes,
                                apply=fleet.apply_forecasts, known=lambda: fleet.nodes,
                                clock=fleet.clock, origins=fleet.scheduler.forecast_made,
                                online=OnlineSettings(enabled=settings.forecast.online_learning))
    except ForecasterError as exc:
        log.warning("forecasting disabled: %s", exc)
        fleet.clear_forecasts()
        return None
    fleet.observer = runner.observe
    log.info("forecasting on: model %s, every %gs", path, settings.forecast.interval)
    return runner


GC_THRESHOLDS = (25_000, 200, 100)
"""Young-generation collections every 25k allocations instead of Python's 700. The
fleet holds millions of long-lived objects (100k nodes and pods are ~10 M), and with
the default thresholds an apply that creates a pod per node spent half its time in
the collector: a DaemonSet over 20k nodes took 5.6 s, 2.7 s with (100k, 50, 100)
(`docs/benchmarks.md`). Each young collection holds the event loop for as long as it
takes, about 1 us per young object: 100k made single pauses of 50-110 ms while a
DaemonSet was expanded over 100k nodes, 25k keeps them near 25 ms; the middle
generation still waits for 5 M allocations (25k x 200), as before (100k x 50)."""


FREEZE_AFTER = 100
"""Young collections since the last middle-generation one after which an expansion
slice freezes what survived (`freeze_survivors`)."""


def freeze_survivors() -> bool:
    """Between slices of a DaemonSet expansion: in a process tuned by `tune_gc`, once
    `FREEZE_AFTER` young collections have happened since the last middle-generation
    one, move every tracked object out of the collector's sight (gc.freeze), as
    `tune_gc` does after loading. An expansion over 100,000 nodes makes millions of
    long-lived objects, and the middle-generation collection that would otherwise scan
    them held the event loop for 1.4 s (ten DaemonSets, 100,000 nodes). True if it
    froze. Objects frozen stay freed by reference counting; only cyclic garbage that
    exists at that moment is kept."""
    if gc.get_threshold() != GC_THRESHOLDS or gc.get_count()[1] < FREEZE_AFTER:
        return False
    gc.freeze()
    return True


def tune_gc() -> None:
    """Collector settings for a process that holds the fleet: raise the thresholds and
    move what is loaded by now out of the collector's sight (gc.freeze). The
    `cloudcore` binary calls it once started; it changes the whole process, so a
    program that embeds `run` decides for itself."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _open_auth(settings: Settings, store: Store,
               records: dict[str, dict[str, object]], *, ca: FleetCA,
               on_revoked: Callable[[str], None] | None = None
               ) -> tuple[Auth, BrokerFiles, ServiceUsers]:
    """The auth registry from the store, static tokens and the first admin token, and
    the broker files it keeps (written once now, then after every change, debounced;
    with node certificates and a broker cert dir, the CRL too)."""
    cfg = settings.auth
    users = service_identities(settings.mqtt.username, settings.mqtt.publishers)
    own: dict[str, str] = {}  # cloudcore's own identities go in the same file
    if settings.mqtt.password:
        digest = mosquitto_hash(settings.mqtt.password)
        own = dict.fromkeys(users, digest)
    service = ServiceUsers(users, own)
    crl = (cfg.broker_cert_dir / "crl.pem"
           if cfg.node_certs and cfg.broker_cert_dir is not None else None)
    files = BrokerFiles(passwd=cfg.mosquitto_passwd, acl=cfg.mosquitto_acl,
                        passwd_text=lambda: auth.mosquitto_passwd(service.hashes()),
                        acl_text=lambda: mosquitto_acl(service.names()),
                        crl=crl, crl_pem=lambda: ca.crl(auth.revoked_serials()))
    auth = Auth(store=store, enabled=cfg.enabled, on_credentials=files.changed,
                on_revoked=on_revoked)
    auth.load(records)  # type: ignore[arg-type]
    if cfg.tokens_file is not None:
        n = auth.load_static(cfg.tokens_file)
        log.info("auth: %d static API tokens from %s", n, cfg.tokens_file)
    if cfg.enabled and cfg.bootstrap_admin:
        auth.bootstrap(settings.store.state_dir / "admin.token")
    try:
        files.write_now()
    except OSError as exc:
        raise ConfigError(f"cannot write the broker files: {exc}",
                          field="auth.mosquitto_passwd") from exc
    log.info("API auth is %s", "on" if cfg.enabled else "off (anyone may call the API)")
    return auth, files, service


class ServiceUsers:
    """cloudcore's broker identities in its broker files: its own, and on a shard every
    other shard's (`cloudcore.cluster.identities`), so a broker may read any one
    shard's files."""

    def __init__(self, names: list[str], hashes: dict[str, str]) -> None:
        self.own_names = list(names)
        self.own = dict(hashes)
        self.others: dict[str, str | None] = {}

    def names(self) -> list[str]:
        return [*self.own_names, *(u for u in sorted(self.others)
                                   if u not in self.own_names)]

    def hashes(self) -> dict[str, str]:
        out = {u: h for u, h in self.others.items() if h is not None}
        out.update(self.own)
        return out

    def published(self) -> dict[str, str | None]:
        return {u: self.own.get(u) for u in self.own_names}


API_CERT_CHECK = 12 * 3600.0
"""Seconds between checks of the API certificate's expiry while running."""


async def _renew_api_cert(settings: Settings, ca: FleetCA, server: _Server, *,
                          every: float = API_CERT_CHECK) -> None:
    """Issue the API certificate again when it nears expiry and load it into the
    running server's TLS context: new connections get it, open ones keep theirs, so a
    cloudcore that runs for years never serves an expired certificate."""
    hosts = api_hosts(settings.http.host, settings.http.sans)
    crt, _ = ca.ensure_server_cert("api", hosts)
    loaded = crt.read_bytes()
    while True:
        await asyncio.sleep(every)
        crt, key = ca.ensure_server_cert("api", hosts)
        ctx = server.config.ssl
        if ctx is not None and crt.read_bytes() != loaded:
            ctx.load_cert_chain(str(crt), str(key))
            loaded = crt.read_bytes()
            log.info("API certificate loaded from %s (expires %s)", crt,
                     time.ctime(not_after(loaded)))


def _session_closer(settings: Settings, ca: FleetCA) -> SessionCloser | None:
    """With node certificates over TLS, what closes a revoked node's open session: it
    connects where nodes do (the advertised broker) with a one-day certificate of the
    node's name, made in memory for that one connection."""
    host, port, tls = settings.advertised_broker()
    if not settings.auth.node_certs or not tls:
        return None
    ca_file = settings.mqtt.ca_file or ca.cert_path

    def tls_for(node: str) -> ssl.SSLContext:
        issued = ca.issue_client(node, days=1)
        tmp = settings.pki_dir / f".closer-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o700)
        try:
            _write_private(tmp / "c.crt", issued.cert)
            _write_private(tmp / "c.key", issued.key)
            return client_tls(ca_file, cert=(tmp / "c.crt", tmp / "c.key"))
        finally:
            for f in ("c.crt", "c.key"):
                (tmp / f).unlink(missing_ok=True)
            tmp.rmdir()

    return SessionCloser(host, port, tls_for=tls_for)


def broker_hosts(settings: Settings) -> list[str]:
    """The names in the broker's certificate: `auth.broker_sans`, or the advertised
    broker host, mqtt.host and loopback."""
    if settings.auth.broker_sans:
        return list(settings.auth.broker_sans)
    hosts = [settings.broker_address()[0], settings.mqtt.host, "127.0.0.1", "localhost"]
    for url in settings.mqtt.brokers.values():  # one certificate for every broker
        host = parse_url(url).host
        if host not in hosts:
            hosts.append(host)
    return hosts


def _mqtt_password(settings: Settings) -> None:
    """With a password file to keep and no password given, use (or make, 0600) the one
    in `<state_dir>/mqtt.password`: a broker that has a password file never takes
    cloudcore's identities without one."""
    m = settings.mqtt
    if m.password is not None or settings.auth.mosquitto_passwd is None:
        return
    path = settings.store.state_dir / "mqtt.password"
    try:
        text = path.read_text().strip() if path.exists() else ""
        if not text:
            settings.store.state_dir.mkdir(parents=True, exist_ok=True)
            settings.store.state_dir.chmod(0o700)
            text = secrets.token_urlsafe(24)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
            log.info("made cloudcore's broker password in %s", path)
    except OSError as exc:
        raise ConfigError(f"mqtt password: cannot use {path}: {exc}",
                          field="mqtt.password") from exc
    m.password = text


def _mqtt_tls(settings: Settings, ca: FleetCA) -> dict[str, ssl.SSLContext]:
    """A TLS context per broker identity (`sub`, `pub<i>`), whether or not mqtt.tls is
    set: any broker of the map may be `mqtts://`, flags or one added through the API
    later (the contexts cost nothing until used). With mqtt.client_cert each presents a
    fleet-CA certificate of its own identity. One context serves every broker."""
    m = settings.mqtt
    ca_file = m.ca_file or ca.cert_path
    roles = ["sub"] + [f"pub{i}" for i in range(m.publishers)]
    out = {}
    for role in roles:
        cert = None
        if m.client_cert:
            d = settings.pki_dir / "mqtt"
            d.mkdir(mode=0o700, exist_ok=True)
            ident = m.identity(role)
            crt, key = d / f"{ident}.crt", d / f"{ident}.key"
            if not crt.exists() or not key.exists() or _expiring(crt):
                issued = ca.issue_client(ident, days=365)
                _write_private(key, issued.key)
                crt.write_text(issued.cert)
            cert = (crt, key)
        try:
            out[role] = client_tls(ca_file, cert=cert)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"mqtt TLS: cannot load {ca_file}: {exc}",
                              field="mqtt.ca_file") from exc
    return out


def _expiring(crt: Path) -> bool:
    try:
        return not_after(crt.read_bytes()) - time.time() < RENEW_BEFORE
    except (OSError, ValueError):
        return True


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _register_gauges(metrics: Metrics, *, fleet: Fleet, store: Store,
                     backlog: Callable[[], int]) -> None:
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
        yield "cloudcore_publish_backlog", (), float(backlog())

    metrics.add_gauges(gauges)
    add_rollout_gauges(metrics, fleet)
    add_upgrade_gauges(metrics, fleet)
    add_edge_gauges(metrics, fleet.node_ops.edge_series)
