"""Every manifest in examples/ is one edgefed accepts (with $IMAGE filled in)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.models import parse_object

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_parses(path: Path) -> None:
    text = path.read_text().replace("${IMAGE}", "registry.example/busybox:1.36")
    docs = [d for d in yaml.safe_load_all(text) if d]
    assert docs
    for doc in docs:
        parse_object(doc)


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3
