"""``clrctl sweep``: a grid of training runs, in parallel, resumable and shardable.

Thin: build and validate the plan (:mod:`clrctl.sweep.plan`), prepare the directory
(:mod:`clrctl.sweep.store`), run the pool (:mod:`clrctl.sweep.runner`), render the events.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from clrctl.app import app, console, err_console
from clrctl.commands import options
from clrctl.errors import InputError, Interrupted, RunFailed
from clrctl.text import count

HELP = (
    "Run a grid of training runs, each a normal run directory under DIR, indexed by DIR/sweep.json.\n\n"
    "The points are the Cartesian product of the --grid options (Hydra multirun syntax): values are split "
    "on commas outside brackets and quotes, and each value is parsed as YAML:\n\n"
    "  -g policy.name=triangular,triangular2          2 strings\n"
    "  -g 'policy.stepsize=1 epochs,2 epochs'         2 durations\n"
    "  -g 'policy.bounds=[0.01,0.1],[0.02,0.2]'       2 lists\n"
    "  -g optimizer.momentum=0.8,0.9 -g train.epochs=4,8   4 points\n\n"
    "A config's sweep: block does the same from a file: sweep: {grid: {KEY: [V1, V2]}, include: "
    "[{KEY: V}], seeds: 3}; include adds extra points, e.g. a fixed-LR baseline. --grid KEY replaces the "
    "block's KEY; a plain override KEY=V pins KEY for every point. --seeds 3 (three seeds from the "
    "config's seed), 0,1,2 or 0..4 runs each point with several seeds: the point is then a seed group.\n\n"
    "Every point is validated before anything runs (a bad one: exit 2, nothing written). The same "
    "command on the same --run-dir skips completed runs and resumes interrupted ones. --shard I/N runs "
    "the I-th share only, so N cluster tasks can share one --run-dir (each run is claimed with a lock "
    "file). Exit 1 if a run failed or diverged, 130 when interrupted. Rank the points: clrctl compare DIR.\n\n"
    "Examples:\n\n"
    "  clrctl sweep configs/digits-triangular.yaml -g 'policy.stepsize=1 epochs,2 epochs' --seeds 3 -j 2\n\n"
    "  clrctl sweep configs/digits-stepsize-sweep.yaml --run-dir runs/stepsize -j 2\n\n"
    "  clrctl sweep CONFIG --run-dir /shared/sweep --shard $SLURM_ARRAY_TASK_ID/8\n\n"
    "A search instead of a grid (Optuna; pip install 'clrctl[search]'): --search tpe|random|cmaes|grid "
    "--trials N --param KEY=DIST (loguniform(a, b), uniform(a, b), int(a, b), choice(v1, v2, …); a number "
    "in KEY addresses a list element: policy.bounds.1). Each trial is a run directory under DIR/trials/; "
    "the study is DIR/optuna.journal, or --storage URL (postgresql://…, sqlite:///…) shared by workers on "
    "several machines. --prune median|asha|hyperband stops hopeless trials from their evaluations of "
    "--metric (--prune-after STEP: not before that step). The same command again continues the study until "
    "N trials are finished. loguniform(from: RUN) takes a range test's usable window; ratio(a, b, of: KEY) "
    "is a share of KEY (base_lr of max_lr). A config's sweep: {search: {sampler: tpe, trials: N, params: "
    "{KEY: DIST}}} block says the same (the flags win).\n\n"
    "  clrctl sweep configs/digits-triangular.yaml --search tpe --trials 20 --prune asha "
    "--param 'policy.bounds.1=loguniform(0.03, 0.5)' --param 'policy.stepsize=choice(1 epochs, 2 epochs)'\n"
)


@app.command("sweep", help=HELP)
def sweep(
    config: Optional[Path] = options.config_argument("YAML config file (its sweep: block, if any, adds the grid)."),
    overrides: Optional[List[str]] = options.overrides_argument("Overrides for every point: key.path=value …"),
    grid: Optional[List[str]] = typer.Option(None, "--grid", "-g", help="KEY=V1,V2,… (repeatable): the values to sweep."),
    seeds: Optional[str] = options.seeds_option("Seeds per point: 3, 0,1,2 or 0..4."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Runs at once on this machine, each in a worker "
                             "process of its own (a worker runs one run after another)."),
    shard: Optional[str] = typer.Option(None, "--shard", help="I/N: run only the I-th of N shares (needs --run-dir)."),
    run_dir: Optional[Path] = options.run_dir_option("The sweep directory (rerun on it to resume)."),
    runs_root: Path = options.runs_root_option("Parent of the default timestamped directory."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list the points; run nothing."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.001, show_default=False,
                                            help="Seconds a run may take: then it is stopped (checkpointed) and "
                                                 "recorded failed, its worker replaced."),
    quiet: bool = options.quiet_option("Only the final summary."),
    tensorboard: bool = options.tensorboard_option("Every run also writes TensorBoard events "
                                                   "(train.tensorboard=true)."),
    search: Optional[str] = typer.Option(None, "--search", show_default=False,
                                         help="tpe | random | cmaes | grid: an Optuna study instead of a grid."),
    trials: Optional[int] = typer.Option(None, "--trials", show_default=False,
                                         help="Trials to finish (with --search; a rerun continues up to N)."),
    params: Optional[List[str]] = typer.Option(None, "--param", "-p", help="KEY=DIST (repeatable, with --search): "
                                               "loguniform(a, b), uniform(a, b), int(a, b), choice(v1, …)."),
    metric: Optional[str] = typer.Option(None, "--metric", show_default=False,
                                         help="val_acc | val_loss: what the search optimises (default val_acc)."),
    prune: Optional[str] = typer.Option(None, "--prune", show_default=False,
                                        help="none | median | asha | hyperband (with --search; default none)."),
    prune_after: Optional[int] = typer.Option(None, "--prune-after", show_default=False,
                                              help="STEP: no pruning before this step (e.g. one LR cycle)."),
    sampler_seed: Optional[int] = typer.Option(None, "--sampler-seed", show_default=False,
                                               help="The sampler's seed (with --search; default: random)."),
    storage: Optional[str] = typer.Option(None, "--storage", show_default=False,
                                          help="The study's SQLAlchemy URL (default: DIR/optuna.journal)."),
    study: Optional[str] = typer.Option(None, "--study", show_default=False,
                                        help="The study's name in the storage (default: DIR's name)."),
) -> None:
    from clrctl.runs.rundir import default_run_path

    from clrctl.sweep.search import has_search_block

    block = has_search_block(config)
    if search is not None or params or trials is not None or block:
        given = [name for name, value in (("--grid", grid), ("--seeds", seeds), ("--shard", shard),
                                          ("--dry-run", dry_run), ("--timeout", timeout)) if value]
        if given:
            why = "--search" if search is not None or not block else f"{config}'s sweep.search block"
            raise InputError(f"{', '.join(given)}: not with a search ({why}; a search samples its trials: run "
                             "the same command on every machine instead of --shard)")
        _search(config, [*(overrides or []), *options.tensorboard_override(tensorboard)], list(params or []),
                search, trials, metric, prune, storage, study, jobs, run_dir, runs_root, quiet, tensorboard,
                prune_after, sampler_seed)
        return
    from clrctl.sweep.plan import build_plan
    from clrctl.sweep.runner import Pool, parse_shard
    from clrctl.sweep.store import SweepDir

    config = options.require_config(config, "configs/digits-stepsize-sweep.yaml")
    shard_spec = parse_shard(shard)
    if shard is not None and run_dir is None:
        raise InputError("--shard needs --run-dir: every shard must write to the same sweep directory")
    if tensorboard:
        from clrctl.track.tensorboard import require

        require("--tensorboard")  # once, before any point runs
    plan = build_plan(config, [*(overrides or []), *options.tensorboard_override(tensorboard)], list(grid or []), seeds)
    if dry_run:
        _print_plan(plan)
        return
    path = run_dir if run_dir is not None else default_run_path(runs_root, f"{plan.name}-sweep")
    store = SweepDir.prepare(path, plan)
    argv = ["clrctl", *sys.argv[1:]]
    store.write_index(plan, argv)
    console.print(f"sweep: {path} — {len(plan.points)} points, {len(plan.runs())} runs"
                  + (f", shard {shard}" if shard else ""), highlight=False, markup=False)
    t0 = time.monotonic()
    result = Pool(plan, store, jobs, shard_spec, _Printer(quiet), timeout_s=timeout).run()
    index = store.write_index(plan, argv)
    _print_result(path, index, result, time.monotonic() - t0)
    if result.interrupted:
        raise Interrupted(f"sweep interrupted; run the same command again to resume ({path})")
    bad = [o for o in result.outcomes if o.status != "completed"]
    if bad:
        names = ", ".join(o.ref.id for o in bad[:3]) + (" …" if len(bad) > 3 else "")
        raise RunFailed(f"{len(bad)} of {len(result.outcomes)} runs did not complete ({names}); see {path}/logs")


def _search(config, overrides, params, search, trials, metric, prune, storage, study, jobs, run_dir, runs_root,
            quiet, tensorboard, prune_after=None, sampler_seed=None) -> None:
    from clrctl.config.schema import read_yaml
    from clrctl.runs.rundir import default_run_path
    from clrctl.sweep import search as search_mod

    config = options.require_config(config, "configs/digits-triangular.yaml")
    search_mod.require_optuna()
    if tensorboard:
        from clrctl.track.tensorboard import require

        require("--tensorboard")
    data = read_yaml(config)
    name = str(data.get("name", "run")) if isinstance(data, dict) else "run"
    path = run_dir if run_dir is not None else default_run_path(runs_root, f"{name}-search")
    spec = search_mod.build_search(config, overrides, params, search=search, trials=trials, metric=metric,
                                   prune=prune, storage=storage, study=study, path=path, prune_after=prune_after,
                                   sampler_seed=sampler_seed)
    search_mod.prepare(spec)
    argv = ["clrctl", *sys.argv[1:]]
    store = spec.storage or f"{path}/{search_mod.JOURNAL}"
    console.print(f"search: {path} — {spec.search} over {len(spec.params)} parameters, {spec.trials} trials, study "
                  f"{spec.study!r} in {store}", highlight=False, markup=False, soft_wrap=True)
    t0 = time.monotonic()
    code = 0
    try:
        if jobs == 1:
            search_mod.work(spec, _TrialPrinter(quiet), argv)
        else:
            code = search_mod.run_workers(spec, jobs, quiet)
    finally:
        index = search_mod.write_index(spec, argv)
    counts = ", ".join(f"{n} {state}" for state, n in index["counts"].items()) or "none"
    best = index.get("best")
    console.print(f"search {path}: trials {counts} in {time.monotonic() - t0:.1f} s"
                  + (f"; best trial {best['trial']}: {spec.metric} {best['value']:.4g} ({best['path']})" if best else ""),
                  highlight=False, markup=False, soft_wrap=True)
    if code == 130:
        raise Interrupted(f"search interrupted; run the same command again to continue ({path})")
    if code:
        raise RunFailed(f"a search worker failed (exit {code}); see {path}/logs")
    console.print(f"rank them: clrctl compare {path}", highlight=False, markup=False)


class _TrialPrinter:
    """One line per trial that ends."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def trial(self, number, name, state, value, message, elapsed) -> None:
        if self.quiet and state == "completed":
            return
        style = {"completed": "green", "pruned": "yellow"}.get(state, "red")
        console.print(Text.assemble(f"trial {number} ", (state, style),
                                    f" {name}" + (f" {value:.4g}" if value is not None else "")
                                    + (f" — {message}" if message else "") + f" ({elapsed:.1f} s)"),
                      highlight=False, soft_wrap=True)


