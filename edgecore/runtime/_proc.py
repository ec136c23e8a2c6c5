"""Run one host command without blocking the event loop, and wrap its failure.

Every crun/conmon/skopeo/umoci/mount call in the runtime goes through
:func:`run_cmd`, so each failure carries the command line and stderr, and a
cancelled caller never leaves a half-finished child behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgecore.runtime.errors import ContainerRuntimeError, HostUnsupported

__all__ = ["CmdResult", "run_cmd"]

# Enough stderr to explain a failure without flooding a log line.
_STDERR_MAX = 2000


@dataclass(frozen=True)
class CmdResult:
    returncode: int
    stdout: bytes
    stderr: bytes


def describe(argv: Sequence[str], result: CmdResult) -> str:
    """A one-line explanation of a failed command for an error message."""
    err = (
        result.stderr.decode(errors="replace").strip()
        or result.stdout.decode(errors="replace").strip()
    )
    if len(err) > _STDERR_MAX:
        err = "..." + err[-_STDERR_MAX:]
    return f"`{shlex.join(argv)}` exited {result.returncode}: {err or '(no output)'}"


async def run_cmd(
    argv: Sequence[str],
    *,
    error: type[ContainerRuntimeError] | None,
    what: str,
    timeout: float | None = 120.0,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> CmdResult:
    """Run ``argv`` to completion and return its output.

    If ``error`` is given, a timeout raises it, and so does a non-zero exit
    (``error(f"{what}: ...")`` with stderr in the message) unless ``check`` is
    false; otherwise the caller inspects ``returncode``.  A timeout or
    cancellation kills the child before propagating.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError as exc:
        raise HostUnsupported(f"{what}: {argv[0]} is not installed") from exc
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, TimeoutError) and error is not None:
            raise error(f"{what}: `{shlex.join(argv)}` timed out after {timeout} s") from exc
        raise
    result = CmdResult(proc.returncode if proc.returncode is not None else -1, stdout, stderr)
    if result.returncode != 0 and error is not None and check:
        raise error(f"{what}: {describe(argv, result)}")
    return result
