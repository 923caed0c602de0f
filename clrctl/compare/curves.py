"""Curves for the overlay plot, computed here so that the plot only draws (STYLE.md, rule 3).

Train runs: training loss (a centered moving average, raw loss stays in the CSV), validation
accuracy at each evaluation and the LR, against optimizer steps done. A group is drawn as the
median over its runs with a min–max band, on the first run's steps, up to the steps every run
of the group has. Range tests: smoothed loss against LR, one line per run (and per seed of a
multi-seed range test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from clrctl.compare.metrics import eval_points
from clrctl.compare.runs import Run, Side
from clrctl.series import moving_average

LOSS_POINTS = 100  # the loss moving average spans about 1/LOSS_POINTS of the run


@dataclass
class Curve:
    """One line to draw: ``y`` against ``x``; ``low``/``high`` is the band of a group (or None)."""

    x: np.ndarray
    y: np.ndarray
    low: Optional[np.ndarray] = None
    high: Optional[np.ndarray] = None


@dataclass
class SideCurves:
    label: str
    n: int
    panels: dict[str, Curve]  # "loss", "val_acc", "lr" for train; "loss_vs_lr" for range tests


def _run_series(run: Run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    steps = run.metrics.get("step", np.empty(0)) + 1.0
    loss = run.metrics.get("loss", np.full(len(steps), np.nan))
    window = max(1, len(loss) // LOSS_POINTS)
    return {
        "loss": (steps, moving_average(loss, window)),
        "val_acc": eval_points(run, "val_acc"),
        "lr": (steps, run.metrics.get("lr", np.full(len(steps), np.nan))),
    }


def aggregate(series: list[tuple[np.ndarray, np.ndarray]]) -> Curve:
    """Median and min–max of several (x, y) series on the first one's x grid."""
    if len(series) == 1:
        return Curve(*series[0])
    reach = min((x[-1] for x, _ in series if len(x)), default=0.0)
    grid = series[0][0]
    grid = grid[grid <= reach]
    stacked = np.vstack([np.interp(grid, x, y) if len(x) else np.full(len(grid), np.nan) for x, y in series])
    with np.errstate(all="ignore"):
        return Curve(grid, np.median(stacked, axis=0), np.min(stacked, axis=0), np.max(stacked, axis=0))


def train_curves(side: Side) -> SideCurves:
    per_run = [_run_series(run) for run in side.runs]
    panels = {name: aggregate([series[name] for series in per_run]) for name in ("loss", "val_acc", "lr")}
    return SideCurves(side.label, len(side.runs), panels)


def range_curves(side: Side) -> list[SideCurves]:
    out = []
    for i, run in enumerate(side.runs):
        sweeps = run.sweeps or [(run.seed, run.metrics)]
        for seed, metrics in sweeps:
            loss = metrics.get("smoothed_loss", metrics.get("loss"))
            lr = metrics.get("lr")
            if loss is None or lr is None:
                continue
            label = side.label if i == 0 else f"{side.label} ({i + 1})"
            if len(sweeps) > 1:
                label += f" seed {seed}"
            out.append(SideCurves(label, 1, {"loss_vs_lr": Curve(lr, loss)}))
    return out


def range_log_x(sides: list[Side]) -> bool:
    """Log LR axis when any range test swept exponentially (``range_test.mode: exp``)."""
    return any((run.config.get("range_test") or {}).get("mode") == "exp" for side in sides for run in side.runs)


# -- axis ranges (computed here, drawn by clrctl.plots.compare) ------------------------------------
CLIP_PERCENTILE = 95  # a range test's divergence spike is a few steps: above this, off the axis
ACC_ZOOM_PERCENTILE = 25  # val acc: the first evaluations (near chance) may fall below the axis


def range_ylim(curves: list[SideCurves]) -> Optional[tuple[float, float]]:
    """Loss axis of the range-test overlay: from the lowest loss to the 95th percentile of the
    finite losses (at least every curve's starting loss), so one divergence spike does not
    flatten the curves; None (autoscale) when nothing sticks out."""
    ys = [c.panels["loss_vs_lr"].y[np.isfinite(c.panels["loss_vs_lr"].y)] for c in curves]
    ys = [y for y in ys if len(y)]
    if not ys:
        return None
    every = np.concatenate(ys)
    high = max(float(np.percentile(every, CLIP_PERCENTILE)), max(float(y[0]) for y in ys))
    low = float(every.min())
    if every.max() <= high or high <= low:
        return None
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def acc_ylim(sides: list[SideCurves], target: Optional[float]) -> Optional[tuple[float, float]]:
    """Val acc axis of the train overlay: zoomed on where the runs spend most evaluations and on
    the target (the region a comparison is about), not stretched down to chance level."""
    parts = []
    for side in sides:
        curve = side.panels["val_acc"]
        parts += [a[np.isfinite(a)] for a in (curve.y, curve.low, curve.high) if a is not None]
    values = np.concatenate(parts) if parts else np.empty(0)
    if not len(values):
        return None
    low = float(np.percentile(values, ACC_ZOOM_PERCENTILE))
    high = float(values.max())
    if target is not None:
        low, high = min(low, target - 0.02), max(high, target)
    pad = 0.05 * max(high - low, 0.01)
    return max(0.0, low - pad), high + pad
