"""Each runtime declares its optional operations once (`Capabilities`), truthfully.

Callers test `runtime.capabilities.<flag>` and then call the operation without
probing for it, so a flag that is on must come with its methods; this checks that
for crun and for every fake the unit tests use.
"""

from __future__ import annotations

import dataclasses

import pytest

from edgecore.runtime import CrunRuntime
from edgecore.runtime.types import Capabilities

from edgecore_fakes import FakeRuntime  # isort: skip
from test_edge_footprint import TokenFake  # isort: skip
from test_edge_gc import ImageFake, ProgressFake  # isort: skip
from test_edge_reconciler import TokenRuntime  # isort: skip

# The methods each flag promises (`ExtendedRuntime` names the flag of each method).
OPERATIONS = {
    "exec": ("exec",),
    "stats": ("stats",),
    "stats_all": ("stats_all",),
    "images": ("images", "pull"),
    "pull_progress": ("pull_progress",),
    "image_gc": ("gc",),
    "log_rotation": ("rotate_logs", "rotate_all_logs"),
    "netns": ("netns_path",),
    "state_token": ("state_token",),
    "pull_credentials": ("pull",),  # pull(credentials=)
}
CORE = ("pull", "run", "stop", "remove", "list", "logs")


def test_every_flag_names_its_operations() -> None:
    assert {f.name for f in dataclasses.fields(Capabilities)} == set(OPERATIONS)
    assert Capabilities() == Capabilities(**dict.fromkeys(OPERATIONS, False))


@pytest.mark.parametrize("runtime", [CrunRuntime, FakeRuntime, ImageFake, ProgressFake,
                                     TokenRuntime, TokenFake])
def test_a_declared_operation_exists(runtime: type) -> None:
    caps = runtime.capabilities
    assert isinstance(caps, Capabilities)
    for name in CORE:
        assert callable(getattr(runtime, name, None)), name
    for flag, methods in OPERATIONS.items():
        if getattr(caps, flag):
            for name in methods:
                assert callable(getattr(runtime, name, None)), f"{flag}: {name}"


def test_crun_has_every_optional_operation() -> None:
    assert all(dataclasses.astuple(CrunRuntime.capabilities))
