"""Per-run scalars that ``compare`` judges, derived from a run's CSV and JSON files.

- **steps to target** (Smith 2017's headline measure): the number of optimizer steps done when
  the target was first observed, i.e. ``step + 1`` of the first ``metrics.csv`` row whose
  ``val_acc >= target`` (``<=`` for a loss). A run that never gets there is *censored*: its value
  is ``inf`` and it shows as ``>N`` (N = its steps), never dropped.
- **AUC of val acc**: the mean validation accuracy over the step budget all runs share,
  ``(1/B) * integral_0^B acc(s) ds``, with ``acc`` linear between evaluations and held constant
  before the first and after the last one. It measures "anytime" accuracy, which cyclical
  schedules trade against final accuracy.
- final / best val acc, final val loss, steps, epochs, elapsed: from ``summary.json``, falling
  back to the CSVs when a value is missing.

A missing value is NaN here; :mod:`.stats` decides how to judge it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from clrctl.compare.runs import Run
from clrctl.config.schema import TARGET_METRICS
from clrctl.errors import InputError
from clrctl.rangetest.suggest import loss_analysis

HIGHER, LOWER, NEUTRAL = 1, -1, 0  # direction: which way is better


@dataclass(frozen=True)
class Metric:
    name: str
    title: str
    direction: int
    unit: str  # acc | loss | steps | count | seconds | lr: how to format it
    tolerance: str  # the default tolerance of its verdict ("0.005" absolute or "5%" relative)


# The one place that defines the metrics, their direction and their default tolerance.
TRAIN_METRICS = {
    m.name: m
    for m in (
        Metric("steps", "steps", NEUTRAL, "count", "0"),
        Metric("epochs", "epochs", NEUTRAL, "count", "0"),
        Metric("final_val_acc", "final val acc", HIGHER, "acc", "0.005"),
        Metric("best_val_acc", "best val acc", HIGHER, "acc", "0.005"),
        Metric("final_val_loss", "final val loss", LOWER, "loss", "5%"),
        Metric("steps_to_target", "steps to target", LOWER, "steps", "5%"),
        Metric("auc_val_acc", "AUC val acc", HIGHER, "acc", "0.005"),
        Metric("elapsed_s", "elapsed", LOWER, "seconds", "20%"),
        # averaged weights and snapshot ensembles (summary.json; shown only where a run has them)
        Metric("ensemble_val_acc", "snapshot ensemble val acc", HIGHER, "acc", "0.005"),
        Metric("swa_val_acc", "SWA val acc", HIGHER, "acc", "0.005"),
        Metric("final_ema_val_acc", "final EMA val acc", HIGHER, "acc", "0.005"),
    )
}
RANGE_METRICS = {
    m.name: m
    for m in (
        Metric("base_lr", "suggested base_lr", NEUTRAL, "lr", "0"),
        Metric("max_lr", "suggested max_lr", NEUTRAL, "lr", "0"),
        Metric("min_loss", "min smoothed loss", NEUTRAL, "loss", "0"),  # sweeps differ: no verdict
        # the range test's loss_min rule (clrctl.rangetest.suggest), not the lagging EMA's minimum
        Metric("lr_at_min_loss", "LR at min loss", NEUTRAL, "lr", "0"),
        Metric("steps", "steps", NEUTRAL, "count", "0"),
        # a multi-seed range test (range-test --seeds N): how far its seeds' suggestions spread
        Metric("sweep_seeds", "seeds swept", NEUTRAL, "count", "0"),
        Metric("base_lr_spread", "base_lr spread over seeds", NEUTRAL, "decades", "0"),
        Metric("max_lr_spread", "max_lr spread over seeds", NEUTRAL, "decades", "0"),
    )
}
GATE_METRICS = tuple(name for name, m in TRAIN_METRICS.items() if m.direction != NEUTRAL)


@dataclass(frozen=True)
class Target:
    metric: str  # val_acc | val_loss
    value: float

    @property
    def direction(self) -> int:
        return LOWER if self.metric.endswith("loss") else HIGHER

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g}"


def parse_target(text: str) -> Target:
    """``"val_acc=0.97"`` -> Target("val_acc", 0.97)."""
    metric, sep, raw = text.partition("=")
    metric = metric.strip()
    if not sep or metric not in TARGET_METRICS:
        raise InputError(f"--target {text!r}: expected METRIC=VALUE with METRIC one of {', '.join(TARGET_METRICS)}")
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"--target {text!r}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"--target {text!r}: the value must be finite")
    return Target(metric, value)


def target_from_run(run: Run) -> Optional[Target]:
    """The target a run was trained with: ``train.target`` in its config, else its summary's."""
    for configured in ((run.config.get("train") or {}).get("target"), run.summary.get("target")):
        if isinstance(configured, dict) and configured:
            metric, value = next(iter(configured.items()))
            if metric in TARGET_METRICS and isinstance(value, (int, float)) and not isinstance(value, bool):
                return Target(metric, float(value))
    recorded = run.summary.get("steps_to_target")
    if isinstance(recorded, dict):
        for metric, entry in recorded.items():
            if metric in TARGET_METRICS and isinstance(entry, dict) and isinstance(entry.get("target"), (int, float)):
                return Target(metric, float(entry["target"]))
    return None


