"""The ``compare --plot`` figure: runs overlaid, drawn from curves computed by
:mod:`clrctl.compare.curves` (a group arrives as a median line with a min–max band)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from clrctl.plots._style import new_figure, save
from clrctl.series import robust_limits

TRAIN_PANELS = (("loss", "train loss (moving avg)"), ("val_acc", "val acc"), ("lr", "learning rate"))


def _label(side) -> str:
    return f"{side.label} (median of {side.n}, min–max band)" if side.n > 1 else side.label


def _colour(i: int, n: int):
    """Matplotlib's 10-colour cycle while it suffices; past 10 sides (a shoot-out) it would
    repeat colours, so tab20's 20 distinct ones."""
    if n <= 10:
        return f"C{i}"
    import matplotlib

    return matplotlib.colormaps["tab20"](i % 20)


def plot_train_overlay(sides: Sequence, path: str | Path, target: Optional[tuple[str, float]] = None,
                       title: Optional[str] = None, acc_ylim: Optional[tuple[float, float]] = None) -> Path:
    """Loss, validation accuracy and LR against optimizer steps, one colour per side."""
    save(train_overlay_figure(sides, target, title, acc_ylim), path)
    return Path(path)


def train_overlay_figure(sides: Sequence, target: Optional[tuple[str, float]] = None, title: Optional[str] = None,
                         acc_ylim: Optional[tuple[float, float]] = None):
    """The figure of :func:`plot_train_overlay` (not saved, so that tests can inspect it);
    ``acc_ylim``: the accuracy panel's range (:func:`clrctl.compare.curves.acc_ylim`)."""
    fig, axes = new_figure(3, 1, sharex=True, figsize=(7.5, 8.5))
    for ax, (key, ylabel) in zip(axes, TRAIN_PANELS):
        for i, side in enumerate(sides):
            curve, colour = side.panels[key], _colour(i, len(sides))
            marker = "o" if key == "val_acc" and len(curve.x) <= 40 else None
            ax.plot(curve.x, curve.y, color=colour, label=_label(side), marker=marker, markersize=3, linewidth=1.2)
            if curve.low is not None:
                ax.fill_between(curve.x, curve.low, curve.high, color=colour, alpha=0.2, linewidth=0)
        ax.set_ylabel(ylabel)
    if target is not None and target[0] == "val_acc":
        axes[1].axhline(target[1], color="gray", linestyle="--", linewidth=1, label=f"target val_acc={target[1]:g}")
        # the target line is not in the top panel's legend: label it where it is drawn
        axes[1].legend(handles=axes[1].get_lines()[-1:], fontsize="small", loc="lower right")
    if acc_ylim is not None:
        axes[1].set_ylim(*acc_ylim)
    _scale_loss_and_lr(axes[0], axes[2], sides)
    axes[0].legend(fontsize="small")
    axes[-1].set_xlabel("optimizer steps")
    if title:
        fig.suptitle(_wrapped(title, 70), fontsize="medium")
    return fig


def _scale_loss_and_lr(loss_ax, lr_ax, sides: Sequence) -> None:
    """The loss axis follows the sides' median lines, not a diverged seed's band (one loss of
    200 would flatten every other curve); LRs that span over 20x (Schedule-Free's 3.0 beside
    AdamW's 0.005) go on a log axis, as the run's own LR plot does."""
    medians = np.concatenate([np.asarray(side.panels["loss"].y, dtype=float) for side in sides] or [np.zeros(0)])
    limits = robust_limits(medians, log=False, low_pct=0.0, high_pct=100.0, margin=0.05)
    if limits is not None:
        loss_ax.set_ylim(max(limits[0], 0.0), limits[1])
    lrs = np.concatenate([np.asarray(side.panels["lr"].y, dtype=float) for side in sides] or [np.zeros(0)])
    positive = lrs[np.isfinite(lrs) & (lrs > 0)]
    if positive.size and positive.max() / positive.min() > 20:
        lr_ax.set_yscale("log")


def plot_range_overlay(curves: Sequence, path: str | Path, log_x: bool, title: Optional[str] = None,
                       ylim: Optional[tuple[float, float]] = None) -> Path:
    """Range tests: smoothed loss against LR (log LR axis for an exponential sweep)."""
    save(range_overlay_figure(curves, log_x, title, ylim), path)
    return Path(path)


def range_overlay_figure(curves: Sequence, log_x: bool, title: Optional[str] = None,
                         ylim: Optional[tuple[float, float]] = None):
    """The figure of :func:`plot_range_overlay` (not saved, so that tests can inspect it);
    ``ylim``: the loss axis (:func:`clrctl.compare.curves.range_ylim`: a spike is clipped)."""
    fig, ax = new_figure()
    for i, side in enumerate(curves):
        curve = side.panels["loss_vs_lr"]
        ax.plot(curve.x, curve.y, color=f"C{i}", label=side.label, linewidth=1.2)
    if log_x:
        ax.set_xscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed loss")
    ax.legend(fontsize="small")
    if title:
        ax.set_title(_wrapped(title, 70), fontsize="medium")
    return fig


def _wrapped(title: str, width: int) -> str:
    """Run names are long: wrap the title between words so that it fits the figure."""
    return "\n".join(textwrap.wrap(title, width, break_long_words=False, break_on_hyphens=False))
