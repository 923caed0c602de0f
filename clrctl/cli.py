"""The command line: a thin layer that parses arguments, calls the library and renders.

``main()`` is the single place that turns a :class:`~clrctl.errors.ClrctlError` into one
line on stderr and its exit code (SPEC.md); ``--debug`` shows the traceback instead.
Commands live in :mod:`clrctl.commands` and import torch only inside their bodies, so
``clrctl --help`` and ``clrctl compare`` stay fast.
"""

from __future__ import annotations

import sys
import typing
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from clrctl import interrupts
from clrctl.app import app, debug_enabled, err_console  # noqa: F401 (debug_enabled: public)
from clrctl.errors import ClrctlError, ClrctlWarning, InputError, forget_warnings

# click's ClickException, found through typer (which vendors click from 0.29 on).
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

# Register the commands (each module adds itself to ``app``).
from clrctl.commands import compare as _compare  # noqa: E402,F401
from clrctl.commands import export as _export  # noqa: E402,F401
from clrctl.commands import range_test as _range_test  # noqa: E402,F401
from clrctl.commands import sweep as _sweep  # noqa: E402,F401
from clrctl.commands import train as _train  # noqa: E402,F401


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: every error is one line and an exit code.

    SIGINT and SIGTERM raise KeyboardInterrupt from here on (the trainer swaps in its own
    handler for the loop). The library turns one that lands after a run directory exists into
    :class:`~clrctl.errors.Interrupted` (which names the directory); any other — while
    importing, parsing, building data and model — means that nothing was written.
    """
    previous, early = interrupts.install()
    _print_library_warnings()
    forget_warnings()
    try:
        if early:  # arrived while the CLI was importing (clrctl.__main__)
            raise KeyboardInterrupt
        _main(_debug_first(list(sys.argv[1:] if argv is None else argv)))
    except KeyboardInterrupt:
        interrupts.ignore()  # a second Ctrl-C must not cut this line short
        interrupts.clear()  # reported: no held retry may fire while the process exits
        if _is_main():
            err_console.print("interrupted; nothing was written", highlight=False)
        sys.exit(130)
    finally:
        interrupts.restore(previous)


def _main(args: list[str]) -> None:
    try:
        _check_run_dir_option(args)
        # typer turns a KeyboardInterrupt inside a command into exit code 130, returned here
        if app(args=args, prog_name="clrctl", standalone_mode=False) == 130:
            raise KeyboardInterrupt
    except ClrctlError as err:
        if "--debug" in args:
            raise
        _fail(err, str(err), err.exit_code)
    except (typer.Exit, typer.Abort) as err:
        sys.exit(130 if isinstance(err, typer.Abort) else err.exit_code)
    except _CLICK_ERROR as err:  # usage errors: bad option, missing argument
        _hint_config_key(err, args)
        err.show()
        sys.exit(2)
    except Exception as err:  # the unexpected: still one line unless --debug
        if "--debug" in args:
            raise
        _fail(err, f"{err.__class__.__name__}: {err} (run with --debug for a traceback)", 1)
    sys.exit(0)


def _fail(err: Exception, message: str, code: int) -> None:
    """Print ``message`` and exit ``code``; under DDP the rank, or its launcher, that should say it does."""
    from clrctl.runs.launch import report

    line = report(err, message, code)
    if line is not None:
        err_console.print(_line("error:", "red", line), highlight=False, soft_wrap=True)
    sys.exit(code)


def _check_run_dir_option(args: list[str]) -> None:
    """``--run-dir PATH`` where PATH, or a folder above it, is a file: refused before any work
    (else training would fail only when it creates the directory, or call the file "not empty")."""
    end = args.index("--") if "--" in args else len(args)
    for i, arg in enumerate(args[:end]):
        value = args[i + 1] if arg == "--run-dir" and i + 1 < end else arg.partition("=")[2] \
            if arg.startswith("--run-dir=") else None
        if not value:
            continue
        path = Path(value)
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            where = "is a file" if blocker == path else f"is inside {blocker}, which is a file"
            raise InputError(f"--run-dir {value}: {where}, not a directory")


def _hint_config_key(err: Exception, args: list[str]) -> None:
    """``--epochs 3``: an unknown option named like a config key gets a hint to the override
    (``train.epochs=3``) in click's own message."""
    name = getattr(err, "option_name", None)
    if not name or not name.startswith("--") or not hasattr(err, "message"):
        return
    keys = config_keys().get(name[2:].replace("-", "_"), [])
    if not keys:
        return
    inline = next((a.partition("=")[2] for a in args if a.startswith(name + "=")), "")
    position = args.index(name) if name in args else -1
    value = inline or (args[position + 1] if 0 <= position < len(args) - 1 else "VALUE")
    spelled = " or ".join(f"{key}={value}" for key in keys)
    err.message = f"{err.message}; to set the config key, write the override {spelled}"


def config_keys() -> dict[str, list[str]]:
    """Every dotted key of a config's sections by its last part: ``epochs`` -> ``[train.epochs]``."""
    from clrctl.config.schema import Config

    found: dict[str, list[str]] = {}

    def walk(model, prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = field.alias or name
            inner = [a for a in (getattr(field.annotation, "__args__", None) or (field.annotation,))
                     if isinstance(a, type) and hasattr(a, "model_fields")]
            if typing.get_origin(field.annotation) is list or name == "sweep":
                continue  # stages.N.epochs, optimizer.groups.N...: not one key to suggest
            if inner and not prefix:  # a section: its keys
                walk(inner[0], f"{key}.")
            else:
                found.setdefault(key, []).append(prefix + key)

    walk(Config, "")
    return found


def _is_main() -> bool:
    from clrctl.engine.ddp import is_main

    return is_main()


def _line(label: str, style: str, message: str) -> Text:
    """``label message`` with only the label styled: messages quote config text such as
    ``[base_lr, max_lr]``, which rich would otherwise swallow as markup."""
    return Text.assemble((label, style), " ", message)


def _debug_first(args: list[str]) -> list[str]:
    """Accept ``--debug`` anywhere (``clrctl train CFG --debug`` is where error messages lead
    people to type it) by moving it before the command, the only place typer takes it.
    Arguments after a ``--`` separator are left alone."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    rest = [a for a in args[:end] if a != "--debug"]
    return ["--debug", *rest, *args[end:]]


def _print_library_warnings() -> None:
    """Show the library's :class:`ClrctlWarning` s as one ``warning:`` line each on stderr
    (the library warns; only the CLI prints); other warnings keep Python's rendering."""
    previous = warnings.showwarning
    if getattr(previous, "clrctl", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ClrctlWarning):
            if not _is_main():  # under DDP every rank meets the same setting: rank 0 says it
                return
            err_console.print(_line("warning:", "yellow", str(message)), highlight=False, soft_wrap=True)
        else:
            previous(message, category, filename, lineno, file, line)

    show.clrctl = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.simplefilter("always", ClrctlWarning)
