"""docs/cli.md's command reference is generated from the CLI and must stay in sync."""

from __future__ import annotations

from pathlib import Path

from fedctl.docs import BEGIN, END, generate, main, splice

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_committed_reference_matches_the_cli() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text
    assert splice(text, generate()) == text, (
        "docs/cli.md is stale: run `python -m fedctl.docs --write docs/cli.md`")
    assert main(["--check", str(DOC)]) == 0


def test_every_command_is_documented() -> None:
    import typer

    from fedctl.app import app

    ref = generate()
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():  # type: ignore[attr-defined]
        assert f"`fedctl {name}`" in ref
        for sub in getattr(cmd, "commands", {}):
            assert f"`fedctl {name} {sub}`" in ref


def test_splice_keeps_the_narrative_and_is_idempotent(tmp_path: Path) -> None:
    doc = "# title\n\nprose\n"
    once = splice(doc, "## ref\n")
    assert once.startswith("# title\n\nprose\n\n" + BEGIN) and once.endswith(END + "\n")
    assert splice(once, "## ref\n") == once
    twice = splice(once + "\nafter\n", "## new\n")
    assert "## new" in twice and "## ref" not in twice and twice.endswith("after\n")
    f = tmp_path / "cli.md"
    f.write_text(doc)
    assert main(["--check", str(f)]) == 1
    assert main(["--write", str(f)]) == 0 and main(["--check", str(f)]) == 0
