"""Errors of the CLI, each carrying the process exit code it maps to.

    FedctlError (exit 1)          anything fedctl reports as one line on stderr
    ├── UsageError (exit 2)       a bad flag, kind or combination the parser cannot see
    ├── ManifestError (exit 1)    a file that cannot be read or a document that is invalid
    ├── Unreachable (exit 1)      no HTTP answer from cloudcore (refused, DNS, timeout)
    └── ServerError (exit 1)      cloudcore answered with an error
        └── NotFound (exit 3)     ... and the error is 404

Commands raise these; one place (`fedctl.app`) turns them into a line on stderr and
the exit code, so no traceback ever reaches the user.
"""

from __future__ import annotations

from typing import Any


class FedctlError(Exception):
    """Base: a message for the user and the exit code it maps to."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(FedctlError):
    exit_code = 2


class ManifestError(FedctlError):
    """A manifest could not be read or failed validation; `field` names where."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unreachable(FedctlError):
    """cloudcore did not answer: connection refused, name not resolved, timeout."""


class ServerError(FedctlError):
    """cloudcore answered with an HTTP error; `field` is the offending field if it said,
    `errors` every violation it listed (`{field, message}`; empty from older servers)."""

    def __init__(self, message: str, *, status: int, field: str | None = None,
                 errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.errors = errors or []


class NotFound(ServerError):
    exit_code = 3
