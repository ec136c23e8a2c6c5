"""Edge container runtime: the only part of the agent that spawns crun, conmon,
skopeo or umoci.

The reconciler depends on :class:`Runtime` and the value types; the agent wires
in :class:`CrunRuntime`.  See docs/runtime.md for the design and measurements.
"""

from edgecore.runtime.crun import CrunRuntime, detect_hybrid_cgroups
from edgecore.runtime.errors import (
    ContainerExists,
    ContainerNotFound,
    ContainerRuntimeError,
    ContainerStartError,
    ExecTimeout,
    HostUnsupported,
    ImageNotPresent,
    ImagePullError,
    ImageUnpackError,
    InsufficientDisk,
    InvalidSpec,
    NoMatchingManifest,
    RuntimeCommandError,
    RuntimePermanentError,
    RuntimeTemporaryError,
)
from edgecore.runtime.images import ImageStore, host_platform
from edgecore.runtime.types import (
    Capabilities,
    ContainerSpec,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    ExtendedRuntime,
    ImageInfo,
    Mount,
    PullPolicy,
    PullProgress,
    Runtime,
)

__all__ = [
    "Capabilities",
    "ContainerExists",
    "ContainerNotFound",
    "ContainerRuntimeError",
    "ContainerSpec",
    "ContainerStartError",
    "ContainerState",
    "ContainerStats",
    "ContainerStatus",
    "CrunRuntime",
    "ExecTimeout",
    "ExtendedRuntime",
    "HostUnsupported",
    "ImageInfo",
    "ImageNotPresent",
    "ImagePullError",
    "ImageStore",
    "ImageUnpackError",
    "InsufficientDisk",
    "InvalidSpec",
    "Mount",
    "NoMatchingManifest",
    "PullPolicy",
    "PullProgress",
    "Runtime",
    "RuntimeCommandError",
    "RuntimePermanentError",
    "RuntimeTemporaryError",
    "detect_hybrid_cgroups",
    "host_platform",
]
