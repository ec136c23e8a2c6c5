"""Errors of the edge agent (the runtime's own tree is in `edgecore.runtime.errors`).

    EdgefedError                      (shared.errors)
    └── EdgecoreError                 base of everything the agent raises on purpose
        ├── ConfigError               a setting is invalid; `field` names it (fatal, before start)
        ├── CacheError                LMDB failed: disk full, corrupt, map full (fatal for the
        │                             operation; the caller decides whether to retry)
        ├── LinkError                 the MQTT session failed; temporary, the link reconnects
        └── UpgradeFailed             an agent release refused before any restart (pull,
                                      missing file, version not held); its status is Failed
                                      (a signature or digest refusal is shared's ReleaseError)

Third-party errors (lmdb.Error, aiomqtt.MqttError) are wrapped into these at the
module boundary with `raise ... from exc`, so callers never import those libraries.
"""

from __future__ import annotations

from shared.errors import EdgefedError


class EdgecoreError(EdgefedError):
    """Base of every error the edge agent raises on purpose."""


class ConfigError(EdgecoreError):
    """A setting is invalid; `field` is its name, the message says the limit."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class CacheError(EdgecoreError):
    """The local LMDB cache could not be read or written."""


class LinkError(EdgecoreError):
    """The MQTT session to the broker failed; temporary by nature (reconnect)."""


class UpgradeFailed(EdgecoreError):
    """An agent release was refused before any restart (edgecore.upgrade); the message
    is the `agentUpgrade` status message."""
