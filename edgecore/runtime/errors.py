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
    │   ├── ImageUnpackError             umoci failed (disk full, I/O)
    │   ├── ContainerStartError          conmon/crun could not create or start
    │   └── RuntimeCommandError          any other crun/conmon/mount failure
    └── RuntimePermanentError            do not retry the same request
        ├── InvalidSpec                  bad ContainerSpec, container id or image ref
        ├── ContainerExists              run() on an id that is already in use
        ├── ContainerNotFound            logs() on an id this runtime never had
        └── HostUnsupported              crun / conmon / skopeo / umoci missing
"""

from __future__ import annotations

__all__ = [
    "ContainerExists",
    "ContainerNotFound",
    "ContainerRuntimeError",
    "ContainerStartError",
    "HostUnsupported",
    "ImagePullError",
    "ImageUnpackError",
    "InvalidSpec",
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


class InvalidSpec(RuntimePermanentError):
    """The ContainerSpec, container id or image reference is not acceptable."""


class ContainerExists(RuntimePermanentError):
    """``run()`` was called with an id that already has a container."""


class ContainerNotFound(RuntimePermanentError):
    """The id names no container under this runtime's root."""


class HostUnsupported(RuntimePermanentError):
    """A required host binary is missing or the host cannot run containers."""
