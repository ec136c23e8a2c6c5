"""The agent runs without pydantic: `pip install edgefed[edge]` does not bring it
(pyproject.toml), so no module the agent imports may load it, even indirectly.
import-linter checks the import graph statically; this checks a real interpreter."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import pkgutil, importlib, sys
import edgecore
for m in pkgutil.walk_packages(edgecore.__path__, "edgecore."):
    importlib.import_module(m.name)
import shared.codec, shared.delta, shared.entries, shared.pods, shared.topics
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "pydantic_core")
                or m == "shared.models")
print(",".join(loaded))
"""


def test_no_module_of_the_agent_loads_pydantic():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert out == "", f"loaded by the agent's modules: {out}"


def test_the_edge_extra_does_not_name_pydantic():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    deps = project["project"]["dependencies"] + project["project"]["optional-dependencies"]["edge"]
    assert not [d for d in deps if d.lower().startswith("pydantic")]
