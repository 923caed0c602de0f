"""`clrctl compare RUN_A RUN_B [RUN...]`: judge runs (or groups of seeds) against a baseline.

Thin: load the sides (:mod:`clrctl.compare.runs`), build the report (:mod:`clrctl.compare.report`),
render it (:mod:`clrctl.compare.render`), optionally draw the overlay (:mod:`clrctl.plots.compare`,
imported only for ``--plot``). Reads CSV and JSON only: no torch here.
"""

from __future__ import annotations

import io
import os
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

import typer
from rich.console import Console

from clrctl.app import app, console, err_console
from clrctl.commands import options
from clrctl.errors import InputError, Regression

# clrctl.compare.metrics.GATE_METRICS and clrctl.compare.stats.N_BOOTSTRAP, written out so that
# registering the command (every clrctl start) imports no clrctl.compare module; the
# command imports them when it runs. tests/test_compare_cli.py checks that they agree.
if TYPE_CHECKING:
    from clrctl.compare.report import Options
    from clrctl.compare.runs import Side

GATE_METRICS = ("final_val_acc", "best_val_acc", "final_val_loss", "steps_to_target", "auc_val_acc", "elapsed_s",
                "ensemble_val_acc", "swa_val_acc", "final_ema_val_acc")
N_BOOTSTRAP = 4000


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    md = "md"  # an alias of markdown
    json = "json"


