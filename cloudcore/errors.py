"""Errors of cloudcore.

    EdgefedError                     (shared.errors)
    ├── ObjectError                  a user object is invalid (API 422), from shared
    └── CloudcoreError
        ├── ConfigError              settings are invalid; nothing was started (permanent)
        ├── StoreError               the LMDB store failed; the service stops (permanent)
        ├── NotFound                 an object the caller named does not exist (API 404)
        │   └── NamespaceNotFound    an object names a namespace that does not exist
        ├── Conflict                 the object's state forbids the call (API 409)
        ├── AuthError                who may do what: 401/403/409/429 (cloudcore.auth.errors)
        ├── PublishError             `cloudcore release publish` failed (umoci, skopeo, key)
        └── TemporaryError           worth retrying after `delay` seconds
            └── BrokerUnavailable    the MQTT broker cannot be reached right now

Third-party errors (lmdb, aiomqtt) are wrapped at the module that owns the library,
with `raise ... from exc`, so callers only ever see this tree.
"""

from __future__ import annotations

from shared.errors import EdgefedError


class CloudcoreError(EdgefedError):
    """Base of every error cloudcore raises on purpose."""


class ConfigError(CloudcoreError):
    """A setting is invalid; `field` names it (e.g. `mqtt.port`)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class StoreError(CloudcoreError):
    """The store could not be opened, read or written."""


class NotFound(CloudcoreError):
    """The named object does not exist."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found")
        self.kind = kind
        self.name = name


class NamespaceNotFound(NotFound):
    """An object was applied into a namespace that has no Namespace object (Kubernetes'
    `namespaces "X" not found`)."""

    def __init__(self, name: str) -> None:
        super().__init__("Namespace", name)
        self.args = (f'namespaces "{name}" not found: create the Namespace first '
                     f"(`fedctl create namespace {name}`, a Namespace document in the same "
                     "apply, or apply with --create-namespace)",)


class Conflict(CloudcoreError):
    """The call cannot be done in the object's current state (e.g. deleting a namespace
    that still holds objects); the message says what to do first."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PublishError(CloudcoreError):
    """An agent release could not be built, signed or pushed (cloudcore.release)."""


class TemporaryError(CloudcoreError):
    """A failure that may go away; retry after `delay` seconds (kopf's idea)."""

    def __init__(self, message: str, *, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class BrokerUnavailable(TemporaryError):
    """The MQTT broker refused or dropped the connection."""
