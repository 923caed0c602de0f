"""``plots/range_test.png``: loss (raw, EMA, zero-phase) and val accuracy against the LR,
log x for an exp sweep, the suggested ``[base_lr, max_lr]`` shaded, the named LRs (loss
minimum, steepest, …) as lines with a marker inside the top edge; legends outside, on the
right. Draws what it is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from clrctl.plots._style import new_figure, save

_MARKER_STYLE = {"steepest": ("v", "tab:green"), "valley": ("D", "tab:purple"), "min_loss/10": ("s", "tab:brown"),
                 "loss_min": ("*", "black")}
_MARKER_LABEL = {"loss_min": "loss minimum"}
# Legends sit outside the axes, on the right (constrained layout makes room): never over a curve.
_OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, "fontsize": 7}


def plot_range_test(path: Path, curves: list[dict[str, Any]], base_lr: Optional[float], max_lr: Optional[float],
                    markers: dict[str, float], *, log_x: bool, title: str = "") -> None:
    """``curves``: per seed, arrays ``lr, loss, smoothed_loss, zero_phase`` (per step; ``zero_phase``
    may be None or shorter: the finite prefix) and ``eval_lr, val_acc``, plus a ``label``."""
    save(range_test_figure(curves, base_lr, max_lr, markers, log_x=log_x, title=title), path)


def range_test_figure(curves: list[dict[str, Any]], base_lr: Optional[float], max_lr: Optional[float],
                      markers: dict[str, float], *, log_x: bool, title: str = "", ax=None,
                      pyplot: bool = False):
    """The figure of :func:`plot_range_test` (loss over accuracy), not saved; with ``ax``, only
    the loss panel, drawn there (a notebook's own axes); ``pyplot``: a pyplot figure (for
    ``plt.show()``). Returns the matplotlib Figure."""
    if ax is None:
        fig, (ax_loss, ax_acc) = new_figure(2, 1, sharex=True, pyplot=pyplot)
    else:
        fig, ax_loss, ax_acc = ax.figure, ax, None
    colors = ["tab:blue", "tab:orange", "tab:red", "tab:cyan", "tab:olive"]
    for i, c in enumerate(curves):
        color = colors[i % len(colors)]
        tag = f" ({c['label']})" if len(curves) > 1 else ""
        ax_loss.plot(c["lr"], c["loss"], color=color, alpha=0.2, lw=0.7, label="raw loss" if i == 0 else None)
        ax_loss.plot(c["lr"], c["smoothed_loss"], color=color, ls="--", lw=1.0,
                     label="EMA (debiased; stop rule)" if i == 0 else None)
        if c.get("zero_phase") is not None:
            ax_loss.plot(c["lr"][: len(c["zero_phase"])], c["zero_phase"], color=color, lw=1.8,
                         label=f"zero-phase smoothed{tag}")
        if ax_acc is not None:
            ax_acc.plot(c["eval_lr"], c["val_acc"], "o-", color=color, ms=3, lw=1.2, label=f"val accuracy{tag}")
    _loss_limits(ax_loss, curves)
    for ax in (a for a in (ax_loss, ax_acc) if a is not None):
        if base_lr is not None and max_lr is not None:
            ax.axvspan(base_lr, max_lr, color="tab:green", alpha=0.12)
            ax.axvline(base_lr, color="tab:green", ls=":", lw=1.2)
            ax.axvline(max_lr, color="tab:red", ls=":", lw=1.2)
        if log_x:
            ax.set_xscale("log")
    if base_lr is not None and max_lr is not None:
        (ax_loss if ax_acc is None else ax_acc).plot([], [], color="tab:green", lw=6, alpha=0.3,
                                                     label=f"suggested [{base_lr:.3g}, {max_lr:.3g}]")
    top = ax_loss.get_xaxis_transform()  # x in data, y in axes: a marker just inside the top edge
    for name, lr in markers.items():
        marker, color = _MARKER_STYLE.get(name, ("o", "black"))
        ax_loss.axvline(lr, color=color, ls="-.", lw=0.8, alpha=0.7)
        ax_loss.plot([lr], [0.96], marker, color=color, ms=7 if marker == "*" else 5, transform=top,
                     label=f"{_MARKER_LABEL.get(name, name)}: {lr:.3g}")
    ax_loss.set_ylabel("train loss")
    ax_loss.set_title(title or "LR range test")
    ax_loss.legend(**_OUTSIDE)
    if ax_acc is None:
        ax_loss.set_xlabel("learning rate" + (" (log)" if log_x else ""))
        return fig
    ax_acc.set_ylabel("val accuracy (fixed slice)")
    ax_acc.set_xlabel("learning rate" + (" (log)" if log_x else ""))
    ax_acc.legend(**_OUTSIDE)
    return fig


def _loss_limits(ax, curves: list[dict[str, Any]]) -> None:
    """Keep a diverging tail (loss x 1000) from flattening the interesting part."""
    finite = np.concatenate([np.asarray(c["loss"], float) for c in curves])
    finite = finite[np.isfinite(finite)]
    if len(finite) < 2:
        return
    low = float(finite.min())
    high = float(max(np.asarray(c["loss"], float)[:10][np.isfinite(np.asarray(c["loss"], float)[:10])].max(initial=low)
                     for c in curves))
    span = max(high - low, 1e-12)
    ax.set_ylim(low - 0.05 * span, high + 0.25 * span)
