"""The runtime's small typed interface: what the reconciler may ask for and see.

The reconciler talks to :class:`Runtime` (and to those optional operations of
:class:`ExtendedRuntime` that the runtime's capabilities declare); the crun
implementation lives in ``edgecore.runtime.crun`` and a fake for unit tests needs
nothing but these types.  Specs are frozen and hashable-by-value (sequences become tuples,
mappings are copied) so the reconciler can hash them into annotations.

Beyond the core operations every runtime has (:class:`Runtime`), the optional ones
(:class:`ExtendedRuntime`: exec, stats, image listing and GC, log rotation...) are
declared once, by the runtime itself, in its :class:`Capabilities`: a caller tests
``runtime.capabilities.exec`` rather than probing for the attribute, so what a
runtime can do is written in one place and a fake says so as plainly as crun.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from edgecore.runtime.errors import InvalidSpec

if TYPE_CHECKING:
    from edgecore.runtime.registry_auth import RegistryCredentials

__all__ = [
    "Capabilities",
    "ContainerSpec",
    "ContainerState",
    "ContainerStats",
    "ContainerStatus",
    "ExtendedRuntime",
    "ImageInfo",
    "Mount",
    "PullPolicy",
    "PullProgress",
    "Runtime",
    "Security",
    "validate_cid",
]

ContainerStatus = Literal["created", "running", "stopped", "unknown"]
PullPolicy = Literal["IfNotPresent", "Always", "Never"]
PULL_POLICIES: tuple[str, ...] = ("IfNotPresent", "Always", "Never")

# Container ids become file names, cgroup names and crun ids: keep them boring.
_CID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_KEY_RE = re.compile(r"^[^=\x00]+$")
_USER_RE = re.compile(r"^[0-9]{1,10}(:[0-9]{1,10})?$")
_USERNS_RE = re.compile(r"^[^\x00]{1,300}$")

# Every capability Linux 6.x knows, in bit order (CAP_CHECKPOINT_RESTORE = 40).
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

# containerd's and Docker's default set (14).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP",
    "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
)  # fmt: skip


def capability_name(name: str) -> str:
    """``NET_ADMIN`` / ``net_admin`` / ``CAP_NET_ADMIN`` -> ``CAP_NET_ADMIN``; ``ALL`` stays.

    Raises :class:`InvalidSpec` for a name Linux does not know.
    """
    if not isinstance(name, str):
        raise InvalidSpec(f"capability {name!r} must be a string")
    up = name.upper()
    if up == "ALL":
        return "ALL"
    full = up if up.startswith("CAP_") else f"CAP_{up}"
    if full not in ALL_CAPABILITIES:
        raise InvalidSpec(f"capability {name!r} is not a Linux capability")
    return full


@dataclass(frozen=True)
class Security:
    """How much of the host a container may touch (its Kubernetes securityContext,
    already checked against the pod's policy level by the agent).

    The defaults are the safe ones: the default seccomp profile, the default 14
    capabilities, no_new_privileges, a writable root. ``privileged`` gives every
    capability, every host device, no seccomp filter and no masked paths.
    ``capabilities_drop`` may hold ``ALL``; names are normalised to ``CAP_*``.
    ``run_as_non_root`` refuses to start a container whose user resolves to uid 0.
    ``proc_unmasked`` leaves ``/proc`` without the masked and read-only paths
    (Kubernetes ``procMount: Unmasked``).
    """

    privileged: bool = False
    run_as_non_root: bool = False
    read_only_rootfs: bool = False
    no_new_privileges: bool = True
    capabilities_add: Sequence[str] = ()
    capabilities_drop: Sequence[str] = ()
    seccomp: Literal["RuntimeDefault", "Unconfined", "Localhost"] = "RuntimeDefault"
    proc_unmasked: bool = False
    seccomp_profile: str | None = None
    """With ``seccomp="Localhost"``: the profile, an OCI ``linux.seccomp`` document as
    JSON text (kept as text so the spec stays hashable); see ``seccomp.localhost``."""

    def __post_init__(self) -> None:
        for fname in ("privileged", "run_as_non_root", "read_only_rootfs", "no_new_privileges",
                      "proc_unmasked"):
            if not isinstance(getattr(self, fname), bool):
                raise InvalidSpec(f"Security.{fname} must be a bool")
        for fname in ("capabilities_add", "capabilities_drop"):
            value = getattr(self, fname)
            if isinstance(value, str):
                raise InvalidSpec(f"Security.{fname} must be a sequence of names")
            object.__setattr__(self, fname, tuple(capability_name(c) for c in value))
        if self.seccomp not in ("RuntimeDefault", "Unconfined", "Localhost"):
            raise InvalidSpec(f"Security.seccomp {self.seccomp!r} must be RuntimeDefault, "
                              "Unconfined or Localhost")
        if (self.seccomp == "Localhost") != (self.seccomp_profile is not None):
            raise InvalidSpec("Security.seccomp_profile is required with Localhost and "
                              "allowed only with it")


def _container_path(what: str, value: object) -> str:
    """An absolute, normalised path inside the container (no ``..``, not ``/``)."""
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise InvalidSpec(f"{what} {value!r} must be an absolute path")
    parts = PurePosixPath(value).parts
    if ".." in parts or len(parts) < 2:
        raise InvalidSpec(f"{what} {value!r} must not contain '..' and must not be '/'")
    return str(PurePosixPath(value))


@dataclass(frozen=True)
class Mount:
    """A bind mount of the host path ``source`` at ``destination`` in the container.

    ``source`` may be a directory or a file and must exist when the container
    is started.  Mount a *directory* for content that is updated while the
    container runs (configMap/secret): a file bind mount pins the inode, so a
    replace-by-rename on the host is not seen inside, while any change inside
    a mounted directory is. ``propagation`` is the bind's mount propagation
    (Kubernetes' mountPropagation None / HostToContainer / Bidirectional).
    """

    source: Path
    destination: str
    read_only: bool = False
    propagation: Literal["rprivate", "rslave", "rshared"] = "rprivate"

    def __post_init__(self) -> None:
        src = Path(self.source) if isinstance(self.source, str | Path) else None
        if src is None or not src.is_absolute():
            raise InvalidSpec(f"Mount.source {self.source!r} must be an absolute host path")
        object.__setattr__(self, "source", src)
        object.__setattr__(
            self, "destination", _container_path("Mount.destination", self.destination)
        )
        if not isinstance(self.read_only, bool):
            raise InvalidSpec(f"Mount.read_only must be a bool, got {self.read_only!r}")
        if self.propagation not in ("rprivate", "rslave", "rshared"):
            raise InvalidSpec(f"Mount.propagation {self.propagation!r} must be rprivate, "
                              "rslave or rshared")


def parse_device(entry: str) -> tuple[str, str]:
    """``/dev/x`` or ``/host/path:/dev/in-container`` -> (host path, container path)."""
    host, sep, inside = entry.partition(":")
    if not host.startswith("/"):
        raise InvalidSpec(
            f"ContainerSpec.devices entry {entry!r} must be HOST_PATH[:CONTAINER_PATH], "
            "both absolute"
        )
    return host, _container_path("ContainerSpec.devices container path", inside if sep else host)


def validate_cid(cid: str) -> str:
    """Return ``cid`` if it is a usable container id, else raise :class:`InvalidSpec`."""
    if not isinstance(cid, str) or not _CID_RE.match(cid):
        raise InvalidSpec(
            f"container id {cid!r} is invalid: 1-128 characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit"
        )
    return cid


def _positive(name: str, value: int | None, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidSpec(f"ContainerSpec.{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class ContainerSpec:
    """What to run: one container of a pod, already resolved by the reconciler.

    ``command`` replaces the image entrypoint and ``args`` the image cmd when
    non-empty (Kubernetes semantics).  ``env`` is merged over the image env.
    ``annotations`` are stored in the OCI config and come back from
    :meth:`Runtime.list`, which is how the reconciler finds its pod key and
    spec hash again after an agent restart.

    ``mounts`` are bind mounts (see :class:`Mount`).  ``user`` is ``"uid"`` or
    ``"uid:gid"`` (numeric) and overrides the image's ``User``; a uid without
    gid takes the gid from the image's ``/etc/passwd`` (else 0); a non-root
    user gets no effective capabilities.  ``devices`` are host device nodes
    (``/dev/x`` or ``/host/node:/dev/in-container``) made available to the
    container and allowed in its device cgroup.  ``pull_policy`` is used by
    :meth:`Runtime.run` when it makes the image present.

    ``security`` is the container's hardening (see :class:`Security`).
    ``userns`` names the group of containers (the pod) that share one user
    namespace: the runtime maps their root to an unprivileged host id range of
    their own; ``None`` keeps the host's ids (Kubernetes ``hostUsers: true``).
    ``netns`` is the path of the network namespace to join (the pod's),
    ``"private"`` for a new namespace of the container's own (loopback only),
    ``None`` for the host's network. ``supplemental_groups`` are extra group
    ids of the process (Kubernetes ``supplementalGroups`` and ``fsGroup``).
    ``group`` is the process's group id when ``user`` is not given (Kubernetes
    ``runAsGroup`` without ``runAsUser``: the image's user with this group).
    ``host_pid`` / ``host_ipc`` share the host's process / IPC namespace
    (Kubernetes ``hostPID`` / ``hostIPC``); ``sysctls`` are set in the container's
    namespaces (Kubernetes ``securityContext.sysctls``).
    """

    name: str
    image: str
    command: Sequence[str] = ()
    args: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    cpu_limit_millis: int | None = None
    memory_limit_bytes: int | None = None
    pids_limit: int | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    mounts: Sequence[Mount] = ()
    user: str | None = None
    devices: Sequence[str] = ()
    pull_policy: PullPolicy = "IfNotPresent"
    security: Security = field(default_factory=Security)
    userns: str | None = None
    netns: str | None = None
    supplemental_groups: Sequence[int] = ()
    host_pid: bool = False
    host_ipc: bool = False
    sysctls: Mapping[str, str] = field(default_factory=dict)
    group: int | None = None

    def __post_init__(self) -> None:
        if self.group is not None and (type(self.group) is not int
                                       or not 0 <= self.group < 2**32 - 1):
            raise InvalidSpec(f"ContainerSpec.group {self.group!r} must be a group id")
        for fname in ("host_pid", "host_ipc"):
            if not isinstance(getattr(self, fname), bool):
                raise InvalidSpec(f"ContainerSpec.{fname} must be a bool")
        if isinstance(self.supplemental_groups, str) or not all(
            type(g) is int and 0 <= g < 2**32 - 1 for g in self.supplemental_groups
        ):
            raise InvalidSpec("ContainerSpec.supplemental_groups must be group ids")
        object.__setattr__(self, "supplemental_groups",
                           tuple(dict.fromkeys(self.supplemental_groups)))
        if not isinstance(self.security, Security):
            raise InvalidSpec("ContainerSpec.security must be a Security")
        if self.userns is not None and (
            not isinstance(self.userns, str) or not _USERNS_RE.match(self.userns)
        ):
            raise InvalidSpec("ContainerSpec.userns must be a non-empty key (the pod) or None")
        if self.netns is not None and (
            not isinstance(self.netns, str)
            or not (self.netns.startswith("/") or self.netns == "private")
        ):
            raise InvalidSpec(f"ContainerSpec.netns {self.netns!r} must be an absolute path, "
                              "'private' or None")
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise InvalidSpec(
                f"ContainerSpec.name {self.name!r} must be a DNS label "
                "(1-63 characters, [a-z0-9-], no leading or trailing '-')"
            )
        if (
            not isinstance(self.image, str)
            or not self.image
            or any(c.isspace() for c in self.image)
        ):
            raise InvalidSpec(
                f"ContainerSpec.image {self.image!r} must be a non-empty image reference"
            )
        for fname in ("command", "args"):
            value = getattr(self, fname)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise InvalidSpec(f"ContainerSpec.{fname} must be a sequence of strings")
            object.__setattr__(self, fname, tuple(value))
        for fname in ("env", "annotations", "sysctls"):
            value = getattr(self, fname)
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise InvalidSpec(f"ContainerSpec.{fname} must map strings to strings")
            object.__setattr__(self, fname, MappingProxyType(dict(value)))
        for key in self.env:
            if not _ENV_KEY_RE.match(key):
                raise InvalidSpec(f"ContainerSpec.env key {key!r} must be non-empty without '='")
        if self.working_dir is not None and not self.working_dir.startswith("/"):
            raise InvalidSpec(
                f"ContainerSpec.working_dir {self.working_dir!r} must be an absolute path"
            )
        _positive("cpu_limit_millis", self.cpu_limit_millis, 1)
        # Below ~4 MiB the runtime itself cannot start inside the cgroup.
        _positive("memory_limit_bytes", self.memory_limit_bytes, 4 * 1024 * 1024)
        _positive("pids_limit", self.pids_limit, 1)
        if isinstance(self.mounts, str | Mount) or not all(
            isinstance(m, Mount) for m in self.mounts
        ):
            raise InvalidSpec("ContainerSpec.mounts must be a sequence of Mount")
        object.__setattr__(self, "mounts", tuple(self.mounts))
        dests = [m.destination for m in self.mounts]
        if len(set(dests)) != len(dests):
            raise InvalidSpec(f"ContainerSpec.mounts has a duplicate destination: {dests}")
        if self.user is not None and (
            not isinstance(self.user, str) or not _USER_RE.match(self.user)
        ):
            raise InvalidSpec(
                f"ContainerSpec.user {self.user!r} must be numeric 'uid' or 'uid:gid'"
            )
        if isinstance(self.devices, str) or not all(isinstance(d, str) for d in self.devices):
            raise InvalidSpec("ContainerSpec.devices must be a sequence of strings")
        object.__setattr__(self, "devices", tuple(self.devices))
        inside = [parse_device(d)[1] for d in self.devices]
        if len(set(inside)) != len(inside):
            raise InvalidSpec(f"ContainerSpec.devices has a duplicate container path: {inside}")
        if self.pull_policy not in PULL_POLICIES:
            raise InvalidSpec(
                f"ContainerSpec.pull_policy {self.pull_policy!r} must be one of "
                f"{', '.join(PULL_POLICIES)}"
            )

    def __hash__(self) -> int:
        return hash(
            (
                self.name,
                self.image,
                self.command,
                self.args,
                tuple(sorted(self.env.items())),
                self.working_dir,
                self.cpu_limit_millis,
                self.memory_limit_bytes,
                self.pids_limit,
                tuple(sorted(self.annotations.items())),
                self.mounts,
                self.user,
                self.devices,
                self.pull_policy,
                self.security,
                self.userns,
                self.netns,
                self.supplemental_groups,
                self.host_pid,
                self.host_ipc,
                tuple(sorted(self.sysctls.items())),
                self.group,
            )
        )


@dataclass(frozen=True)
class ContainerState:
    """What the runtime observed about one container, from crun and conmon's files.

    ``exit_code`` comes from conmon's exit file, so it survives agent restarts;
    ``None`` while running or if the monitor died before it could record it.
    ``status`` is ``"unknown"`` when crun has no state for a container whose
    bundle still exists (e.g. after a reboot) and no exit was recorded.
    """

    id: str
    status: ContainerStatus
    pid: int | None
    exit_code: int | None
    started_at: float | None
    finished_at: float | None
    oom_killed: bool
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class ImageInfo:
    """One image reference in the local store.

    ``size_bytes`` is the size of its blobs in the store (manifest, config and
    compressed layers; layers shared with other images are counted for each).
    ``last_used`` is the Unix time of its last pull or container start (for a
    store written by an older runtime: the manifest's mtime).
    """

    ref: str
    digest: str
    size_bytes: int
    last_used: float


@dataclass(frozen=True)
class PullProgress:
    """How far a pull in progress has got (`ImageStore.pull_progress`).

    Bytes and layers are those of the image's compressed layers for this node's
    platform; a layer the store already had counts as done. The totals are
    ``None`` until the registry has told the manifest; ``queued`` means the pull
    waits for another one (the store copies one image at a time).
    """

    ref: str
    bytes_done: int
    bytes_total: int | None
    layers_done: int
    layers_total: int | None
    queued: bool = False

    def describe(self) -> str:
        """Human text for a status message, e.g. "3.1 of 8.0 MiB, 1 of 2 layers"."""
        if self.queued:
            return "waiting for another pull"
        done = f"{self.bytes_done / 2**20:.1f}"
        if self.bytes_total is None or self.layers_total is None:
            return f"{done} MiB"
        return (f"{done} of {self.bytes_total / 2**20:.1f} MiB, "
                f"{self.layers_done} of {self.layers_total} layers")


@dataclass(frozen=True)
class ContainerStats:
    """A sample of a running container's cgroup counters.

    ``cpu_usage_ns`` is cumulative CPU time (all cores) since the start;
    ``memory_bytes`` is the cgroup's usage including page cache,
    ``memory_working_set_bytes`` that minus inactive file pages (what
    Kubernetes reports and evicts on); ``pids`` is the number of tasks.
    """

    cpu_usage_ns: int
    memory_bytes: int
    memory_working_set_bytes: int | None
    pids: int | None
    timestamp: float


@dataclass(frozen=True)
class Capabilities:
    """Which optional operations of :class:`ExtendedRuntime` a runtime implements.

    Each runtime declares its own once (``Runtime.capabilities``); callers test a
    flag, never the attribute, and fall back as each flag says when it is off (the
    default: a runtime of the core operations only).
    """

    exec: bool = False
    """``exec()``. Off: an exec probe fails ("the runtime cannot exec in containers")."""
    stats: bool = False
    """``stats(cid)``, per container. Off (and no ``stats_all``): no pod telemetry."""
    stats_all: bool = False
    """``stats_all()``, every container in one read; preferred over ``stats``."""
    images: bool = False
    """``images()`` lists the local store and ``pull()`` takes ``policy=``: the
    reconciler pulls before ``run()`` and reports the pod as pulling meanwhile.
    Off: ``run()`` pulls, unreported."""
    pull_progress: bool = False
    """``pull_progress()``: bytes and layers of a pull in progress, in the pulling
    status. Off: the status tells the elapsed time only."""
    image_gc: bool = False
    """``gc()``: the agent collects unused images periodically and on a full disk."""
    log_rotation: bool = False
    """``rotate_logs()`` and ``rotate_all_logs()``: the agent rotates container logs."""
    netns: bool = False
    """``netns_path()``: TCP and HTTP probes connect from inside the container's
    network namespace. Off: they connect to the agent's own 127.0.0.1."""
    state_token: bool = False
    """``state_token()``: a cheap "did a container exit" check, so a periodic
    reconciler pass is skipped when nothing changed. Off: every interval is a pass."""
    pull_credentials: bool = False
    """``pull()`` takes ``credentials=`` (a pod's imagePullSecrets). Off: pulls go
    without credentials (a private registry refuses them: ImagePullBackOff)."""


@runtime_checkable
class Runtime(Protocol):
    """The container runtime as the reconciler sees it.

    All methods are coroutines and never block the event loop.  Temporary
    failures raise ``RuntimeTemporaryError`` subclasses, permanent ones
    ``RuntimePermanentError`` subclasses (see ``edgecore.runtime.errors``).
    """

    @property
    def capabilities(self) -> Capabilities:
        """Which optional operations (:class:`ExtendedRuntime`) this runtime has."""
        ...

    async def pull(self, image: str, *, insecure: bool | None = None) -> str:
        """Make ``image`` present locally (IfNotPresent) and return its manifest digest."""
        ...

    async def run(self, cid: str, spec: ContainerSpec) -> None:
        """Create and start container ``cid``, pulling the image if needed.

        Returns once the container process is running under its monitor.
        """
        ...

    async def stop(self, cid: str, *, grace_s: float = 10) -> None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL; returns once it has exited."""
        ...

    async def remove(self, cid: str) -> None:
        """Delete the container, its bundle, exit status and logs; idempotent."""
        ...

    async def list(self) -> list[ContainerState]:
        """Every container under this runtime's root, including exited ones."""
        ...

    async def logs(self, cid: str, *, tail: int | None = None) -> bytes:
        """The container's stdout and stderr, interleaved, optionally the last ``tail`` lines."""
        ...


@runtime_checkable
class ExtendedRuntime(Runtime, Protocol):
    """Runtime features beyond the reconciler's core (probes, telemetry, images, logs).

    A runtime has those of these operations that its :class:`Capabilities` declare
    (each method names its flag); a caller holding an ``ExtendedRuntime`` calls an
    operation only when its flag is on. ``logs`` with ``since`` has no flag: the
    cloud's logs requests (``edgecore.requests``) assume it.
    """

    async def pull(
        self, image: str, *, insecure: bool | None = None, policy: PullPolicy = "IfNotPresent",
        credentials: RegistryCredentials | None = None,
    ) -> str:
        """(``images``) Make ``image`` present according to ``policy``; return its
        manifest digest. ``credentials``: for this pull only (a pod's imagePullSecrets);
        a runtime that cannot use them says so with ``Capabilities.pull_credentials``
        false, and the caller does not pass them."""
        ...

    async def logs(self, cid: str, *, tail: int | None = None, since: float | None = None) -> bytes:
        """Output (rotated files included), the last ``tail`` lines, lines at/after ``since``."""
        ...

    async def exec(
        self, cid: str, argv: list[str], *, timeout_s: float = 30
    ) -> tuple[int, bytes, bytes]:
        """(``exec``) Run ``argv`` in the running container; return (exit code, stdout,
        stderr)."""
        ...

    async def stats(self, cid: str) -> ContainerStats | None:
        """(``stats``) cgroup cpu and memory counters, or ``None`` if the container is
        not running."""
        ...

    async def stats_all(self) -> dict[str, ContainerStats]:
        """(``stats_all``) The counters of every running container, by id, in one read."""
        ...

    async def images(self) -> list[ImageInfo]:
        """(``images``) Every image reference in the local store, least recently used
        first."""
        ...

    async def gc(
        self,
        *,
        keep_refs: set[str],
        max_age_s: float | None = None,
        target_free_bytes: int | None = None,
    ) -> list[str]:
        """(``image_gc``) Remove unused images; return the references removed."""
        ...

    async def rotate_logs(self, cid: str, *, max_bytes: int = 0, keep: int = 1) -> bool:
        """(``log_rotation``) Move the live log aside (keeping ``keep`` old files); True
        if it did."""
        ...

    async def rotate_all_logs(self, *, max_bytes: int = 0, keep: int = 1) -> list[str]:
        """(``log_rotation``) ``rotate_logs`` for every container; the ids rotated."""
        ...

    async def pull_progress(self, image: str) -> PullProgress | None:
        """(``pull_progress``) Bytes and layers done of a pull of ``image`` in progress
        (``None``: none)."""
        ...

    def netns_path(self, cid: str) -> str | None:
        """(``netns``) ``/proc/<pid>/ns/net`` of the running container (probes connect
        from inside it), or ``None`` if it is not running."""
        ...

    def state_token(self) -> object:
        """(``state_token``) A value that changes whenever a container exits: equal
        tokens mean a new :meth:`list` would show no exit."""
        ...
