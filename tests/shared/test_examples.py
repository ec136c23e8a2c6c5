"""Every manifest in examples/ is one edgefed accepts (with $IMAGE filled in), and runs
under the cloud's default policy level (baseline) with no hostPath allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared import policy
from shared.models import DaemonSet, Deployment, Pod, parse_object

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_parses(path: Path) -> None:
    text = path.read_text().replace("${IMAGE}", "registry.example/busybox:1.36")
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs
    for doc in docs:
        obj = parse_object(doc)
        if isinstance(obj, DaemonSet | Deployment):
            assert policy.check(obj.spec.template.spec, policy.DEFAULT_LEVEL) == []
        elif isinstance(obj, Pod):
            assert policy.check(obj.spec, policy.DEFAULT_LEVEL) == []


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3
