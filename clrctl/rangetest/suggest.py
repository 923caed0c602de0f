"""Suggestion rules of the LR range test: pure numpy, no torch, no plotting.

Input is what a sweep recorded (``metrics.csv``): the LR and *raw* loss of every step, the
debiased EMA of the loss, and ``val_acc`` at the evaluation steps. Output is plain data for
``summary.json["suggestion"]``; every number carries the rule that produced it, and a rule
that finds no usable signal says why and gives ``None`` instead of inventing a value.

Rules (see docs/range-test.md):

- **Bounds, Smith's criterion** (CLR paper, arXiv 1506.01186, §3.3): ``base_lr`` where
  accuracy starts to rise (10 % of its total rise, sustained); ``max_lr`` where accuracy
  stops improving: the last evaluation before it first falls out of a noise band below its
  running best (the "ragged / falls" point), capped by the LR at the minimum of the loss.
  Cross-checked against ``base_lr = max_lr / 3 .. 4`` (the paper's alternative); when the
  onset is implausibly far from ``max_lr`` the ``max_lr / 4`` rule is used instead.
- **Single LRs**, as the peers report them: steepest descent of the loss against log LR
  on a zero-phase (Savitzky–Golay) smoothed raw loss, so without the EMA's lag, searched
  only before the loss minimum; fastai's "valley" (exactly fastai's algorithm, on the
  EMA like fastai); and the LR at the loss minimum divided by 10 (fastai "minimum").
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from clrctl.text import count

# Savitzky–Golay window as a share of the recorded steps (odd, >= 5) and polynomial order.
SG_FRACTION = 0.1
SG_ORDER = 2
# A loss descent counts only when larger than this many robust noise sigmas of the raw loss.
DESCENT_SIGMAS = 3.0
# The steepest point is searched where the smoothed loss has made less than this share of its drop.
DESCENT_SHARE = 0.9
# Accuracy onset: the sustained crossing of this share of the accuracy's total rise.
ONSET_SHARE = 0.1
# "Falls / ragged" is only looked for once accuracy has made this share of its rise.
PLATEAU_SHARE = 0.9
# Noise band of accuracy on the fixed slice: 3 binomial sigmas, at least 2 points.
ACC_SIGMAS, ACC_MIN_BAND = 3.0, 0.02
# base_lr by the onset is kept when max_lr / onset lies here (Smith: 3-4x; CIFAR example 6x).
ONSET_RATIO = (2.0, 8.0)
BASE_DIVISOR = 4.0  # otherwise base_lr = max_lr / 4 (paper: max_lr / 3 or / 4)
SPREAD_WARN_DECADES = 0.5

RULES = {
    "accuracy_onset": "first LR of the sustained rise of val accuracy past 10% of its total rise (Smith §3.3)",
    "accuracy_falls": "last LR before val accuracy first falls out of its noise band below its running best, "
                      "once it has made 90% of its rise (Smith §3.3: slows / ragged / falls)",
    "accuracy_peak": "LR at the peak of the (centered) smoothed val accuracy",
    "loss_min": "LR at the minimum of the zero-phase (Savitzky-Golay) smoothed raw loss",
    "max_lr/3": "max_lr / 3 (Smith's alternative rule for base_lr)",
    "max_lr/4": "max_lr / 4 (Smith's alternative rule for base_lr)",
    "steepest": "argmin d loss / d ln(lr) of the zero-phase (Savitzky-Golay) smoothed raw loss, "
                "within its main descent (before 90% of the drop to its minimum; no EMA lag)",
    "valley": "fastai 'valley': about 2/3 down the longest decreasing run of the EMA loss (skips first 10%, last 5)",
    "min_loss/10": "LR at the minimum of the zero-phase smoothed loss, divided by 10 (fastai 'minimum')",
}


def entry(rule: str, lr: Optional[float], reason: Optional[str] = None) -> dict[str, Any]:
    """One named number: ``{"lr", "rule", "reason"}`` (reason only when lr is None)."""
    lr = None if lr is None or not math.isfinite(lr) else float(lr)
    return {"lr": lr, "rule": RULES[rule], "reason": reason if lr is None else None}


# ---------------------------------------------------------------------------------------
# Smoothing


def ema_debiased(values: np.ndarray, beta: float) -> np.ndarray:
    """fastai's AvgSmoothLoss: ``v = beta v + (1-beta) x``, divided by ``1 - beta^(i+1)``.

    The counter ``i`` is local to the sweep (Lightning's off-by-one is the global step)."""
    out = np.empty(len(values))
    avg = 0.0
    for i, x in enumerate(np.asarray(values, dtype=float)):
        avg = beta * avg + (1.0 - beta) * x
        out[i] = avg / (1.0 - beta ** (i + 1))
    return out


def savgol(values: np.ndarray, window: int, order: int = SG_ORDER) -> np.ndarray:
    """Savitzky–Golay smoothing (zero phase, no lag) in numpy; edges by a polynomial fit of
    the first / last window (as scipy's ``mode="interp"``)."""
    y = np.asarray(values, dtype=float)
    n = len(y)
    window = min(window, n if n % 2 else n - 1)
    if window <= order + 1:
        return y.copy()
    half = window // 2
    offsets = np.arange(-half, half + 1)
    design = np.vander(offsets, order + 1, increasing=True)
    coeffs = np.linalg.pinv(design)[0]
    out = np.convolve(y, coeffs[::-1], mode="same")
    x = np.arange(window)
    for part, at in ((slice(0, window), np.arange(half)), (slice(n - window, n), np.arange(window - half, window))):
        fit = np.polyfit(x, y[part], order)
        out[part.start + at] = np.polyval(fit, at)
    return out


def sg_window(n: int) -> int:
    window = max(5, int(round(n * SG_FRACTION)))
    return window if window % 2 else window + 1


def centered_mean(values: np.ndarray, window: int = 3) -> np.ndarray:
    """Centered moving average (zero phase) that shrinks at the edges."""
    values = np.asarray(values, dtype=float)
    kernel = np.ones(window)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones(len(values)), kernel, "same")


