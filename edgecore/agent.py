"""The edge agent: wires cache, link, reconciler and reporter, and runs them.

`Agent.run()` owns one asyncio.TaskGroup of named tasks
(`edgecore[{node}].link`, `.reconciler`, `.reporter`, `.heartbeat`, `.telemetry`,
`.logrotate`, `.imagegc`, `.requests`, `.certrenew`, `.metrics`, `.scrape`, `.upgrade`; the
reconciler's prober adds `.prober.{cid}` per probed container, and each logs/exec
request from the cloud a `.request.{id}`). It works until cancelled and raises if a
component fails fatally. Cancelling it stops the agent only: containers keep running
(they outlive the agent) and are adopted by the next agent on the same state dir.

Startup order matters for offline operation: the reconciler starts from the
cached desired set at once, whether the link ever comes up or not.

Wiring: each part is given its collaborators as constructor arguments and nothing
is set on it afterwards, so a part is complete once built and its wiring reads in
one place (`run()`). The few mutual needs (the sync handler and the prober wake
the reconciler, which reads the sync handler's desired set and owns the prober;
the request handler feeds the link, which serves the sync handler, which hands
requests to the request handler) are met by plain signals made first and given to
both sides: an `asyncio.Event` each for "reconcile now" and "publish now", and the
`ResponseQueue` between the request and sync handlers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from edgecore import __version__, metrics, scrape
from edgecore.cache import Cache
from edgecore.cache.check import open_checked
from edgecore.config import AgentSettings
from edgecore.devices import DeviceAllocator, discover
from edgecore.errors import CacheError
from edgecore.link import BrokerList, BrokerSource, Link, TlsFiles
from edgecore.nodeinfo import node_status
from edgecore.podnet import PodNetwork
from edgecore.reconciler import CrashLoop, Reconciler
from edgecore.reconciler.prober import ProbeManager, make_probe
from edgecore.reconciler.volumes import Volumes
from edgecore.requests import EdgeRequests
from edgecore.runtime.errors import ContainerRuntimeError, InsufficientDisk
from edgecore.scrape import ScrapeLimits, Scraper
from edgecore.sync import Renewed, Reporter, ResponseQueue, SyncHandler
from edgecore.telemetry import Telemetry
from edgecore.upgrade import on_trial, running_version
from edgecore.upgrade.slots import Slots
from edgecore.upgrade.upgrader import ReleaseImages, Upgrader
from shared import seal
from shared.backoff import Backoff, jittered
from shared.errors import AuthFailed

if TYPE_CHECKING:
    from edgecore.runtime.types import ExtendedRuntime

log = logging.getLogger(__name__)

RENEW_RETRY_S = 300.0
"""Seconds between attempts to renew the client certificate after a failed one."""


class Agent:
    """One edge agent. Components are exposed as attributes once `run()` has built them."""

    def __init__(
        self, settings: AgentSettings, *, runtime: ExtendedRuntime | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._runtime = runtime
        self.clock = clock
        self.cache: Cache | None = None
        self.sync: SyncHandler | None = None
        self.link: Link | None = None
        self.reconciler: Reconciler | None = None
        self.reporter: Reporter | None = None
        self.devices: DeviceAllocator | None = None
        self.telemetry: Telemetry | None = None
        self.prober: ProbeManager | None = None
        self.requests: EdgeRequests | None = None
        self.upgrader: Upgrader | None = None
        self.scraper: Scraper | None = None
        self.started = asyncio.Event()  # set once every component is built

    def _make_runtime(self) -> ExtendedRuntime:
        # Imported here so tests with a fake runtime never touch crun.
        from edgecore.runtime import CrunRuntime

        return CrunRuntime(self.settings.runtime_root,
                           insecure_registries=self.settings.insecure_registries,
                           log_size_max_bytes=self.settings.log_max_bytes)

    async def run(self) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        cache, _ = await asyncio.to_thread(
            open_checked, s.cache_dir, map_bytes=s.cache_map_bytes,
            outbox_budget=s.outbox_budget_bytes)
        self.cache = cache
        try:
            runtime = self._runtime or self._make_runtime()
            keys = seal.NodeKeys.derive(s.node_key) if s.node_key is not None else None
            if keys is None:
                log.warning("no node key: messages to and from the cloud are NOT "
                            "authenticated (insecure)")
            # Every part gets its collaborators at construction. Where two parts need
            # each other, a signal made first goes to both: `wake` asks the reconciler
            # for a pass (a new desired set, a readiness change), `kick` wakes the link's
            # outbox pump (a queued response), `beat_now` asks for a heartbeat (a
            # (re)connect); `responses` is what the request handler puts and the sync
            # handler drains for the link.
            wake, kick, beat_now = asyncio.Event(), asyncio.Event(), asyncio.Event()
            brokers_changed = asyncio.Event()  # a desired set was applied: the link
            # looks whether its `broker/-/map` entry changed the broker list
            renewed = Renewed()  # pods whose entry came down again: report them again
            responses = ResponseQueue()
            requests = self.requests = EdgeRequests(node=s.node, runtime=runtime,
                                                    send=responses.put, kick=kick.set)
            sync = self.sync = SyncHandler(
                node=s.node, cache=cache, on_request=requests.submit,
                on_applied=lambda: (wake.set(), brokers_changed.set()),
                responses=responses, require_exp=keys is not None, renewed=renewed)
            found = await asyncio.to_thread(discover, dev_root=s.dev_root,
                                            builtin=s.discover_accelerators, generic=s.devices)
            devices = self.devices = DeviceAllocator(found, cache.pod_allocations())
            for resource, n in devices.capacity().items():
                log.info("accelerator %s: %d device(s)", resource, n)
            joined = BrokerList.of(s.broker_urls, version=s.broker_map_version)
            link = self.link = Link(
                node=s.node, host=s.mqtt_host, port=s.mqtt_port, handler=sync,
                brokers=BrokerSource(joined, lambda: sync.desired.items),
                brokers_changed=brokers_changed, home_retry_s=s.broker_home_retry_s,
                move_jitter_s=s.broker_move_jitter_s,
                keepalive_s=s.mqtt_keepalive_s,
                username=s.mqtt_username, password=s.mqtt_password,
                backoff=Backoff(initial=s.reconnect_initial_s, cap=s.reconnect_cap_s),
                op_timeout_s=s.op_timeout, keys=keys,
                tls=TlsFiles(ca_file=s.ca_file, client_cert=s.client_cert,
                             client_key=s.client_key) if s.tls else None,
                mqtts=TlsFiles(ca_file=s.ca_file) if not s.tls and s.ca_file else None,
                on_up=beat_now.set,  # a (re)connected node reports at once
                kick=kick)
            reporter = self.reporter = Reporter(
                node=s.node, cache=cache, desired=lambda: sync.desired,
                node_status=self._node_status, batch_s=s.report_batch_s, clock=self.clock,
                kick=link.kick, acked=lambda: link.report_acked,
                # Full disk: heartbeats go out unpersisted, reusing the cloud's acked seq.
                publish_unpersisted=link.beat, renewed=renewed)
            telemetry = self.telemetry = Telemetry(
                runtime=runtime, sink=reporter.telemetry, sample_s=s.telemetry_sample_s,
                point_s=s.telemetry_point_s, clock=self.clock, node=s.node)
            prober = self.prober = ProbeManager(
                probe=make_probe(runtime), clock=self.clock, node=s.node,
                on_change=wake.set)  # readiness changes are reported at once

            def free_disk(exc: InsufficientDisk, keep: set[str]) -> Awaitable[list[str]]:
                return self.collect_images(
                    runtime, keep=keep, why="pull failed: insufficient disk",
                    min_free_bytes=max(s.image_gc_min_free_bytes, exc.needed_bytes))

            network = PodNetwork(s.podnet_dir, bridge=s.pod_bridge, cidr=s.pod_cidr)
            scraper = self.scraper = Scraper(
                targets=lambda: scrape.targets(sync.desired.items, self._pod_ip(network)),
                sink=reporter.metrics, interval_s=s.scrape_interval_s or 60.0,
                always=s.agent_metrics,
                agent=lambda: metrics.samples(link.stats, sync.stats),
                clock=self.clock, limits=ScrapeLimits(
                    max_body_bytes=s.scrape_max_body_bytes, timeout_s=s.scrape_timeout_s,
                    max_series_per_pod=s.scrape_max_series_per_pod,
                    max_series_per_node=s.scrape_max_series_per_node,
                    max_batch_bytes=s.scrape_max_batch_bytes))
            reconciler = self.reconciler = Reconciler(
                node=s.node, runtime=runtime, cache=cache, desired=lambda: sync.desired,
                sink=reporter, wake=wake, interval_s=s.reconcile_interval_s,
                clock=self.clock, resync_s=s.reconcile_resync_s,
                pull_report_s=s.pull_report_s,
                crashloop=CrashLoop(initial_s=s.crashloop_initial_s, max_s=s.crashloop_max_s,
                                    reset_s=s.crashloop_reset_s),
                volumes=Volumes(s.pods_dir, open_secret=self._secret_opener(keys)),
                devices=devices, prober=prober, on_disk_full=free_disk,
                network=network,
                policy_cap=s.policy_cap, seccomp_dir=s.seccomp_dir)
            baseline = cache.last_seq()  # a report of this process has a higher seq
            upgrader = self.upgrader = Upgrader(
                slots=Slots(s.agent_dir, base=__version__), version=running_version(),
                trial=on_trial(), desired=lambda: sync.desired,
                images=self._release_images(runtime), trusted=s.release_keys,
                # commit a trial once connected, pods adopted, and a report acked
                healthy=lambda: (link.connected and reconciler.passes >= 1
                                 and link.report_acked > baseline),
                on_status=reporter.node_status_changed, pull_secret=s.release_pull_secret,
                check_s=s.upgrade_check_s, clock=self.clock)
            log.info("edgecore %s starting: desired %s gen %d, report seq %d, %d in outbox",
                     s.node, sync.desired.epoch, sync.desired.gen, cache.last_seq(),
                     len(cache.outbox()))
            self.started.set()
            async with asyncio.TaskGroup() as tg:
                for name, coro in (
                    ("link", link.run()),
                    ("reconciler", reconciler.run()),
                    ("reporter", reporter.run()),
                    ("heartbeat", self._heartbeat(link, reporter, beat_now)),
                    ("telemetry", telemetry.run()),
                    ("logrotate", self._rotate_logs(runtime)),
                    ("imagegc", self._image_gc(runtime, reconciler.desired_images)),
                    ("requests", requests.run()),
                    ("certrenew", self._renew_certificate(link, keys)),
                    ("upgrade", upgrader.run()),
                    ("metrics", metrics.run(
                        s.metrics_path, node=s.node, interval=s.metrics_interval_s,
                        collect=lambda: metrics.samples(link.stats, sync.stats,
                                                        scraper.stats))),
                ):
                    tg.create_task(coro, name=f"edgecore[{s.node}].{name}")
                if s.scrape_interval_s > 0:
                    tg.create_task(scraper.run(), name=f"edgecore[{s.node}].scrape")
        finally:
            # Worker threads that a cancellation left behind finish before the close.
            await asyncio.to_thread(cache.close)

    def _secret_opener(self, keys: seal.NodeKeys | None) -> Callable[[str, Any], Any]:
        """Opens a sealed Secret value when a volume needs it (raises AuthFailed);
        clear values pass (only an insecure cloud sends them, over sealed messages)."""
        node = self.settings.node

        def open_secret(entry_key: str, value: Any) -> Any:
            if not seal.is_sealed(value):
                return value
            if keys is None:
                raise AuthFailed(f"{entry_key}: sealed, and this agent has no node key")
            return seal.open_secret(keys.secret, node=node, entry_key=entry_key, sealed=value)

        return open_secret

    @staticmethod
    def _pod_ip(network: PodNetwork) -> Callable[[str], str | None]:
        def ip(key: str) -> str | None:
            addr = network.address(key)
            return None if addr is None else addr.ip
        return ip

    def _node_status(self) -> dict[str, Any]:
        point = self.telemetry.last_point if self.telemetry is not None else None
        node = (point or {}).get("node") or {}
        usage = {k2: node[k1] for k1, k2 in (("cpu", "cpu"), ("mem", "memory")) if k1 in node}
        return node_status(self.settings, usage=usage,
                           accelerators=self.devices.capacity() if self.devices else None,
                           upgrade=self.upgrader.status() if self.upgrader else None)

    @staticmethod
    def _release_images(runtime: ExtendedRuntime) -> ReleaseImages | None:
        """The image store agent releases are pulled through (the crun runtime's)."""
        from edgecore.runtime import CrunRuntime

        return runtime.image_store if isinstance(runtime, CrunRuntime) else None

    async def _rotate_logs(self, runtime: ExtendedRuntime) -> None:
        """Rotate container logs every log_rotate_interval_s (if the runtime can)."""
        s = self.settings
        if not runtime.capabilities.log_rotation:
            return
        while True:
            try:
                rotated = await runtime.rotate_all_logs(max_bytes=0, keep=s.log_keep)
                if rotated:
                    log.debug("rotated the logs of %d container(s)", len(rotated))
            except (ContainerRuntimeError, OSError) as exc:
                log.warning("log rotation failed: %s", exc)
            await asyncio.sleep(s.log_rotate_interval_s)

    async def _image_gc(self, runtime: ExtendedRuntime,
                        desired_images: Callable[[], set[str]]) -> None:
        """Collect unused images every image_gc_interval_s (if the runtime can)."""
        if not runtime.capabilities.image_gc:
            return
        while True:
            await asyncio.sleep(self.settings.image_gc_interval_s)
            await self.collect_images(runtime, keep=desired_images(), why="periodic")

    async def collect_images(
        self, runtime: ExtendedRuntime, *, keep: set[str], why: str,
        min_free_bytes: int | None = None,
    ) -> list[str]:
        """One image GC: keep `keep` (the images of every desired pod's containers);
        remove those unused for image_gc_max_unused_s, then least recently used ones
        while the runtime root's filesystem has less than `min_free_bytes` (default
        image_gc_min_free_bytes) free. Errors are logged, not raised: a failed GC must
        not stop the agent."""
        s = self.settings
        if not runtime.capabilities.image_gc:
            return []
        try:
            removed = await runtime.gc(
                keep_refs=keep, max_age_s=s.image_gc_max_unused_s,
                target_free_bytes=(s.image_gc_min_free_bytes if min_free_bytes is None
                                   else min_free_bytes))
        except (ContainerRuntimeError, OSError) as exc:
            log.warning("image GC (%s) failed: %s", why, exc)
            return []
        if removed:
            log.info("image GC (%s) removed %d image(s): %s", why, len(removed),
                     ", ".join(removed))
        else:
            log.debug("image GC (%s): nothing to remove (%d image(s) kept)", why, len(keep))
        return removed

    async def _renew_certificate(self, link: Link, keys: seal.NodeKeys | None) -> None:
        """Renew the broker client certificate when a third of its lifetime is left
        (`POST /api/v1/nodes/{name}/certificate`, authenticated by the node key), then
        reconnect with it; the old one stays valid meanwhile, so no session is lost.
        A failed attempt is retried every RENEW_RETRY_S (and logged); without a client
        certificate, a cloud URL or a key there is nothing to do. The lifetime is read
        without cryptography and the call is made by a child process
        (`edgecore.renew`): neither leaves anything in the agent's memory (issue 16)."""
        s = self.settings
        if s.client_cert is None or s.client_key is None or not s.cloud_url or keys is None:
            return
        from edgecore.join import JoinError, certificate_lifetime
        from edgecore.renew import renew_in_child

        while True:
            try:
                start, end = await asyncio.to_thread(certificate_lifetime, s.client_cert)
            except (OSError, ValueError) as exc:
                log.warning("cannot read the client certificate %s: %s", s.client_cert, exc)
                await asyncio.sleep(RENEW_RETRY_S)
                continue
            due = end - (end - start) / 3
            await asyncio.sleep(max(0.0, due - self.clock()))
            try:
                await renew_in_child(
                    s.cloud_url, name=s.node, k_up=keys.up, cert_file=s.client_cert,
                    key_file=s.client_key, ca_file=s.ca_file, now=self.clock())
            except (JoinError, OSError) as exc:
                log.warning("client certificate renewal failed (it expires at %s): %s; "
                            "retrying in %.0f s", time.ctime(end), exc, RENEW_RETRY_S)
                await asyncio.sleep(RENEW_RETRY_S)
                continue
            log.info("renewed the client certificate; reconnecting with it")
            link.reconnect()

    async def _heartbeat(self, link: Link, reporter: Reporter, now: asyncio.Event) -> None:
        """An empty report while connected and quiet for 1.5 x heartbeat_s (checked every
        half heartbeat, jittered), and one right after every (re)connect (`now`), so a
        healed node is Ready as soon as its link is up rather than a heartbeat later.
        Telemetry points and statuses count: with the default 60 s heartbeat and a point
        a minute, an idle node sends no heartbeat at all, and the longest silence is
        2 x heartbeat_s, inside the cloud's 3 x heartbeat_s window.

        Skipped while offline: a stale heartbeat proves nothing. On a full disk the
        reporter publishes it unpersisted (see `Reporter.heartbeat`).
        """
        s = self.settings
        while True:
            try:
                async with asyncio.timeout(jittered(s.heartbeat_s / 2, s.heartbeat_jitter)):
                    await now.wait()
            except TimeoutError:
                pass
            forced = now.is_set()
            now.clear()
            quiet = time.monotonic() - reporter.last_append >= 1.5 * s.heartbeat_s
            if link.connected and (quiet or forced):
                try:
                    await reporter.heartbeat()
                except CacheError as exc:  # reporter handles it; belt and braces
                    log.warning("heartbeat not sent: %s", exc)
