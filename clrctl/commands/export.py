"""``clrctl export tensorboard RUN…``: TensorBoard events from the CSVs of existing runs;
``clrctl export plots RUN…``: a training run's plots drawn again from its CSVs."""

from __future__ import annotations

from pathlib import Path

import typer

from clrctl.app import app
from clrctl.track.reporting import say

export_app = typer.Typer(help="Write existing runs in other formats.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("tensorboard")
def tensorboard(
    runs: list[Path] = typer.Argument(..., help="Run directories, range-test runs or seed groups.",
                                      show_default=False),
) -> None:
    """Write RUN/tensorboard/ from each run's metrics.csv and summary.json (then: tensorboard --logdir RUN).
    An existing RUN/tensorboard/ is replaced: its events come from the same CSVs."""
    from clrctl.track import tensorboard as tb

    tb.require("export tensorboard")
    for run in runs:
        for written in tb.export(run):
            say(f"wrote {written}", err=True)


@export_app.command("plots")
def plots(
    runs: list[Path] = typer.Argument(..., help="Training run directories or seed groups.", show_default=False),
) -> None:
    """Draw RUN/plots/ again from each run's CSVs (lr.png, loss.png, accuracy.png): for a run
    whose plots were lost, e.g. to a full disk."""
    from clrctl.runs.training import is_group, redraw_plots
    from clrctl.runs.rundir import read_json

    for run in runs:
        members = [run / name for name in read_json(run / "group.json").get("runs", [])] if is_group(run) else [run]
        for member in members:
            for written in redraw_plots(member):
                say(f"wrote {written}", err=True)