def finite_prefix(*arrays: np.ndarray) -> int:
    """Length of the leading stretch where every array is finite (cut at the first NaN/Inf)."""
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(np.asarray(a, dtype=float))
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if len(bad) else len(ok)


# ---------------------------------------------------------------------------------------
# Loss rules


def loss_analysis(lr: np.ndarray, loss: np.ndarray) -> dict[str, Any]:
    """Zero-phase smoothed loss, its minimum, the steepest point before it, or why not."""
    n = finite_prefix(lr, loss)
    lr, loss = np.asarray(lr, float)[:n], np.asarray(loss, float)[:n]
    out: dict[str, Any] = {"n": n, "smooth": None, "min_i": None, "steepest_i": None, "reason": None}
    if n < 8:
        out["reason"] = f"only {count(n, 'finite loss value')} (need 8)"
        return out
    window = sg_window(n)
    # Loss above anything seen in the first window means "diverging"; clipping it there keeps
    # one exploding step (1e3 x) from bending the polynomial fit of its neighbours.
    loss = np.minimum(loss, loss[:window].max())
    smooth = savgol(loss, window)
    min_i = int(np.argmin(smooth))
    noise = 1.4826 * float(np.median(np.abs(loss - smooth)))  # robust sigma of the raw loss
    descent = float(smooth[0] - smooth[min_i])
    scale = max(abs(float(smooth[0])), abs(float(smooth[min_i])), 1e-12)
    out.update(smooth=smooth, min_i=min_i, noise=noise, descent=descent)
    if min_i < 2:
        out["reason"] = "the loss never fell below its starting value"
    elif descent <= max(DESCENT_SIGMAS * noise, 1e-3 * scale):
        out["reason"] = (f"no usable descent: the smoothed loss falls by {descent:.3g}, "
                         f"within {DESCENT_SIGMAS:g} noise sigmas ({DESCENT_SIGMAS * noise:.3g})")
    else:
        # Search the main descent only: up to where the loss has made 90% of its drop. A late
        # wiggle on a noisy plateau can be as steep per unit of ln(lr) (linear sweeps above all).
        end = int(np.flatnonzero(smooth <= smooth[0] - DESCENT_SHARE * descent)[0])
        slope = np.gradient(smooth[: end + 1], np.log(lr[: end + 1]))
        out["steepest_i"] = int(np.argmin(slope))
    return out


