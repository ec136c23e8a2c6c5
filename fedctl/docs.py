"""The command reference of docs/cli.md, generated from the CLI itself.

`python -m fedctl.docs` prints the reference (every command and group of the typer
app: its help text, usage line, arguments and options) as Markdown;
`python -m fedctl.docs --write docs/cli.md` replaces the block between the
BEGIN/END markers of that file with it (the narrative around the block is kept), and
`--check docs/cli.md` exits 1 when the committed block is stale. A test runs the
check, so help texts and docs cannot drift apart.

The output depends only on the app's declarations (no terminal width, no
environment), so it is the same on every machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import typer

BEGIN = "<!-- BEGIN GENERATED: python -m fedctl.docs --write docs/cli.md; do not edit -->"
END = "<!-- END GENERATED -->"


def _clean(text: str | None) -> str:
    """Help text as Markdown: typer/click markers removed, paragraphs kept."""
    if not text:
        return ""
    lines = [ln.rstrip() for ln in text.replace("\b\n", "").strip().splitlines()]
    out: list[str] = []
    for ln in lines:
        out.append(ln.strip() if not ln.startswith("    ") else ln)
    return "\n".join(out).strip()


def _first_line(text: str | None) -> str:
    return _clean(text).split("\n\n", 1)[0].replace("\n", " ")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(param: Any) -> str:
    if getattr(param, "is_flag", False) or param.default is None or callable(param.default):
        return ""
    d = param.default
    if isinstance(d, list | tuple):
        if not d:
            return ""
        d = ",".join(str(x) for x in d)
    if d == "" or getattr(param, "show_default", True) is False:
        return ""
    return f"`{d}`"


def _metavar(param: Any) -> str:
    """The value placeholder of an option: its metavar, an enum's choices, or its type."""
    if param.metavar:
        return str(param.metavar)
    choices = getattr(param.type, "choices", None)
    if choices:
        return "|".join(str(getattr(c, "value", c)) for c in choices)
    names = {"str": "TEXT", "text": "TEXT", "int": "INTEGER", "integer": "INTEGER",
             "int range": "INTEGER", "float": "FLOAT", "path": "PATH"}
    return names.get(getattr(param.type, "name", ""), "VALUE")


def _param_rows(cmd: Any) -> tuple[list[str], list[str]]:
    args, opts = [], []
    for p in cmd.params:
        if getattr(p, "hidden", False) or p.name == "help":
            continue
        help_ = _cell(_clean(getattr(p, "help", None)))
        if p.param_type_name == "argument":
            meta = p.metavar or p.name.upper()
            need = "" if p.required else " (optional)"
            many = "..." if p.nargs == -1 else ""
            args.append(f"| `{meta}{many}`{need} | {help_} |")
        else:
            names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
            if not getattr(p, "is_flag", False):
                names += f" `{_metavar(p)}`"
            d = _default(p)
            opts.append(f"| {_cell(names)} | {help_}{' (default ' + d + ')' if d else ''} |")
    return args, opts


def _usage(cmd: Any, path: str) -> str:
    parts = [path]
    if any(p.param_type_name == "option" and not getattr(p, "hidden", False)
           for p in cmd.params):
        parts.append("[OPTIONS]")
    for p in cmd.params:
        if p.param_type_name == "argument":
            meta = (p.metavar or p.name.upper()) + ("..." if p.nargs == -1 else "")
            parts.append(meta if p.required else f"[{meta}]")
    if hasattr(cmd, "commands"):
        parts.append("COMMAND [ARGS]...")
    return " ".join(parts)


def _walk(cmd: Any, path: str, level: int, out: list[str]) -> None:
    hashes = "#" * level
    out.append(f"{hashes} `{path}`\n")
    text = _clean(cmd.help)
    if text:
        out.append(text + "\n")
    out.append(f"```\n{_usage(cmd, path)}\n```\n")
    args, opts = _param_rows(cmd)
    if args:
        out.append("| argument | |\n|---|---|\n" + "\n".join(args) + "\n")
    if opts:
        out.append("| option | |\n|---|---|\n" + "\n".join(opts) + "\n")
    subs = getattr(cmd, "commands", None)
    if subs:
        rows = [f"| [`{name}`](#{_anchor(f'{path} {name}')}) | "
                f"{_cell(_first_line(sub.help))} |"
                for name, sub in sorted(subs.items()) if not getattr(sub, "hidden", False)]
        out.append("| command | |\n|---|---|\n" + "\n".join(rows) + "\n")
        for name, sub in sorted(subs.items()):
            if not getattr(sub, "hidden", False):
                _walk(sub, f"{path} {name}", min(level + 1, 4) if level < 3 else 4, out)


def _anchor(title: str) -> str:
    """GitHub's heading anchor of "`fedctl get`" -> "fedctl-get"."""
    return "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def generate(app: typer.Typer | None = None, *, prog: str = "fedctl") -> str:
    """The Markdown reference of every command, deterministic."""
    if app is None:
        from fedctl.app import app as fedctl_app

        app = fedctl_app
    root = typer.main.get_command(app)
    out = ["## Command reference\n",
           "Generated from the CLI's own help texts; `fedctl COMMAND --help` shows the "
           "same.\n"]
    _walk(root, prog, 3, out)
    return "\n".join(out).rstrip() + "\n"


def splice(document: str, generated: str) -> str:
    """`document` with the block between BEGIN and END replaced (appended if absent)."""
    block = f"{BEGIN}\n{generated}{END}\n"
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        return head + block + ("\n" + tail if tail else "")
    return document.rstrip("\n") + "\n\n" + block


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedctl.docs", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", type=Path, metavar="FILE", help="update the block in FILE")
    g.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE's block is stale")
    args = p.parse_args(argv)
    generated = generate()
    if args.write is None and args.check is None:
        sys.stdout.write(generated)
        return 0
    path = args.write or args.check
    current = path.read_text() if path.exists() else ""
    wanted = splice(current, generated)
    if args.check is not None:
        if current != wanted:
            print(f"{path} is stale: run python -m fedctl.docs --write {path}", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        path.write_text(wanted)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
