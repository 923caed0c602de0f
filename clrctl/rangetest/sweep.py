"""The LR range test (Smith, arXiv 1506.01186 §3.3): the library behind ``clrctl range-test``.

The LR rises from ``range_test.start_lr`` to ``end_lr`` over ``steps`` optimizer steps,
linearly (the paper) or exponentially (fastai / torch-lr-finder: ``lr_i = lr_0 (end/lr_0)^(i/(N-1))``).
Every step logs the raw loss and a debiased EMA of it (fastai's ``AvgSmoothLoss`` with a
counter local to the sweep); every ``eval_every`` steps, loss and accuracy on a fixed
held-out slice (``val.head(eval_size)``). The sweep stops at once on a NaN/Inf loss, or
when the EMA rises ``diverge_factor`` x above its best — tested as
``ema - best > (factor - 1) |best|`` so that it also works for negative losses (fastai #962).
Either is a normal end (status ``completed``); :mod:`clrctl.rangetest.suggest` turns the records into
suggestions.

The sweep trains a *deep copy* of the model with an optimizer of its own, under a forked RNG:
nothing the caller holds is changed, and ``clrctl train`` always starts from a fresh
initialisation of its own; the swept weights are thrown away.

Layout of a run directory (``--seeds 1``): ``config.yaml``, ``run.json``, ``metrics.csv``,
``summary.json``, ``suggested.yaml``, ``plots/range_test.png``. With ``--seeds N > 1`` each
seed's sweep lives in ``seeds/seed-K/{metrics.csv,summary.json}`` and the top-level summary
holds the median suggestion and its spread in decades.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from clrctl import interrupts

from clrctl.engine import ddp as distributed
from clrctl.runs.lifecycle import open_run
from clrctl.rangetest import suggest as rules
from clrctl.config.schema import CYCLIC_POLICIES, Config, Stage, resolve_steps
from clrctl.errors import DataError, InputError, Interrupted, RunFailed
from clrctl.optim.groups import build_groups
from clrctl.optim.policies import lr_at  # noqa: F401 (part of the sweep's API)
from clrctl.optim.stages import stage_optimizer
from clrctl.optim.optimizers import current_momentum
from clrctl.optim.schedulefree import averaged_weights
from clrctl.runs.rundir import RunDir, WriteFailed, failure_line, holds_no_results, release, run_info
from clrctl.engine.setup import Setup, build_setup
from clrctl.text import count
from clrctl.engine.step import FastPath, StepExtras, evaluate
from clrctl.engine.strategy import for_process
from clrctl.track.reporter import Reporter

METRIC_COLUMNS = ["step", "epoch", "lr", "momentum", "loss", "smoothed_loss", "val_loss", "val_acc"]
FLUSH_EVERY = 25  # rows between fsyncs of metrics.csv
BOUNDED_POLICIES = CYCLIC_POLICIES + ("one_cycle", "cosine", "sgdr", "linear", "wsd")


def diverged(smoothed: float, best: float, factor: float) -> bool:
    """``smoothed > factor * best`` for positive losses, generalised to negative ones."""
    return smoothed - best > (factor - 1.0) * abs(best)


@dataclass
class SweepSetup(Setup):
    """A run's :class:`~clrctl.engine.setup.Setup` with the stage whose frozen groups and LR
    multipliers the sweep uses, and the sweep's length; built before any run directory exists."""

    stage: Optional[Stage] = None
    steps: int = 0

    @classmethod
    def of(cls, base: Setup, stage: Stage, steps: int) -> "SweepSetup":
        return cls(**{f.name: getattr(base, f.name) for f in fields(Setup)}, stage=stage, steps=steps)


