"""``clrctl export tensorboard RUN…``: TensorBoard events from the CSVs of existing runs;
``clrctl export plots RUN…``: a training run's plots drawn again from its CSVs;
``clrctl export mlflow RUN…``: runs, seed groups and sweeps as MLflow runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from clrctl.app import app
from clrctl.errors import warn
from clrctl.track.mlflow import DEFAULT_URI as MLFLOW_URI
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


@export_app.command("mlflow")
def mlflow(
    runs: list[Path] = typer.Argument(..., help="Run directories, seed groups, range-test runs or sweep directories.",
                                      show_default=False),
    tracking_uri: str = typer.Option(MLFLOW_URI, "--tracking-uri", metavar="URI",
                                     help="Where to write: an MLflow tracking URI (sqlite:///FILE, http://HOST:PORT, …)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", metavar="NAME",
                                             help="The MLflow experiment (created if missing). Default: a sweep's "
                                                  "directory name, else the run's config name.",
                                             show_default=False),
) -> None:
    """Write each run to MLflow: its config as params, metrics.csv and epochs.csv as metrics by
    step, summary.json as final metrics, plots/ and config.yaml as artifacts; a seed group is a
    parent run with one child per seed. Exporting again updates the same runs (tag clrctl.run_id).
    A run still being written is exported as far as it is, with a warning: export it again later."""
    from clrctl.runs.targets import target
    from clrctl.track import mlflow as tracker

    tracker.require()
    targets = [target(run) for run in runs]  # every path checked before anything is written
    for found in targets:
        for point in found.skipped:
            say(f"{found.path}: point {point} has not started; skipped", err=True)
        for node in (n for top in found.nodes for n in (top, *top.children)):
            if node.live:
                warn(f"{node.path}: still running ({node.live}); exported as far as it is, export it again when it ends")
    count = 0
    for record, run_id, created, name in tracker.export(targets, tracking_uri, experiment):
        count += 1
        say(f"{'created' if created else 'updated'} {run_id} ({record.path}) in experiment {name}", err=True)
    say(f"exported {count} MLflow run(s) to {tracking_uri}; look at them: mlflow ui --backend-store-uri {tracking_uri}",
        err=True)
