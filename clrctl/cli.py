"""The command line: a thin layer that parses arguments, calls the library and renders.

``main()`` is the single place that turns a :class:`~clrctl.errors.ClrctlError` into one
line on stderr and its exit code (SPEC.md); ``--debug`` shows the traceback instead.
Commands live in :mod:`clrctl.commands` and import torch only inside their bodies, so
``clrctl --help`` and ``clrctl compare`` stay fast.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from clrctl.app import app, debug_enabled, err_console  # noqa: F401 (debug_enabled: public)
from clrctl.errors import ClrctlError

# click's ClickException, found through typer (which vendors click from 0.29 on).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# Register the commands (each module adds itself to ``app``).
from clrctl.commands import compare as _compare  # noqa: E402,F401
from clrctl.commands import range_test as _range_test  # noqa: E402,F401
from clrctl.commands import sweep as _sweep  # noqa: E402,F401
from clrctl.commands import train as _train  # noqa: E402,F401


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: every error is one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="clrctl", standalone_mode=False)
    except ClrctlError as err:
        if "--debug" in args:
            raise
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except (typer.Exit, typer.Abort) as err:
        sys.exit(130 if isinstance(err, typer.Abort) else err.exit_code)
    except _CLICK_ERROR as err:  # usage errors: bad option, missing argument
        err.show()
        sys.exit(2)
    except Exception as err:  # the unexpected: still one line unless --debug
        if "--debug" in args:
            raise
        err_console.print(f"[red]error:[/red] {err.__class__.__name__}: {err} (run with --debug for a traceback)",
                          highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(0)
