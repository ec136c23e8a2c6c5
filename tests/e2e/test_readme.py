"""The README as a new user follows it, line by line (issue 16): fedctl is on the PATH
before it is called, no example is applied with its `${IMAGE}` left in, an image from
the internet or a plain-HTTP registry says what it needs, and every `edgecore reset`
shown would run without a terminal."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def _commands(text: str) -> list[str]:
    """The lines of the sh blocks, comments cut off."""
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return [line.split("  #")[0].strip() for b in blocks for line in b.splitlines()]


def test_using_it_puts_fedctl_on_the_path_before_calling_it() -> None:
    lines = _commands(_section("Using it"))
    first_fedctl = next(i for i, line in enumerate(lines) if re.search(r"(^|\| )fedctl ", line))
    assert any("source .venv/bin/activate" in line for line in lines[:first_fedctl])


def test_no_example_is_applied_with_its_variable_left_in() -> None:
    for line in _commands(README):
        if "examples/" in line and "fedctl apply" in line:
            assert "envsubst <" in line, line


def test_the_quickstart_says_what_its_image_needs() -> None:
    quick = _section("Quickstart")
    assert "needs the internet" in quick
    assert "--insecure-registry" in quick


def test_every_reset_shown_runs_without_a_terminal() -> None:
    for doc in (README, (ROOT / "docs" / "operations.md").read_text()):
        for m in re.finditer(r"`edgecore reset[^`]*`", doc):
            assert "--yes" in m.group(0), m.group(0)
