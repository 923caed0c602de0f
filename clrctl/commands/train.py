"""``clrctl train``, ``clrctl preview`` (a policy without training) and ``clrctl validate``."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from clrctl.app import app, console, say_error
from clrctl.commands import options
from clrctl.config.schema import Config, load_config
from clrctl.errors import ConfigError, InputError
from clrctl.optim import preview as preview_maths
from clrctl.runs.bounds import resolve_bounds_from
from clrctl.track.reporting import RichReporter, say, say_path
from clrctl.config.seeds import parse_seeds

CONFIG_ARG = options.config_argument()
OVERRIDES_ARG = options.overrides_argument()
# The user-model contract (README: "Your own model"); no square brackets: help is rich markup.
MODEL_CONTRACT = (
    "Your own model: model.name: module:callable (imported from the working directory) is called with "
    "input_shape (one sample's shape, a tuple: digits (1, 8, 8) standardised, MNIST (1, 28, 28), CIFAR (3, 32, 32), "
    "imagefolder (3, S, S) in -1..1, synthetic (num_features,)), num_classes and the keys of model.args, "
    "each only if it accepts it; it returns a torch.nn.Module mapping a float batch (batch, *input_shape) to "
    "logits (batch, num_classes). Errors in your code name your file and line; --debug shows the traceback."
)


def is_group_dir(path: Path) -> bool:
    return (Path(path) / "group.json").is_file()


def _load(config: Optional[Path], overrides: Optional[list[str]]) -> Config:
    return load_config(options.require_config(config, "configs/digits-triangular2.yaml"), overrides or [])


def _print_summary(path: Path, summary: dict[str, Any]) -> None:
    table = Table(show_header=False)
    for key in ("status", "steps", "epochs", "final_val_acc", "best_val_acc", "best_step",
                "final_val_loss", "steps_to_target", "elapsed_s"):
        value = summary.get(key)
        if isinstance(value, float):
            value = f"{value:g}" if key == "epochs" else f"{value:.1f}" if key == "elapsed_s" else f"{value:.4f}"
        table.add_row(key, Text("-" if value is None else str(value)))
    console.print(table)
    _say_stopped(summary)
    say_path("run:", path)  # after the table, whole on its own line: it is what one copies next


def _say_stopped(summary: dict[str, Any], who: str = "") -> None:
    """One line when a completed run ended before its planned steps (early stopping), saying why."""
    if summary.get("stop_reason") and summary.get("status") == "completed":
        say(f"{who}stopped at step {summary['steps']} of {summary['planned_steps']}: {summary['stop_reason']}")


def _group_done(group: Path, summaries: list[dict[str, Any]]) -> None:
    from clrctl.errors import RunFailed

    from clrctl.files.atomic import read_json

    seeds = read_json(group / "group.json").get("seeds") or []
    for seed, summary in zip(seeds, summaries):
        _say_stopped(summary, f"seed {seed}: ")
    say_path("seed group:", group)
    failed = [s for s in summaries if s.get("status") != "completed"]
    if failed:
        raise RunFailed(f"{len(failed)} of {len(summaries)} seeds did not complete (see {group})")


@app.command("train", epilog=MODEL_CONTRACT)
def train(
    config: Optional[Path] = CONFIG_ARG,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    run_dir: Optional[Path] = options.run_dir_option(),
    runs_root: Path = options.runs_root_option(),
    resume: Optional[Path] = typer.Option(None, "--resume",
                                          help="Continue an interrupted run (or seed group) in its directory."),
    seeds: Optional[str] = options.seeds_option(),
    quiet: bool = options.quiet_option("No progress bar."),
    tensorboard: bool = options.tensorboard_option(),
    nproc: Optional[int] = options.nproc_option(),
    vectorize: bool = typer.Option(False, "--vectorize",
                                   help="Train the seeds of --seeds as one stacked model in one process "
                                        "(torch.func); the same group directory (docs/vectorized-seeds.md)."),
) -> None:
    """Train with a learning-rate policy; writes config, metrics, summary and plots to a run directory."""
    from clrctl.engine import ddp as distributed
    from clrctl.runs import launch

    if vectorize and nproc is not None and nproc > 1:
        raise InputError("--vectorize stacks the seeds in one process; it cannot run with --nproc (DDP)")
    if vectorize and seeds is None and resume is None:
        raise InputError("--vectorize trains the seeds of --seeds as one model; add --seeds (e.g. --seeds 0..7)")
    if nproc is not None and nproc > 1:
        if seeds is not None:
            raise InputError("--seeds runs one process per seed; drop --nproc (or train each seed with --nproc)")
        if resume is not None:
            from clrctl.runs.training import open_resumable

            if is_group_dir(resume):
                raise InputError("--nproc resumes one run, not a seed group")
            cfg = load_config(open_resumable(resume)[0].path / "config.yaml")
        else:
            cfg = _load(config, overrides)
        distributed.check_batch_size(cfg.dataset.batch_size, nproc, cfg.train.accumulate)  # before any process exists
        sys.exit(launch.launch(nproc, options.without_nproc(sys.argv[1:]), say_error))
    from clrctl.runs.training import is_group, resume_group, resume_training, start_training, train_seeds

    quiet = quiet or not distributed.is_main()
    if seeds is not None and distributed.world().distributed:
        raise InputError("--seeds cannot run under torchrun; train each seed on its own")
    argv = ["clrctl", *sys.argv[1:]]
    per_seed = lambda s: RichReporter(f"seed {s}", quiet)  # noqa: E731
    if resume is not None:
        if config is not None:
            raise InputError("--resume takes the run directory only (its config.yaml is used)")
        if is_group(resume):
            from clrctl.runs.vectorized import is_vectorized_group, resume_group_vectorized

            if is_vectorized_group(resume):
                _group_done(*resume_group_vectorized(resume, argv=argv, reporter=_stack_reporter(resume, quiet)))
                return
            _group_done(*resume_group(resume, argv=argv, reporter_factory=per_seed))
            return
        path, summary = resume_training(resume, argv=argv, reporter=RichReporter("resume", quiet))
        if distributed.is_main():
            _print_summary(path, summary)
        return
    cfg = _load(config, [*(overrides or []), *options.tensorboard_override(tensorboard)])
    if seeds is not None and vectorize:
        from clrctl.runs.vectorized import train_seeds_vectorized

        seed_list = parse_seeds(seeds, cfg.seed)
        _group_done(*train_seeds_vectorized(cfg, seed_list, runs_root=runs_root, run_dir=run_dir, argv=argv,
                                            reporter=RichReporter(_seeds_label(seed_list), quiet)))
        return
    if seeds is not None:
        _group_done(*train_seeds(cfg, parse_seeds(seeds, cfg.seed), runs_root=runs_root, run_dir=run_dir,
                                 argv=argv, reporter_factory=per_seed))
        return
    path, summary = start_training(cfg, runs_root=runs_root, run_dir=run_dir, argv=argv,
                                   reporter=RichReporter("train", quiet))
    if distributed.is_main():
        _print_summary(path, summary)


def _seeds_label(seeds: list[int]) -> str:
    """The progress bar's label of a vectorised group: its seeds."""
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"seeds {seeds[0]}..{seeds[-1]}"
    return "seeds " + ",".join(map(str, seeds))


