"""Numeric helpers on logged series (numpy only: safe for ``compare``, which never imports torch)."""

from __future__ import annotations

import numpy as np


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centered moving average (no lag), shrinking at the edges; NaN/Inf points are skipped,
    so one diverged step does not blank the curve around it."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or window <= 1:
        return values
    window = min(window, len(values))
    finite = np.isfinite(values)
    kernel = np.ones(window)
    num = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    den = np.convolve(finite.astype(float), kernel, mode="same")
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
