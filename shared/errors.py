"""Errors of the protocol package.

    EdgefedError
    ├── ProtocolError            bad bytes or messages from the wire (dropped and counted)
    │   ├── MessageTooLarge      over the size limit before decoding
    │   ├── DecodeError          not msgpack, wrong shape, failed validation
    │   │   └── TooDeep          nested deeper than the limit (refused before unpacking)
    │   ├── UnknownVersion       a version field we do not speak
    │   └── AuthFailed           the message's tag (or a sealed Secret) does not verify
    ├── ObjectError              an object (YAML/JSON) a user gave is invalid
    │   └── UnsupportedField     a field edgefed does not implement (never dropped silently)
    └── ReleaseError             an agent release refused: malformed, bad digest, bad or
                                 untrusted signature, version mismatch, no trusted key
"""

from __future__ import annotations


class EdgefedError(Exception):
    """Base of every error edgefed raises on purpose."""


class ProtocolError(EdgefedError):
    """A message from the wire could not be accepted."""


class MessageTooLarge(ProtocolError):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class DecodeError(ProtocolError):
    """Not msgpack, not a map, or a field failed validation."""


class TooDeep(DecodeError):
    """Containers nested deeper than the limit; found by a scan before any unpacking."""


class AuthFailed(ProtocolError):
    """A message (or a sealed Secret value) failed authentication: wrong key, wrong
    topic or direction, or altered bytes. Nothing of it was unpacked."""


class UnknownVersion(ProtocolError):
    def __init__(self, version: object) -> None:
        super().__init__(f"unknown protocol version {version!r}")
        self.version = version


class ObjectError(EdgefedError):
    """An object given by a user is invalid; `field` names where (dotted path)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class UnsupportedField(ObjectError):
    """A field that Kubernetes has and edgefed does not implement; `hint` is a
    " (did you mean 'x'?)" suffix naming a close known field, or empty."""

    def __init__(self, message: str, *, field: str | None = None, hint: str = "") -> None:
        super().__init__(message, field=field)
        self.hint = hint


class ReleaseError(EdgefedError):
    """An agent release (proposal 0006) was refused; `reason` is one word a status can
    carry (`malformed`, `digest`, `signature`, `version`, `nokeys`) and the
    message says what was expected and what was found."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
