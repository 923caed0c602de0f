"""Shared matplotlib setup: a headless backend and one look for every figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402

DPI = 120
FIGSIZE = (7.5, 4.2)


def new_figure(nrows: int = 1, ncols: int = 1, **kwargs):
    kwargs.setdefault("figsize", (FIGSIZE[0] * (1 if ncols == 1 else 0.75 * ncols), FIGSIZE[1] * nrows))
    fig, axes = plt.subplots(nrows, ncols, constrained_layout=True, **kwargs)
    return fig, axes


def save(fig, path) -> None:
    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
