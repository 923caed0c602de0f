"""Numeric helpers on logged series (numpy only: safe for ``compare``, which never imports torch)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from clrctl.config.schema import Config


def moving_average(values: np.ndarray, window: int, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Centered moving average (no lag), shrinking at the edges; NaN/Inf points are skipped,
    so one diverged step does not blank the curve around it.

    ``weights`` (e.g. each step's batch size) weight the points: the mean loss per *sample*,
    so that an epoch's last, tiny batch counts as little as it measures."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or window <= 1:
        return values
    window = min(window, len(values))
    finite = np.isfinite(values)
    w = np.ones(len(values)) if weights is None else np.asarray(weights, dtype=float)
    w = np.where(finite, w, 0.0)
    kernel = np.ones(window)
    num = np.convolve(np.where(finite, values, 0.0) * w, kernel, mode="same")
    den = np.convolve(w, kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def group_lr_traces(lr: np.ndarray, stage_of_step: list[str], lr_mults: dict[str, float],
                    frozen: dict[str, tuple[str, ...]]) -> dict[str, np.ndarray]:
    """Each parameter group's LR per step: ``lr_mult x`` the policy's LR, NaN (no line) where
    the step's stage freezes the group. ``frozen`` maps a stage name to its frozen groups."""
    lr = np.asarray(lr, dtype=float)
    traces = {}
    for name, mult in lr_mults.items():
        off = np.array([name in frozen.get(stage, ()) for stage in stage_of_step], dtype=bool)
        traces[name] = np.where(off, np.nan, lr * mult)
    return traces


def batch_sizes(steps: np.ndarray, steps_per_epoch: int, batch_size: int, num_samples: int) -> np.ndarray:
    """The size of step t's batch when every epoch is ``num_samples`` in batches of
    ``batch_size`` with the last one partial (step t is batch ``t % steps_per_epoch``)."""
    position = np.asarray(steps, dtype=int) % steps_per_epoch
    return np.minimum(batch_size, num_samples - position * batch_size).astype(float)


def robust_limits(values: Sequence[float], *, log: bool, low_pct: float = 1.0, high_pct: float = 99.0,
                  margin: float = 0.1) -> Optional[tuple[float, float]]:
    """Axis limits that hold the ``low_pct``..``high_pct`` percentiles of ``values`` plus a
    ``margin`` of that span on each side (in decades when ``log``), so that a few outliers
    (a near-zero loss of a 3-sample batch) do not set the scale. None when nothing is finite."""
    values = np.asarray(values, dtype=float)
    keep = np.isfinite(values) & ((values > 0) if log else True)
    if not keep.any():
        return None
    lo, hi = np.percentile(values[keep], [low_pct, high_pct])
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    span = (hi - lo) or (abs(hi) if not log and hi else 1.0)  # a flat curve still gets a band
    lo, hi = lo - margin * span, hi + margin * span
    return (10**lo, 10**hi) if log else (lo, hi)


def policy_names(config: "Config") -> str:
    """The policies a run trains with: ``one_cycle``, or one per stage (``fixed + one_cycle``)."""
    return " + ".join(stage.policy.name for stage in config.plan())


def stage_starts(steps, stage_of_row: list[Optional[str]]) -> list[tuple[float, str]]:
    """(first step, name) of each stage, from metrics.csv's stage column."""
    return [(float(step), name) for i, (step, name) in enumerate(zip(steps, stage_of_row))
            if name and (i == 0 or stage_of_row[i - 1] != name)]
