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
    HostUnsupported,
    ImagePullError,
    ImageUnpackError,
    InvalidSpec,
    RuntimeCommandError,
    RuntimePermanentError,
    RuntimeTemporaryError,
)
from edgecore.runtime.images import ImageStore
from edgecore.runtime.types import ContainerSpec, ContainerState, ContainerStatus, Runtime

__all__ = [
    "ContainerExists",
    "ContainerNotFound",
    "ContainerRuntimeError",
    "ContainerSpec",
    "ContainerStartError",
    "ContainerState",
    "ContainerStatus",
    "CrunRuntime",
    "HostUnsupported",
    "ImagePullError",
    "ImageStore",
    "ImageUnpackError",
    "InvalidSpec",
    "Runtime",
    "RuntimeCommandError",
    "RuntimePermanentError",
    "RuntimeTemporaryError",
    "detect_hybrid_cgroups",
]
