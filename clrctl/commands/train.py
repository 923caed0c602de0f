"""``clrctl train``, ``clrctl preview`` (a policy without training) and ``clrctl validate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from clrctl.app import app, console
from clrctl.config import Config, load_config, resolve_bounds_from, resolve_steps
from clrctl.errors import InputError
from clrctl.reporting import RichReporter
from clrctl.seeds import SEEDS_HELP, parse_seeds

CONFIG_ARG = typer.Argument(None, help="YAML config file (see configs/).", show_default=False)
OVERRIDES_ARG = typer.Argument(None, help="Hydra-style overrides: key.path=value …", show_default=False)


def _load(config: Optional[Path], overrides: Optional[list[str]]) -> Config:
    if config is None:
        raise InputError("missing CONFIG (a YAML file, e.g. configs/digits-triangular2.yaml)")
    return load_config(config, overrides or [])


def _print_summary(path: Path, summary: dict[str, Any]) -> None:
    table = Table(title=f"run: {path}", show_header=False, title_justify="left")
    for key in ("status", "steps", "epochs", "final_val_acc", "best_val_acc", "best_step",
                "final_val_loss", "steps_to_target", "elapsed_s"):
        value = summary.get(key)
        if isinstance(value, float):
            value = f"{value:g}" if key == "epochs" else f"{value:.1f}" if key == "elapsed_s" else f"{value:.4f}"
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)


def _group_done(group: Path, summaries: list[dict[str, Any]]) -> None:
    from clrctl.errors import RunFailed

    console.print(f"seed group: {group}", highlight=False, soft_wrap=True)
    failed = [s for s in summaries if s.get("status") != "completed"]
    if failed:
        raise RunFailed(f"{len(failed)} of {len(summaries)} seeds did not complete (see {group})")


@app.command("train")
def train(
    config: Optional[Path] = CONFIG_ARG,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Put the run exactly here (must be new or empty)."),
    runs_root: Path = typer.Option(Path("runs"), "--runs-root", help="Parent of timestamped run directories."),
    resume: Optional[Path] = typer.Option(None, "--resume",
                                          help="Continue an interrupted run (or seed group) in its directory."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help=SEEDS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train with a learning-rate policy; writes config, metrics, summary and plots to a run directory."""
    from clrctl.runs import is_group, resume_group, resume_training, start_training, train_seeds

    argv = ["clrctl", *sys.argv[1:]]
    per_seed = lambda s: RichReporter(f"seed {s}", quiet)  # noqa: E731
    if resume is not None:
        if config is not None:
            raise InputError("--resume takes the run directory only (its config.yaml is used)")
        if is_group(resume):
            _group_done(*resume_group(resume, argv=argv, reporter_factory=per_seed))
            return
        path, summary = resume_training(resume, argv=argv, reporter=RichReporter("resume", quiet))
        _print_summary(path, summary)
        return
    cfg = _load(config, overrides)
    if seeds is not None:
        _group_done(*train_seeds(cfg, parse_seeds(seeds, cfg.seed), runs_root=runs_root, run_dir=run_dir,
                                 argv=argv, reporter_factory=per_seed))
        return
    path, summary = start_training(cfg, runs_root=runs_root, run_dir=run_dir, argv=argv,
                                   reporter=RichReporter("train", quiet))
    _print_summary(path, summary)


@app.command("preview")
def preview(
    config: Optional[Path] = CONFIG_ARG,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", min=1,
                                                  help="Skip loading the data set; assume this many steps per epoch."),
    rows: int = typer.Option(25, "--rows", min=2, help="Table rows (evenly spaced steps)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write the schedule as a PNG."),
) -> None:
    """Show a policy's LR and momentum against step, exactly as training would apply them."""
    from clrctl.policies import preview as trace_policy

    cfg = resolve_bounds_from(_load(config, overrides))
    spe = steps_per_epoch or _steps_per_epoch(cfg)
    total = cfg.train.steps or cfg.train.epochs * spe
    trace = trace_policy(cfg.policy, cfg.optimizer, spe, total)
    stepsize = resolve_steps(cfg.policy.stepsize, spe)
    console.print(f"{cfg.policy.name}: {total} steps ({spe} per epoch, stepsize {stepsize})",
                  highlight=False, soft_wrap=True)
    table = Table()
    for col in ("step", "epoch", "lr", "momentum"):
        table.add_column(col, justify="right")
    picks = sorted({round(i * (total - 1) / (rows - 1)) for i in range(rows)})
    for step in picks:
        _, lr, mom = trace[step]
        table.add_row(str(step), f"{step / spe:.2f}", f"{lr:.6g}", "-" if mom is None else f"{mom:.4g}")
    console.print(table)
    if plot is not None:
        from clrctl.plots.train import plot_schedule

        moms = [m for _, _, m in trace]
        plot_schedule(plot, [s for s, _, _ in trace], [lr for _, lr, _ in trace],
                      None if moms[0] is None else moms, f"{cfg.name}: {cfg.policy.name} (preview)")
        console.print(f"plot: {plot}")


def _steps_per_epoch(cfg: Config) -> int:
    import torch

    from clrctl.data import build_data

    return len(build_data(cfg.dataset, cfg.seed, torch.device("cpu")).train)


@app.command("validate")
def validate(config: Optional[Path] = CONFIG_ARG, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Check a config without training: schema, data, model, optimizer and schedule are all built."""
    from clrctl.trainer import prepare

    cfg = resolve_bounds_from(_load(config, overrides))
    setup = prepare(cfg)
    params = sum(p.numel() for p in setup.model.parameters())
    policy = cfg.policy
    bounds = f"{policy.base_lr:g}–{policy.max_lr:g}"
    console.print(
        f"[green]ok[/green] {config}: {cfg.dataset.name} ({setup.data.train.num_samples} train / "
        f"{setup.data.val.num_samples} val), {cfg.model.name} ({params:,} parameters), {cfg.optimizer.name}, "
        f"{policy.name} {bounds}, {setup.total_steps} steps ({setup.steps_per_epoch} per epoch) on {setup.device}",
        highlight=False)
