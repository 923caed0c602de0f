"""``clrctl export tensorboard RUN…``: TensorBoard events from the CSVs of existing runs."""

from __future__ import annotations

from pathlib import Path

import typer

from clrctl.app import app
from clrctl.reporting import say

export_app = typer.Typer(help="Write existing runs in other formats.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("tensorboard")
def tensorboard(
    runs: list[Path] = typer.Argument(..., help="Run directories, range-test runs or seed groups.",
                                      show_default=False),
) -> None:
    """Write RUN/tensorboard/ from each run's metrics.csv and summary.json (then: tensorboard --logdir RUN).
    An existing RUN/tensorboard/ is replaced: its events come from the same CSVs."""
    from clrctl import tensorboard as tb

    tb.require("export tensorboard")
    for run in runs:
        for written in tb.export(run):
            say(f"wrote {written}", err=True)
