"""The typer application and the two rich consoles that every command module shares.

Kept apart from :mod:`clrctl.cli` (which registers the commands and owns ``main()``) so that
command modules import this one and nothing imports in a circle.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

from clrctl import __version__

app = typer.Typer(
    name="clrctl",
    help="Cyclical learning rates: find the bounds (range-test), train with a policy, compare runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _flags_show_no_type() -> None:
    """typer's rich help labels every option with its type, so value-less flags read
    ``--quiet <bool>`` as if they took a value: give flags no type label (all of them,
    ``--help`` included, which typer builds itself)."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "clrctl_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich.clrctl_flags = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_flags_show_no_type()
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        console.print(f"clrctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug",
                               help="Show full tracebacks on errors (also accepted after the command)."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Show the version and exit."),
) -> None:
    _state["debug"] = debug


def debug_enabled() -> bool:
    return _state["debug"] or "--debug" in sys.argv


def say_error(line: str) -> None:
    """``error: LINE`` on stderr, as ``main()`` prints clrctl's errors (never wrapped)."""
    from rich.text import Text

    err_console.print(Text.assemble(("error:", "red"), " ", line), highlight=False, soft_wrap=True)