@app.command("compare")
def compare(
    runs: List[str] = typer.Argument(..., metavar="RUN...",
                                     help="Run directories, seed-group directories or quoted globs ('runs/x*/seed-*')."),
    baseline: Optional[str] = typer.Option(None, "--baseline", "-b",
                                           help="The baseline (one of RUN..., or another run). Default: the first."),
    target: Optional[str] = typer.Option(None, "--target", help="Steps to reach it, e.g. val_acc=0.97 or val_loss=0.1."),
    metric: str = typer.Option("final_val_acc", "--metric", help=f"What the gate judges: {', '.join(GATE_METRICS)}."),
    tolerance: Optional[str] = typer.Option(None, "--tolerance",
                                            help="For --metric: absolute (0.01) or relative to the baseline (2%)."),
    gate: bool = typer.Option(False, "--gate", help="Exit 1 when a candidate is worse than the baseline beyond tolerance."),
    strict: bool = typer.Option(False, "--strict", help="With --gate: an inconclusive result fails too."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, markdown or md (PR comments), or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to FILE instead of stdout."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Overlay loss, val acc and LR against step in a PNG."),
    bootstrap: int = typer.Option(N_BOOTSTRAP, "--bootstrap", min=100, help="Bootstrap resamples for groups."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap (results are deterministic)."),
    quiet: bool = options.quiet_option("Only the verdict line; the exit code tells the rest."),
) -> None:
    """Compare runs or seed groups against a baseline; with --gate, exit 1 on a regression.
    One RUN (or group) alone: its summary table. A sweep directory (clrctl sweep) on its own:
    one row per point, ranked by --metric."""
    from clrctl.compare.report import build_report, exit_code
    from clrctl.compare.runs import load_sides
    from clrctl.compare.sweep import is_sweep

    if fmt is Format.md:
        fmt = Format.markdown
    if any(is_sweep(spec) for spec in runs):
        from clrctl.commands.sweep import compare_sweep

        return compare_sweep(list(runs), metric, target, fmt.value, output, plot, quiet,
                             baseline=baseline, tolerance=tolerance, gate=gate)
    options = _options(target, metric, tolerance, gate, strict, bootstrap, seed)
    sides, base = load_sides(list(runs), baseline)
    if len(sides) == 1 and gate:
        raise InputError("--gate needs a candidate to judge against the baseline (give two or more runs)")
    report = build_report(sides, base, options)
    if plot is not None:
        _plot(sides, report, plot)
    _emit(report, fmt, output, plot, quiet)
    if plot is not None and not quiet:  # after the report, like --output's line: stdout stays the report alone
        err_console.print(f"wrote {plot}", markup=False, highlight=False, soft_wrap=True)
    if exit_code(report):
        raise Regression(_failure(report))


def _options(target, metric, tolerance, gate, strict, bootstrap, seed) -> Options:
    from clrctl.compare.metrics import parse_target
    from clrctl.compare.report import Options
    from clrctl.compare.stats import Tolerance

    if metric not in GATE_METRICS:
        raise InputError(f"--metric {metric!r}: expected one of {', '.join(GATE_METRICS)}")
    return Options(
        target=parse_target(target) if target is not None else None,
        metric=metric,
        tolerance=Tolerance.parse(tolerance) if tolerance is not None else None,
        gate=gate,
        strict=strict,
        n_boot=bootstrap,
        seed=seed,
    )


def _plot(sides: list[Side], report: dict[str, Any], path: Path) -> None:
    from clrctl.compare import curves
    from clrctl.plots import compare as plots  # matplotlib only when a plot is asked for

    path.parent.mkdir(parents=True, exist_ok=True)
    title = plot_title(report)
    if report["kind"] == "range-test":
        drawn = [c for side in sides for c in curves.range_curves(side)]
        plots.plot_range_overlay(drawn, path, curves.range_log_x(sides), title, curves.range_ylim(drawn))
    else:
        target = report["target"]
        drawn = [curves.train_curves(side) for side in sides]
        acc_target = target["value"] if target and target["metric"] == "val_acc" else None
        plots.plot_train_overlay(drawn, path, (target["metric"], target["value"]) if target else None, title,
                                 curves.acc_ylim(drawn, acc_target))


def plot_title(report: dict[str, Any]) -> str:
    """``clrctl compare: cand vs base (target val_acc=0.97)``."""
    candidates = ", ".join(c["candidate"] for c in report["comparisons"])
    what = "range tests: " if report["kind"] == "range-test" else ""
    target = report.get("target")
    suffix = f" (target {target['metric']}={target['value']:g})" if target else ""
    sides = f"{candidates} vs {report['baseline']}" if candidates else report["baseline"]  # one run: its summary
    return f"clrctl compare, {what}{sides}{suffix}"


def _emit(report: dict[str, Any], fmt: Format, output: Optional[Path], plot: Optional[Path], quiet: bool) -> None:
    from clrctl.compare import render

    if quiet and output is None:
        console.print(render.headline(report), markup=False, highlight=False, soft_wrap=True)
        return
    if output is None:
        if fmt is Format.table:
            # crop=False: a path longer than the terminal is wrapped by the terminal, not split by rich
            console.print(render.rich_report(report, console.width), crop=False)
        else:
            image = str(plot) if plot is not None else None
            typer.echo(_text(report, fmt, image), nl=False)
        return
    image = os.path.relpath(plot, output.resolve().parent) if plot is not None else None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(_text(report, fmt, image), encoding="utf-8")
    console.print(render.headline(report) if report["kind"] == "train" else "compared range tests",
                  markup=False, highlight=False, soft_wrap=True)
    if not quiet:
        err_console.print(f"wrote {output}", markup=False, highlight=False, soft_wrap=True)


def _text(report: dict[str, Any], fmt: Format, image: Optional[str]) -> str:
    from clrctl.compare import render

    if fmt is Format.json:
        return render.to_json(report)
    if fmt is Format.markdown:
        return render.to_markdown(report, image)
    buffer = io.StringIO()
    Console(file=buffer, width=160, no_color=True, force_terminal=False).print(render.rich_report(report, 160), crop=False)
    return buffer.getvalue()


def _failure(report: dict[str, Any]) -> str:
    gate = report["gate"]
    bad = [c for c, v in gate["candidates"].items() if v == "worse" or (gate["strict"] and v == "inconclusive")]
    what = "regression" if gate["result"] == "regression" else "inconclusive (--strict)"
    return (f"{what}: {', '.join(bad)} vs {report['baseline']} on {gate['metric']} "
            f"(tolerance {gate['tolerance']})")