def valley_index(losses: np.ndarray) -> int:
    """fastai's ``valley`` on the given (already cut) losses: index into ``losses``.

    ``lds[i]`` is the longest strictly decreasing subsequence ending at ``i``; the suggestion
    sits ``floor(s) + floor(s/2)`` past the start of the longest one, ``s`` = its length / 3.
    """
    losses = np.asarray(losses, dtype=float)
    n = len(losses)
    lds = np.ones(n, dtype=int)
    for i in range(1, n):
        earlier = lds[:i][losses[:i] > losses[i]]
        if len(earlier):
            lds[i] = earlier.max() + 1
    max_end = int(np.argmax(lds))
    max_start = max_end - int(lds[max_end]) if max_end else 0  # fastai only sets it on a new max
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def valley(lr: np.ndarray, ema: np.ndarray, planned_steps: int) -> tuple[Optional[float], Optional[str]]:
    n = finite_prefix(lr, ema)
    lo, hi = planned_steps // 10, n - 5
    if hi - lo < 3:
        return None, f"too few finite points after fastai's cut ([{lo}:{n}-5])"
    return float(lr[lo + max(valley_index(ema[lo:hi]), 0)]), None  # fastai would wrap -1 to the end


# ---------------------------------------------------------------------------------------
# Accuracy rules (Smith)


def accuracy_analysis(eval_lr: np.ndarray, acc: np.ndarray, eval_size: int) -> dict[str, Any]:
    """Onset, first fall (ragged) and peak of val accuracy over the evaluation points."""
    n = finite_prefix(eval_lr, acc)
    eval_lr, acc = np.asarray(eval_lr, float)[:n], np.asarray(acc, float)[:n]
    out: dict[str, Any] = {"onset": None, "falls": None, "peak": None, "reason": None}
    if n < 4:
        out["reason"] = f"only {count(n, 'accuracy evaluation')} (need 4; lower range_test.eval_every)"
        return out
    smooth = centered_mean(acc)
    peak_i = int(np.argmax(smooth))
    start, rise = float(smooth[0]), float(smooth[peak_i] - smooth[0])
    p = float(np.clip(smooth[peak_i], 0.0, 1.0))
    band = max(ACC_SIGMAS * math.sqrt(p * (1 - p) / max(eval_size, 1)), ACC_MIN_BAND)
    out["band"] = band
    if rise <= band:
        out["reason"] = f"val accuracy never rose by more than its noise band ({band:.3f})"
        return out
    # Onset on the raw values: a centered mean would leak the coming rise one point back.
    below = np.flatnonzero(acc[:peak_i] < start + ONSET_SHARE * rise)
    onset_i = int(below[-1]) + 1 if len(below) else 0
    plateau_i = int(np.flatnonzero(smooth >= start + PLATEAU_SHARE * rise)[0])
    best = np.maximum.accumulate(acc[plateau_i:])
    dropped = np.flatnonzero(acc[plateau_i:] < best - band)
    falls_i = plateau_i + int(dropped[0]) - 1 if len(dropped) else None
    out.update(onset=float(eval_lr[onset_i]), peak=float(eval_lr[peak_i]),
               falls=None if falls_i is None else float(eval_lr[max(falls_i, onset_i)]))
    return out


# ---------------------------------------------------------------------------------------
# Putting it together