def _stack_reporter(group: Path, quiet: bool) -> RichReporter:
    from clrctl.files.atomic import read_json

    return RichReporter(_seeds_label(read_json(Path(group) / "group.json")["seeds"]), quiet)


@app.command("preview", epilog="On a range-test config (its name ends in range-test, as in "
             "configs/digits-range-test.yaml) preview shows the sweep, start_lr to end_lr over range_test.steps, "
             "and --policy the training policy (what suggested.yaml trains with); --range-test shows the sweep "
             "of any config.")
def preview(
    config: Optional[Path] = CONFIG_ARG,
    overrides: Optional[list[str]] = OVERRIDES_ARG,
    steps_per_epoch: Optional[int] = typer.Option(None, "--steps-per-epoch", min=1,
                                                  help="Skip loading the data set; assume this many steps per epoch."),
    rows: Optional[int] = typer.Option(None, "--rows", min=2, show_default=False,
                                       help="Show N evenly spaced steps, first and last included "
                                            "(default: every step)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write the schedule as a PNG."),
    sweep: Optional[bool] = typer.Option(None, "--range-test/--policy", show_default=False,
                                         help="Show the range test's sweep, or the training policy "
                                              "(default: the sweep for a range-test config)."),
) -> None:
    """Show a policy's LR and momentum against step, exactly as training would apply them."""
    cfg = _load(config, overrides)
    sweep = cfg.is_range_test if sweep is None else sweep
    if not sweep:
        cfg = resolve_bounds_from(cfg)
    spe = steps_per_epoch or _steps_per_epoch(cfg, sweep)
    shown = preview_maths.build_preview(cfg, spe, sweep)
    trace, total = shown.trace, len(shown.trace)
    if sweep:
        say(f"{_sweep_text(cfg, spe)}{_per_epoch(spe)}")
    else:
        if cfg.is_range_test:
            say(_suggested_policy_note(cfg, spe))
        from clrctl.optim.cycles import describe_averaging

        for line in _stage_lines(cfg, spe, total) + describe_averaging(cfg.train, cfg.plan(), spe):
            say(line)
    with_stage = cfg.has_stages and not sweep
    header = ["step", "epoch", *(["stage"] if with_stage else []), "lr", *(f"lr {g}" for g in shown.groups), "momentum"]
    picks = preview_maths.pick_rows(total, rows)
    cells = []
    for step in picks:
        _, lr, mom = trace[step]
        epoch = preview_maths.epoch_of(step, spe)
        stage = [shown.stages[step]] if with_stage else []
        per_group = ["frozen" if math.isnan(g[step]) else f"{g[step]:.6g}" for g in shown.groups.values()]
        cells.append([str(step), "-" if epoch is None else str(epoch), *stage, f"{lr:.6g}", *per_group,
                      "-" if mom is None else f"{mom:.4g}"])
    _print_rows(header, cells)
    if len(picks) < total:
        say(f"({len(picks)} of {total} steps; without --rows every step)")
    if plot is not None:
        _plot_preview(plot, cfg, shown, sweep)