def prepare(config: Config, seed: Optional[int] = None, stage: Optional[str] = None) -> SweepSetup:
    """The run's setup (data split and order from ``seed``; the model with its starting
    weights) and the stage to sweep: ``stage`` by name, else the first."""
    chosen = config.stage(stage) if stage is not None else config.plan()[0]
    base = build_setup(config, seed)
    index = [s.name for s in base.stages].index(chosen.name)
    base = replace(base, data=base.stage_data(index))  # (the stage's image size: progressive resizing)
    return SweepSetup.of(base, chosen, resolve_steps(config.range_test.steps, base.steps_per_epoch))


def sweep_optimizer(setup: SweepSetup, model: nn.Module) -> torch.optim.Optimizer:
    """The stage's optimizer for ``model`` (a copy): its frozen groups get no parameters and
    every group's LR is its ``lr_mult`` x the swept LR."""
    groups = build_groups(model, setup.config.optimizer)
    return stage_optimizer(groups, model, setup.stage, setup.config.range_test.start_lr, setup.config.train.bn_freeze)


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    steps: int  # steps run
    planned_steps: int
    stopped_early: bool
    stop_reason: Optional[str]  # "non-finite loss" | "diverged" | "interrupted" | None
    stop_lr: Optional[float]
    elapsed_s: float


def sweep(setup: SweepSetup, on_row: Optional[Callable[[dict[str, Any]], None]] = None,
          reporter: Optional[Reporter] = None,
          make_optimizer: Optional[Callable[[nn.Module], torch.optim.Optimizer]] = None) -> SweepResult:
    """Run one sweep on a copy of ``setup.model``; ``on_row`` gets each metrics row.

    ``make_optimizer`` builds the optimizer for the copy (default :func:`sweep_optimizer`;
    every group needs an ``lr_mult``). Without validation data (``setup.data.val`` None,
    from :func:`clrctl.api.lr_find`) no evaluation is made and the loss rules decide."""
    rt = setup.config.range_test
    reporter = reporter or Reporter()
    model = copy.deepcopy(setup.model).train()
    optimizer = make_optimizer(model) if make_optimizer else sweep_optimizer(setup, model)
    averaged = averaged_weights(optimizer, model, setup.data.train)
    eval_source = setup.data.val.head(rt.eval_size) if setup.data.val is not None else None
    if eval_source is not None:
        eval_source.shard = setup.data.val.shard  # DDP: each rank its share, sums reduced
    fast = FastPath(setup.config.train, setup.device)  # the sweep trains as the run will
    scaler = fast.scaler()
    strategy = for_process(setup.device)
    net = fast.model(strategy.wrap(fast.model_layout(model)))
    extras = StepExtras.of(setup.config.train)  # clipping and accumulation, as the run will
    step = strategy.stepper(setup.loss_fn, fast, scaler, False, setup.data.train, *([extras] if extras else []))
    stop = {"signal": False}
    smoother = _StopRule(rt.smoothing, rt.diverge_factor)
    rows: list[dict[str, Any]] = []
    stop_reason = None
    t0 = time.perf_counter()
    reporter.start(setup.steps, 0)
    devices = [setup.device] if setup.device.type == "cuda" else []
    # one process: a signal ends the sweep at once; DDP: a flag that the ranks agree on per step
    signals = _sigterm_as_interrupt() if strategy.stops_at_once else _signals_as_flag(stop)
    with torch.random.fork_rng(devices=devices), signals:
        try:
            for t, epoch, index, (x, y) in _step_batches(setup):
                lr = lr_at(t, setup.steps, rt.start_lr, rt.end_lr, rt.mode)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["lr_mult"]
                # One host sync per step: the stop rule needs this step's loss now. A range
                # test is short, so this costs little (the trainer batches its syncs instead).
                # Under DDP: the global batch's loss, and a signal on any rank, agreed.
                term, _, size = step(net, optimizer, x, y, index)
                losses, _, interrupted = strategy.host_values(term.float().reshape(1), 1, [size], stop["signal"])
                if interrupted:
                    raise KeyboardInterrupt
                loss = losses[0]
                row = {"step": t, "epoch": epoch + 1, "lr": lr, "momentum": current_momentum(optimizer), "loss": loss}
                row["smoothed_loss"], stop_reason = smoother.update(loss)
                finite = row["smoothed_loss"] is not None
                if finite and eval_source is not None and (t % rt.eval_every == 0 or t == setup.steps - 1):
                    if averaged is None:
                        row["val_loss"], row["val_acc"] = evaluate(model, eval_source, setup.loss_fn,
                                                                   strategy.eval_reduce)
                    else:  # Schedule-Free: the accuracy of the averaged weights
                        with averaged():
                            row["val_loss"], row["val_acc"] = evaluate(model, eval_source, setup.loss_fn,
                                                                       strategy.eval_reduce)
                rows.append(row)
                if on_row:
                    on_row(row)
                reporter.advance(t + 1, lr)
                if "val_acc" in row or (t + 1) % FLUSH_EVERY == 0 or stop_reason:
                    # The EMA the stop rule watches, not one batch's loss (raw where non-finite).
                    shown = loss if row["smoothed_loss"] is None else row["smoothed_loss"]
                    reporter.metrics(t + 1, shown, row.get("val_acc"))
                if stop_reason:
                    break
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        finally:
            reporter.close()
    return SweepResult(rows, len(rows), setup.steps, stop_reason is not None, stop_reason,
                       rows[-1]["lr"] if stop_reason and rows else None, round(time.perf_counter() - t0, 3))