def suggest(
    lr: np.ndarray,
    loss: np.ndarray,
    ema: np.ndarray,
    eval_lr: np.ndarray,
    val_acc: np.ndarray,
    *,
    eval_size: int,
    planned_steps: int,
) -> dict[str, Any]:
    """Everything ``summary.json["suggestion"]`` holds, from one sweep's raw records.

    ``lr``/``loss``/``ema`` are per step; ``eval_lr``/``val_acc`` per evaluation.
    """
    lr, loss, ema = (np.asarray(a, dtype=float) for a in (lr, loss, ema))
    la = loss_analysis(lr, loss)
    aa = accuracy_analysis(np.asarray(eval_lr, float), np.asarray(val_acc, float), eval_size)
    loss_reason = la["reason"]
    loss_min = None if la["min_i"] is None or loss_reason else float(lr[la["min_i"]])
    steepest = None if la["steepest_i"] is None else float(lr[la["steepest_i"]])
    valley_lr, valley_reason = valley(lr, ema, planned_steps)
    if loss_reason:  # a curve without a descent has no valley either
        valley_lr, valley_reason = None, loss_reason
    candidates = {
        "accuracy_onset": entry("accuracy_onset", aa["onset"], aa["reason"]),
        "accuracy_falls": entry("accuracy_falls", aa["falls"], aa["reason"] or
                                "val accuracy did not fall before the sweep ended (raise range_test.end_lr)"),
        "accuracy_peak": entry("accuracy_peak", aa["peak"], aa["reason"]),
        "loss_min": entry("loss_min", loss_min, loss_reason),
        "steepest": entry("steepest", steepest, loss_reason),
        "valley": entry("valley", valley_lr, valley_reason),
        "min_loss/10": entry("min_loss/10", None if loss_min is None else loss_min / 10, loss_reason),
    }
    bounds = choose_bounds(candidates)
    for name, div in (("max_lr/3", 3.0), ("max_lr/4", 4.0)):
        candidates[name] = entry(name, None if bounds["max_lr"] is None else bounds["max_lr"] / div,
                                 "no max_lr")
    return {**bounds, "candidates": candidates}


def choose_bounds(c: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``base_lr``/``max_lr`` and the rule behind each, from the named candidates."""
    signals = [(c["accuracy_falls"]["lr"], "accuracy_falls"), (c["loss_min"]["lr"], "loss_min")]
    signals = [(v, k) for v, k in signals if v is not None]
    if not signals and c["accuracy_peak"]["lr"] is not None:
        signals = [(c["accuracy_peak"]["lr"], "accuracy_peak")]
    if not signals:
        reason = c["accuracy_onset"]["reason"] or c["loss_min"]["reason"] or "no signal"
        return {"base_lr": None, "max_lr": None, "base_rule": None, "max_rule": None,
                "reason": f"no bounds: {reason}", "warnings": []}
    max_lr, max_rule = min(signals)  # the earliest sign that the LR stopped helping
    onset = c["accuracy_onset"]["lr"]
    warnings = []
    if c["accuracy_falls"]["lr"] is None and c["accuracy_onset"]["lr"] is not None:
        warnings.append("val accuracy did not fall before the sweep ended: max_lr may be low; raise end_lr")
    if onset is not None and ONSET_RATIO[0] <= max_lr / onset <= ONSET_RATIO[1]:
        base_lr, base_rule = onset, "accuracy_onset"
    else:
        base_lr, base_rule = max_lr / BASE_DIVISOR, "max_lr/4"
        if onset is not None:
            warnings.append(f"accuracy onset {onset:.3g} is {max_lr / onset:.1f}x below max_lr "
                            f"(outside {ONSET_RATIO[0]:g}-{ONSET_RATIO[1]:g}x): used max_lr/4")
    return {"base_lr": base_lr, "max_lr": max_lr, "base_rule": base_rule, "max_rule": max_rule,
            "reason": None, "warnings": warnings}


# ---------------------------------------------------------------------------------------
# Several seeds


def combine(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each suggestion over seeds and its spread in decades (log10 max / min)."""
    keys = ["base_lr", "max_lr"] + list(per_seed[0]["candidates"]) if per_seed else []
    median: dict[str, Optional[float]] = {}
    spread: dict[str, Optional[float]] = {}
    for key in keys:
        values = [s[key] if key in ("base_lr", "max_lr") else s["candidates"][key]["lr"] for s in per_seed]
        values = [v for v in values if v is not None and v > 0]
        median[key] = float(np.median(values)) if values else None
        spread[key] = float(np.log10(max(values) / min(values))) if len(values) > 1 else None
    warnings = [f"{key} varies by {spread[key]:.2f} decades across seeds (> {SPREAD_WARN_DECADES})"
                for key in ("base_lr", "max_lr", "steepest", "valley") if (spread.get(key) or 0) > SPREAD_WARN_DECADES]
    return {"median": median, "spread_decades": spread, "warnings": warnings}
