"""docs/compatibility.md against the schema it describes (issue 18).

The page is a second list of the pod and workload fields, written by hand because it
says *how* each differs; a second list drifts. So: every section names its schema
type(s) in backticks in its heading or table header; every field that type accepts
must be in one of its rows as `supported` or `differs`, and only those; no field in a
`refused` or `planned` row may be accepted by it; and every type of the pod spec has a section.
When a field lands (issue 18 part 1), this test names the row to flip.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared import models, pods

DOC = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"
STATUSES = {"supported", "differs", "refused", "planned"}
ACCEPTED = {"supported", "differs"}

MODELS: dict[str, Any] = {
    name: getattr(models, name)
    for name in ("ObjectMeta", "PodTemplateMeta", "LabelSelector", "DaemonSetSpec",
                 "DeploymentSpec", "UpdateStrategy", "RollingUpdate")
}
"""The pydantic side of the workloads (the pod spec is shared.pods')."""

_TYPE = re.compile(r"`([A-Z][A-Za-z]+)`")
_NAME = re.compile(r"`([a-zA-Z][A-Za-z0-9]*)`")


def _fields(type_name: str) -> set[str] | None:
    """The field names a schema type accepts, or None if the name is no schema type."""
    spec = next((t for t in pods.SPEC_TYPES if t.__name__ == type_name), None)
    if spec is not None:
        return {f.encode_name for f in msgspec.structs.fields(spec)}
    model = MODELS.get(type_name)
    if model is not None:
        return {f.alias or k for k, f in model.model_fields.items()}
    return None


def sections() -> list[tuple[list[str], dict[str, str]]]:
    """(schema types, {field: status}) per table of the page (tables after "Other kinds"
    list kinds, not fields, and are left out)."""
    text = DOC.read_text().split("\n## Other kinds", 1)[0]
    out: list[tuple[list[str], dict[str, str]]] = []
    heading = ""
    rows: dict[str, str] = {}
    types: list[str] = []
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line
            continue
        if line.startswith("|---"):
            continue
        if not line.startswith("|"):
            if types and rows:
                out.append((types, rows))
            types, rows = [], {}
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1] == "status":  # a table header: its types, else the heading's
            named = _TYPE.findall(cells[0]) or _TYPE.findall(heading)
            types = [t for t in named if _fields(t) is not None]
            continue
        assert cells[1] in STATUSES, f"compatibility.md: unknown status in {line!r}"
        for name in _NAME.findall(cells[0]):
            rows[name] = cells[1]
    if types and rows:
        out.append((types, rows))
    return out


def test_every_pod_spec_type_has_a_section() -> None:
    covered = {t for types, _ in sections() for t in types}
    missing = sorted(t.__name__ for t in pods.SPEC_TYPES if t.__name__ not in covered
                     and _fields(t.__name__))
    assert not missing, f"docs/compatibility.md has no table for {missing}"


@pytest.mark.parametrize(("types", "rows"), sections(),
                         ids=lambda v: "+".join(v) if isinstance(v, list) else "")
def test_the_page_agrees_with_the_schema(types: list[str], rows: dict[str, str]) -> None:
    accepted = set().union(*(_fields(t) or set() for t in types))
    unlisted = sorted(accepted - {n for n, s in rows.items() if s in ACCEPTED})
    assert not unlisted, (f"{'/'.join(types)}: accepted by the schema but not listed as "
                          f"supported or differs: {unlisted}")
    unknown = sorted(n for n, s in rows.items() if s in ACCEPTED and n not in accepted)
    assert not unknown, (f"{'/'.join(types)}: listed as supported or differs but the "
                         f"schema does not accept them: {unknown}")
    wrong = sorted(n for n, s in rows.items() if s not in ACCEPTED and n in accepted)
    assert not wrong, (f"{'/'.join(types)}: listed as refused or planned but the schema "
                       f"accepts them now (flip the rows): {wrong}")
