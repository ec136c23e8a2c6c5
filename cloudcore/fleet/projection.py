"""Hand-written encoders for the hottest list projections.

`fedctl get nodes` asks for six fields of every node. In a live fleet each report
changes a node's `status.lastSeen`, so the first list after a quiet spell encodes all
of them again: pydantic's `to_json(include=...)` walks the whole Node model for each
(about 4 us a node, 0.4 s for 100k, which the user waits for). The encoder below
writes the same bytes directly from the attributes (about 1 us). Byte equality with
pydantic is a test (tests/cloudcore/test_projection.py), so any projection not listed
here, or any object the encoder cannot take, goes through pydantic as before.
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from shared.models import Node

NODE_TABLE = ("metadata.name", "spec.unschedulable", "status.ackedGen", "status.desiredGen",
              "status.lastSeen", "status.ready")
"""What `fedctl get nodes` asks for (its render.TABLE_FIELDS, as the API sorts them)."""


def _node_table(node: Any) -> bytes | None:
    st = node.status
    seen = st.last_seen
    if type(seen) is float:
        if not (-1e15 < seen < 1e15):  # where repr and pydantic write exponents differently
            return None
        seen_part = f',"lastSeen":{seen!r}'
    elif seen is None:
        seen_part = ""
    else:
        return None
    return (f'{{"metadata":{{"name":{encode_basestring(node.metadata.name)}}},'
            f'"spec":{{"unschedulable":{"true" if node.spec.unschedulable else "false"}}},'
            f'"status":{{"ready":"{st.ready}"{seen_part},'
            f'"desiredGen":{int(st.desired_gen)},"ackedGen":{int(st.acked_gen)}}}}}').encode()


FAST: dict[tuple[type, tuple[str, ...]], Callable[[Any], bytes | None]] = {
    (Node, NODE_TABLE): _node_table,
}
"""(model, sorted fields) -> encoder giving pydantic's bytes, or None to fall back."""
