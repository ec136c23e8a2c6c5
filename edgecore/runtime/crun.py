"""CrunRuntime: edgefed's only way to run a container, on crun under conmon.

Why conmon: the agent must be restartable (upgrades, crashes, kill -9) without
taking its workloads down and without losing their output or exit status.
conmon is a tiny per-container monitor that owns the container's stdio (k8s
log file) and writes its exit code to a file; started in its own session and
double-forked, it is reparented away from the agent, so a new agent process
finds the container running (``crun list``) or finds its exit file.

Why a wrapper on hybrid hosts: crun refuses a host whose ``/sys/fs/cgroup`` is
a v1 tmpfs with a v2 hierarchy at ``/sys/fs/cgroup/unified`` ("cgroups in
hybrid mode not supported").  Detected once at construction; crun is then
invoked (by us and by conmon, via ``-r``) through a generated script that
enters a mount namespace of its own (a slave of the host's, so mounts made on the
host still reach HostToContainer volumes), unmounts the unified hierarchy there only,
and execs crun, which then sees a plain cgroup v1 host.  Only the commands that
set up or join cgroups go through it (``create`` via conmon, ``exec``,
``delete``); ``list``, ``state``, ``start`` and ``kill`` read crun's state or
signal a process and run crun directly, which spares a ``unshare`` and a shell
(about 4 ms) on each, two of them on the start path (issue 16).

Layout under ``root_dir``::

    crun/                 crun --root (crun's own state)
    images/               one OCI image layout shared by all images (skopeo)
    rootfs-cache/<digest> read-only rootfs, unpacked once per image (umoci)
    bundles/<cid>/        config.json, rootfs (overlay mount), upper/, work/,
                          meta.json (timestamps), conmon.pid, conmon.out
    exits/<cid>           exit code written by conmon
    logs/<cid>.log        stdout+stderr in k8s-file format, written by conmon
    logs/<cid>.log.<n>    older output moved aside by rotate_logs (1 = newest)
    image-usage.json      image reference -> last use (gc order)
    userns.json           pod -> host id range of its user namespace (userns.py)
    conmon/persist/<cid>/ conmon's per-container persist dir (oom marker)
    conmon/sockets/       conmon's attach-socket dir (unused, but required)
    crun-wrapper.sh       only on hybrid-cgroup hosts
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import shlex
import shutil
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from edgecore.runtime._proc import describe, run_cmd
from edgecore.runtime.errors import (
    ContainerExists,
    ContainerNotFound,
    ContainerRuntimeError,
    ContainerStartError,
    ExecTimeout,
    HostUnsupported,
    InvalidSpec,
    RuntimeCommandError,
)
from edgecore.runtime.images import ImageStore
from edgecore.runtime.oci import build_oci_config, host_device_nodes, resolve_devices
from edgecore.runtime.registry_auth import RegistryCredentials
from edgecore.runtime.types import (
    Capabilities,
    ContainerSpec,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    ImageInfo,
    PullPolicy,
    PullProgress,
    validate_cid,
)
from edgecore.runtime.userns import IdRanges, idmapped_bind

__all__ = ["CrunRuntime", "detect_hybrid_cgroups", "parse_k8s_log"]

log = logging.getLogger(__name__)

_CGROUP2_MOUNT = "/sys/fs/cgroup/unified"
_POLL_S = 0.02
# crun commands that work on a hybrid-cgroup host without the wrapper: they read
# crun's state files or signal the container's process, and set up no cgroup.
_UNWRAPPED = frozenset({"list", "state", "start", "kill"})


def detect_hybrid_cgroups(mountinfo: str | None = None) -> bool:
    """True if the host mounts cgroup v1 at /sys/fs/cgroup and cgroup v2 at .../unified.

    This is crun's own test (statfs of /sys/fs/cgroup and of the unified
    directory), done on /proc/self/mountinfo so no process is spawned.
    """
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    fstypes: dict[str, str] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        fstypes[fields[4]] = right.split()[0]
    return fstypes.get("/sys/fs/cgroup") != "cgroup2" and fstypes.get(_CGROUP2_MOUNT) == "cgroup2"


def parse_k8s_log(data: bytes) -> bytes:
    """Reassemble container output from conmon's k8s-file lines.

    Each line is ``<timestamp> <stdout|stderr> <F|P> <content>``; ``P`` marks a
    partial line (no newline in the original output).
    """
    out = bytearray()
    for line in data.split(b"\n"):
        parts = line.split(b" ", 3)
        if len(parts) < 3:
            continue
        out += parts[3] if len(parts) == 4 else b""
        if parts[2] != b"P":
            out += b"\n"
    return bytes(out)


def _proc_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _is_mount(path: Path) -> bool:
    """Whether ``path`` is a mount point (mountinfo: a bind of the same file system,
    e.g. the idmapped lower of a user-namespace rootfs, has its parent's st_dev)."""
    target = str(path.absolute()).replace("\\", "\\134").replace(" ", "\\040")
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return os.path.ismount(path)
    return any(len(f := ln.split(" ", 5)) > 4 and f[4] == target for ln in lines)


_MNT_DETACH = 2
# mount(2) takes the options as one page at most; a longer lowerdir list goes through
# mount(8), which knows the new mount API.
_MOUNT_DATA_MAX = 4095


def _mount_overlay(opts: str, target: Path) -> None:
    """mount(2) an overlay: no `mount` process on the start path (a process costs about
    7 ms here, the call under 1 ms; issue 16). Raises OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"overlay", os.fsencode(target), b"overlay", 0, opts.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount overlay on {target}: {os.strerror(err)}")


def _unmount(target: Path, *, detach: bool = False) -> None:
    """umount2(2); `detach`: lazily (MNT_DETACH), as `umount -l`. Raises OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(target), _MNT_DETACH if detach else 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unmount {target}: {os.strerror(err)}")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


class CrunRuntime:
    """The :class:`~edgecore.runtime.types.Runtime` on crun + conmon + skopeo + umoci.

    Construction is cheap and synchronous: it resolves the binaries (raising
    :class:`HostUnsupported` if one is missing), creates the directory layout,
    and detects hybrid cgroups once.  Any number of instances (including ones
    in later agent processes) may use the same ``root_dir`` one after another;
    concurrent use of one root by two live agents is not supported.
    """

    capabilities = Capabilities(
        exec=True, stats=True, stats_all=True, images=True, pull_progress=True,
        image_gc=True, log_rotation=True, netns=True, state_token=True,
        pull_credentials=True,
    )
    """crun has every optional operation of :class:`ExtendedRuntime`."""

    def __init__(
        self,
        root_dir: Path,
        *,
        insecure_registries: tuple[str, ...] = (),
        crun: str = "crun",
        conmon: str = "conmon",
        skopeo: str = "skopeo",
        umoci: str = "umoci",
        cgroup_parent: str = "/edgefed",
        hybrid_cgroups: bool | None = None,
        log_size_max_bytes: int = 16 * 1024 * 1024,
        start_timeout_s: float = 30.0,
        min_free_disk_bytes: int = 100 * 1024 * 1024,
        platform: tuple[str, str | None] | None = None,
        userns_base: int = 100_000,
        userns_size: int = 65_536,
        userns_count: int = 1024,
    ) -> None:
        self.root = Path(root_dir).absolute()
        self._crun = self._which(crun)
        self._conmon = self._which(conmon)
        self._unshare = self._which("unshare") if hybrid_cgroups is not False else ""
        self._mount = self._which("mount")
        if not cgroup_parent.startswith("/"):
            raise HostUnsupported(f"cgroup_parent {cgroup_parent!r} must be an absolute path")
        self._cgroup_parent = cgroup_parent.rstrip("/")
        self._log_size_max = log_size_max_bytes
        self._start_timeout_s = start_timeout_s

        self._crun_root = self.root / "crun"
        self._bundles = self.root / "bundles"
        self._exits = self.root / "exits"
        self._logs = self.root / "logs"
        self._persist = self.root / "conmon" / "persist"
        self._sockets = self.root / "conmon" / "sockets"
        # Container configs (env), logs and rootfs are the workloads' business only.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)
        for d in (self._crun_root, self._bundles, self._exits, self._logs, self._persist,
                  self._sockets):  # fmt: skip
            d.mkdir(parents=True, exist_ok=True)
        # The image store itself, for callers that need more than `images()` / `gc()`.
        self.image_store = ImageStore(
            self.root,
            insecure_registries=insecure_registries,
            skopeo=skopeo,
            umoci=umoci,
            min_free_bytes=min_free_disk_bytes,
            platform=platform,
        )
        # Image references a run() is between pull and bundle creation for: gc keeps them.
        self._pinned: Counter[str] = Counter()
        # Host id ranges of pods with a user namespace (ContainerSpec.userns).
        self.id_ranges = IdRanges(self.root / "userns.json", base=userns_base,
                                  size=userns_size, count=userns_count)

        self.hybrid_cgroups = detect_hybrid_cgroups() if hybrid_cgroups is None else hybrid_cgroups
        self.runtime_path = self._write_wrapper() if self.hybrid_cgroups else self._crun
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        self._swap_accounting = (
            v2 or Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists()
        )

    @staticmethod
    def _which(binary: str) -> str:
        path = shutil.which(binary)
        if path is None:
            raise HostUnsupported(f"{binary!r} was not found on PATH; the edge runtime needs it")
        return path

    def _write_wrapper(self) -> str:
        """Write the hybrid-cgroup crun wrapper (atomically) and return its path."""
        script = (
            "#!/bin/sh\n"
            "# Generated by edgefed (edgecore.runtime): crun refuses hybrid cgroup v1/v2\n"
            "# hosts, so run it in a mount namespace of its own without the v2 hierarchy\n"
            "# (a slave of the host's: host mounts still reach HostToContainer volumes).\n"
            f"exec {shlex.quote(self._unshare)} --mount --propagation slave -- /bin/sh -c "
            f"'umount {_CGROUP2_MOUNT} 2>/dev/null || umount -l {_CGROUP2_MOUNT} 2>/dev/null; "
            f'exec "$0" "$@"\' {shlex.quote(self._crun)} "$@"\n'
        )
        path = self.root / "crun-wrapper.sh"
        if not path.exists() or path.read_text() != script:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(script)
            tmp.chmod(0o755)
            tmp.replace(path)
        return str(path)

    # -- helpers ------------------------------------------------------------

    def _crun_argv(self, *args: str) -> list[str]:
        # Commands that touch no cgroup need no hybrid-cgroup wrapper (module docstring).
        binary = self._crun if args and args[0] in _UNWRAPPED else self.runtime_path
        return [binary, "--root", str(self._crun_root), *args]

    async def _crun_cmd(self, *args: str, what: str, check: bool = True) -> Any:
        return await run_cmd(
            self._crun_argv(*args),
            error=RuntimeCommandError if check else None,
            what=what,
            timeout=60.0,
        )

    async def _crun_states(self) -> dict[str, dict[str, Any]]:
        for attempt in range(3):
            res = await self._crun_cmd("list", "--format", "json", what="list containers",
                                       check=False)
            if res.returncode == 0:
                break
            # crun reads every container's state file; one being created or deleted at
            # that moment may be half there ("error opening file `.../status`: No such
            # file or directory"). A failed list skips a whole reconcile pass, so look
            # again rather than fail.
            if attempt == 2 or b"No such file or directory" not in res.stderr:
                raise RuntimeCommandError(
                    f"list containers: {describe(self._crun_argv('list'), res)}")
            await asyncio.sleep(0.01 * (attempt + 1))
        out = res.stdout.strip()
        entries: list[dict[str, Any]] = json.loads(out) if out else []
        return {e["id"]: e for e in entries}

    async def _crun_state(self, cid: str) -> dict[str, Any] | None:
        res = await self._crun_cmd("state", cid, what=f"state {cid}", check=False)
        if res.returncode != 0:
            return None
        state: dict[str, Any] = json.loads(res.stdout)
        return state

    def _exit_code(self, cid: str) -> int | None:
        return _read_int(self._exits / cid)

    # -- Runtime interface ----------------------------------------------------

    async def pull(
        self, image: str, *, insecure: bool | None = None, policy: PullPolicy = "IfNotPresent",
        credentials: RegistryCredentials | None = None,
    ) -> str:
        """Make ``image`` present per ``policy`` (IfNotPresent/Always/Never); return its digest.

        ``credentials`` (a pod's imagePullSecrets) go to skopeo for this pull only
        (:meth:`ImageStore.pull <edgecore.runtime.images.ImageStore.pull>`).

        Raises :class:`InsufficientDisk` before copying if the store's
        filesystem has less than ``min_free_disk_bytes`` free,
        :class:`ImageNotPresent` for ``Never`` and a missing image, and
        :class:`NoMatchingManifest` if a multi-platform image has nothing for
        this runtime's ``platform``.
        """
        return await self.image_store.pull(image, insecure=insecure, policy=policy,
                                           credentials=credentials)

    async def pull_progress(self, image: str) -> PullProgress | None:
        """Bytes and layers done of a pull in progress (``None``: not being pulled)."""
        return await self.image_store.pull_progress(image)

    async def run(self, cid: str, spec: ContainerSpec) -> None:
        """Create container ``cid`` from ``spec`` and start it under a detached conmon.

        Pulls (IfNotPresent) and unpacks the image if needed.  Returns once
        ``crun start`` has returned, i.e. the container process is running.
        On failure everything created for ``cid`` is removed again.
        """
        validate_cid(cid)
        bundle = self._bundles / cid
        # Two stats instead of a `crun state` (a process) on the start path: crun keeps
        # each container's state in a directory named after it under its --root.
        if bundle.exists() or (self._crun_root / cid).exists():
            raise ContainerExists(f"container {cid!r} already exists; remove it first")
        missing = [str(m.source) for m in spec.mounts if not m.source.exists()]
        if missing:
            raise ContainerStartError(
                f"run {cid}: mount source(s) {', '.join(missing)} do not exist on the host"
            )
        devices = resolve_devices(spec.devices)
        if spec.security.privileged:
            wanted = {d.path for d in devices}
            devices += [d for d in host_device_nodes() if d.path not in wanted]
        self._pinned[spec.image] += 1
        try:
            await self._run_pinned(cid, spec, bundle, devices)
        finally:
            self._pinned[spec.image] -= 1
            if self._pinned[spec.image] <= 0:
                del self._pinned[spec.image]

    async def _run_pinned(
        self, cid: str, spec: ContainerSpec, bundle: Path, devices: list[Any]
    ) -> None:
        store = self.image_store
        t0 = time.perf_counter()
        stages: list[tuple[str, float]] = []

        def stage(name: str) -> None:
            stages.append((name, time.perf_counter()))

        await store.pull(spec.image, policy=spec.pull_policy)
        stage("image")
        digest, lower = await store.rootfs(spec.image)
        stage("rootfs")
        image_cfg = store.config(digest)
        try:
            bundle.mkdir()
        except FileExistsError as exc:
            raise ContainerExists(f"container {cid!r} already exists; remove it first") from exc
        try:
            meta: dict[str, Any] = {
                "created_at": time.time(),
                "image": spec.image,
                "digest": digest,
                "stop_signal": image_cfg.stop_signal,
            }
            idmap = None
            if spec.userns is not None:
                meta["userns"] = spec.userns  # before anything is mounted: remove() frees it
                (bundle / "meta.json").write_text(json.dumps(meta))
                idmap = self.id_ranges.allocate(spec.userns)
            config = build_oci_config(
                spec=spec,
                image=image_cfg,
                digest=digest,
                rootfs=lower,
                cgroups_path=f"{self._cgroup_parent}/{cid}",
                swap_accounting=self._swap_accounting,
                devices=devices,
                idmap=idmap,
            )
            for stale in (self._exits / cid, *self._log_files(cid)):
                stale.unlink(missing_ok=True)
            if spec.userns is not None and idmap is not None:
                fd = await self.id_ranges.userns_fd(spec.userns)
                (bundle / "lower").mkdir()
                await asyncio.to_thread(idmapped_bind, lower, bundle / "lower", fd)
                await self._mount_rootfs(bundle / "lower", bundle, owner=idmap[0])
            else:
                await self._mount_rootfs(lower, bundle)
            stage("overlay")
            (bundle / "config.json").write_text(json.dumps(config, indent=1))
            (bundle / "meta.json").write_text(json.dumps(meta))
            store.mark_used(spec.image)
            stage("config")
            await self._spawn_conmon(cid, bundle)
            stage("create")
            await self._crun_cmd("start", cid, what=f"start {cid}")
            stage("start")
            meta["started_at"] = time.time()
            (bundle / "meta.json").write_text(json.dumps(meta))
            # One line per start with where its time went (testbed.bench_edge reads it).
            prev, parts = t0, []
            for name, at in stages:
                parts.append(f"{name} {(at - prev) * 1000:.1f}")
                prev = at
            log.info("started %s in %.1f ms (%s ms)", cid, (prev - t0) * 1000,
                     ", ".join(parts))
        except BaseException as exc:
            with contextlib.suppress(ContainerRuntimeError, OSError):
                await self.remove(cid)
            if isinstance(exc, RuntimeCommandError):
                raise ContainerStartError(str(exc)) from exc
            raise

    async def _mount_rootfs(self, lower: Path, bundle: Path, *, owner: int = 0) -> None:
        """Give the container a copy-on-write rootfs over the shared unpacked image.

        ``owner``: host id of the container's root (user namespace), who owns the
        upper layer so the container can write its root.
        """
        for d in ("rootfs", "upper", "work"):
            (bundle / d).mkdir()
            if owner:
                os.chown(bundle / d, owner, owner)
        opts = f"lowerdir={lower},upperdir={bundle / 'upper'},workdir={bundle / 'work'}"
        if len(opts.encode()) > _MOUNT_DATA_MAX:
            await run_cmd(
                [self._mount, "-t", "overlay", "overlay", "-o", opts, str(bundle / "rootfs")],
                error=ContainerStartError,
                what=f"mount overlay rootfs for {bundle.name}",
                timeout=30.0,
            )
            return
        try:
            await asyncio.to_thread(_mount_overlay, opts, bundle / "rootfs")
        except OSError as exc:
            raise ContainerStartError(
                f"mount overlay rootfs for {bundle.name}: {exc.strerror} ({opts})") from exc

    async def _spawn_conmon(self, cid: str, bundle: Path) -> int:
        """Start conmon (which runs ``crun create``); return the container pid.

        conmon gets its own session (``start_new_session``) and forks its
        long-lived monitor, whose parent exits at once; so the monitor is no
        child of ours and survives SIGKILL of the agent or of its process
        group.  conmon reports the container pid (or crun's error) on the
        ``_OCI_SYNCPIPE`` pipe, which is how we know ``crun create`` finished.
        """
        persist = self._persist / cid
        persist.mkdir(exist_ok=True)
        argv = [
            self._conmon, "--api-version", "1",
            "-c", cid, "-u", cid, "-n", cid,
            "-r", self.runtime_path,
            "--runtime-arg", "--root", "--runtime-arg", str(self._crun_root),
            "-b", str(bundle),
            "-p", str(bundle / "container.pid"),
            "-P", str(bundle / "conmon.pid"),
            "-l", f"k8s-file:{self._logs / f'{cid}.log'}",
            "--log-size-max", str(self._log_size_max),
            "--exit-dir", str(self._exits),
            "--persist-dir", str(persist),
            "--socket-dir-path", str(self._sockets),
            "--log-level", "error",
        ]  # fmt: skip
        read_fd, write_fd = os.pipe()
        try:
            with open(bundle / "conmon.out", "wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    pass_fds=(write_fd,),
                    start_new_session=True,
                    # conmon also drops an "oom" marker into its cwd: keep it in the bundle.
                    cwd=bundle,
                    env={
                        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                        "_OCI_SYNCPIPE": str(write_fd),
                    },
                )
            os.close(write_fd)
            write_fd = -1
            rc = await proc.wait()
            if rc != 0:
                raise ContainerStartError(
                    f"create {cid}: conmon exited {rc}: {self._conmon_output(bundle)}"
                )
            line = await asyncio.wait_for(_read_line(read_fd), self._start_timeout_s)
        except TimeoutError as exc:
            raise ContainerStartError(
                f"create {cid}: no answer from conmon within {self._start_timeout_s} s"
            ) from exc
        finally:
            if write_fd >= 0:
                os.close(write_fd)
            os.close(read_fd)
        try:
            msg = json.loads(line)
            pid = int(msg["data"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ContainerStartError(
                f"create {cid}: conmon said {line!r}: {self._conmon_output(bundle)}"
            ) from exc
        if pid <= 0:
            reason = msg.get("message") or self._conmon_output(bundle)
            raise ContainerStartError(f"create {cid}: crun create failed: {reason}")
        return pid

    @staticmethod
    def _conmon_output(bundle: Path) -> str:
        try:
            return (bundle / "conmon.out").read_text(errors="replace").strip()[-2000:] or "(none)"
        except FileNotFoundError:
            return "(none)"

    async def stop(self, cid: str, *, grace_s: float = 10) -> None:
        """Send the stop signal (image StopSignal or SIGTERM), wait ``grace_s``, then SIGKILL.

        Returns once the container has exited and conmon has recorded its exit
        code.  A container that is already stopped, or unknown to crun, is left
        as it is.
        """
        validate_cid(cid)
        state = await self._crun_state(cid)
        if state is None:
            if not (self._bundles / cid).exists():
                raise ContainerNotFound(f"container {cid!r} does not exist")
            return
        if state.get("status") == "stopped" or self._exit_code(cid) is not None:
            return
        sig = "TERM"
        meta = self._meta(cid)
        if isinstance(meta.get("stop_signal"), str):
            sig = meta["stop_signal"].removeprefix("SIG")
        if state.get("status") == "running" and grace_s > 0:
            await self._kill(cid, sig)
            if await self._wait_exited(cid, grace_s):
                return
        await self._kill(cid, "KILL")
        if not await self._wait_exited(cid, 10.0):
            raise RuntimeCommandError(f"stop {cid}: still running 10 s after SIGKILL")

    async def _kill(self, cid: str, sig: str) -> None:
        res = await self._crun_cmd("kill", cid, sig, what=f"kill {cid}", check=False)
        if res.returncode != 0:
            state = await self._crun_state(cid)
            if state is not None and state.get("status") != "stopped":
                raise RuntimeCommandError(f"signal {cid}: {describe(self._crun_argv(), res)}")

    async def _wait_exited(self, cid: str, timeout: float) -> bool:
        """Wait until conmon wrote the exit file (or, if conmon is gone, crun says stopped)."""
        deadline = time.monotonic() + timeout
        exit_file = self._exits / cid
        next_state_check = time.monotonic() + 0.5
        while True:
            if exit_file.exists():
                return True
            now = time.monotonic()
            if now >= next_state_check:
                next_state_check = now + 0.5
                state = await self._crun_state(cid)
                if (state is None or state.get("status") == "stopped") and not self._conmon_alive(
                    cid
                ):
                    return True
            if now >= deadline:
                return False
            await asyncio.sleep(_POLL_S)

    def _conmon_pid(self, cid: str) -> int | None:
        return _read_int(self._bundles / cid / "conmon.pid")

    def _conmon_alive(self, cid: str) -> bool:
        pid = self._conmon_pid(cid)
        if pid is None or not _proc_alive(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            return False
        return bool(cmdline) and cmdline[0].endswith(b"conmon") and cid.encode() in cmdline

    async def remove(self, cid: str) -> None:
        """Kill and delete the container, then its bundle, exit file, logs and conmon dirs.

        Idempotent: removing an unknown or half-created container succeeds.
        """
        validate_cid(cid)
        res = await self._crun_cmd("delete", "--force", cid, what=f"delete {cid}", check=False)
        if res.returncode != 0 and await self._crun_state(cid) is not None:
            raise RuntimeCommandError(f"delete {cid}: {describe(self._crun_argv(), res)}")
        # conmon writes the exit file after the container dies; wait for it to
        # finish so nothing reappears after we clean up.
        deadline = time.monotonic() + 10.0
        while self._conmon_alive(cid):
            if time.monotonic() >= deadline:
                pid = self._conmon_pid(cid)
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
            await asyncio.sleep(_POLL_S)
        bundle = self._bundles / cid
        userns = self._meta(cid).get("userns")
        for mnt in (bundle / "rootfs", bundle / "lower"):  # overlay first, then its lower
            if mnt.exists() and _is_mount(mnt):
                try:
                    await asyncio.to_thread(_unmount, mnt)
                except OSError:
                    try:
                        await asyncio.to_thread(_unmount, mnt, detach=True)
                    except OSError as exc:
                        raise RuntimeCommandError(
                            f"unmount {mnt.name} of {cid}: {exc.strerror}") from exc
        for f in (self._exits / cid, *self._log_files(cid)):
            f.unlink(missing_ok=True)
        for d in (self._persist / cid, bundle):
            if d.exists():
                await asyncio.to_thread(shutil.rmtree, d)
        if isinstance(userns, str) and not any(
            self._meta(p.name).get("userns") == userns for p in self._bundles.iterdir()
        ):
            self.id_ranges.release(userns)

    def _meta(self, cid: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self._bundles / cid / "meta.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data

    def _annotations(self, cid: str) -> dict[str, str]:
        try:
            cfg = json.loads((self._bundles / cid / "config.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return dict(cfg.get("annotations") or {})

    def _oom_killed(self, cid: str, exit_code: int | None) -> bool:
        """conmon's oom marker, or (v1) the cgroup's oom_kill counter if still there."""
        if (self._persist / cid / "oom").exists():
            return True
        if exit_code != 128 + signal.SIGKILL:
            return False
        control = Path(f"/sys/fs/cgroup/memory{self._cgroup_parent}/{cid}/memory.oom_control")
        try:
            for line in control.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    async def list(self) -> list[ContainerState]:
        """Every container under this root: crun's containers plus any leftover bundle."""
        states = await self._crun_states()
        ids = set(states) | {p.name for p in self._bundles.iterdir() if p.is_dir()}
        result = []
        for cid in sorted(ids):
            crun_state = states.get(cid)
            exit_file = self._exits / cid
            exit_code = self._exit_code(cid)
            status: ContainerStatus
            if exit_code is not None:
                status = "stopped"
            elif crun_state is not None and crun_state.get("status") in (
                "created", "running", "stopped"
            ):  # fmt: skip
                status = crun_state["status"]
            elif crun_state is not None and crun_state.get("status") == "paused":
                status = "running"
            else:
                status = "unknown"
            pid = int(crun_state.get("pid") or 0) if crun_state else 0
            meta = self._meta(cid)
            finished_at = None
            if exit_code is not None:
                with contextlib.suppress(FileNotFoundError):
                    finished_at = exit_file.stat().st_mtime
            result.append(
                ContainerState(
                    id=cid,
                    status=status,
                    pid=pid if pid > 0 and status in ("created", "running") else None,
                    exit_code=exit_code,
                    started_at=meta.get("started_at"),
                    finished_at=finished_at,
                    oom_killed=self._oom_killed(cid, exit_code),
                    annotations=self._annotations(cid),
                )
            )
        return result

    # -- logs ---------------------------------------------------------------

    def _log_files(self, cid: str) -> list[Path]:
        """This container's log files, oldest first: ``<cid>.log.<n>``..., ``<cid>.log``."""
        pattern = re.compile(re.escape(cid) + r"\.log\.([0-9]+)")
        rotated = []
        for p in self._logs.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                rotated.append((int(m.group(1)), p))
        live = self._logs / f"{cid}.log"
        return [p for _, p in sorted(rotated, reverse=True)] + ([live] if live.exists() else [])

    async def logs(self, cid: str, *, tail: int | None = None, since: float | None = None) -> bytes:
        """stdout and stderr interleaved as written, rotated files included.

        ``since`` (Unix time) keeps only records conmon stamped at or after
        it; ``tail`` then keeps the last ``tail`` lines.
        """
        validate_cid(cid)
        files = self._log_files(cid)
        if not files:
            if (self._bundles / cid).exists():
                return b""
            raise ContainerNotFound(f"container {cid!r} does not exist")

        def read() -> bytes:
            chunks = []
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    data = f.read_bytes()
                    chunks.append(data if data.endswith(b"\n") or not data else data + b"\n")
            return b"".join(chunks)

        raw = await asyncio.to_thread(read)
        if since is not None:
            raw = b"".join(
                line
                for line in raw.splitlines(keepends=True)
                if (ts := _k8s_timestamp(line)) is not None and ts >= since
            )
        out = parse_k8s_log(raw)
        if tail is None:
            return out
        if tail <= 0:
            return b""
        lines = out.splitlines(keepends=True)
        return b"".join(lines[-tail:])

    async def rotate_logs(self, cid: str, *, max_bytes: int = 0, keep: int = 1) -> bool:
        """Move the live log ``<cid>.log`` to ``<cid>.log.1`` if it is over ``max_bytes``.

        Older files shift up (``.1`` -> ``.2``...) and those beyond ``keep``
        are deleted.  conmon cannot be told to reopen its log (2.1.6 has no
        such signal), so it keeps appending to the moved file until it has
        written ``log_size_max_bytes`` since it opened it, then creates a
        fresh ``<cid>.log``: nothing is lost, each file holds at most
        ``log_size_max_bytes`` (plus one line), and output is only lost if
        this is not called at least once per ``log_size_max_bytes`` of
        output (conmon then replaces the live file, as without rotation).
        While the live file is absent (moved, conmon not yet reopened) this
        is a no-op.  Returns True if it moved the file.
        """
        validate_cid(cid)
        if keep < 1:
            raise InvalidSpec(f"rotate_logs keep must be >= 1, got {keep}")
        live = self._logs / f"{cid}.log"
        try:
            size = live.stat().st_size
        except FileNotFoundError:
            return False
        if size <= max_bytes or size == 0:
            return False
        files = self._log_files(cid)
        rotated = [p for p in files if p != live]  # oldest first
        for p in rotated:
            n = int(p.name.rsplit(".", 1)[1])
            if n >= keep:
                p.unlink(missing_ok=True)
        for p in rotated:  # oldest first, so no rename replaces a file still to move
            n = int(p.name.rsplit(".", 1)[1])
            if n < keep:
                p.rename(self._logs / f"{cid}.log.{n + 1}")
        live.rename(self._logs / f"{cid}.log.1")
        return True

    async def rotate_all_logs(self, *, max_bytes: int = 0, keep: int = 1) -> list[str]:
        """:meth:`rotate_logs` for every container; returns the ids rotated.

        The agent calls this periodically (often enough that no container
        writes ``log_size_max_bytes`` between two calls).
        """
        done = []
        for p in sorted(self._bundles.iterdir()):
            if p.is_dir() and await self.rotate_logs(p.name, max_bytes=max_bytes, keep=keep):
                done.append(p.name)
        return done

    # -- exec -----------------------------------------------------------------

    async def exec(
        self, cid: str, argv: list[str], *, timeout_s: float = 30
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` in running container ``cid`` (``crun exec``); return (rc, out, err).

        The process gets the container's user, working directory and
        environment.  The exit code is the process's, or crun's own 255 when
        it could not start it (e.g. executable not found; the reason is in
        stderr).  After ``timeout_s`` the process (and crun exec) are killed
        and :class:`ExecTimeout` is raised.  Output is held in memory: meant
        for probes and short commands.
        """
        validate_cid(cid)
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise InvalidSpec("exec argv must be a non-empty list of strings")
        state = await self._crun_state(cid)
        if state is None:
            if not (self._bundles / cid).exists():
                raise ContainerNotFound(f"container {cid!r} does not exist")
            raise RuntimeCommandError(f"exec in {cid}: the container is not running")
        if state.get("status") != "running" or self._exit_code(cid) is not None:
            raise RuntimeCommandError(
                f"exec in {cid}: the container is {state.get('status')}, not running"
            )
        try:
            proc_cfg = json.loads((self._bundles / cid / "config.json").read_text())["process"]
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise RuntimeCommandError(f"exec in {cid}: its config.json is unreadable") from exc
        user = proc_cfg.get("user") or {}
        pid_file = self._bundles / cid / f"exec-{os.urandom(6).hex()}.pid"
        full = self._crun_argv(
            "exec", "--user", f"{int(user.get('uid', 0))}:{int(user.get('gid', 0))}",
            "--cwd", str(proc_cfg.get("cwd") or "/"), "--pid-file", str(pid_file),
            cid, *argv,
        )  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            try:
                out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
            except BaseException:
                # Killing crun exec would leave the process running in the
                # container: kill the process itself first (crun then exits).
                inner = _read_int(pid_file)
                if inner is not None and inner > 0:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(inner, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
        except TimeoutError as exc:
            raise ExecTimeout(f"exec in {cid}: {argv!r} ran longer than {timeout_s} s") from exc
        finally:
            pid_file.unlink(missing_ok=True)
        return (proc.returncode if proc.returncode is not None else -1), out, err

    # -- stats ----------------------------------------------------------------

    async def stats(self, cid: str) -> ContainerStats | None:
        """cpu and memory counters of a running container's cgroup, or ``None``.

        The cgroup is found from the container process's ``/proc/<pid>/cgroup``
        (v1: the ``cpuacct`` and ``memory`` hierarchies; v2: the unified one),
        so it is wherever crun put it.  ``None`` if the container is not
        running (its cgroup may be gone); :class:`ContainerNotFound` if the id
        is unknown.
        """
        validate_cid(cid)
        state = await self._crun_state(cid)
        if state is None:
            if not (self._bundles / cid).exists():
                raise ContainerNotFound(f"container {cid!r} does not exist")
            return None
        pid = int(state.get("pid") or 0)
        if state.get("status") not in ("running", "paused") or pid <= 0:
            return None
        return await asyncio.to_thread(_cgroup_stats, pid)

    async def stats_all(self) -> dict[str, ContainerStats]:
        """:meth:`stats` of every running container: one ``crun list``, then the cgroup
        files of all of them read in one worker thread (telemetry's batched read)."""
        states = await self._crun_states()
        pids = {cid: int(s.get("pid") or 0) for cid, s in states.items()
                if s.get("status") in ("running", "paused") and int(s.get("pid") or 0) > 0}

        def read() -> dict[str, ContainerStats]:
            out = {}
            for cid, pid in pids.items():
                if (st := _cgroup_stats(pid)) is not None:
                    out[cid] = st
            return out

        return await asyncio.to_thread(read)

    def netns_path(self, cid: str) -> str | None:
        """``/proc/<pid>/ns/net`` of the container's process while it runs, else None."""
        validate_cid(cid)
        pid = _read_int(self._bundles / cid / "container.pid")
        if pid is None or pid <= 0 or not _proc_alive(pid) or self._exit_code(cid) is not None:
            return None
        return f"/proc/{pid}/ns/net"

    def state_token(self) -> int:
        """Changes when a container exits (conmon writes its exit file): a cheap check,
        without spawning crun, of whether a full :meth:`list` can show anything new."""
        try:
            return self._exits.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    # -- images -----------------------------------------------------------------

    async def images(self) -> list[ImageInfo]:
        """Every image reference in the store, least recently used first."""
        return await asyncio.to_thread(self.image_store.images)

    def _in_use_digests(self) -> set[str]:
        digests = set()
        for bundle in self._bundles.iterdir():
            meta = self._meta(bundle.name)
            if isinstance(meta.get("digest"), str):
                digests.add(meta["digest"])
        return digests

    async def gc(
        self,
        *,
        keep_refs: set[str],
        max_age_s: float | None = None,
        target_free_bytes: int | None = None,
    ) -> list[str]:
        """Remove images no container uses (running or exited) and not in ``keep_refs``.

        Without ``max_age_s``/``target_free_bytes`` every such image goes;
        with ``max_age_s`` those unused (not pulled or started) for longer;
        with ``target_free_bytes`` the least recently used, one by one, until
        the image filesystem has that much free.  Unreferenced blobs and
        unpacked rootfs go with them.  Returns the references removed.
        """
        return await self.image_store.gc(
            in_use_digests=self._in_use_digests(),
            keep_refs=set(keep_refs) | set(self._pinned),
            max_age_s=max_age_s,
            target_free_bytes=target_free_bytes,
        )


def _k8s_timestamp(line: bytes) -> float | None:
    """The Unix time of one k8s-file log line (RFC 3339, nanoseconds), or None."""
    ts, _, _ = line.partition(b" ")
    try:
        return datetime.fromisoformat(ts.decode()).timestamp()
    except ValueError:
        return None


def _cgroup_dirs(pid: int) -> dict[str, Path]:
    """controller name ("" for v2) -> cgroup directory of ``pid``."""
    out: dict[str, Path] = {}
    base = Path("/sys/fs/cgroup")
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if not controllers:
            out[""] = base / rel
            continue
        for name in controllers.split(","):
            for mount in (base / name, base / controllers):
                if mount.is_dir():
                    out[name] = mount / rel
                    break
    return out


def _cgroup_stats(pid: int) -> ContainerStats | None:
    try:
        dirs = _cgroup_dirs(pid)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    try:
        if "cpuacct" in dirs and "memory" in dirs:  # cgroup v1
            cpu = int((dirs["cpuacct"] / "cpuacct.usage").read_text())
            mem = int((dirs["memory"] / "memory.usage_in_bytes").read_text())
            stat = _kv(dirs["memory"] / "memory.stat")
            inactive = stat.get("total_inactive_file", stat.get("inactive_file"))
            pids = _read_int(dirs["pids"] / "pids.current") if "pids" in dirs else None
        elif "" in dirs:  # cgroup v2
            cg = dirs[""]
            cpu = _kv(cg / "cpu.stat")["usage_usec"] * 1000
            mem = int((cg / "memory.current").read_text())
            inactive = _kv(cg / "memory.stat").get("inactive_file")
            pids = _read_int(cg / "pids.current")
        else:
            return None
    except (FileNotFoundError, KeyError, ValueError):
        return None
    working = max(mem - inactive, 0) if inactive is not None else None
    return ContainerStats(
        cpu_usage_ns=cpu,
        memory_bytes=mem,
        memory_working_set_bytes=working,
        pids=pids,
        timestamp=time.time(),
    )


def _kv(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


async def _read_line(fd: int) -> bytes:
    """Read up to the first newline (or EOF) from a pipe without blocking the loop."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    buf = bytearray()
    done: asyncio.Future[bytes] = loop.create_future()

    def on_readable() -> None:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        buf.extend(chunk)
        if (not chunk or b"\n" in buf) and not done.done():
            done.set_result(bytes(buf).split(b"\n", 1)[0])

    loop.add_reader(fd, on_readable)
    try:
        return await done
    finally:
        loop.remove_reader(fd)
