"""Entry point of `fedctl` and `python -m fedctl`.

Runs the click command in non-standalone mode so that usage errors, too, become
one line on stderr with exit code 2 (typer's default is a multi-line panel), and
so that nothing unexpected ever prints a traceback unless FEDCTL_DEBUG is set.
"""

from __future__ import annotations

import os
import signal
import sys

import typer

try:  # typer >= 0.2x vendors its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]

from fedctl.app import _fail, app, debug_enabled


def _reader_gone() -> int:
    """`fedctl describe ... | head`: the reader left. Exit quietly with the status a shell
    gives cat killed by SIGPIPE (128 + 13), so a `set -o pipefail` script sees why; stdout
    goes to /dev/null so that the interpreter's last flush cannot complain."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.__stdout__.fileno() if sys.__stdout__ else 1)
    return 128 + signal.SIGPIPE


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
        return _reader_gone()
    except SystemExit as exc:
        # Others catch EPIPE first and exit 1, which reads as a failure: rich raises
        # SystemExit(1) from the BrokenPipeError, click wraps stdout and stderr in its
        # PacifyFlushWrapper and exits 1, even in non-standalone mode.
        if isinstance(exc.__context__, BrokenPipeError) or type(sys.stdout).__name__ in (
                "PacifyFlushWrapper", "_PacifyFlushWrapper"):
            return _reader_gone()
        raise
    except Exception as exc:  # the promise: no traceback, ever, unless asked for
        if debug_enabled():
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set FEDCTL_DEBUG=1 for a traceback)")
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
