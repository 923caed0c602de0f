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
