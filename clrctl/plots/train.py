"""Plots of a training run: ``lr.png``, ``loss.png``, ``accuracy.png`` (drawn from given arrays)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from clrctl.plots._style import new_figure, save
from clrctl.series import robust_limits


def plot_lr(path: Path, steps: Sequence[float], lr: Sequence[float],
            momentum: Optional[Sequence[float]] = None, title: str = "",
            groups: Optional[dict[str, Sequence[float]]] = None,
            stages: Optional[Sequence[tuple[float, str]]] = None) -> None:
    """The policy's LR, or with ``groups`` one line per parameter group (gaps where frozen);
    ``stages``: (first step, name) of each stage, marked by a labelled vertical line."""
    fig, ax = new_figure()
    mark_stages(ax, stages or [])
    if groups:
        for name, trace in groups.items():
            ax.plot(steps, trace, lw=1.5, label=f"lr: {name}")
        finite = [v for trace in groups.values() for v in trace if v == v and v > 0]
        if finite and max(finite) / min(finite) > 20:
            ax.set_yscale("log")
        ax.legend(loc="upper right", fontsize="small")
    else:
        ax.plot(steps, lr, color="tab:blue", lw=1.5, label="learning rate")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate", color="tab:blue")
    if momentum is not None:
        twin = ax.twinx()
        color = "tab:gray" if groups else "tab:orange"  # group lines take the colour cycle
        twin.plot(steps, momentum, color=color, lw=1.0, alpha=0.7, ls="--" if groups else "-", label="momentum")
        twin.set_ylabel("momentum", color=color)
    ax.set_title(title or "Learning-rate schedule")
    save(fig, path)


def mark_stages(ax, stages: Sequence[tuple[float, str]]) -> None:
    """A dotted line where each stage after the first begins; every stage's name at the top
    of the axes, at its first step (axes coordinates in y: whatever the LR scale)."""
    transform = ax.get_xaxis_transform()
    for i, (start, name) in enumerate(stages):
        if i:
            ax.axvline(start, color="gray", ls=":", lw=1.2)
        ax.text(start, 0.98, f" {name}", transform=transform, ha="left", va="top", fontsize="small",
                color="dimgray", bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 1})


def plot_loss(path: Path, steps: Sequence[float], loss: Sequence[float], smoothed: Sequence[float],
              eval_steps: Sequence[float], val_loss: Sequence[float], title: str = "") -> None:
    fig, ax = new_figure()
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="train loss (per step)")
    ax.plot(steps, smoothed, color="tab:blue", lw=1.6, label="train loss (moving average)")
    if len(eval_steps):
        ax.plot(eval_steps, val_loss, "o-", color="tab:red", ms=3, lw=1.2, label="validation loss")
    # The scale follows the smoothed curve and the validation loss, not single steps: a
    # near-zero loss of an epoch's tiny last batch would otherwise push a log axis to 1e-7.
    curve = np.concatenate([np.asarray(smoothed, dtype=float), np.asarray(val_loss, dtype=float)])
    spread = robust_limits(curve, log=True, margin=0.0)
    log = spread is not None and spread[1] / spread[0] > 20
    if log:
        ax.set_yscale("log")
    limits = robust_limits(curve, log=log)
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title or "Loss")
    ax.legend()
    save(fig, path)


def plot_accuracy(path: Path, epoch_steps: Sequence[float], train_acc: Sequence[float],
                  eval_steps: Sequence[float], val_acc: Sequence[float],
                  target: Optional[float] = None, steps_to_target: Optional[int] = None, title: str = "") -> None:
    fig, ax = new_figure()
    if len(epoch_steps):
        ax.plot(epoch_steps, train_acc, "s--", color="tab:blue", ms=4, lw=1, label="train accuracy (epoch)")
    if len(eval_steps):
        ax.plot(eval_steps, val_acc, "o-", color="tab:red", ms=3, lw=1.4, label="validation accuracy")
    if target is not None:
        ax.axhline(target, color="gray", ls=":", label=f"target {target:g}")
    if steps_to_target is not None:
        ax.axvline(steps_to_target, color="green", ls=":", label=f"target reached at step {steps_to_target}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "Accuracy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right")
    save(fig, path)


def plot_schedule(path: Path, steps: Sequence[float], lr: Sequence[float],
                  momentum: Optional[Sequence[float]], title: str,
                  groups: Optional[dict[str, Sequence[float]]] = None,
                  stages: Optional[Sequence[tuple[float, str]]] = None) -> None:
    """``clrctl preview``: the same picture as ``lr.png``, before any training."""
    plot_lr(path, steps, lr, momentum, title, groups, stages)