class _Printer:
    """Renders the pool's events: one line per run that starts or ends."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.done = 0
        self.total = 0

    def start(self, total: int, skipped: int) -> None:
        self.total, self.done = total, skipped
        if skipped and not self.quiet:
            console.print(f"{skipped} of {total} runs already done: skipped", highlight=False)

    def launched(self, ref, resumed: bool) -> None:
        if not self.quiet:
            console.print(f"{'resume' if resumed else 'start '} {ref.id}", style="dim", highlight=False, markup=False)

    def finished(self, outcome) -> None:
        if outcome.status != "interrupted":  # an interrupted run is not done: the rerun resumes it
            self.done += 1
        if self.quiet and outcome.status == "completed":
            return
        mark = {"completed": ("ok", "green"), "interrupted": ("interrupted", "yellow")}.get(
            outcome.status, (outcome.status, "red"))
        tail = f" — {outcome.message}" if outcome.message and outcome.status != "completed" else ""
        # Text, not markup: messages quote config values such as [0.01, 0.1]
        console.print(Text.assemble(f"[{self.done}/{self.total}] ", mark,
                                    f" {outcome.ref.id} ({outcome.elapsed_s:.1f} s){tail}"),
                      highlight=False, soft_wrap=True)

    def held(self, ref) -> None:
        if not self.quiet:
            console.print(f"held by another process: {ref.id}", style="dim", highlight=False, markup=False)

    def stopping(self) -> None:
        err_console.print("stopping: waiting for the running workers to checkpoint (Ctrl-C again to abort)")


def _print_plan(plan) -> None:
    """The points of --dry-run: a table, or one block per point when it does not fit; names and
    values are never cut, and values print as YAML (``null``, ``[0.01, 0.1]``)."""
    from clrctl.compare import render

    keys = list(dict.fromkeys(k for point in plan.points for k in point.overrides))
    rows = [[point.name, *(yaml_value(point.overrides[k]) if k in point.overrides else "" for k in keys),
             ",".join(map(str, point.seeds))] for point in plan.points]
    title = render._prose(plan_title(plan), console.width, style="bold")
    console.print(title, render._block(["point", *keys, "seeds"], rows, console.width), crop=False)


def plan_title(plan) -> str:
    """``4 points × 3 seeds = 12 runs`` (the seed count only when every point has the same)."""
    counts = {len(point.seeds) for point in plan.points}
    seeds = f" × {count(counts.pop(), 'seed')}" if len(counts) == 1 else ""
    return f"{count(len(plan.points), 'point')}{seeds} = {count(len(plan.runs()), 'run')}"


def yaml_value(value) -> str:
    """A value as YAML writes it in flow style: ``null``, ``true``, ``[0.01, 0.1]``, ``2 epochs``."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _print_result(path: Path, index: dict, result, elapsed: float) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in index["counts"].items())
    ran = len(result.outcomes)
    console.print(f"sweep {path}: points {counts}; ran {ran} runs in {elapsed:.1f} s"
                  + (f", skipped {len(result.skipped)}" if result.skipped else "")
                  + (f", {len(result.held)} held by other processes" if result.held else ""),
                  highlight=False, markup=False)
    if not result.interrupted:
        console.print(f"rank them: clrctl compare {path}", highlight=False, markup=False)