def _signals_as_flag(stop: dict[str, bool]):
    """Under DDP: SIGINT/SIGTERM only set a flag, which the ranks agree on after each step."""

    def handler(signum, frame):
        stop["signal"] = True

    return interrupts.handled_by(handler)


def _step_batches(setup: SweepSetup):
    """``(step, epoch, index in the epoch, batch)`` for ``setup.steps`` steps, epoch after epoch."""
    step, epoch = 0, 0
    while True:
        for index, batch in enumerate(setup.data.train.batches(epoch)):
            if step >= setup.steps:
                return
            yield step, epoch, index, batch
            step += 1
        epoch += 1


class _StopRule:
    """The debiased EMA of the loss and the two stop rules (non-finite, diverged)."""

    def __init__(self, beta: float, factor: float):
        self.beta, self.factor = beta, factor
        self.avg, self.count, self.best = 0.0, 0, math.inf

    def update(self, loss: float) -> tuple[Optional[float], Optional[str]]:
        """(smoothed loss or None, stop reason or None) after one more step's loss."""
        if not math.isfinite(loss):
            return None, "non-finite loss"
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        self.count += 1
        smoothed = self.avg / (1 - self.beta**self.count)
        self.best = min(self.best, smoothed)
        return smoothed, "diverged" if diverged(smoothed, self.best, self.factor) else None


def _sigterm_as_interrupt():
    """SIGTERM ends the sweep like Ctrl-C does (SPEC: both are exit 130, files flushed). Only
    the first signal raises: the sweep's results are being written after it."""
    raised = []

    def handler(signum, frame):
        if raised:
            return
        raised.append(signum)
        interrupts.stopping()  # (and after the sweep, until the CLI reports the interrupt)
        raise KeyboardInterrupt

    return interrupts.handled_by(handler)


# ---------------------------------------------------------------------------------------
# Suggestions from the records


