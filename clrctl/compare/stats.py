"""Statistics over seeds and the verdict of one metric (numpy only; seeded, so deterministic).

- A side's value is the **median** over its runs (one bad seed does not move it), with its
  spread (min, max, quartiles).
- The difference candidate - baseline gets a **percentile bootstrap CI**. When both sides
  share seeds, the pairs are resampled together and the statistic is the median of the paired
  differences; otherwise each side is resampled on its own and the statistic is the difference
  of medians. Percentiles are taken without interpolation (``lower``/``higher``), which keeps
  the bounds conservative and exact when censored values (``inf``) are among them.
- The **verdict** judges the improvement ``direction * diff`` against a tolerance: *worse* when
  even the CI's optimistic end is below ``-tol`` (for one run per side, the CI is the point),
  *inconclusive* when the CI straddles ``-tol``, *better* when its pessimistic end is above
  ``+tol``, else *same*. A gate fails only on *worse* (TracerBench's ci bound; rliable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from clrctl.errors import InputError

N_BOOTSTRAP = 4000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Tolerance:
    """``0.01`` (absolute, in the metric's units) or ``2%`` (relative to the baseline)."""

    value: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> "Tolerance":
        raw = text.strip()
        relative = raw.endswith("%")
        try:
            value = float(raw[:-1] if relative else raw)
        except ValueError:
            raise InputError(f"--tolerance {text!r}: expected a number (0.01) or a percentage (2%)") from None
        if not math.isfinite(value) or value < 0:
            raise InputError(f"--tolerance {text!r}: must be a non-negative number")
        return cls(value / 100.0 if relative else value, relative)

    def absolute(self, baseline: float) -> float:
        if not self.relative:
            return self.value
        return self.value * abs(baseline) if math.isfinite(baseline) else 0.0

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


def summarize(values: np.ndarray) -> dict[str, float]:
    """Median and spread of one side's values (``inf`` allowed: a censored run)."""
    values = np.asarray(values, dtype=float)
    if not len(values) or np.isnan(values).all():
        return {"median": math.nan, "min": math.nan, "max": math.nan, "q1": math.nan, "q3": math.nan, "n": len(values)}
    finite_or_inf = values[~np.isnan(values)]
    return {
        "median": _median(finite_or_inf),
        "min": float(np.min(finite_or_inf)),
        "max": float(np.max(finite_or_inf)),
        "q1": float(np.percentile(finite_or_inf, 25, method="lower")),
        "q3": float(np.percentile(finite_or_inf, 75, method="higher")),
        "n": len(values),
    }


def _median(values: np.ndarray) -> float:
    ordered = np.sort(values)
    n = len(ordered)
    if n % 2:
        return float(ordered[n // 2])
    low, high = ordered[n // 2 - 1], ordered[n // 2]
    return float(high) if np.isinf(high) else float((low + high) / 2.0)  # a censored middle stays censored


def subtract(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """``a - b`` where two equal infinities (both censored) differ by 0, not NaN."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    with np.errstate(invalid="ignore"):
        diff = a - b
    diff = np.where(np.isinf(a) & (a == b), 0.0, diff)
    return float(diff) if diff.ndim == 0 else diff


def median_rows(values: np.ndarray) -> np.ndarray:
    """Row-wise median that keeps a censored middle censored (``inf``) instead of NaN."""
    ordered = np.sort(values, axis=-1)
    n = ordered.shape[-1]
    if n % 2:
        return ordered[..., n // 2]
    low, high = ordered[..., n // 2 - 1], ordered[..., n // 2]
    with np.errstate(invalid="ignore"):
        mid = (low + high) / 2.0
    return np.where(np.isinf(high), high, mid)


def diff_of_medians(base: np.ndarray, cand: np.ndarray) -> np.ndarray:
    return subtract(median_rows(cand), median_rows(base))


def median_of_differences(base: np.ndarray, cand: np.ndarray) -> np.ndarray:
    return median_rows(subtract(cand, base))


def bootstrap_ci(
    base: np.ndarray,
    cand: np.ndarray,
    paired: bool,
    statistic: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None,
    n_boot: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(base, cand)`` (row-wise on resampled 2-D arrays)."""
    base, cand = np.asarray(base, dtype=float), np.asarray(cand, dtype=float)
    if statistic is None:
        statistic = median_of_differences if paired else diff_of_medians
    rng = np.random.default_rng(seed)
    if paired:
        if len(base) != len(cand):
            raise ValueError("paired bootstrap needs equal-length samples")
        idx = rng.integers(0, len(base), size=(n_boot, len(base)))
        stats = statistic(base[idx], cand[idx])
    else:
        b_idx = rng.integers(0, len(base), size=(n_boot, len(base)))
        c_idx = rng.integers(0, len(cand), size=(n_boot, len(cand)))
        stats = statistic(base[b_idx], cand[c_idx])
    stats = np.asarray(stats, dtype=float)
    if np.isnan(stats).any():
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    return (
        float(np.percentile(stats, 100 * alpha, method="lower")),
        float(np.percentile(stats, 100 * (1 - alpha), method="higher")),
    )


def verdict(direction: int, low: float, high: float, tolerance: float) -> str:
    """better / worse / same / inconclusive for a difference whose CI is [low, high]."""
    if direction == 0:
        return "-"
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    worst, best = sorted((direction * low, direction * high))  # improvement bounds
    tolerance = tolerance * (1 + 1e-9) + 1e-12  # 0.96 - 0.97 is -0.01000000000000001 in floats
    if best < -tolerance:
        return "worse"
    if worst < -tolerance:
        return "inconclusive"
    if worst > tolerance:
        return "better"
    return "same"
