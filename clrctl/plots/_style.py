"""Shared matplotlib setup: headless figures and one look for every figure.

Figures are plain ``Figure`` objects on an Agg canvas, not pyplot figures: no pyplot import
(part of every run's start-up), no figure manager, nothing to close. ``pyplot=True`` makes
a pyplot figure instead, for figures handed to a user (a notebook's ``plt.show()``).
"""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 120
FIGSIZE = (7.5, 4.2)


def new_figure(nrows: int = 1, ncols: int = 1, *, pyplot: bool = False, **kwargs):
    """(figure, axes) as ``plt.subplots(nrows, ncols, **kwargs)`` gives them, constrained layout."""
    kwargs.setdefault("figsize", (FIGSIZE[0] * (1 if ncols == 1 else 0.75 * ncols), FIGSIZE[1] * nrows))
    figure_args = {key: kwargs.pop(key) for key in ("figsize", "dpi") if key in kwargs}
    if pyplot:
        import matplotlib.pyplot as plt

        fig = plt.figure(layout="constrained", **figure_args)
    else:
        fig = Figure(layout="constrained", **figure_args)
        FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save(fig, path) -> None:
    """Written atomically (temporary file, then rename): a full disk or a crash leaves the
    previous file or none, never a truncated PNG."""
    from pathlib import Path

    from clrctl.files.atomic import atomic_file

    for ax in fig.axes:
        ax.grid(True, alpha=0.3)
    path = Path(path)
    with atomic_file(path, "wb", fsync=False) as handle:
        fig.savefig(handle, dpi=DPI, format=path.suffix.lstrip(".") or None)
    if fig.canvas.manager is not None:  # a pyplot figure: let pyplot forget it
        import matplotlib.pyplot as plt

        plt.close(fig)
