"""pyproject.toml as setuptools reads it: no deprecation warning at `pip install -e .`."""

from __future__ import annotations

import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_license_is_an_spdx_string() -> None:
    """setuptools >= 77 warns about `license = { text = ... }` on every install
    (`project.license as a TOML table is deprecated`); PEP 639's form is a string."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert project["license"] == "Apache-2.0"
