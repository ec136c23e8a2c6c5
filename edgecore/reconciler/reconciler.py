"""The reconciler: make the containers on this node match the desired pods.

Level-triggered, like the kubelet: every pass reads the whole desired set (the
persisted copy) and the whole actual state (`runtime.list()`), and acts on the
difference, so a missed event or an agent restart can never leave the node
wrong for longer than one pass. Passes run when woken (new desired state), when
a restart falls due, and every `interval_s` if the runtime's cheap
`state_token()` (crun: the mtime of conmon's exit directory) says a container
exited, else at least every `resync_s` (a full resync, whatever happened); a
runtime whose capabilities lack `state_token` gets a full pass every `interval_s`.
It never needs the network.

A pass woken by a new desired set while nothing else is due reuses the listing
of the last full pass instead of asking the runtime again (no `crun list` on the
start path, issue 16) when that listing still holds: the state token has not
moved since (no container exited) and no pod to be synced has had a container
started, stopped or removed since it was taken (`_dirty`: each such runtime call
marks its pod when it ends; a completed removal leaves the pod clean and empty).
Otherwise the pass lists, as before. A pod whose pass changed nothing (a running
pod checked again) stays clean, so a node running pods starts a new one unlisted.

Per pod, in its own task (a slow image pull of one pod never holds up another;
a pod whose previous work is still running is skipped this pass):
- containers of another revision are stopped and removed, then the new ones
  created (a rolling update on this node: old down before new up);
- so are those of another pod object under the same name (the entry's `uid` differs
  from the one the container or the pod's record was made for: deleted and created
  again, as the kubelet keys pods by uid); the new pod starts with fresh restart
  counts and empty emptyDirs. A container or record without a uid (made before entries
  carried one) is adopted, and the entry's uid remembered from then on;
- missing containers are run; running ones that match are adopted untouched;
- exited ones are restarted per restartPolicy with CrashLoopBackOff
  (10 s doubling to 5 min, reset after 10 min of running), the schedule kept in
  the cache so it survives agent restarts;
- containers of pods that are no longer desired are stopped with the grace
  period they were created with, and removed.
Every pod's outcome, including errors, becomes a PodStatus for the reporter.
While an image is pulled (`runtime.pull` before `runtime.run`), the pod is
reported once as Pending/ContainerCreating "pulling IMAGE", then every
`pull_report_s` with the elapsed seconds and, if the runtime measures it
(`pull_progress`), the bytes and layers done of the total. A pull that fails with
InsufficientDisk calls `on_disk_full` (the agent's image GC, told which images the
desired pods use) and is retried once.

Before anything of a pod is created, its spec is checked again against the policy
level it was admitted under (`PodEntry.policy`, else `policy_default`), never more
permissive than this agent's `policy_cap` (`shared.policy.check`; hostPaths are also
checked resolved on this node, symbolic links followed). A spec that breaks it, forged
or slipped past the cloud, does not run: its containers are removed and its status is
Failed, reason PolicyViolation, "PolicyViolation: <field> <value> not allowed by
<level> (...)".

A pod without `hostNetwork` gets its own network namespace and address from the
`network` (`edgecore.podnet`) before its containers start; all of them join it and the
address is reported as `podIP`. Without a `network` (unit tests, a device without
iproute2/nftables) each container of such a pod gets a private namespace with only
loopback: the agent never falls back to the host's network.

Before any container of a pod starts, its volumes are made ready (`volumes.py`;
on every pass, so configMap/secret changes reach running containers) and its
accelerators allocated (`edgecore.devices`); either missing keeps the container
waiting (pod Pending: CreateContainerConfigError / InsufficientDevices) and is
retried every pass without counting as a failure. Running containers with
probes get a prober (`edgecore.reconciler.prober`): its readiness becomes
ContainerStatus.ready, and a liveness/startup failure makes the reconciler
stop the container, which is then restarted like a crash ("Unhealthy: ...").

A cache write the disk refuses (pod records, accelerator allocations) does not
fail the pod: its status stays what the containers say, the newest value waits
in memory and is retried with backoff (0.5 s doubling to 30 s), logged once a
minute. An agent restart before the retry succeeds loses those records (restart
counts, CrashLoopBackOff schedule), not the containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from edgecore.cache import Cache
from edgecore.devices import DeviceAllocator, InsufficientDevices, wanted
from edgecore.errors import CacheError
from edgecore.podnet import HostPort, NetworkError, PodNetwork
from edgecore.ratelimit import RateLimitedLog
from edgecore.reconciler import dns
from edgecore.reconciler import env as envs
from edgecore.reconciler.env import EnvError
from edgecore.reconciler.naming import (
    ANN_CONTAINER,
    ANN_GRACE,
    ANN_POD,
    ANN_REVISION,
    ANN_UID,
    container_id,
    container_spec,
)
from edgecore.reconciler.prober import ProbeManager
from edgecore.reconciler.records import ContainerRecord, PodRecord
from edgecore.reconciler.status import pod_status, terminated_reason
from edgecore.reconciler.volumes import PreparedVolumes, VolumeError, Volumes
from edgecore.runtime import seccomp
from edgecore.runtime.errors import (
    ContainerRuntimeError,
    ImagePullError,
    ImageUnpackError,
    InsufficientDisk,
    InvalidSpec,
    RuntimePermanentError,
    RuntimeTemporaryError,
)
from edgecore.runtime.images import normalize_ref
from edgecore.runtime.registry_auth import RegistryCredentials, credentials_for
from edgecore.runtime.types import (
    ContainerSpec,
    ContainerState,
    ExtendedRuntime,
    Mount,
    PullProgress,
)
from shared.backoff import capped_delay
from shared.delta import EdgeDesired
from shared.entries import POD, PodEntry, config_files, parse_pod_entry, secret_key, split_key
from shared.errors import ObjectError
from shared.pods import Container, ContainerStatus, LastState, PodStatus
from shared.policy import Level, Violation, check, effective, host_path_rule, stricter

log = logging.getLogger(__name__)

MAX_MESSAGE = 500  # characters of an error message carried in a status
NO_TOKEN = ("no service account token is mounted: edgefed has no service accounts "
            "(serviceAccountName is recorded)")


class SeccompProfileError(Exception):
    """A Localhost seccomp profile is missing or unusable on this node: the container
    waits (CreateContainerConfigError) and is tried again on the next pass."""


class StatusSink(Protocol):
    """Where pod statuses go (the reporter); None means the pod is gone from the node."""

    def update(self, key: str, status: PodStatus | None) -> None: ...


PARALLEL_STARTS = 4
"""Containers the reconciler creates and starts at once (`runtime.run`: the bundle, the
OCI config, conmon and crun). Pods still converge in parallel, pulls included; only this
step waits for a slot. Twenty pods applied at once held the agent's memory about
0.3 MiB higher for good, each start's transient objects at the same time (issue 16,
docs/benchmarks.md); a start takes tens of milliseconds, so the wait is short."""


@dataclass(frozen=True)
class CrashLoop:
    """Restart backoff of a container (Kubernetes' CrashLoopBackOff numbers)."""

    initial_s: float = 10.0
    max_s: float = 300.0
    reset_s: float = 600.0  # ran this long before exiting: start the backoff afresh

    def delay(self, failures: int) -> float:
        return capped_delay(failures, initial=self.initial_s, cap=self.max_s)


@dataclass(frozen=True)
class _PodContext:
    """What every container of a pod needs this pass: its volumes, or why it must wait."""

    volumes: PreparedVolumes | None = None
    blocked: tuple[str, str] | None = None  # (reason, message): do not start containers
    netns: str | None = None  # the pod's network namespace (None: the host's)
    pod_ip: str | None = None
    items: Mapping[str, Any] | None = None  # the desired set (ConfigMaps, Secrets for env)
    extra_mounts: tuple[Mount, ...] = ()  # the pod's own files (its resolv.conf)


def _other_pod(known: str | None, uid: str | None) -> bool:
    """Whether containers or records made for pod object `known` belong to another pod
    than the entry's `uid` (either unknown: no, they are adopted)."""
    return known is not None and uid is not None and known != uid


def _identity(want: PodEntry | Exception | None) -> tuple[str, str | None] | None:
    """What pod work is for: the entry's (revision, uid); None for a removal."""
    return (want.revision, want.uid) if isinstance(want, PodEntry) else None


def _msg(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


class Reconciler:
    def __init__(
        self, *, node: str, runtime: ExtendedRuntime, cache: Cache,
        desired: Callable[[], EdgeDesired], sink: StatusSink,
        crashloop: CrashLoop | None = None, interval_s: float = 5.0,
        clock: Callable[[], float] = time.time, volumes: Volumes | None = None,
        devices: DeviceAllocator | None = None, prober: ProbeManager | None = None,
        resync_s: float = 30.0, pull_report_after_s: float = 0.2, pull_report_s: float = 10.0,
        on_disk_full: Callable[[InsufficientDisk, set[str]], Awaitable[object]] | None = None,
        network: PodNetwork | None = None, policy_default: Level = "baseline",
        policy_cap: Level = "privileged", wake: asyncio.Event | None = None,
        seccomp_dir: Path | None = None,
        parallel_starts: int = PARALLEL_STARTS,
    ) -> None:
        """`wake` is the event that asks for a pass as soon as possible: the agent
        shares it with the parts that must wake the reconciler (the sync handler on a
        new desired set, the prober on a readiness change), which are built before it.
        None: its own (`wake()` sets it either way). `on_disk_full(exc, keep)` is the
        agent's image GC, awaited when a pull fails with InsufficientDisk; `keep` holds
        the images of the desired pods (`desired_images`)."""
        self.node = node
        self.network = network  # None: pods without hostNetwork cannot start here
        self.seccomp_dir = seccomp_dir  # Localhost seccomp profiles (None: refused)
        self._starts = asyncio.Semaphore(parallel_starts)  # runtime.run calls at once
        self.policy_default = policy_default  # for entries that carry no level
        self.policy_cap = policy_cap  # the most this agent allows, whatever the entry says
        self.volumes = volumes  # None: pods with volumes cannot start here
        self.devices = devices  # None: no accelerators on this node
        self.prober = prober  # None: probes are not run (running means ready)
        self.runtime = runtime
        self.cache = cache
        self.desired = desired
        self.sink = sink
        self.crashloop = crashloop or CrashLoop()
        self.interval_s = interval_s
        self.resync_s = max(resync_s, interval_s)
        self.pull_report_after_s = pull_report_after_s  # a quicker pull is not reported
        self.pull_report_s = pull_report_s
        self.on_disk_full = on_disk_full
        self.skipped = 0  # periodic passes skipped because nothing could have changed
        self._last_full: float | None = None  # clock() of the last pass
        self._last_token: object = None
        self._deferred = False  # the last pass left pods in flight: pass again
        # The last full listing (pod key -> its containers), the token read before it,
        # and the pods whose containers may have changed since (module docstring).
        self._listing: dict[str, list[ContainerState]] | None = None
        self._listing_token: object = None
        self._dirty: set[str] = set()
        self.cached_passes = 0  # passes that reused the last listing
        self.clock = clock  # wall clock: records with due times outlive the process
        self.passes = 0
        self._wake = wake if wake is not None else asyncio.Event()
        self._inflight: dict[str, asyncio.Task[None]] = {}
        # The (revision, uid) each task works for (None: a removal).
        self._inflight_rev: dict[str, tuple[str, str | None] | None] = {}
        self._parsed: dict[str, tuple[Any, PodEntry | Exception]] = {}
        self._refused: dict[str, tuple[str, Level]] = {}  # pod key -> revision, level logged
        self._records = {k: PodRecord.from_dict(v) for k, v in cache.pod_records().items()}
        # Cache writes that failed (CacheError: a full disk), newest per (what, pod key),
        # retried with backoff; meanwhile the in-memory records are the truth.
        self._unpersisted: dict[tuple[str, str], tuple[Callable[..., object], tuple[Any, ...]]] = {}
        self._persist_failures = 0
        self._persist_retry_at = 0.0
        self._persist_log = RateLimitedLog(log)

    def wake(self) -> None:
        """Ask for a pass as soon as possible (e.g. after a new desired set was persisted)."""
        self._wake.set()

    async def run(self) -> None:
        """Reconcile until cancelled; in-flight pod work is cancelled on the way out.

        Cancelling never stops containers: they outlive the agent.
        """
        try:
            while True:
                woken = self._wake.is_set()
                self._wake.clear()
                needed = self._pass_needed()
                if woken or needed:
                    await self.reconcile_once(wait=False, reuse_listing=not needed)
                else:
                    self.skipped += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._sleep_time()):
                        await self._wake.wait()
        finally:
            tasks = list(self._inflight.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.prober is not None:
                await self.prober.close()

    def _token(self) -> object:
        return self.runtime.state_token() if self.runtime.capabilities.state_token else None

    def _pass_needed(self) -> bool:
        """False only if nothing can have changed since the last pass: no exit seen by
        the runtime's state token, no restart due, no pod left in flight, resync not due."""
        token = self._token()
        if token is None or self._last_full is None or token != self._last_token:
            return True
        now = self.clock()
        if now < self._last_full:  # the wall clock went back: pass (and re-anchor) now
            return True
        if self._deferred or now - self._last_full >= self.resync_s:
            return True
        if self._unpersisted and now >= self._persist_retry_at:
            return True
        return any(self._last_full < c.next_start_at <= now and not c.completed
                   for r in self._records.values() for c in r.containers.values())

    def _sleep_time(self) -> float:
        """Until the next pass: the interval, or sooner if a restart falls due before it."""
        now = self.clock()
        due = [c.next_start_at for r in self._records.values() for c in r.containers.values()
               if c.next_start_at > now and not c.completed]
        if self._unpersisted and self._persist_retry_at > now:
            due.append(self._persist_retry_at)
        soonest = min(due, default=now + self.interval_s) - now
        return max(0.05, min(self.interval_s, soonest + 0.01))

    async def reconcile_once(self, *, wait: bool = True, reuse_listing: bool = False) -> None:
        """One pass over every pod; with `wait`, returns when all of its pod work is done.

        `reuse_listing`: the last full listing may stand in for `runtime.list()` if it
        still holds for every pod this pass would sync (module docstring)."""
        self.passes += 1
        await self._retry_unpersisted()
        desired = self.desired()
        wanted = self._parse(desired)
        # A set we never received (fresh cache) is not "delete everything".
        everything = desired.epoch is not None or desired.gen > 0
        token = self._token()  # before the list: an exit during it shows next time
        groups = self._listing if reuse_listing else None
        if groups is not None:
            keys = set(wanted) | (set(groups) | set(self._records) if everything else set())
            if (token is None or token != self._listing_token
                    or (keys - set(self._inflight)) & self._dirty):
                groups = None
        listed = groups is None
        if not listed:
            self.cached_passes += 1
        else:
            self._dirty = set()  # a change that ends after the list starts marks anew
            self._listing = None  # a removal ending during the list must not clean its pod
            try:
                actual = await self.runtime.list()
            except ContainerRuntimeError as exc:
                # Without the actual state, any action could be wrong: skip the pass.
                log.warning("reconcile pass skipped: cannot list containers: %s", exc)
                self._deferred = True
                return
            groups = {}
            for st in actual:
                pod = st.annotations.get(ANN_POD)
                if pod:  # containers without our annotation are not ours to touch
                    groups.setdefault(pod, []).append(st)
            self._listing, self._listing_token = groups, token
        keys = set(wanted)
        if everything:
            keys |= set(groups) | set(self._records)
            if self.volumes is not None and self.passes % 12 == 1:
                # Pod dirs left by a crash between container removal and cleanup.
                for gone in await asyncio.to_thread(
                        self.volumes.sweep, keys | set(self._inflight)):
                    log.info("removed leftover volumes of %s", gone)
            if self.network is not None and self.passes % 12 == 1:
                for gone in await self.network.sweep(keys | set(self._inflight)):
                    log.info("removed the leftover network of %s", gone)
        if listed:  # a pass on a reused listing is no resync
            self._last_full, self._last_token = self.clock(), token
        self._deferred = False
        started: list[asyncio.Task[None]] = []
        for key in sorted(keys):
            want = wanted.get(key)
            if key in self._inflight:
                rev = _identity(want)
                if rev != self._inflight_rev.get(key) and not self._inflight[key].done():
                    # Work for a superseded spec or pod (typically a pull from a registry
                    # that is gone, which can take a minute to fail): stop it, as a
                    # shutdown would, and start the new one as soon as it has unwound.
                    log.info("%s: a new revision or pod %s arrived; stopping the work on %s",
                             key, rev, self._inflight_rev.get(key))
                    self._inflight[key].cancel()
                self._deferred = True
                continue
            task = asyncio.create_task(
                self._sync_pod(key, want, groups.get(key, []), desired.items),
                name=f"edgecore[{self.node}].reconciler.{key}",
            )
            self._inflight[key] = task
            self._inflight_rev[key] = _identity(want)
            task.add_done_callback(lambda t, k=key: self._work_done(k, t))
            started.append(task)
        if wait and started:
            await asyncio.gather(*started, return_exceptions=True)  # superseded: cancelled

    def _work_done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
            self._inflight_rev.pop(key, None)
        if task.cancelled():
            self.wake()  # superseded (or shutting down): pass again now

    def desired_images(self) -> set[str]:
        """The image of every container of every desired pod (image GC keeps them)."""
        images: set[str] = set()
        for entry in self._parse(self.desired()).values():
            if isinstance(entry, PodEntry):
                images.update(c.image for c in entry.spec.all_containers())
        return images

    def _parse(self, desired: EdgeDesired) -> dict[str, PodEntry | Exception]:
        out: dict[str, PodEntry | Exception] = {}
        for key, value in desired.items.items():
            if not key.startswith(POD + "/"):
                continue
            cached = self._parsed.get(key)
            if cached is not None and cached[0] == value:
                out[key] = cached[1]
                continue
            try:
                entry: PodEntry | Exception = parse_pod_entry(key, value)
            except Exception as exc:  # pydantic, KeyError, TypeError: all mean "not a pod"
                entry = exc
            self._parsed[key] = (value, entry)
            out[key] = entry
        for gone in set(self._parsed) - set(out):
            del self._parsed[gone]
        return out

    # -- cache writes that a full disk refused -------------------------------------------

    async def _persist(self, slot: tuple[str, str], fn: Callable[..., object],
                       *args: Any) -> None:
        """Write to the cache. A CacheError (a full disk) does not fail the pod: the
        write waits, newest per slot, for `_retry_unpersisted`; the in-memory state
        stays the truth for this process (a restart before the retry loses it)."""
        self._unpersisted.pop(slot, None)  # an older failed write of the slot is moot
        try:
            await asyncio.to_thread(fn, *args)
        except CacheError as exc:
            self._unpersisted[slot] = (fn, args)
            self._persist_failed(exc)

    def _persist_failed(self, exc: CacheError) -> None:
        self._persist_failures += 1
        self._persist_retry_at = self.clock() + capped_delay(
            self._persist_failures, initial=0.5, cap=30.0)
        self._persist_log.warning(
            "cache", "cannot persist pod records (%d waiting, retried with backoff): %s",
            len(self._unpersisted), exc)

    async def _retry_unpersisted(self) -> None:
        """Retry the waiting writes once due; not those of pods with work in flight
        (their task writes the newer value itself)."""
        if not self._unpersisted or self.clock() < self._persist_retry_at:
            return
        for slot, write in list(self._unpersisted.items()):
            if slot[1] in self._inflight:
                continue
            try:
                await asyncio.to_thread(write[0], *write[1])
            except CacheError as exc:
                self._persist_failed(exc)
                return
            if self._unpersisted.get(slot) is write:
                del self._unpersisted[slot]
        if not self._unpersisted:
            self._persist_failures = 0
            log.info("pod records are persisted again")

    # -- one pod ------------------------------------------------------------------------

    async def _sync_pod(
        self, key: str, want: PodEntry | Exception | None, states: list[ContainerState],
        items: dict[str, Any],
    ) -> None:
        """Converge one pod; never raises (except cancellation): errors become its status."""
        try:
            if want is None:
                await self._remove_pod(key, states)
                self._cleared(key)
            elif isinstance(want, Exception):
                await self._stop_remove(states)
                self._cleared(key)
                self.sink.update(key, PodStatus(
                    phase="Failed", reason="InvalidSpec", node_name=self.node,
                    message=f"desired value of {key} is not a valid pod: {_msg(want)}"))
            else:
                await self._converge(want, states, items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("reconciling %s failed", key)
            self.sink.update(key, PodStatus(
                phase="Unknown", reason="ReconcileError", message=_msg(exc), node_name=self.node,
                revision=None if not isinstance(want, PodEntry) else want.revision))

    @contextlib.asynccontextmanager
    async def _changing(self, key: str) -> AsyncIterator[None]:
        """Around a runtime call that changes `key`'s containers: once it ends (however),
        the last listing no longer tells them (module docstring). Marked at the end, so
        a change that straddles the start of a listing is marked after it too."""
        try:
            yield
        finally:
            self._dirty.add(key)

    def _cleared(self, key: str) -> None:
        """Every container of `key` is gone: the last listing holds again for it."""
        if self._listing is not None:
            self._listing.pop(key, None)
            self._dirty.discard(key)

    async def _remove_pod(self, key: str, states: list[ContainerState]) -> None:
        if states:
            log.info("removing %s (%d containers): no longer desired", key, len(states))
        await self._stop_remove(states)
        if self._records.pop(key, None) is not None:
            await self._persist(("record", key), self.cache.delete_pod_record, key)
        if self.devices is not None and self.devices.release(key):
            await self._persist(("allocation", key), self.cache.put_pod_allocation, key, None)
        if self.volumes is not None and await asyncio.to_thread(self.volumes.remove, key):
            log.info("removed the volumes of %s", key)
        if self.network is not None and await self.network.detach(key):
            log.info("removed the network of %s", key)
        self._refused.pop(key, None)
        self.sink.update(key, None)

    async def _stop_remove(self, states: list[ContainerState]) -> None:
        for st in states:
            if self.prober is not None:
                self.prober.forget(st.id)
            if st.status == "running":
                try:
                    grace = float(st.annotations.get(ANN_GRACE, "10"))
                except ValueError:
                    grace = 10.0
                async with self._changing(st.annotations.get(ANN_POD, "")):
                    await self.runtime.stop(st.id, grace_s=grace)
            async with self._changing(st.annotations.get(ANN_POD, "")):
                await self.runtime.remove(st.id)

    def _violations(self, entry: PodEntry) -> tuple[Level, list[Violation]]:
        """How the spec breaks its level (the entry's, capped by this agent's)."""
        admitted = entry.policy
        level = stricter(admitted.level if admitted is not None else self.policy_default,
                         self.policy_cap)
        rules = admitted.host_path_allow if admitted is not None else ()
        found = check(entry.spec, level, host_path_allow=rules)
        if level == "baseline" and not found:
            # The cloud matched the path as written; on the node a symbolic link may
            # lead elsewhere (/allowed/link -> /): check where it really goes.
            for i, v in enumerate(entry.spec.volumes):
                if v.host_path is None:
                    continue
                real = os.path.realpath(v.host_path.path)
                if host_path_rule(real, rules) is None:
                    found.append(Violation(
                        f"spec.volumes[{i}].hostPath.path", v.host_path.path, level,
                        f"resolves on this node to {real}, which no allowed prefix covers"))
        return level, found

    async def _refuse(self, entry: PodEntry, states: list[ContainerState], level: Level,
                      found: list[Violation]) -> PodStatus:
        """A spec its level does not allow: nothing of it runs or stays on the node."""
        await self._stop_remove(states)
        if self.network is not None:
            await self.network.detach(entry.key)
        text = "; ".join(f"{v.field} {json.dumps(v.value)} not allowed by {v.level}: "
                         f"{v.message}" for v in found)
        if self._refused.get(entry.key) != (entry.revision, level):  # once per revision
            self._refused[entry.key] = (entry.revision, level)
            log.warning("%s: refused by policy %s: %s", entry.key, level, text)
        return PodStatus(
            phase="Failed", reason="PolicyViolation", node_name=self.node,
            message=_msg(Exception(f"PolicyViolation: {text}")), revision=entry.revision,
            container_statuses=[ContainerStatus(name=c.name, reason="PolicyViolation")
                                for c in entry.spec.containers])

    async def _converge(
        self, entry: PodEntry, states: list[ContainerState], items: dict[str, Any],
    ) -> None:
        """Converge one pod and hand its status to the sink."""
        key = entry.key
        level, found = self._violations(entry)
        if found:
            self.sink.update(key, await self._refuse(entry, states, level, found))
            return
        self._refused.pop(key, None)
        rec = self._records.get(key)
        before = rec.to_dict() if rec is not None else None
        known = rec.uid if rec is not None else None  # the pod object the record is of
        renewed = _other_pod(known, entry.uid)
        if rec is None or rec.revision != entry.revision or renewed:
            # a new revision, or a new pod under this name, starts with fresh counts
            rec = PodRecord(revision=entry.revision, uid=entry.uid)
        elif rec.uid is None:
            rec.uid = entry.uid  # adopted (module docstring)
        self._records[key] = rec
        _, ns, name = split_key(key)
        names = {c.name for c in entry.spec.all_containers()}
        current: dict[str, ContainerState] = {}
        stale: list[ContainerState] = []
        for st in states:
            cname = st.annotations.get(ANN_CONTAINER, "")
            expected = container_id(ns, name, cname, entry.revision)
            other = _other_pod(st.annotations.get(ANN_UID) or known, entry.uid)
            renewed = renewed or other
            if (st.annotations.get(ANN_REVISION) != entry.revision or cname not in names
                    or cname in current or st.id != expected or other):
                stale.append(st)
            else:
                current[cname] = st
        if renewed:
            log.info("%s: a new pod (uid %s) under this name; replacing %d container(s)",
                     key, entry.uid, len(stale))
        elif stale:
            log.info("%s: replacing %d container(s) with revision %s", key, len(stale),
                     entry.revision)
        now = self.clock()
        spec = entry.spec
        if not current and all(not rec.container(c.name).completed
                               and rec.container(c.name).next_start_at <= now
                               for c in spec.all_containers()):
            # Everything is about to be (re)created: say so before a possibly slow pull.
            creating = [ContainerStatus(name=c.name, reason="ContainerCreating",
                                        restart_count=rec.container(c.name).restarts)
                        for c in spec.all_containers()]
            n = len(spec.init_containers)
            self.sink.update(key, pod_status(
                creating[n:], revision=entry.revision, node=self.node,
                init=creating[:n], sidecar=[c.restart_policy == "Always"
                                            for c in spec.init_containers]))
        await self._stop_remove(stale)
        if renewed and self.volumes is not None and await asyncio.to_thread(
                self.volumes.remove, key):
            log.info("removed the volumes of the previous pod %s", key)
        ctx = replace(await self._prepare(entry, items), items=items)
        if dns.needs_own(entry.spec) and ctx.blocked is None:
            ctx = await self._resolv_conf(entry, ctx)
        if self.devices is not None and self.devices.retain(key, names):
            await self._persist(("allocation", key), self.cache.put_pod_allocation, key,
                                self.devices.pod_value(key))
        init, initialized = await self._init_containers(entry, current, rec, ctx)
        statuses = []
        for c in spec.containers:
            cid = container_id(ns, name, c.name, entry.revision)
            if not initialized:
                statuses.append(ContainerStatus(
                    name=c.name, reason="PodInitializing",
                    restart_count=rec.container(c.name).restarts))
                continue
            statuses.append(await self._container(entry, c, cid, current.get(c.name),
                                                  rec.container(c.name), ctx=ctx))
        if init and spec.restart_policy != "Always" and all(
                rec.container(c.name).completed for c in spec.containers):
            init = await self._stop_sidecars(entry, current, rec, init)
        status = pod_status(statuses, revision=entry.revision, node=self.node,
                            pod_ip=ctx.pod_ip, init=init,
                            sidecar=[c.restart_policy == "Always" for c in spec.init_containers])
        if status.message is None and status.phase == "Running" and (
                spec.automount_service_account_token
                or (spec.service_account_name and spec.automount_service_account_token is None)):
            status.message = NO_TOKEN
        # The status goes to the reporter before the pod record is written, so the
        # report's own synced commit does not queue behind the record's (LMDB commits
        # one write at a time; each syncs the disk, 2 ms quiet and 12 under load here:
        # issue 16, the start path). The record is the agent's bookkeeping (restart
        # counts, backoff, the last exit); an agent killed between the two writes
        # restarts from the previous record, as one killed just before this pass.
        self.sink.update(key, status)
        after = rec.to_dict()
        if after != before:
            # One turn of the loop first: a reporter woken by an urgent status runs up to
            # its commit's worker thread, so that commit asks for LMDB's lock first.
            await asyncio.sleep(0)
            await self._persist(("record", key), self.cache.put_pod_record, key, after)

    async def _init_containers(
        self, entry: PodEntry, current: dict[str, ContainerState], rec: PodRecord,
        ctx: _PodContext,
    ) -> tuple[list[ContainerStatus], bool]:
        """Run the init containers in order, each to completion (a sidecar: until it
        runs), the next only once the one before is done; restarted on failure unless the
        pod's restartPolicy is Never (Kubernetes' rule). Returns their statuses and
        whether all are done (the app containers may start). App containers already
        running (adopted after the records were lost) mean the pod was initialized."""
        spec = entry.spec
        if not spec.init_containers:
            return [], True
        _, ns, name = split_key(entry.key)
        started = any(c.name in current for c in spec.containers)
        policy = "Never" if spec.restart_policy == "Never" else "OnFailure"
        out: list[ContainerStatus] = []
        done = True
        for c in spec.init_containers:
            crec = rec.container(c.name)
            sidecar = c.restart_policy == "Always"
            if not done:
                out.append(ContainerStatus(name=c.name, reason="PodInitializing",
                                           restart_count=crec.restarts))
                continue
            if not sidecar and started and not crec.completed:
                out.append(ContainerStatus(name=c.name, state="terminated", exit_code=0,
                                           reason="Completed", restart_count=crec.restarts))
                continue
            if sidecar and crec.completed:  # stopped once the app containers finished
                out.append(self._terminated(c.name, crec))
                continue
            cid = container_id(ns, name, c.name, entry.revision)
            st = await self._container(entry, c, cid, current.get(c.name), crec, ctx=ctx,
                                       policy="Always" if sidecar else policy)
            out.append(st)
            done = (st.state == "running" and st.started is not False if sidecar
                    else st.state == "terminated" and st.exit_code == 0)
        return out, done or started

    async def _stop_sidecars(
        self, entry: PodEntry, current: dict[str, ContainerState], rec: PodRecord,
        init: list[ContainerStatus],
    ) -> list[ContainerStatus]:
        """Every app container finished for good: stop the sidecars, as Kubernetes does."""
        out = list(init)
        for i, c in enumerate(entry.spec.init_containers):
            crec = rec.container(c.name)
            if c.restart_policy != "Always" or crec.completed:
                continue
            st = current.get(c.name)
            if st is not None and st.status == "running":
                if self.prober is not None:
                    self.prober.forget(st.id)
                async with self._changing(entry.key):
                    await self.runtime.stop(
                        st.id, grace_s=float(entry.spec.termination_grace_period_seconds))
            crec.completed, crec.exit_code, crec.exit_reason = True, 0, "Completed"
            crec.finished_at = self.clock()
            out[i] = self._terminated(c.name, crec)
        return out

    async def _resolv_conf(self, entry: PodEntry, ctx: _PodContext) -> _PodContext:
        """Write the pod's resolv.conf (dnsConfig / dnsPolicy None: `dns.py`) into its
        directory and mount it over the node's."""
        if self.volumes is None:
            return replace(ctx, blocked=("CreateContainerConfigError",
                                         "this agent has no directory for pod files "
                                         "(dnsConfig needs one)"))
        volumes = self.volumes

        def write() -> Path:
            try:
                node_text = Path("/etc/resolv.conf").read_text(errors="replace")
            except OSError:
                node_text = ""
            text = dns.resolv_conf(entry.spec, node_text)
            return volumes.write_file(entry.key, "resolv.conf", text.encode())

        try:
            path = await asyncio.to_thread(write)
        except OSError as exc:
            return replace(ctx, blocked=("CreateContainerConfigError",
                                         _msg(Exception(f"resolv.conf: {exc}"))))
        return replace(ctx, extra_mounts=(
            Mount(source=path, destination="/etc/resolv.conf", read_only=True),))

    async def _prepare(self, entry: PodEntry, items: dict[str, Any]) -> _PodContext:
        netns = pod_ip = None
        if entry.spec.host_network and self.network is not None:
            await self.network.detach(entry.key)  # a revision that moved to the host's
        if not entry.spec.host_network and self.network is None:
            netns = "private"
        elif not entry.spec.host_network:
            assert self.network is not None
            ports = [HostPort(p.host_port, p.container_port, p.protocol)
                     for c in entry.spec.all_containers() for p in c.ports if p.host_port]
            try:
                addr = await self.network.attach(entry.key, host_ports=ports)
            except NetworkError as exc:
                return _PodContext(blocked=("NetworkNotReady", _msg(exc)))
            netns, pod_ip = addr.netns, addr.ip
        if not entry.spec.volumes:
            return _PodContext(netns=netns, pod_ip=pod_ip)
        if self.volumes is None:
            return _PodContext(blocked=("CreateContainerConfigError",
                                        "this agent has no directory for pod volumes"),
                               netns=netns, pod_ip=pod_ip)
        try:
            return _PodContext(volumes=await asyncio.to_thread(self.volumes.prepare, entry, items),
                               netns=netns, pod_ip=pod_ip)
        except VolumeError as exc:
            return _PodContext(blocked=("CreateContainerConfigError", _msg(exc)),
                               netns=netns, pod_ip=pod_ip)

    # -- one container ------------------------------------------------------------------

    async def _container(
        self, entry: PodEntry, c: Container, cid: str, st: ContainerState | None,
        rec: ContainerRecord, *, ctx: _PodContext, policy: str | None = None,
    ) -> ContainerStatus:
        """Converge one container; `policy` overrides the pod's restartPolicy (an init
        container's)."""
        now = self.clock()
        # The wall clock can go back (a device without a battery-backed clock booting
        # offline, an NTP step): a restart is never due further off than its backoff
        # from now, or a crashed container would wait for the clock to catch up.
        rec.next_start_at = min(rec.next_start_at,
                                now + self.crashloop.delay(max(rec.failures, 1)))
        if st is not None and st.status == "running":
            if rec.running_since is None:  # adopted without a record (e.g. cache lost)
                rec.running_since = st.started_at
            if self.prober is None:
                return self._running(c.name, rec, ready=True, started=None)
            self.prober.ensure(cid, c, started_at=st.started_at or rec.running_since,
                               instance=str(st.started_at))
            probe = self.prober.state(cid, c)
            if probe.unhealthy is None:
                return self._running(c.name, rec, ready=probe.ready, started=probe.started)
            st = await self._kill_unhealthy(entry, cid, st, rec, probe.unhealthy)
            if st is None or st.status == "running":
                return self._running(c.name, rec, ready=False, started=probe.started)
        if st is not None and st.status in ("stopped", "unknown"):
            if self.prober is not None:
                self.prober.forget(cid)
            self._observe_exit(st, rec, policy or entry.spec.restart_policy)
            if rec.completed:
                return self._terminated(c.name, rec)
            if now < rec.next_start_at:
                return self._backing_off(c.name, rec)
            if ctx.blocked is not None:
                return self._blocked(c.name, rec, ctx.blocked)
            async with self._changing(entry.key):
                await self.runtime.remove(st.id)
            rec.restarts += 1
            return await self._start(entry, c, cid, rec, ctx)
        if rec.completed:  # finished for good; its container may have been cleaned away
            return self._terminated(c.name, rec)
        if now < rec.next_start_at:
            return self._backing_off(c.name, rec)
        if ctx.blocked is not None:
            return self._blocked(c.name, rec, ctx.blocked)
        if st is not None:  # "created": a start that never finished; clear it and retry
            async with self._changing(entry.key):
                await self.runtime.remove(st.id)
        return await self._start(entry, c, cid, rec, ctx)

    async def _kill_unhealthy(
        self, entry: PodEntry, cid: str, st: ContainerState, rec: ContainerRecord, why: str,
    ) -> ContainerState | None:
        """Stop a container its liveness/startup probe gave up on; return its new state.

        The exit is then counted like a crash (restart policy, CrashLoopBackOff),
        with `why` ("Unhealthy: ...") as the termination message.
        """
        log.info("%s: stopping container %s: %s", entry.key, cid, why)
        rec.kill_message = why
        assert self.prober is not None
        self.prober.forget(cid)
        async with self._changing(entry.key):
            await self.runtime.stop(cid,
                                    grace_s=float(entry.spec.termination_grace_period_seconds))
        return next((s for s in await self.runtime.list() if s.id == cid), None)

    def _observe_exit(self, st: ContainerState, rec: ContainerRecord, policy: str) -> None:
        """Count an exit once (it stays visible until the restart) and schedule the restart."""
        ident = f"{st.id}@{st.started_at}-{st.finished_at}-{st.status}"
        if rec.seen_exit == ident:
            return
        rec.seen_exit = ident
        rec.running_since = None
        rec.exit_code = st.exit_code
        rec.exit_reason = terminated_reason(st.exit_code, oom=st.oom_killed)
        rec.exit_message, rec.kill_message = rec.kill_message, None
        rec.last_started_at = st.started_at
        rec.finished_at = st.finished_at if st.finished_at is not None else self.clock()
        if not (policy == "Always" or (policy == "OnFailure" and st.exit_code != 0)):
            rec.completed = True
            return
        ran = (st.finished_at - st.started_at
               if st.finished_at is not None and st.started_at is not None else 0.0)
        if ran >= self.crashloop.reset_s:
            rec.failures = 0
        rec.failures += 1
        rec.next_start_at = rec.finished_at + self.crashloop.delay(rec.failures)
        log.info("container %s exited %s (%s); restart in %.0f s", st.id, st.exit_code,
                 rec.exit_reason, max(0.0, rec.next_start_at - self.clock()))

    async def _start(
        self, entry: PodEntry, c: Container, cid: str, rec: ContainerRecord, ctx: _PodContext,
    ) -> ContainerStatus:
        now = self.clock()
        if self.prober is not None:
            self.prober.forget(cid)  # a new instance is probed afresh
        try:
            env = self._env(entry, c, ctx)
            profile = (await asyncio.to_thread(self._seccomp_profile, entry, c)
                       if effective(entry.spec, c).seccomp == "Localhost" else None)
        except (EnvError, VolumeError, ObjectError, SeccompProfileError) as exc:
            return self._blocked(c.name, rec, ("CreateContainerConfigError", _msg(exc)))
        try:
            devices = await self._allocate(entry, c)
        except InsufficientDevices as exc:
            return self._blocked(c.name, rec, ("InsufficientDevices", _msg(exc)))
        try:
            spec = container_spec(entry, c, devices=devices, netns=ctx.netns, env=env,
                                  seccomp_profile=profile,
                                  mounts=self._mounts(c, ctx))
            if await self._needs_pull(spec):
                try:
                    await self._pull(entry, spec.image, always=spec.pull_policy == "Always",
                                     credentials=self._pull_credentials(entry, spec.image, ctx))
                except ImagePullError as exc:
                    if spec.pull_policy != "Always" or isinstance(exc, InsufficientDisk):
                        raise
                    # Offline first: a registry we cannot reach must not keep a container
                    # down whose image is already here; IfNotPresent pulls only if missing.
                    log.warning("%s: pull (Always) of %s failed, trying the local copy: %s",
                                entry.key, spec.image, exc)
                # Pulled (or Always failed): run() finds the image or pulls it itself.
                spec = replace(spec, pull_policy="IfNotPresent")
            try:
                await self._run(entry, cid, spec)
            except InsufficientDisk as exc:  # run() pulled and the disk was full
                if self.on_disk_full is None:
                    raise
                log.warning("%s: starting %s: %s; collecting unused images and retrying",
                            entry.key, cid, exc)
                await self.on_disk_full(exc, self.desired_images())
                await self._run(entry, cid, spec)
        except RuntimePermanentError as exc:
            self._start_failed(rec, "CreateContainerConfigError", exc, delay=self.crashloop.max_s)
            return self._waiting(c.name, rec)
        except (ImagePullError, ImageUnpackError) as exc:
            self._start_failed(rec, "ImagePullBackOff", exc, delay=exc.delay)
            return self._waiting(c.name, rec)
        except RuntimeTemporaryError as exc:
            self._start_failed(rec, "CreateContainerError", exc, delay=exc.delay)
            return self._waiting(c.name, rec)
        if rec.waiting_reason is not None:
            rec.failures = 0  # start failures do not count toward a later crash loop
        rec.waiting_reason = rec.waiting_message = None
        rec.running_since = now
        rec.completed = False
        if self.prober is None:
            return self._running(c.name, rec, ready=True, started=None)
        self.prober.ensure(cid, c, started_at=now, instance=None)
        probe = self.prober.state(cid, c)
        return self._running(c.name, rec, ready=probe.ready, started=probe.started)

    def _seccomp_profile(self, entry: PodEntry, c: Container) -> str | None:
        """The node's profile a `Localhost` seccompProfile names (under `seccomp_dir`,
        as the kubelet's `<root>/seccomp`), as OCI JSON; None for the other kinds.
        Raises SeccompProfileError saying what is wrong (the container then waits)."""
        eff = effective(entry.spec, c)
        if eff.seccomp != "Localhost" or eff.seccomp_localhost is None:
            return None
        name = eff.seccomp_localhost
        if self.seccomp_dir is None:
            raise SeccompProfileError(f"seccompProfile Localhost {name!r}: this agent has "
                                      "no seccomp profile directory")
        root = self.seccomp_dir.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise SeccompProfileError(f"seccompProfile Localhost {name!r} leads out of "
                                      f"{root}")
        try:
            return seccomp.localhost(path.read_text())
        except OSError as exc:
            raise SeccompProfileError(f"seccompProfile Localhost {name!r}: cannot read "
                                      f"{path}: {exc.strerror}") from None
        except ValueError as exc:
            raise SeccompProfileError(f"seccompProfile Localhost {name!r} ({path}): "
                                      f"{exc}") from None

    @staticmethod
    def _mounts(c: Container, ctx: _PodContext) -> tuple[Mount, ...]:
        """The container's volume mounts, then the pod's own files where no volume is."""
        mounts = ctx.volumes.mounts(c) if ctx.volumes else ()
        taken = {m.destination for m in mounts}
        return (*mounts, *(m for m in ctx.extra_mounts if m.destination not in taken))

    def _env(self, entry: PodEntry, c: Container, ctx: _PodContext) -> dict[str, str] | None:
        """The container's environment with `valueFrom` / `envFrom` resolved (None: it has
        neither, its plain values are all); raises EnvError / VolumeError if a ConfigMap,
        Secret or key it needs is missing or malformed (`edgecore.reconciler.env`)."""
        if not c.env_from and all(e.value_from is None for e in c.env):
            return None
        items = ctx.items or {}
        hip = envs.host_ip()
        facts = envs.PodFacts(node=self.node, pod_ip=ctx.pod_ip or hip, host_ip=hip)
        return envs.build(entry, c, data=lambda k: self._config_data(k, items), facts=facts)

    def _config_data(self, k: str, items: Mapping[str, Any]) -> Mapping[str, bytes] | None:
        """A ConfigMap's / Secret's keys from the desired set (a sealed Secret opened);
        None if the node does not have it; VolumeError / ObjectError if malformed."""
        if self.volumes is not None:
            return self.volumes.config_data(k, items)
        return config_files(k, items[k]) if k in items else None

    def _pull_credentials(self, entry: PodEntry, image: str,
                          ctx: _PodContext) -> RegistryCredentials | None:
        """The pod's imagePullSecrets' credentials for `image`'s registry (None: none
        match, none is on the node yet, or the runtime cannot use them: the pull goes
        without, as in Kubernetes). Never logged."""
        refs = entry.spec.image_pull_secrets
        if not refs:
            return None
        if not self.runtime.capabilities.pull_credentials:
            log.warning("%s: imagePullSecrets not used: this runtime cannot pull with "
                        "credentials", entry.key)
            return None
        found: list[Mapping[str, bytes]] = []
        for ref in refs:
            k = secret_key(entry.namespace, ref.name)
            try:
                data = self._config_data(k, ctx.items or {})
            except (VolumeError, ObjectError) as exc:
                log.warning("%s: pull secret %s is unusable: %s", entry.key, ref.name, exc)
                continue
            if data is None:
                log.info("%s: pull secret %s is not on this node (yet); pulling without it",
                         entry.key, ref.name)
                continue
            found.append(data)
        return credentials_for(image, found)

    async def _run(self, entry: PodEntry, cid: str, spec: ContainerSpec) -> None:
        async with self._starts:  # PARALLEL_STARTS; after any pull, so none waits on one
            try:
                async with self._changing(entry.key):
                    await self.runtime.run(cid, spec)
            except ImagePullError as exc:
                if spec.pull_policy != "Always" or isinstance(exc, InsufficientDisk):
                    raise
                # Offline first: a registry we cannot reach must not keep a container
                # down whose image is already here; IfNotPresent pulls only if missing.
                log.warning("%s: pull (Always) of %s failed, trying the local copy: %s",
                            entry.key, spec.image, exc)
                async with self._changing(entry.key):
                    await self.runtime.run(cid, replace(spec, pull_policy="IfNotPresent"))

    async def _needs_pull(self, spec: ContainerSpec) -> bool:
        """Whether to pull before run() (so the pod can be reported as pulling): only for
        runtimes that list their images; others pull inside run(), unreported."""
        if not self.runtime.capabilities.images or spec.pull_policy == "Never":
            return False
        if spec.pull_policy == "Always":
            return True
        try:
            ref = normalize_ref(spec.image)
        except InvalidSpec:
            return False  # run() reports it
        return ref not in {i.ref for i in await self.runtime.images()}

    async def _pull(self, entry: PodEntry, image: str, *, always: bool,
                    credentials: RegistryCredentials | None = None) -> None:
        """Pull `image` (with the pod's registry `credentials`, if any), reporting the pod
        as pulling if it takes a while; on InsufficientDisk, let `on_disk_full` free
        space and try once more."""
        try:
            await self._pull_reporting(entry, image, always=always, credentials=credentials)
        except InsufficientDisk as exc:
            if self.on_disk_full is None:
                raise
            log.warning("%s: pull of %s: %s; collecting unused images and retrying",
                        entry.key, image, exc)
            await self.on_disk_full(exc, self.desired_images())
            await self._pull_reporting(entry, image, always=always, credentials=credentials)

    async def _pull_reporting(self, entry: PodEntry, image: str, *, always: bool,
                              credentials: RegistryCredentials | None = None) -> None:
        kw: dict[str, Any] = {} if credentials is None else {"credentials": credentials}
        pull = (self.runtime.pull(image, **kw) if not always
                else self.runtime.pull(image, policy="Always", **kw))
        task = asyncio.ensure_future(pull)
        t0 = time.monotonic()
        wait = self.pull_report_after_s
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    task.result()
                    return
                # Once when the pull turns out not to be instant, then every pull_report_s.
                progress = await self._pull_progress(image)
                self.sink.update(entry.key, self._pulling(entry, image, time.monotonic() - t0,
                                                          progress))
                wait = self.pull_report_s
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _pull_progress(self, image: str) -> PullProgress | None:
        """The runtime's measure of a pull in progress (None if it cannot tell)."""
        if not self.runtime.capabilities.pull_progress:
            return None
        try:
            progress = await self.runtime.pull_progress(image)
        except (ContainerRuntimeError, OSError) as exc:
            log.debug("pull progress of %s: %s", image, exc)
            return None
        return progress

    def _pulling(self, entry: PodEntry, image: str, elapsed: float,
                 progress: PullProgress | None = None) -> PodStatus:
        rec = self._records.get(entry.key)
        restarts = {n: c.restarts for n, c in rec.containers.items()} if rec else {}
        # "pulling REF: 3.1 of 8.0 MiB, 1 of 2 layers (4 s)": docs/edgecore.md, "Pulls".
        what = f": {progress.describe()}" if progress is not None else ""
        msg = f"pulling {image}{what} ({elapsed:.0f} s)"
        spec = entry.spec
        init: list[ContainerStatus] = []
        for c in spec.init_containers:  # those done say so; the one pulling says that
            crec = rec.containers.get(c.name) if rec else None
            if crec is not None and crec.completed and crec.exit_code == 0:
                init.append(self._terminated(c.name, crec))
            else:
                init.append(ContainerStatus(
                    name=c.name, reason="ContainerCreating", restart_count=restarts.get(
                        c.name, 0), message=msg if c.image == image else None))
        initializing = any(st.state != "terminated" for st in init)
        return pod_status(
            [ContainerStatus(name=c.name, state="waiting",
                             reason="PodInitializing" if initializing else "ContainerCreating",
                             message=None if initializing else msg,
                             restart_count=restarts.get(c.name, 0))
             for c in spec.containers],
            revision=entry.revision, node=self.node, init=init or None,
            sidecar=[c.restart_policy == "Always" for c in spec.init_containers])

    async def _allocate(self, entry: PodEntry, c: Container) -> list[Any]:
        if self.devices is None:
            want = wanted(c)
            if want:
                raise InsufficientDevices(
                    f"container {c.name!r} needs {', '.join(sorted(want))}; this node has none")
            return []
        devices, changed = self.devices.allocate(entry.key, c)
        if changed:
            await self._persist(("allocation", entry.key), self.cache.put_pod_allocation,
                                entry.key, self.devices.pod_value(entry.key))
        return devices

    def _running(self, name: str, rec: ContainerRecord, *, ready: bool,
                 started: bool | None) -> ContainerStatus:
        return ContainerStatus(name=name, state="running", ready=ready, started=started,
                               restart_count=rec.restarts, started_at=rec.running_since,
                               last_state=self._last_state(rec))

    def _blocked(self, name: str, rec: ContainerRecord, why: tuple[str, str]) -> ContainerStatus:
        """Waiting for something outside the container (volume, device): not a failure."""
        return ContainerStatus(name=name, state="waiting", reason=why[0], message=why[1],
                               restart_count=rec.restarts, last_state=self._last_state(rec))

    @staticmethod
    def _last_state(rec: ContainerRecord) -> LastState | None:
        if rec.finished_at is None:
            return None
        return LastState(exit_code=rec.exit_code, reason=rec.exit_reason,
                         message=rec.exit_message, started_at=rec.last_started_at,
                         finished_at=rec.finished_at)

    def _start_failed(
        self, rec: ContainerRecord, reason: str, exc: Exception, *, delay: float | None,
    ) -> None:
        rec.failures += 1
        wait = delay if delay is not None else self.crashloop.delay(rec.failures)
        rec.next_start_at = self.clock() + wait
        rec.waiting_reason = reason
        rec.waiting_message = _msg(exc)
        log.warning("starting a container failed (%s), retry in %.0f s: %s", reason, wait, exc)

    def _waiting(self, name: str, rec: ContainerRecord) -> ContainerStatus:
        return ContainerStatus(name=name, state="waiting", reason=rec.waiting_reason,
                               message=rec.waiting_message, restart_count=rec.restarts,
                               last_state=self._last_state(rec))

    def _backing_off(self, name: str, rec: ContainerRecord) -> ContainerStatus:
        if rec.waiting_reason is not None:  # a failed start is waiting for its retry
            return self._waiting(name, rec)
        delay = self.crashloop.delay(rec.failures)
        why = f"; {rec.exit_message}" if rec.exit_message else ""
        return ContainerStatus(
            name=name, state="waiting", reason="CrashLoopBackOff", restart_count=rec.restarts,
            exit_code=rec.exit_code, finished_at=rec.finished_at,
            message=(f"back-off {delay:g}s restarting failed container {name} "
                     f"(last exit {rec.exit_code}, {rec.exit_reason}{why})"),
            last_state=self._last_state(rec),
        )

    def _terminated(self, name: str, rec: ContainerRecord) -> ContainerStatus:
        return ContainerStatus(name=name, state="terminated", exit_code=rec.exit_code,
                               reason=rec.exit_reason, restart_count=rec.restarts,
                               message=rec.exit_message, finished_at=rec.finished_at)