def _steps_per_epoch(cfg: Config, sweep: bool) -> Optional[int]:
    """:func:`clrctl.optim.preview.steps_per_epoch`; a data set that cannot be loaded points to --steps-per-epoch."""
    try:
        return preview_maths.steps_per_epoch(cfg, sweep)
    except preview_maths.EpochLengthUnknown as err:
        raise ConfigError(f"{err} (preview needs the steps per epoch: pass --steps-per-epoch N to skip "
                          "loading the data)") from None


def _plot_preview(plot: Path, cfg: Config, shown: preview_maths.Preview, sweep: bool) -> None:
    from clrctl.plots.train import plot_schedule
    from clrctl.series import policy_names, stage_starts

    trace, stages = shown.trace, shown.stages
    moms = [m for _, _, m in trace]
    what = f"{cfg.range_test.mode} range test" if sweep else policy_names(cfg)
    starts = None if sweep or not cfg.has_stages else stage_starts(range(len(stages)), stages)
    plot_schedule(plot, [s for s, _, _ in trace], [lr for _, lr, _ in trace],
                  None if moms[0] is None else moms, f"{cfg.name}: {what} (preview)", shown.groups or None, starts)
    say(f"wrote {plot}", err=True)


def _print_rows(header: list[str], cells: list[list[str]]) -> None:
    """A table on a terminal; tab-separated lines when piped or redirected (every step of a
    long schedule in a moment, ready for ``cut``/``awk``: rich needs ~0.25 ms a row)."""
    if console.is_terminal:
        table = Table()
        for col in header:
            table.add_column(col, justify="right")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    console.file.write("".join("\t".join(row) + "\n" for row in [header, *cells]))
    console.file.flush()


def _suggested_policy_note(cfg: Config, spe: Optional[int]) -> str:
    """What ``suggested.yaml`` of a range test of ``cfg`` will train: its policy (fixed / step
    become triangular2) between bounds that only the range test finds."""
    from clrctl.rangetest.sweep import suggested_policy_name

    name = suggested_policy_name(cfg.policy.name)
    stepsize = "".join(f", {note}" for note in _stepsize_text(cfg.policy.model_copy(update={"name": name}), spe))
    shown = "below: the policy as written" if name == cfg.policy.name else f"below: {cfg.policy.name} as written"
    return f"suggested.yaml trains {name} between the bounds the range test finds{stepsize} ({shown})"


def _stage_lines(cfg: Config, spe: Optional[int], total: int) -> list[str]:
    """One header line, plus one per stage for a config with stages."""
    if not cfg.has_stages:
        notes = [f"{spe} per epoch"] * (spe is not None) + _stepsize_text(cfg.policy, spe)
        return [f"{cfg.policy.name}: {total} steps" + (f" ({', '.join(notes)})" if notes else "")]
    lines = [f"{len(cfg.stages)} stages: {total} steps" + (f" ({spe} per epoch)" if spe is not None else "")]
    for stage in cfg.plan():
        policy = stage.policy
        notes = [f"{policy.base_lr:g}–{policy.max_lr:g}", *_stepsize_text(policy, spe)]
        if stage.freeze:
            notes.append(f"frozen: {', '.join(stage.freeze)}")
        if stage.image_size is not None:
            notes.append(f"images {stage.image_size}x{stage.image_size}")
        lines.append(f"  stage {stage.name}: {policy.name}, {preview_maths.stage_length(stage, spe)} steps "
                     f"({', '.join(notes)})")
    return lines


