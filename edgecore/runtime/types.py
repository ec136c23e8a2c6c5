"""The runtime's small typed interface: what the reconciler may ask for and see.

The reconciler talks only to :class:`Runtime`; the crun implementation lives in
``edgecore.runtime.crun`` and a fake for unit tests needs nothing but these
types.  Specs are frozen and hashable-by-value (sequences become tuples,
mappings are copied) so the reconciler can hash them into annotations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, Protocol, runtime_checkable

from edgecore.runtime.errors import InvalidSpec

__all__ = ["ContainerSpec", "ContainerState", "ContainerStatus", "Runtime", "validate_cid"]

ContainerStatus = Literal["created", "running", "stopped", "unknown"]

# Container ids become file names, cgroup names and crun ids: keep them boring.
_CID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_KEY_RE = re.compile(r"^[^=\x00]+$")


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

    def __post_init__(self) -> None:
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
        for fname in ("env", "annotations"):
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


@runtime_checkable
class Runtime(Protocol):
    """The container runtime as the reconciler sees it.

    All methods are coroutines and never block the event loop.  Temporary
    failures raise ``RuntimeTemporaryError`` subclasses, permanent ones
    ``RuntimePermanentError`` subclasses (see ``edgecore.runtime.errors``).
    """

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