def columns(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Metrics rows (floats, or strings read back from metrics.csv) as float arrays (blank = NaN)."""

    def col(key: str, subset) -> np.ndarray:
        return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in subset], dtype=float)

    evals = [r for r in rows if r.get("val_acc") not in (None, "")]
    out = {key: col(key, rows) for key in ("step", "lr", "loss", "smoothed_loss")}
    out.update(eval_lr=col("lr", evals), val_acc=col("val_acc", evals), val_loss=col("val_loss", evals))
    return out


def suggest_from_rows(rows: list[dict[str, Any]], planned_steps: int, eval_size: int) -> dict[str, Any]:
    """The suggestion of one sweep, from its metrics rows (recomputable from metrics.csv)."""
    c = columns(rows)
    return rules.suggest(c["lr"], c["loss"], c["smoothed_loss"], c["eval_lr"], c["val_acc"],
                         eval_size=eval_size, planned_steps=planned_steps)


def best_val_acc(result: SweepResult) -> Optional[float]:
    return max((r["val_acc"] for r in result.rows if r.get("val_acc") is not None), default=None)


def seed_summary(result: SweepResult, suggestion: dict[str, Any]) -> dict[str, Any]:
    return {
        "status": "interrupted" if result.stop_reason == "interrupted" else "completed",
        "steps": result.steps, "planned_steps": result.planned_steps, "elapsed_s": result.elapsed_s,
        "stopped_early": result.stopped_early, "stop_reason": result.stop_reason, "stop_lr": result.stop_lr,
        "best_val_acc": best_val_acc(result), "suggestion": suggestion,
    }


def suggested_policy_name(name: str) -> str:
    """The policy ``suggested.yaml`` trains for a config's policy ``name``: a policy without
    bounds (fixed, step) becomes ``triangular2`` (the paper's choice)."""
    return name if name in BOUNDED_POLICIES else "triangular2"


def suggested_config(config: Config, base_lr: float, max_lr: float, stage: Optional[str] = None) -> dict[str, Any]:
    """The config as the user wrote it (file plus overrides, no defaults spelled out) with
    ``policy.bounds`` — or stage ``stage``'s — filled in, ready for ``clrctl train``.

    A policy without bounds (fixed, step) becomes ``triangular2`` (the paper's choice)."""
    data = config.as_written()
    if stage is None:
        policy = data["policy"] = data.get("policy") or {}
        effective = config.policy
    else:  # the stage's own policy block, over what it inherits; the top level stays as written
        entry = next(s for s in data["stages"] if s["name"] == stage)
        policy = entry["policy"] = entry.get("policy") or {}
        effective = config.stage(stage).policy
    if suggested_policy_name(effective.name) != effective.name:
        for key in ("lr", "milestones", "gamma"):  # fixed / step settings that triangular2 refuses or ignores
            policy.pop(key, None)
        policy["name"] = suggested_policy_name(effective.name)
    policy["bounds"] = [float(f"{base_lr:.4g}"), float(f"{max_lr:.4g}")]
    if config.name.endswith("-range-test"):
        data["name"] = config.name[: -len("-range-test")] + f"-{policy.get('name', config.policy.name)}"
    return data


# ---------------------------------------------------------------------------------------
# A run: one or more seeds in a run directory


def start_range_test(config: Config, *, seeds: Optional[list[int]] = None, runs_root: str | Path = "runs",
                     run_dir: Optional[str | Path] = None, argv: Optional[list[str]] = None,
                     reporter_factory: Optional[Callable[[int], Reporter]] = None,
                     stage: Optional[str] = None, vectorize: bool = False) -> tuple[Path, dict[str, Any]]:
    """Sweep each of ``seeds`` (default: ``[config.seed]``; see :func:`clrctl.config.seeds.parse_seeds`)
    into a new run directory; (path, summary). Its config.yaml records the first seed.
    With stages, the sweep uses stage ``stage`` (default: the first): its frozen groups and
    LR multipliers, and ``suggested.yaml`` fills that stage's bounds.

    ``vectorize``: the seeds' sweeps as one stacked model (:func:`sweep_stacked`).

    Raises :class:`Interrupted` after writing an ``interrupted`` summary on Ctrl-C / SIGTERM."""
    seed_list = [config.seed] if seeds is None else list(seeds)
    if not seed_list or len(set(seed_list)) != len(seed_list) or min(seed_list) < 0:
        raise ValueError(f"seeds must be distinct non-negative integers (got {seeds!r})")
    stacked = None
    if vectorize:  # what cannot be vectorised fails before the run directory exists, too
        from clrctl.runs.vectorized import check_config, check_setups

        check_config(config)
    first = prepare(config, seed_list[0], stage)  # bad input fails here, before the run directory exists
    if vectorize:
        stacked = [first, *(prepare(config, s, first.stage.name) for s in seed_list[1:])]
        check_setups(stacked)
    info = {**run_info("range-test", seed_list[0], str(first.device), argv),
            "groups": first.describe_groups(), "weights": first.weights,
            **({"stage": first.stage.name} if config.has_stages else {}), **distributed.record()}
    if distributed.world().distributed and len(seed_list) > 1:
        raise InputError("--seeds cannot run under several processes; sweep each seed on its own")
    run = None
    try:
        run = open_run(runs_root, config.name, run_dir, info, config.model_copy(update={"seed": seed_list[0]}).to_dict(),
                       resumable=False)  # claimed by this process (under DDP: rank 0 writes it)
        return _range_test(config, seed_list, first, run, reporter_factory, stacked)
    except KeyboardInterrupt as err:  # outside a sweep: before the first
        run = run or getattr(err, "run", None)
        if not isinstance(run, RunDir):
            raise
        interrupts.stopping()  # handled: more signals must not cut the status short
        if run.status() == "running":
            run.set_status("interrupted")
        raise _interrupted(run) from None
    finally:
        if run is not None:
            release(run.path)


def _range_test(config: Config, seed_list: list[int], first: SweepSetup, run: RunDir,
                reporter_factory: Optional[Callable[[int], Reporter]],
                stacked: Optional[list[SweepSetup]] = None) -> tuple[Path, dict[str, Any]]:
    per_seed: list[tuple[int, SweepResult, dict[str, Any]]] = []
    try:
        if stacked is not None:
            stopped = _sweep_stacked(config, seed_list, stacked, run, per_seed, reporter_factory)
        else:
            stopped = _sweep_seeds(config, seed_list, first, run, per_seed, reporter_factory)
        if not per_seed:  # Ctrl-C before the first sweep started
            run.set_status("interrupted")
            raise _interrupted(run)
        with interrupts.deferred():  # the results whole (a signal now is raised after them)
            summary = _write_results(config, first, run, per_seed, stopped)
    except (Interrupted, KeyboardInterrupt):
        raise
    except (DataError, OSError, WriteFailed) as err:  # unreadable data, a full disk: exit 1
        _mark_failed(run)
        raise RunFailed(f"{failure_line(err)} (the run is kept as 'failed' in {run.path})") from err
    except BaseException:
        _mark_failed(run)
        raise
    if summary["status"] == "interrupted":
        raise Interrupted(f"range test interrupted after {count(summary['steps'], 'step')}; "
                          f"partial results in {run.path}")
    return run.path, summary


def _write_results(config: Config, first: SweepSetup, run: RunDir, per_seed, stopped: bool) -> dict[str, Any]:
    """summary.json, suggested.yaml, the plot, then the final status: a run marked finished
    has all its files."""
    summary = run_summary(per_seed, first.steps_per_epoch, interrupted=stopped)
    if config.has_stages:
        summary["stage"] = first.stage.name
    run.write_summary(summary)
    suggestion = summary["suggestion"]
    if summary["status"] == "completed" and suggestion["base_lr"] is not None:
        filled = first.stage.name if config.has_stages else None
        run.write_config(suggested_config(config, suggestion["base_lr"], suggestion["max_lr"], filled),
                         "suggested.yaml")
    if distributed.is_main():
        render_plot(run, config, per_seed, summary)
        if config.train.tensorboard:
            from clrctl.track.tensorboard import range_test_events

            range_test_events(run.path, summary)
    run.set_status(summary["status"])
    return summary


def _mark_failed(run: RunDir) -> None:
    try:
        run.set_status("failed")
    except Exception:  # noqa: BLE001 - the disk may refuse even that; the free lock says it is dead
        pass


def _interrupted(run: RunDir) -> Interrupted:
    if isinstance(run, RunDir) and run.status() == "completed":  # a signal while its last files were written
        return Interrupted(f"interrupted after the range test completed (its files are complete): {run.path}")
    if holds_no_results(run.path):
        return Interrupted(f"range test interrupted before it started; {run.path} holds no results "
                           f"(a rerun with --run-dir {run.path} reuses it)")
    return Interrupted(f"range test interrupted; partial results in {run.path}")


def _sweep_seeds(config, seed_list, first, run, per_seed, reporter_factory) -> bool:
    """Sweep each seed in turn, appending (seed, result, suggestion); True when interrupted."""
    try:
        for seed in seed_list:
            setup = first if seed == seed_list[0] else prepare(config, seed, first.stage.name)
            many = len(seed_list) > 1
            target = RunDir.create(run.path, "", run.path / "seeds" / f"seed-{seed}") if many else run
            if many:
                target.release()  # (claimed with the run's own directory already)
            result = _sweep_to_csv(setup, target, reporter_factory(seed) if reporter_factory else None)
            if not result.rows and result.stop_reason == "interrupted":
                return True  # before this seed's first step: nothing to summarise
            eval_size = min(config.range_test.eval_size, setup.data.val.num_samples)
            suggestion = suggest_from_rows(result.rows, setup.steps, eval_size)
            per_seed.append((seed, result, suggestion))
            if many:
                target.write_summary(seed_summary(result, suggestion))
            if result.stop_reason == "interrupted":
                return True
    except KeyboardInterrupt:  # between sweeps (building the next seed's data or model)
        return True
    return False


def _sweep_stacked(config, seed_list, setups, run, per_seed, reporter_factory) -> bool:
    """All seeds' sweeps at once (``--vectorize``), into the files :func:`_sweep_seeds` writes."""
    many = len(seed_list) > 1
    targets = []
    for seed in seed_list:
        target = RunDir.create(run.path, "", run.path / "seeds" / f"seed-{seed}") if many else run
        if many:
            target.release()  # (claimed with the run's own directory already)
        targets.append(target)
    logs = [target.csv("metrics.csv", METRIC_COLUMNS) for target in targets]
    counts = [0] * len(logs)

    def writer(i: int):
        def write(row: dict[str, Any]) -> None:
            logs[i].write([row])
            counts[i] += 1
            if counts[i] % FLUSH_EVERY == 0:
                logs[i].flush()
        return write

    try:
        results = sweep_stacked(setups, [writer(i) for i in range(len(logs))],
                                [reporter_factory(s) if reporter_factory else None for s in seed_list])
    finally:
        for log in logs:
            log.close()
    stopped = False
    for seed, setup, target, result in zip(seed_list, setups, targets, results):
        if not result.rows:
            stopped = stopped or result.stop_reason == "interrupted"
            continue
        eval_size = min(config.range_test.eval_size, setup.data.val.num_samples)
        suggestion = suggest_from_rows(result.rows, setup.steps, eval_size)
        per_seed.append((seed, result, suggestion))
        if many:
            target.write_summary(seed_summary(result, suggestion))
        stopped = stopped or result.stop_reason == "interrupted"
    return stopped


def _sweep_to_csv(setup: SweepSetup, target: RunDir, reporter: Optional[Reporter]) -> SweepResult:
    log = target.csv("metrics.csv", METRIC_COLUMNS)
    count = [0]

    def write(row: dict[str, Any]) -> None:
        log.write([row])
        count[0] += 1
        if count[0] % FLUSH_EVERY == 0:
            log.flush()

    try:
        return sweep(setup, on_row=write, reporter=reporter)
    finally:
        log.close()


def run_summary(per_seed: list[tuple[int, SweepResult, dict[str, Any]]], steps_per_epoch: int,
                interrupted: bool = False) -> dict[str, Any]:
    """summary.json: one seed's summary, or the median suggestion over several seeds."""
    results = [r for _, r, _ in per_seed]
    first_seed, first, suggestion = per_seed[0]
    summary = {**seed_summary(first, suggestion), "status": "interrupted" if interrupted else "completed",
               "steps_per_epoch": steps_per_epoch, "epochs": round(first.steps / steps_per_epoch, 4),
               "seeds": [s for s, _, _ in per_seed]}
    if len(per_seed) > 1:
        stops = [r for r in results if r.stop_lr is not None]
        lowest = min(stops, key=lambda r: r.stop_lr) if stops else None
        summary.update(
            steps=sum(r.steps for r in results), elapsed_s=round(sum(r.elapsed_s for r in results), 3),
            stopped_early=bool(stops), stop_reason=lowest.stop_reason if lowest else None,
            stop_lr=lowest.stop_lr if lowest else None,
            best_val_acc=max((a for a in map(best_val_acc, results) if a is not None), default=None),
            suggestion=median_suggestion([s for _, _, s in per_seed]),
            per_seed=[{"seed": seed, "base_lr": s["base_lr"], "max_lr": s["max_lr"], "steps": r.steps,
                       "stop_reason": r.stop_reason, "stop_lr": r.stop_lr, "path": f"seeds/seed-{seed}"}
                      for seed, r, s in per_seed],
        )
    return summary


def median_suggestion(suggestions: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-seed suggestions folded into one: each number the median over seeds."""
    combined = rules.combine(suggestions)
    median, n = combined["median"], len(suggestions)
    base, high = median["base_lr"], median["max_lr"]
    warnings = list(combined["warnings"])
    if base is not None and high is not None and base >= high:
        base = high / rules.BASE_DIVISOR
        warnings.append("median base_lr >= median max_lr: used max_lr/4")
    reasons = sorted({s["reason"] for s in suggestions if s["reason"]})
    candidates = {
        name: {"lr": median[name], "rule": f"{entry['rule']} (median over {n} seeds)",
               "reason": None if median[name] is not None else entry["reason"]}
        for name, entry in suggestions[0]["candidates"].items()
    }
    return {
        "base_lr": base, "max_lr": high,
        "base_rule": f"median over {n} seeds", "max_rule": f"median over {n} seeds",
        "reason": None if high is not None else "; ".join(reasons) or "no seed gave bounds",
        "warnings": warnings + sorted({w for s in suggestions for w in s["warnings"]}),
        "spread_decades": combined["spread_decades"], "candidates": candidates,
    }


def plot_markers(suggestion: dict[str, Any]) -> dict[str, float]:
    """The named LRs a range-test plot marks (those found): the loss minimum and the single-LR rules."""
    return {name: entry["lr"] for name, entry in suggestion["candidates"].items()
            if name in ("loss_min", "steepest", "valley", "min_loss/10") and entry["lr"] is not None}


def render_plot(run: RunDir, config: Config, per_seed, summary: dict[str, Any]) -> None:
    from clrctl.plots.range_test import plot_range_test

    curves = []
    for seed, result, _ in per_seed:
        c = columns(result.rows)
        analysis = rules.loss_analysis(c["lr"], c["loss"])
        curves.append({**c, "label": f"seed {seed}", "zero_phase": analysis["smooth"]})
    suggestion = summary["suggestion"]
    markers = plot_markers(suggestion)
    title = (f"{config.name}: {config.range_test.mode} range test, {config.dataset.name}/{config.model.name}, "
             f"{config.optimizer.name}")
    plot_range_test(run.plots_dir / "range_test.png", curves, suggestion["base_lr"], suggestion["max_lr"],
                    markers, log_x=config.range_test.mode == "exp", title=title)


def sweep_stacked(setups: list, on_rows: list[Callable[[dict[str, Any]], None]],
                  reporters: list[Optional[Reporter]]) -> list[SweepResult]:
    """``range-test --seeds N --vectorize``: one sweep per setup (SweepSetups of the same
    config, one per seed) as :func:`sweep` runs it — its own initialisation and data order,
    the LR common to all, one host sync a step — with one optimizer step of the stacked
    models (:mod:`clrctl.engine.stack`) a step. A seed whose stop rule fires leaves the
    stack; the others sweep on. A :class:`SweepResult` per seed."""
    from clrctl.data.sources import StackedBatches
    from clrctl.engine.stack import ModelStack
    from clrctl.engine.strategy import VectorizedStrategy

    first = setups[0]
    rt, steps = first.config.range_test, first.steps
    k_all = len(setups)
    models = [copy.deepcopy(s.model).train() for s in setups]
    stack = ModelStack(models)
    optimizer = sweep_optimizer(replace(first, model=stack.holder), stack.holder)
    step = VectorizedStrategy(stack).stacked_stepper(first.loss_fn, first.config.train.clip_grad_norm)
    evals = [s.data.val.head(rt.eval_size) if s.data.val is not None else None for s in setups]
    batches = StackedBatches([s.data.train for s in setups])
    reporters = [r or Reporter() for r in reporters]
    active = list(range(k_all))  # the seeds still in the stack, in its order
    rows: list[list[dict[str, Any]]] = [[] for _ in setups]
    stoppers = [_StopRule(rt.smoothing, rt.diverge_factor) for _ in setups]
    reasons: list[Optional[str]] = [None] * k_all
    t0 = time.perf_counter()
    for reporter in reporters:
        reporter.start(steps, 0)
    devices = [first.device] if first.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), _sigterm_as_interrupt():
        try:
            t, epoch = 0, 0
            while t < steps and active:
                for xs, ys in batches.batches(epoch):
                    if t >= steps or not active:
                        break
                    lr = lr_at(t, steps, rt.start_lr, rt.end_lr, rt.mode)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group["lr_mult"]
                    losses, _, _, _ = step(optimizer, xs, ys)
                    values = losses.float().tolist()  # (one host sync a step, as the sweep alone)
                    momentum = current_momentum(optimizer)
                    due = t % rt.eval_every == 0 or t == steps - 1
                    evaluated: Optional[list] = None
                    leaving = []
                    for pos, k in enumerate(active):
                        loss = values[pos]
                        row = {"step": t, "epoch": epoch + 1, "lr": lr, "momentum": momentum, "loss": loss}
                        row["smoothed_loss"], reason = stoppers[k].update(loss)
                        if row["smoothed_loss"] is not None and due and evals[k] is not None:
                            if evaluated is None:
                                evaluated = _evaluate_stack(stack, [evals[j] for j in active], first.loss_fn)
                            row["val_loss"], row["val_acc"] = evaluated[pos]
                        rows[k].append(row)
                        on_rows[k](row)
                        reporters[k].advance(t + 1, lr)
                        if "val_acc" in row or (t + 1) % FLUSH_EVERY == 0 or reason:
                            shown = loss if row["smoothed_loss"] is None else row["smoothed_loss"]
                            reporters[k].metrics(t + 1, shown, row.get("val_acc"))
                        if reason:
                            reasons[k] = reason
                            leaving.append(pos)
                    for pos in reversed(leaving):  # its sweep is over: out of the stack
                        stack.remove(pos, optimizer)
                        batches.remove(pos)
                        del active[pos]
                    t += 1
                epoch += 1
        except KeyboardInterrupt:
            for k in active:
                reasons[k] = "interrupted"
        finally:
            for reporter in reporters:
                reporter.close()
    elapsed = round(time.perf_counter() - t0, 3)
    return [SweepResult(rows[k], len(rows[k]), steps, reasons[k] is not None, reasons[k],
                        rows[k][-1]["lr"] if reasons[k] and rows[k] else None, elapsed) for k in range(k_all)]


def _evaluate_stack(stack, sources: list, loss_fn) -> list[tuple[float, Optional[float]]]:
    from clrctl.engine.stack import evaluate_stack

    stack.copy_out()
    together = evaluate_stack(stack, sources)
    if together is not None:
        return together
    return [evaluate(model, source, loss_fn) for model, source in zip(stack.models, sources)]