def _per_epoch(spe: Optional[int]) -> str:
    return "" if spe is None else f" ({spe} per epoch)"


def _stepsize_text(policy, spe: Optional[int]) -> list[str]:
    """The half-cycle (cyclic policies) or T_0 (sgdr), and a warmup; other policies have no stepsize."""
    steps = preview_maths.stepsize_steps(policy, spe)
    return ([] if steps is None else [f"stepsize {steps}"]) + _warmup_text(policy, spe)


def _warmup_text(policy, spe: Optional[int]) -> list[str]:
    if policy.warmup is None:
        return []
    from clrctl.config.schema import resolve_steps

    return [f"warmup {resolve_steps(policy.warmup, spe or 1)} steps from {policy.warmup_start:g} x the first LR"]


def _extras_text(cfg: Config, world_size: int = 1) -> list[str]:
    """Gradient clipping and accumulation, when on."""
    train, notes = cfg.train, []
    if train.clip_grad_norm is not None:
        notes.append(f"gradients clipped to norm {train.clip_grad_norm:g} (metrics.csv: grad_norm)")
    if train.accumulate > 1:
        micro = cfg.dataset.batch_size // (train.accumulate * world_size)
        notes.append(f"{train.accumulate} micro-batches of {micro} per optimizer step "
                     f"(batch {cfg.dataset.batch_size})")
    return [f"  {note}" for note in notes]


def _sweep_text(cfg: Config, spe: Optional[int]) -> str:
    rt = cfg.range_test
    return f"range test: {rt.mode} {rt.start_lr:g} -> {rt.end_lr:g} over {preview_maths.sweep_steps(cfg, spe)} steps"


@app.command("validate", epilog="A range-test config (its name ends in range-test) is described by its sweep. "
             + MODEL_CONTRACT)
def validate(config: Optional[Path] = CONFIG_ARG, overrides: Optional[list[str]] = OVERRIDES_ARG) -> None:
    """Check a config without training: schema, data, model, optimizer and schedule are all built."""
    from clrctl.engine.setup import build_setup

    cfg = resolve_bounds_from(_load(config, overrides))
    setup = build_setup(cfg)
    params = sum(p.numel() for p in setup.model.parameters())
    policy = cfg.policy
    bounds = f"{policy.base_lr:g}–{policy.max_lr:g}"
    schedule = (_sweep_text(cfg, setup.steps_per_epoch) if cfg.is_range_test
                else f"{policy.name} {bounds}, {setup.total_steps} steps" if not cfg.has_stages
                else f"{len(cfg.stages)} stages, {setup.total_steps} steps")
    console.print(Text.assemble(("ok", "green"), (
        f" {config}: {cfg.dataset.name} ({setup.data.train.num_samples} train / "
        f"{setup.data.val.num_samples} val), {cfg.model.name} ({params:,} parameters), {cfg.optimizer.name}, "
        f"{schedule} ({setup.steps_per_epoch} per epoch) on {setup.device}")), highlight=False, soft_wrap=True)
    for line in _validate_details(cfg, setup):
        say(line)


def _validate_details(cfg: Config, setup) -> list[str]:
    """Parameter groups, starting weights and stages: what a fine-tuning config will do."""
    lines = ["  groups: " + ", ".join(f"{g.name} ({g.numel:,} parameters, lr x{g.lr_mult:g})" for g in setup.groups)]
    if setup.weights:
        fresh = setup.weights["reinitialised"]
        lines.append(f"  weights: {setup.weights['source']}"
                     + (f" (freshly initialised: {', '.join(fresh)})" if fresh else ""))
    if cfg.has_stages and not cfg.is_range_test:
        lines += _stage_lines(cfg, setup.steps_per_epoch, setup.total_steps)[1:]
    elif cfg.policy.warmup is not None and not cfg.is_range_test:
        lines += [f"  {note}" for note in _warmup_text(cfg.policy, setup.steps_per_epoch)]
    if cfg.train.tta:
        lines.append(f"  test-time augmentation: {cfg.train.tta} (epochs.csv tta_val_acc; metrics.csv keeps the plain evaluation)")
    if cfg.train.early_stop:
        stop = cfg.train.early_stop
        lines.append(f"  early stopping: {stop.metric}, patience {stop.patience} evaluation{'s' if stop.patience != 1 else ''}"
                     f", min_delta {stop.min_delta:g}")
    if not cfg.is_range_test:
        from clrctl.optim.cycles import describe_averaging

        lines += describe_averaging(cfg.train, setup.stages, setup.steps_per_epoch)
    return lines + _extras_text(cfg)