# ---------------------------------------------------------------------------------------
# clrctl compare SWEEP_DIR (dispatched from commands/compare.py; torch-free)


def compare_sweep(specs: list[str], metric: str, target: Optional[str], fmt: str, output: Optional[Path],
                  plot: Optional[Path], quiet: bool = False, **refused) -> None:
    """Rank the points of one sweep directory; write the table, markdown or JSON (and a plot)."""
    from clrctl.compare import sweep as report_mod
    from clrctl.compare.metrics import GATE_METRICS, parse_target

    if len(specs) != 1:
        raise InputError("a sweep directory is compared on its own: clrctl compare SWEEP_DIR")
    given = [f"--{name}" for name, value in refused.items() if value not in (None, False)]
    if given:
        raise InputError(f"{', '.join(given)}: not for a sweep (it ranks its points; compare two point "
                         "directories to judge one against another)")
    if metric not in GATE_METRICS:
        raise InputError(f"--metric {metric!r}: expected one of {', '.join(GATE_METRICS)}")
    report = report_mod.build_sweep_report(specs[0], metric, parse_target(target) if target else None)
    if plot is not None:
        from clrctl.plots.sweep import plot_sweep  # matplotlib only when a plot is asked for

        plot.parent.mkdir(parents=True, exist_ok=True)
        plot_sweep(report, plot)
    image = None if plot is None else str(plot) if output is None else os.path.relpath(plot, output.resolve().parent)
    if fmt == "json":
        text = report_mod.to_json(report)
    elif fmt == "markdown":
        text = report_mod.to_markdown(report, image)
    else:
        text = None if output is None else report_mod.to_text(report)
    if output is None and quiet:
        console.print(report_mod.headline(report), markup=False, highlight=False, soft_wrap=True)
    elif output is None:
        if text is None:  # crop=False: a name longer than the terminal is wrapped by it, never cut
            console.print(report_mod.renderable(report, console.width), crop=False)
        else:
            typer.echo(text, nl=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        console.print(report_mod.headline(report), highlight=False, markup=False, soft_wrap=True)
        if not quiet:
            err_console.print(f"wrote {output}", highlight=False, markup=False)
    if plot is not None and output is None and fmt == "table" and not quiet:
        err_console.print(f"wrote {plot}", highlight=False, markup=False)