def eval_points(run: Run, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps done, value) at each evaluation: x = ``step + 1`` of the rows where ``column`` is set."""
    values = run.metrics.get(column)
    steps = run.metrics.get("step")
    if values is None or steps is None:
        return np.empty(0), np.empty(0)
    keep = np.isfinite(values)
    return steps[keep] + 1.0, values[keep]


def steps_to_target(run: Run, target: Optional[Target]) -> float:
    """Optimizer steps done when ``target`` was first observed; ``inf`` if never (censored)."""
    if target is None:
        return _recorded_steps_to_target(run.summary.get("steps_to_target"))
    if target.metric not in run.metrics:
        return math.nan
    x, y = eval_points(run, target.metric)
    hit = y >= target.value if target.direction == HIGHER else y <= target.value
    return float(x[np.argmax(hit)]) if hit.any() else math.inf


def _recorded_steps_to_target(recorded: Any) -> float:
    if isinstance(recorded, bool):
        return math.nan
    if isinstance(recorded, (int, float)):
        return float(recorded)
    if isinstance(recorded, dict):
        for entry in recorded.values():
            step = entry.get("step") if isinstance(entry, dict) else entry
            if isinstance(step, (int, float)) and not isinstance(step, bool):
                return float(step)
            return math.inf if isinstance(entry, dict) and "target" in entry else math.nan
    return math.nan


def auc(run: Run, budget: float, column: str = "val_acc") -> float:
    """Mean of ``column`` over steps [0, budget] (trapezoid rule; see the module docstring)."""
    x, y = eval_points(run, column)
    if not len(x) or not budget or not math.isfinite(budget) or budget <= 0:
        return math.nan
    grid = np.concatenate(([0.0], x[x < budget], [float(budget)]))
    values = np.interp(grid, x, y)
    return float(np.sum((values[1:] + values[:-1]) * np.diff(grid)) / 2.0 / budget)


def run_steps(run: Run) -> float:
    value = _number(run.summary.get("steps"))
    if math.isnan(value) and "step" in run.metrics and len(run.metrics["step"]):
        value = float(np.nanmax(run.metrics["step"]) + 1)
    return value


def train_scalars(run: Run, target: Optional[Target], budget: float) -> dict[str, float]:
    """Every :data:`TRAIN_METRICS` value of one run (NaN where unknown)."""
    acc_x, acc = eval_points(run, "val_acc")
    _, loss = eval_points(run, "val_loss")
    return {
        "steps": run_steps(run),
        "epochs": _first(run.summary.get("epochs"), _last(run.epochs.get("epoch"))),
        "final_val_acc": _first(run.summary.get("final_val_acc"), _last(acc)),
        "best_val_acc": _first(run.summary.get("best_val_acc"), float(np.max(acc)) if len(acc) else math.nan),
        "final_val_loss": _first(run.summary.get("final_val_loss"), _last(loss)),
        "steps_to_target": steps_to_target(run, target),
        "auc_val_acc": auc(run, budget),
        "elapsed_s": _first(run.summary.get("elapsed_s"), _last(run.epochs.get("elapsed_s"))),
        "ensemble_val_acc": _number(run.summary.get("ensemble_val_acc")),
        "swa_val_acc": _number(run.summary.get("swa_val_acc")),
        "final_ema_val_acc": _first(run.summary.get("final_ema_val_acc"), _last(run.epochs.get("ema_val_acc"))),
    }


def range_scalars(run: Run) -> dict[str, float]:
    """Every :data:`RANGE_METRICS` value of one range test.

    A multi-seed range test is judged by its median suggestion (from ``summary.json``) and
    its spread in decades; the loss minimum and its LR are medians over the seeds' sweeps."""
    suggestion = run.summary.get("suggestion") or {}
    spread = suggestion.get("spread_decades") if isinstance(suggestion.get("spread_decades"), dict) else {}
    minima = [_loss_minimum(metrics) for _, metrics in run.sweeps or [(None, run.metrics)]]
    per_seed = run.summary.get("per_seed")
    steps = [_number(e.get("steps")) for e in per_seed if isinstance(e, dict)] if isinstance(per_seed, list) else []
    return {
        "base_lr": _number(suggestion.get("base_lr")),
        "max_lr": _number(suggestion.get("max_lr")),
        "min_loss": _nanmedian([loss for loss, _ in minima]),
        "lr_at_min_loss": _nanmedian([lr for _, lr in minima]),
        # steps of one sweep (the top-level summary of N seeds counts all N sweeps' steps)
        "steps": _nanmedian(steps) if steps else run_steps(run),
        "sweep_seeds": float(len(run.sweeps)) if run.sweeps else math.nan,
        "base_lr_spread": _number(spread.get("base_lr")),
        "max_lr_spread": _number(spread.get("max_lr")),
    }


def _loss_minimum(metrics: dict[str, np.ndarray]) -> tuple[float, float]:
    """(minimum of the smoothed loss, the LR where it occurs) of one sweep, by the range test's
    own rule (:func:`clrctl.rangetest.suggest.loss_analysis`: zero-phase smoothing of the raw loss, no EMA
    lag), so that compare and ``range-test`` report the same LR. NaN when it finds no minimum."""
    loss, lr = metrics.get("loss"), metrics.get("lr")
    if loss is None or lr is None:
        return math.nan, math.nan
    analysis = loss_analysis(lr, loss)
    if analysis["smooth"] is None:
        return math.nan, math.nan
    at = analysis["min_i"]
    # without a usable descent the range test suggests no loss_min LR: neither does compare
    lr_at = math.nan if analysis["reason"] else float(lr[at])
    return float(analysis["smooth"][at]), lr_at


def _nanmedian(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.median(finite)) if finite else math.nan


def shared_budget(runs: list[Run]) -> float:
    """The step budget every run has: the fewest steps any of them did."""
    steps = [s for s in (run_steps(run) for run in runs) if math.isfinite(s)]
    return float(min(steps)) if steps else math.nan


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _first(value: Any, fallback: float) -> float:
    number = _number(value)
    return number if math.isfinite(number) else fallback


def _last(values: Optional[np.ndarray]) -> float:
    if values is None:
        return math.nan
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if len(finite) else math.nan
