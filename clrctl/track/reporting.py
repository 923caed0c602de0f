"""Rendering a run's progress with rich: the :class:`~clrctl.track.reporter.Reporter` that the CLI
passes to the trainer and the range test."""

from __future__ import annotations

import time
from typing import Any, Optional

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from clrctl.app import console, err_console


class RichReporter:
    """Renders the trainer's progress: one bar with step, LR, loss and accuracy; a line per epoch."""

    def __init__(self, label: str = "train", quiet: bool = False):
        self.label, self.quiet = label, quiet
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("lr {task.fields[lr]}"), TextColumn("loss {task.fields[loss]}"),
            TextColumn("val_acc {task.fields[acc]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=False, disable=quiet,
        )
        self.task = None
        self._next_update = 0.0
        self._lr: Optional[float] = None  # the latest step's LR (the bar itself is updated at most every 50 ms)

    def start(self, total_steps: int, done_steps: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task(escape(self.label), total=total_steps, completed=done_steps,
                                           lr="-", loss="-", acc="-")

    def advance(self, steps_done: int, lr: float) -> None:
        self._lr = lr
        if not due(self):  # (the flush, epoch ends and close bring the bar up to date)
            return
        self.progress.update(self.task, completed=steps_done, lr=f"{lr:.4g}")

    def metrics(self, steps_done: int, loss: Optional[float], val_acc: Optional[float]) -> None:
        """``loss``: the trainer's running mean train loss of the epoch (not one batch's)."""
        fields: dict[str, Any] = {} if self._lr is None else {"lr": f"{self._lr:.4g}"}
        if loss is not None:
            fields["loss"] = f"{loss:.4g}"
        if val_acc is not None:
            fields["acc"] = f"{val_acc:.4f}"
        self.progress.update(self.task, completed=steps_done, **fields)

    def epoch(self, row: dict[str, Any]) -> None:
        if self.quiet:
            return
        val = "-" if row["val_acc"] is None else f"{row['val_acc']:.4f}"
        acc = "-" if row["train_acc"] is None else f"{row['train_acc']:.4f}"
        self.progress.console.print(
            f"epoch {row['epoch']:>3}  step {row['step']:>6}  loss {row['train_loss']:.4f}  "
            f"acc {acc}  val_acc {val}  lr {row['lr']:.4g}", highlight=False, soft_wrap=True)

    def close(self) -> None:
        self.progress.stop()


def say(text: str, *, err: bool = False) -> None:
    """One line printed literally (no markup: it may quote config text such as ``[0.1]``)
    and never wrapped, so paths and commands in it can be copied whole."""
    (err_console if err else console).print(text, markup=False, highlight=False, soft_wrap=True)


def say_path(label: str, path: object, *, err: bool = False) -> None:
    """``label`` and then ``path`` on a line of its own, whole at any terminal width."""
    say(label, err=err)
    say(str(path), err=err)


UPDATE_EVERY_S = 0.05  # rich redraws 10 times a second; an update every step costs a small model ~5%


def due(reporter) -> bool:
    """Whether ``reporter`` (with a ``_next_update`` time) should update its bar now."""
    now = time.monotonic()
    if now < reporter._next_update:
        return False
    reporter._next_update = now + UPDATE_EVERY_S
    return True
