"""The hand-written list encoders give exactly pydantic's bytes, or step aside."""

from __future__ import annotations

from cloudcore_fakes import add_node, make_fleet
from hypothesis import given
from hypothesis import strategies as st

from cloudcore.fleet.controller import _include
from cloudcore.fleet.projection import FAST, NODE_TABLE
from fedctl.render import TABLE_FIELDS
from shared.models import Node


def pydantic_bytes(node: Node, fields: tuple[str, ...]) -> bytes:
    raw: bytes = Node.__pydantic_serializer__.to_json(
        node, include=_include(Node, fields), by_alias=True, exclude_none=True)
    return raw


names = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,40}[a-z0-9])?", fullmatch=True)
floats = st.floats(allow_nan=False, allow_infinity=False)


@given(name=names, unschedulable=st.booleans(),
       ready=st.sampled_from(["Ready", "NotReady", "Unknown"]),
       seen=st.none() | floats | st.floats(min_value=1.5e9, max_value=2.5e9),
       desired=st.integers(0, 2**62), acked=st.integers(0, 2**62))
def test_node_table_encoder_matches_pydantic(*, name: str, unschedulable: bool, ready: str,
                                             seen: float | None, desired: int,
                                             acked: int) -> None:
    node = Node.model_validate({"metadata": {"name": name},
                                "spec": {"unschedulable": unschedulable},
                                "status": {"ready": ready, "lastSeen": seen,
                                           "desiredGen": desired, "ackedGen": acked}})
    fast = FAST[(Node, NODE_TABLE)](node)
    if fast is not None:  # None: it declined (huge floats), pydantic encodes instead
        assert fast == pydantic_bytes(node, NODE_TABLE)
    else:
        assert seen is not None and abs(seen) >= 1e15


@given(name=st.text(min_size=1, max_size=20))
def test_any_name_is_escaped_as_pydantic_does(name: str) -> None:
    """Names are validated DNS names, but an object built without validation must
    still come out as pydantic writes it (quotes, backslashes, control characters,
    non-ASCII)."""
    node = Node.model_validate({"metadata": {"name": "placeholder"}})
    node.metadata.name = name
    fast = FAST[(Node, NODE_TABLE)](node)
    assert fast is None or fast == pydantic_bytes(node, NODE_TABLE)


def test_an_int_last_seen_falls_back() -> None:
    node = Node.model_validate({"metadata": {"name": "n"}})
    node.status.last_seen = 1795773729  # assigned, not validated: an int
    assert FAST[(Node, NODE_TABLE)](node) is None


def test_the_fast_path_serves_what_fedctl_asks_for() -> None:
    """The API sorts the requested fields; fedctl's node table must hit the encoder."""
    assert tuple(sorted(set(TABLE_FIELDS["Node"]))) == NODE_TABLE
    fleet = make_fleet()
    add_node(fleet, "edge-1", labels={"zone": "a"})
    fleet.mark_not_ready("edge-1", reason="x", message="y")
    node = fleet.nodes["edge-1"]
    assert fleet.encoded_many("Node", ["edge-1"], NODE_TABLE) == [
        pydantic_bytes(node, NODE_TABLE)]
