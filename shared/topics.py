"""MQTT topic names: the only place a topic string is written.

    fed/v1/{pp}/{node}/down   cloud -> edge: desired deltas, acks, requests
    fed/v1/{pp}/{node}/up     edge -> cloud: reports, resync requests, responses
    fed/v1/{pp}/{node}/will   last will of the edge session

`pp` is the node's partition: two hex digits of crc32(node) % 256.
"""

from __future__ import annotations

import functools
import re
import zlib
from typing import Literal, TypeGuard

PREFIX = "fed/v1"
PARTITIONS = 256
Direction = Literal["down", "up", "will"]

# DNS-1123 subdomain: also guarantees no MQTT wildcard or level separator in a name.
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def valid_node_name(name: str) -> bool:
    return bool(_NODE_NAME.match(name))


PARTITION_CACHE = 1 << 18
"""Node names whose partition `partition_of` remembers, the least recently used let go
beyond: every shard pass over its nodes (liveness summaries, forecasts, takeovers) asks
for each, and a lookup here costs half the crc32 of the name. Bounded, so the names of
deleted nodes are not kept for ever: about 30 MB full."""


@functools.lru_cache(maxsize=PARTITION_CACHE)
def partition_of(node: str) -> int:
    return zlib.crc32(node.encode()) % PARTITIONS


def pp(partition: int) -> str:
    return f"{partition:02x}"


def topic(node: str, direction: Direction) -> str:
    return f"{PREFIX}/{pp(partition_of(node))}/{node}/{direction}"


def down(node: str) -> str:
    return topic(node, "down")


def up(node: str) -> str:
    return topic(node, "up")


def will(node: str) -> str:
    return topic(node, "will")


def up_filter(partition: int) -> str:
    """Subscription a cloud shard makes for one partition's reports."""
    return f"{PREFIX}/{pp(partition)}/+/up"


def will_filter(partition: int) -> str:
    return f"{PREFIX}/{pp(partition)}/+/will"


def all_up_filters() -> list[str]:
    """Partition-independent filters, for an embedded cloud that owns all 256."""
    return [f"{PREFIX}/+/+/up", f"{PREFIX}/+/+/will"]


def acl_rules() -> list[tuple[str, str]]:
    """The broker ACL of proposal 0002 as (access, filter): service identities get the
    whole tree; a node, by mosquitto pattern (`%u` = its username = its node name),
    reads only its own `down` and writes only its own `up` and `will`."""
    return [("service", f"{PREFIX}/#"),
            ("read", f"{PREFIX}/+/%u/down"),
            ("write", f"{PREFIX}/+/%u/up"),
            ("write", f"{PREFIX}/+/%u/will")]


def parse(topic_name: str) -> tuple[str, Direction] | None:
    """(node, direction) of a topic, or None if it is not ours or is inconsistent.

    The partition must match the node name: a message whose topic lies about its
    partition is refused like any other forged input.
    """
    parts = topic_name.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != PREFIX:
        return None
    _, _, part, node, direction = parts
    if not _is_direction(direction) or not valid_node_name(node):
        return None
    if part != pp(partition_of(node)):
        return None
    return node, direction


def _is_direction(value: str) -> TypeGuard[Direction]:
    return value in ("down", "up", "will")
