"""Names a node may not take: the identity namespaces of proposal 0002.

A node's broker username and MQTT client id are its node name. Service identities
(cloudcore's `<svc>_sub`, `<svc>_pub<i>`) contain `_`, which no DNS-1123 node name may,
so the two namespaces never meet. Names that merely look like ours (`cloudcore-2`,
`mosquitto`, `admin`) are refused too, so nobody can pass for a service in a log, an
ACL or a dashboard. Both sides use this one function: cloudcore refuses them at join,
the agent before it asks.
"""

from __future__ import annotations

RESERVED_PREFIXES = ("cloudcore", "edgefed", "mosquitto")
"""Node names starting with these belong to the services."""

RESERVED_NAMES = frozenset({"admin", "root"})
"""Node names that are reserved as a whole."""


def reserved_node_name(name: str) -> str | None:
    """Why `name` may not be a node name (a sentence), or None if it may."""
    lowered = name.lower()
    if "_" in name:
        return f"{name!r} contains '_', which marks service identities (and is not DNS-1123)"
    for prefix in RESERVED_PREFIXES:
        if lowered.startswith(prefix):
            return f"{name!r} starts with {prefix!r}, reserved for edgefed's services"
    if lowered in RESERVED_NAMES:
        return f"{name!r} is a reserved name"
    return None
