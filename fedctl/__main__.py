"""Entry point of `fedctl` and `python -m fedctl`.

Runs the click command in non-standalone mode so that usage errors, too, become
one line on stderr with exit code 2 (typer's default is a multi-line panel), and
so that nothing unexpected ever prints a traceback unless FEDCTL_DEBUG is set.
"""

from __future__ import annotations

import os
import sys

import typer

try:  # typer >= 0.2x vendors its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from fedctl.app import _fail, app, debug_enabled


def main(argv: list[str] | None = None) -> int:
    """Run fedctl with `argv` (default: sys.argv[1:]) and return the exit code."""
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name="fedctl", standalone_mode=False)
    except click_exceptions.NoArgsIsHelpError as exc:
        # typer has already printed the help; plain click leaves it in the message.
        if exc.format_message().strip():
            sys.stderr.write(exc.format_message() + "\n")
        return 2
    except click_exceptions.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        _fail(f"{exc.format_message()}{hint}")
        return 2
    except click_exceptions.ClickException as exc:
        _fail(exc.format_message())
        return exc.exit_code
    except typer.Abort:
        return 130
    except BrokenPipeError:
        # `fedctl get pods | head`: the reader left; exit quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # the promise: no traceback, ever, unless asked for
        if debug_enabled():
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set FEDCTL_DEBUG=1 for a traceback)")
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
