"""Errors raised by the edge container runtime.

The reconciler only needs to know one thing about a failure: will trying again
later help?  So every error is either temporary (retry with backoff) or
permanent (retrying the same spec cannot succeed; report it on the pod).
Third-party and subprocess failures are wrapped at the boundary with the
command and its stderr in the message, so an operator can act on them.

Exception tree::

    ContainerRuntimeError
    ├── RuntimeTemporaryError            retry later (has ``delay``)
    │   ├── ImagePullError               registry unreachable, skopeo failed
    │   │   └── InsufficientDisk         too little free space for images (has
    │   │                                ``needed_bytes``/``free_bytes``); also
    │   │                                ENOSPC while pulling or unpacking
    │   ├── ImageUnpackError             umoci failed (I/O)
    │   ├── ImageNotPresent              pull policy Never and the image is missing
    │   │                                (the operator may still load it: retried)
    │   ├── ExecTimeout                  exec() ran longer than its timeout
    │   ├── ContainerStartError          conmon/crun could not create or start
    │   └── RuntimeCommandError          any other crun/conmon/mount failure
    └── RuntimePermanentError            do not retry the same request
        ├── InvalidSpec                  bad ContainerSpec, container id or image ref
        ├── ContainerExists              run() on an id that is already in use
        ├── ContainerNotFound            logs() on an id this runtime never had
        ├── NoMatchingManifest           the image has no manifest for our platform
        └── HostUnsupported              crun / conmon / skopeo / umoci missing
"""

from __future__ import annotations

__all__ = [
    "ContainerExists",
    "ContainerNotFound",
    "ContainerRuntimeError",
    "ContainerStartError",
    "ExecTimeout",
    "HostUnsupported",
    "ImageNotPresent",
    "ImagePullError",
    "ImageUnpackError",
    "InsufficientDisk",
    "InvalidSpec",
    "NoMatchingManifest",
    "RuntimeCommandError",
    "RuntimePermanentError",
    "RuntimeTemporaryError",
]


class ContainerRuntimeError(Exception):
    """Base of every error raised by ``edgecore.runtime``."""


class RuntimeTemporaryError(ContainerRuntimeError):
    """A failure that may go away; the caller should retry after ``delay`` seconds.

    ``delay`` is a hint (``None``: use your own backoff).
    """

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class RuntimePermanentError(ContainerRuntimeError):
    """A failure that retrying the same request cannot fix."""


class ImagePullError(RuntimeTemporaryError):
    """The image could not be copied from its registry into the local store."""


class ImageUnpackError(RuntimeTemporaryError):
    """The image is in the store but could not be unpacked into a rootfs."""


class ContainerStartError(RuntimeTemporaryError):
    """conmon or crun failed to create or start the container.

    Temporary on purpose: a wrong command in the image also lands here, and the
    reconciler's CrashLoopBackOff is the right answer to it, as in Kubernetes.
    """


class RuntimeCommandError(RuntimeTemporaryError):
    """A crun, conmon or mount command failed outside of start."""


class InsufficientDisk(ImagePullError):
    """Not enough free disk space to pull or unpack an image.

    Temporary: garbage collection or the operator may free space.  Carries the
    numbers so the agent can report them.
    """

    def __init__(
        self, message: str, *, needed_bytes: int, free_bytes: int, delay: float | None = 60.0
    ) -> None:
        super().__init__(message, delay=delay)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


class ImageNotPresent(RuntimeTemporaryError):
    """Pull policy ``Never`` and the image is not in the local store.

    Temporary like Kubernetes' ErrImageNeverPull: the image may be loaded onto
    the node by other means, so the request is retried (with ``delay``).
    """

    def __init__(self, message: str, *, delay: float | None = 60.0) -> None:
        super().__init__(message, delay=delay)


class ExecTimeout(RuntimeTemporaryError):
    """``exec()`` did not finish within its timeout; the process was killed."""


class NoMatchingManifest(RuntimePermanentError):
    """The image is a multi-platform list without an entry for this node's platform."""


class InvalidSpec(RuntimePermanentError):
    """The ContainerSpec, container id or image reference is not acceptable."""


class ContainerExists(RuntimePermanentError):
    """``run()`` was called with an id that already has a container."""


class ContainerNotFound(RuntimePermanentError):
    """The id names no container under this runtime's root."""


class HostUnsupported(RuntimePermanentError):
    """A required host binary is missing or the host cannot run containers."""
