"""``clrctl range-test``: sweep the LR, suggest ``[base_lr, max_lr]``, write ``suggested.yaml``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from clrctl.app import app, console, err_console, say_error
from clrctl.commands import options
from clrctl.config.schema import load_config
from clrctl.errors import InputError, RunFailed
from clrctl.track.reporting import say, say_path
from clrctl.text import count
from clrctl.config.seeds import SEEDS_HELP, parse_seeds

ROWS = [  # (candidate name, label in the table)
    ("accuracy_onset", "accuracy onset"), ("accuracy_falls", "accuracy falls"), ("loss_min", "loss minimum"),
    ("max_lr/3", "max_lr / 3"), ("max_lr/4", "max_lr / 4"),
    ("steepest", "steepest (zero-phase)"), ("valley", "valley (fastai)"), ("min_loss/10", "min loss / 10"),
]


@app.command("range-test")
def range_test(
    config: Optional[Path] = options.config_argument(),
    overrides: Optional[list[str]] = options.overrides_argument(),
    run_dir: Optional[Path] = options.run_dir_option(),
    runs_root: Path = options.runs_root_option(),
    seeds: Optional[str] = options.seeds_option(f"{SEEDS_HELP} Repeats the sweep per seed (other init and data "
                                                "order) and suggests the medians."),
    quiet: bool = options.quiet_option("No progress bar: one plain line per seed (also when output is not a "
                                       "terminal)."),
    tensorboard: bool = options.tensorboard_option(),
    stage: Optional[str] = typer.Option(None, "--stage",
                                        help="Sweep this stage of a config with stages: its frozen groups and LR "
                                             "multipliers (default: the first stage)."),
    nproc: Optional[int] = options.nproc_option("Sweep with DistributedDataParallel in N processes on this machine "
                                                "(dataset.batch_size is the global batch; see clrctl train --help)."),
    vectorize: bool = typer.Option(False, "--vectorize", help="Sweep the seeds of --seeds as one stacked model "
                                                              "(docs/vectorized-seeds.md)."),
) -> None:
    """LR range test (Smith §3.3): raise the LR, record loss and accuracy, suggest CLR bounds."""
    from clrctl.engine import ddp as distributed
    from clrctl.runs import launch
    from clrctl.track.progress import SeedProgress
    from clrctl.rangetest.sweep import start_range_test

    config = options.require_config(config, "configs/digits-range-test.yaml")
    cfg = load_config(config, [*(overrides or []), *options.tensorboard_override(tensorboard)])
    if vectorize and nproc is not None and nproc > 1:
        raise InputError("--vectorize stacks the seeds in one process; it cannot run with --nproc (DDP)")
    if vectorize and seeds is None:
        raise InputError("--vectorize sweeps the seeds of --seeds as one model; add --seeds (e.g. --seeds 3)")
    if nproc is not None and nproc > 1:
        if seeds is not None:
            raise InputError("--seeds sweeps one process per seed; drop --nproc")
        distributed.check_batch_size(cfg.dataset.batch_size, nproc, cfg.train.accumulate)  # before any process exists
        sys.exit(launch.launch(nproc, options.without_nproc(sys.argv[1:]), say_error))
    quiet = quiet or not distributed.is_main()
    seed_list = parse_seeds(seeds, cfg.seed) if seeds is not None else [cfg.seed]
    progress = SeedProgress(seed_list, quiet)  # bars on a terminal; a plain line per seed with -q or in a log
    # Under DDP only rank 0 reports: every rank sweeps the same steps (the other ranks' lines would repeat it).
    reporter_factory = progress.reporter if distributed.is_main() else None
    path, summary = start_range_test(cfg, seeds=seed_list, runs_root=runs_root, run_dir=run_dir,
                                     argv=["clrctl", *sys.argv[1:]], reporter_factory=reporter_factory,
                                     stage=stage, vectorize=vectorize)
    if distributed.is_main():
        print_suggestion(path, summary)
    if summary["suggestion"]["base_lr"] is None:
        raise RunFailed(f"{summary['suggestion']['reason']} (run kept in {path})")


def _lr(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_suggestion(path: Path, summary: dict[str, Any]) -> None:
    s = summary["suggestion"]
    spread = s.get("spread_decades")
    table = Table()
    table.add_column("suggestion")
    table.add_column("lr", justify="right")
    if spread is not None:
        table.add_column("spread (decades)", justify="right")
    table.add_column("rule / reason", overflow="fold")

    def add(name: str, value: Optional[float], note: str, key: str) -> None:
        extra = [] if spread is None else ["-" if spread.get(key) is None else f"{spread[key]:.2f}"]
        table.add_row(name, _lr(value), *extra, Text(note))  # notes quote ranges such as [lo:n-5]

    add("[bold]base_lr[/bold]", s["base_lr"], s["base_rule"] or s["reason"] or "", "base_lr")
    add("[bold]max_lr[/bold]", s["max_lr"], s["max_rule"] or s["reason"] or "", "max_lr")
    for key, label in ROWS:
        entry = s["candidates"][key]
        add(label, entry["lr"], entry["reason"] or "", key)
    console.print(table)
    stop = (f"stopped early ({summary['stop_reason']}) at lr {_lr(summary['stop_lr'])}" if summary["stopped_early"]
            else "ran to end_lr")
    say(f"{count(summary['steps'], 'step')}, {summary['elapsed_s']:.1f} s, {stop}")
    for warning in s.get("warnings", []):
        err_console.print(Text.assemble(("warning:", "yellow"), f" {warning}"), highlight=False, soft_wrap=True)
    say_path("range test:", path)
    if (path / "suggested.yaml").is_file():
        # Each on a line of its own, never wrapped, so that it can be copied whole.
        say("next:")
        say(f"clrctl train {path / 'suggested.yaml'}")
        stage = summary.get("stage")
        where = f"in stage {stage!r} of any config" if stage else "in any config"
        say(f"or {where}: policy.bounds: {{from: {path}}}")
