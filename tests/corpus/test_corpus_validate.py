"""Real manifests from public projects through fedctl's apply planning (issue 18).

Each file under `manifests/` is a published manifest, kept as published, with a comment
naming its repository, path and commit; its images are the testbed's `${IMAGE}`
placeholder (expanded here as a user would with envsubst). `expected.yaml` records,
per file and per document, what `fedctl apply` does with it today without asking
cloudcore (`fedctl.plan`):

    - applied                       validates; apply sends it
    - skipped: <reason>             a kind edgefed does not serve (the reason printed)
    - refused: {<field>: planned}   every field refused; `planned`: issue 18 part 1 is
               {<field>: kept}      to support it, `kept`: stays refused (why:
                                    docs/compatibility.md)

When part 1 of issue 18 lands, its `planned` refusals go away and this test says which
to flip; regenerate the file with `python tests/corpus/test_corpus_validate.py --write`
and review the diff. Whether cloudcore's policy admits an applied document (hostPath,
hostNetwork and privileged are refused by the default `baseline` level) is the fleet
test's question (test_corpus_fleet.py), not this one's.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":  # run as a script from anywhere: the repository on the path
    sys.path.insert(0, str(HERE.parents[1]))

from fedctl import plan  # noqa: E402

CORPUS = HERE / "manifests"
EXPECTED = CORPUS / "expected.yaml"
IMAGE = "127.0.0.1:5000/busybox:latest"
"""What `${IMAGE}` stands for here (the testbed seeds a busybox under this name)."""

SOURCE = re.compile(r"\A# Source: (?P<repo>[\w.-]+/[\w.-]+), (?P<path>\S+)\n"
                    r"# commit (?P<commit>[0-9a-f]{40}) \(text as published; ")

Entry = str | dict[str, Any]


def files() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if p.suffix == ".yaml" and p != EXPECTED)


def expanded(tmp: Path) -> Path:
    """The corpus with `${IMAGE}` expanded (file names kept), as a user would apply it."""
    for f in files():
        (tmp / f.name).write_text(f.read_text().replace("${IMAGE}", IMAGE))
    return tmp


def entry(o: plan.Outcome) -> Entry:
    if o.status == "apply":
        return "applied"
    if o.status == "skipped":
        return {"skipped": o.reason}
    return {"refused": {p.field or "(document)": "planned" if p.planned else "kept"
                        for p in o.problems}}


def outcomes(tmp: Path) -> dict[str, list[Entry]]:
    """file name -> the entry of each of its documents, in order."""
    out: dict[str, list[Entry]] = {f.name: [] for f in files()}
    for o in plan.plan([str(expanded(tmp))]):
        out[Path(o.source.split("#", 1)[0]).name].append(entry(o))
    return out


def expected() -> dict[str, list[Entry]]:
    got: dict[str, list[Entry]] = yaml.safe_load(EXPECTED.read_text())
    return got


def test_the_corpus_is_at_least_20_real_manifests_each_naming_its_source() -> None:
    assert len(files()) >= 20
    for f in files():
        m = SOURCE.match(f.read_text())
        assert m, f"{f.name}: the first lines must say '# Source: owner/repo, path' and " \
                  f"'# commit <sha> (text as published; ...)'"


def test_expected_lists_every_file_and_no_other() -> None:
    assert sorted(expected()) == [f.name for f in files()]


@pytest.mark.parametrize("name", [f.name for f in files()])
def test_each_manifest_has_its_expected_outcome(name: str, tmp_path: Path) -> None:
    got = outcomes(tmp_path)[name]
    want = expected()[name]
    if got == want:
        return
    flipped = [f for w, g in zip(want, got, strict=False)
               if isinstance(w, dict) and "refused" in w
               for f, why in w["refused"].items()
               if why == "planned" and (not isinstance(g, dict) or f not in g.get("refused", {}))]
    hint = (f"; planned refusals gone (issue 18 part 1 landed?): {flipped}: regenerate "
            f"with `python tests/corpus/test_corpus_validate.py --write`" if flipped else "")
    assert got == want, f"{name}: outcome changed{hint}"


def write_expected(tmp: Path) -> None:
    """Record today's outcomes in expected.yaml (the header counts them)."""
    got = outcomes(tmp)
    flat = [e for es in got.values() for e in es]
    applied = sum(e == "applied" for e in flat)
    skipped = sum(isinstance(e, dict) and "skipped" in e for e in flat)
    refused = [e for e in flat if isinstance(e, dict) and "refused" in e]
    planned_only = sum(all(v == "planned" for v in e["refused"].values()) for e in refused)
    files_applied = sum(all(e == "applied" or (isinstance(e, dict) and "skipped" in e)
                            for e in es) for es in got.values())
    header = (
        "# What `fedctl apply` does with each corpus manifest today, per document, without\n"
        "# asking cloudcore (fedctl.plan): applied | skipped: <reason> | refused: {field:\n"
        "# planned|kept}. `planned`: issue 18 part 1 is to support the field; `kept`: it\n"
        "# stays refused (docs/compatibility.md says why). Written by\n"
        "# `python tests/corpus/test_corpus_validate.py --write`; review the diff.\n"
        f"# Today: {len(got)} files, {len(flat)} documents: {applied} applied, {skipped} "
        f"skipped, {len(refused)} refused\n"
        f"# ({planned_only} of them only for fields issue 18 part 1 plans); {files_applied} "
        f"files apply whole (every document applied or skipped).\n")
    EXPECTED.write_text(header + yaml.safe_dump(got, sort_keys=True, width=88,
                                                allow_unicode=True))


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/corpus/test_corpus_validate.py --write")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        write_expected(Path(d))
    print(f"wrote {EXPECTED}")
